"""The event contract as a table of examples, each checked against the decoder and the schema.

The contract is written twice: as msgspec types (``events.decode``, which validates patterns with
Python's ``re``) and as the JSON Schema producers validate against (``ipledger schema``, draft
2020-12, whose patterns are ECMA-262). Where the two disagree, a producer's record can pass its
own validation and still be refused, or, worse, pass both and mean something else (``$`` in
Python lets ``"worker-1\\n"`` through as a node name). So every example below is run through
three judges that must give the same verdict:

- ``events.decode``;
- the ``jsonschema`` library as it is (its ``pattern`` uses Python's ``re.search``), with a format
  checker that checks ``date-time`` (RFC 3339, through ``rfc3339-validator``);
- the same with ``pattern`` evaluated by ECMA-262 semantics (``regress``, Rust's ECMA engine) and
  ``date-time`` checked against the RFC 3339 grammar with ECMA-262's ``$``: what a JavaScript or
  Go producer's validator does.

Each refused example sits next to an accepted neighbour, so a rule cannot pass by refusing
everything. What JSON Schema cannot express (a byte-level limit, ``24.0`` as an integer) is listed
apart as documented exceptions that only the decoder refuses.

A second table holds the core-level rules for CIDRs and addresses: values the decoder lets
through as text, which ``apply_record`` accepts or refuses with a decision that names the value
and leaves the state as it was.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import jsonschema
import pytest
import regress
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import validators

from service import cli
from service.domain import allocation, document, events, state

SCHEMA = events.json_schema()


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """``pattern`` as JSON Schema defines it: an ECMA-262 regular expression, unanchored."""
    if validator.is_type(instance, "string") and _ecma(pattern).find(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r} (ECMA-262)")


_ECMA_CACHE: dict[str, regress.Regex] = {}


def _ecma(pattern: str) -> regress.Regex:
    if pattern not in _ECMA_CACHE:
        _ECMA_CACHE[pattern] = regress.Regex(pattern, "u")
    return _ECMA_CACHE[pattern]


# RFC 3339 section 5.6 date-time; T and Z in either case (its note). Leap seconds (:60) are
# refused, as rfc3339-validator and msgspec do: no Python datetime can hold one.
_RFC3339 = (
    r"^(\d{4})-(\d{2})-(\d{2})[Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"
    r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
ECMA_FORMATS = jsonschema.FormatChecker(formats=())


@ECMA_FORMATS.checks("date-time")
def _ecma_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    match = _ecma(_RFC3339).find(instance)
    if match is None:
        return False
    year, month, day = (int(instance[match.group(i) or slice(0)]) for i in (1, 2, 3))
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


_EcmaValidator = validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
FORMATS = jsonschema.FormatChecker()
PYTHON_SCHEMA = jsonschema.Draft202012Validator(SCHEMA, format_checker=FORMATS)
ECMA_SCHEMA = _EcmaValidator(SCHEMA, format_checker=ECMA_FORMATS)
# Where the Python stack itself lets through what the contract refuses: not the schema's fault,
# so only the ECMA-262 judge is held to the table there.
PYTHON_SCHEMA_QUIRKS = {
    # rfc3339-validator's pattern ends in Python's $, which matches before a final newline.
    ("time", "2026-11-26T08:00:00Z\n"),
}


def decoder_accepts(raw: bytes) -> bool:
    return not isinstance(events.decode(raw), events.DecodeFailure)


def schema_verdicts(raw: bytes) -> tuple[bool, bool]:
    """(Python-``re`` jsonschema, ECMA-262 jsonschema) verdicts on the parsed record."""
    instance = json.loads(raw)
    return PYTHON_SCHEMA.is_valid(instance), ECMA_SCHEMA.is_valid(instance)


# --- the decode-level table --------------------------------------------------------------------

MINIMAL: dict[str, dict[str, Any]] = {
    "pool.configured": {"type": "pool.configured", "id": "p1"},
    "node.added": {"type": "node.added", "id": "n1", "node": "worker-1"},
    "node.adopted": {
        "type": "node.adopted",
        "id": "a1",
        "node": "worker-1",
        "podCIDRs": ["10.0.0.0/24"],
    },
    "node.deleted": {"type": "node.deleted", "id": "d1", "node": "worker-1"},
    "ip.requested": {"type": "ip.requested", "id": "r1", "node": "worker-1", "owner": "ns/pod"},
    "ip.released": {"type": "ip.released", "id": "l1", "node": "worker-1", "owner": "ns/pod"},
}
ALL_TYPES = tuple(MINIMAL)
NODE_TYPES = tuple(t for t in ALL_TYPES if "node" in MINIMAL[t])
OWNER_TYPES = ("ip.requested", "ip.released")


class _Absent:
    """A field left out of the record (shown as such in test ids)."""

    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()
# 253 characters: three 63-character labels and one of 61, joined by dots.
NAME_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


class Rule(NamedTuple):
    field: str
    value: Any
    accepted: bool
    why: str


# Per field: (value, accepted, why). Absent means the field is left out of the record.
FIELD_RULES: dict[str, tuple[tuple[str, ...], list[tuple[Any, bool, str]]]] = {
    "id": (
        ALL_TYPES,
        [
            ("a", True, "one character"),
            ("x" * 128, True, "128 characters"),
            ("x" * 129, False, "129 characters"),
            ("", False, "empty"),
            ("🙂" * 128, True, "128 characters outside the BMP (code points, not UTF-16 units)"),
            ("🙂" * 129, False, "129 characters outside the BMP"),
            ("évènement 1", True, "non-ASCII letters and a space"),
            ("a\u00a0b", True, "U+00A0 is not a control character"),
            ("a\x00b", False, "NUL"),
            ("a\nb", False, "newline inside"),
            ("evt-1\n", False, "trailing newline"),
            ("evt-1\r", False, "trailing carriage return"),
            ("a\tb", False, "tab"),
            ("\x1f", False, "U+001F"),
            ("a\x7f", False, "DEL U+007F"),
            ("a\x85", False, "NEL U+0085 (C1)"),
            ("a\x9f", False, "U+009F (C1)"),
            ("a\u2028", True, "U+2028 is not a control character"),
            (5, False, "not a string"),
            (ABSENT, False, "required"),
        ],
    ),
    "cluster": (
        ALL_TYPES,
        [
            (ABSENT, True, "defaults to 'default'"),
            ("default", True, "a label"),
            ("a", True, "one character"),
            ("0", True, "a digit"),
            ("9a-b0", True, "digits and hyphens"),
            ("a" * 63, True, "63 characters"),
            ("a" * 64, False, "64 characters"),
            ("", False, "empty"),
            ("default\n", False, "trailing newline (Python's $ lets it through)"),
            ("default\r", False, "trailing carriage return"),
            ("\ndefault", False, "leading newline"),
            ("a.b", False, "a dot: a subdomain, not a label"),
            ("a_b", False, "an underscore"),
            ("East", False, "upper case"),
            ("-a", False, "leading hyphen"),
            ("a-", False, "trailing hyphen"),
            ("a b", False, "a space"),
            ("ab\x00", False, "NUL"),
            ("\uff41", False, "a full-width letter"),
            (5, False, "not a string"),
            (None, False, "null"),
        ],
    ),
    "time": (
        ALL_TYPES,
        [
            (ABSENT, True, "optional"),
            (None, True, "null"),
            ("2026-11-26T08:00:00Z", True, "UTC"),
            ("2026-11-26T08:00:00+02:00", True, "an offset"),
            ("2026-11-26T08:00:00.123456-05:30", True, "fraction and negative offset"),
            ("2026-11-26T08:00:00-00:00", True, "unknown local offset (RFC 3339 4.3)"),
            ("2026-11-26T08:00:00.123456789Z", True, "nanoseconds"),
            # RFC 3339 5.6 lets a format allow lower case; the contract says T and Z, as Go's
            # time.RFC3339 reads them.
            ("2026-11-26t08:00:00Z", False, "lower-case t"),
            ("2026-11-26T08:00:00z", False, "lower-case z"),
            ("2026-11-26T24:00:00Z", False, "hour 24"),
            ("2026-11-26T08:00:00", False, "no offset"),
            ("2026-11-26T08:00:00.5", False, "fraction, no offset"),
            ("2026-11-26T08:00:00+0200", False, "offset without a colon (ISO 8601, not RFC 3339)"),
            ("2026-11-26 08:00:00Z", False, "a space instead of T (not the RFC 3339 grammar)"),
            ("2026-11-26T08:00:00Z\n", False, "trailing newline"),
            ("2026-11-26", False, "a date"),
            ("2026-02-30T08:00:00Z", False, "no such day"),
            ("yesterday", False, "not a time"),
            (1764144000, False, "a number"),
        ],
    ),
    "node": (
        NODE_TYPES,
        [
            ("n", True, "one character"),
            ("worker-1", True, "a label"),
            ("a.b", True, "a subdomain"),
            ("a-b.c-d.0", True, "labels with hyphens and digits"),
            ("a" * 64 + ".b", True, "a 64-character label (Kubernetes checks only the total)"),
            (NAME_253, True, "253 characters"),
            (NAME_253 + "d", False, "254 characters"),
            ("", False, "empty"),
            ("worker-1\n", False, "trailing newline (Python's $ lets it through)"),
            ("a..b", False, "empty label"),
            ("a.-b", False, "label starting with a hyphen"),
            ("a-.b", False, "label ending with a hyphen"),
            (".a", False, "leading dot"),
            ("a.", False, "trailing dot"),
            ("Worker-1", False, "upper case"),
            ("worker_1", False, "underscore"),
            ("worker 1", False, "space"),
            ("worker-1\x00", False, "NUL"),
            (7, False, "not a string"),
            (ABSENT, False, "required"),
        ],
    ),
    "owner": (
        OWNER_TYPES,
        [
            ("o", True, "one character"),
            ("kube-system/coredns-7d9f", True, "namespace/name"),
            ("ü/ñ ✓", True, "non-ASCII and a space"),
            ("x" * 512, True, "512 characters"),
            ("x" * 513, False, "513 characters"),
            ("", False, "empty"),
            ("ns/p\x00", False, "NUL"),
            ("ns/p\n", False, "trailing newline"),
            ("ns/\tp", False, "tab"),
            ("ns/p\x7f", False, "DEL"),
            ("ns/p\x85", False, "NEL (C1)"),
            (ABSENT, False, "required"),
        ],
    ),
}


class Case(NamedTuple):
    raw: bytes
    accepted: bool
    field: str | None  # the wire name a refusal's reason must mention, if any
    python_quirk: bool = False  # see PYTHON_SCHEMA_QUIRKS


def record(type_: str, **fields: Any) -> dict[str, Any]:
    body = dict(MINIMAL[type_])
    for name, value in fields.items():
        if value is ABSENT:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def _field_cases() -> Iterator[Any]:
    for field, (types, rules) in FIELD_RULES.items():
        for value, accepted, why in rules:
            for type_ in types:
                shown = "absent" if value is ABSENT else ascii(value)[:40]
                quirk = (field, value) in PYTHON_SCHEMA_QUIRKS
                yield pytest.param(
                    Case(encode(record(type_, **{field: value})), accepted, field, quirk),
                    id=f"{type_}-{field}={shown}-{'ok' if accepted else 'refused'}({why})",
                )


def _other_cases() -> Iterator[Any]:
    def case(label: str, body: Any, accepted: bool, field: str | None = None) -> Any:
        return pytest.param(
            Case(encode(body), accepted, field),
            id=f"{label}-{'ok' if accepted else 'refused'}",
        )

    value: Any
    pool = "pool.configured"
    for value, ok in [(24, True), (0, True), (128, True), (None, True)]:
        yield case(f"mask={value}", record(pool, clusterPoolIPv4MaskSize=value), ok)
    for value in [-1, 129, "24", True, [24]]:
        yield case(f"mask={value!r}", record(pool, clusterPoolIPv6MaskSize=value), False, "Mask")
    for name in ("clusterPoolIPv4PodCIDRList", "clusterPoolIPv6PodCIDRList"):
        yield case(f"{name}-1024", record(pool, **{name: ["10.0.0.0/24"] * 1024}), True)
        yield case(f"{name}-1025", record(pool, **{name: ["10.0.0.0/24"] * 1025}), False, name)
        yield case(f"{name}-64-chars", record(pool, **{name: ["1" * 64]}), True)
        yield case(f"{name}-65-chars", record(pool, **{name: ["1" * 65]}), False, name)
        yield case(f"{name}-empty-string", record(pool, **{name: [""]}), False, name)
        yield case(f"{name}-empty", record(pool, **{name: []}), True)
        yield case(f"{name}-not-a-list", record(pool, **{name: "10.0.0.0/8"}), False, name)
    for type_ in ("node.added", "node.adopted"):
        yield case(f"{type_}-addresses-64", record(type_, addresses=["1.2.3.4"] * 64), True)
        yield case(
            f"{type_}-addresses-65", record(type_, addresses=["1.2.3.4"] * 65), False, "addresses"
        )
        yield case(f"{type_}-address-64-chars", record(type_, addresses=["1" * 64]), True)
        yield case(
            f"{type_}-address-65-chars", record(type_, addresses=["1" * 65]), False, "addresses"
        )
    adopted = "node.adopted"
    yield case("podCIDRs-2", record(adopted, podCIDRs=["10.0.0.0/24", "fd00::/120"]), True)
    yield case("podCIDRs-3", record(adopted, podCIDRs=["10.0.0.0/24"] * 3), False, "podCIDRs")
    yield case("podCIDRs-empty-list", record(adopted, podCIDRs=[]), True)
    yield case("podCIDRs-absent", record(adopted, podCIDRs=ABSENT), False, "podCIDRs")
    for value, ok in [("ipv4", True), ("ipv6", True), (None, True), (ABSENT, True)]:
        yield case(f"family={value}", record("ip.requested", family=value), ok)
    for value in ["ipv5", "IPv4", "ipv4\n", 4]:
        yield case(f"family={value!r}", record("ip.requested", family=value), False, "family")
    for value, ok in [("10.0.0.1", True), (None, True), (ABSENT, True), ("1" * 64, True)]:
        yield case(f"ip={value}", record("ip.released", ip=value), ok)
    for value in ["", "1" * 65, 167772161]:
        yield case(f"ip={value!r}", record("ip.released", ip=value), False, "ip")
    future = {"future": {"list": [1, {"nested": None}], "text": "é\n\x00"}, "x-extra": 1}
    for type_ in ALL_TYPES:
        yield case(f"{type_}-minimal", record(type_), True)
        yield case(f"{type_}-unknown-fields", {**record(type_), **future}, True)
    yield case("type-unknown", record("node.added", type="node.renamed"), False, "type")
    yield case("type-case", record("node.added", type="Node.Added"), False, "type")
    yield case("type-newline", record("node.added", type="node.added\n"), False, "type")
    yield case("type-absent", record("node.added", type=ABSENT), False, "type")
    yield case("type-number", record("node.added", type=1), False, "type")
    yield case("top-level-array", [record("node.added")], False)
    yield case("top-level-string", "node.added", False)
    yield case("top-level-null", None, False)


DECODE_CASES = [*_field_cases(), *_other_cases()]


@pytest.mark.parametrize("case", DECODE_CASES)
def test_decoder_gives_the_tables_verdict(case: Case) -> None:
    result = events.decode(case.raw)
    if case.accepted:
        assert not isinstance(result, events.DecodeFailure), result
    else:
        assert isinstance(result, events.DecodeFailure), result
        assert result.reason
        if case.field is not None:
            assert case.field in result.reason, result.reason


@pytest.mark.parametrize("case", DECODE_CASES)
def test_published_schema_gives_the_same_verdict(case: Case) -> None:
    python_re, ecma_262 = schema_verdicts(case.raw)
    if not case.python_quirk:
        assert python_re == case.accepted, "jsonschema (Python re) disagrees with the table"
    assert ecma_262 == case.accepted, "jsonschema (ECMA-262 patterns) disagrees with the table"


def test_schema_is_valid_draft_2020_12_and_date_time_is_checked() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # Without rfc3339-validator installed, jsonschema silently skips date-time.
    assert "date-time" in FORMATS.checkers
    assert not FORMATS.conforms("2026-11-26T08:00:00", "date-time")


def test_ipledger_schema_prints_the_published_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(SCHEMA))


def test_the_table_covers_every_rule_in_both_directions() -> None:
    for field, (_, rules) in FIELD_RULES.items():
        verdicts = {accepted for _, accepted, _ in rules}
        assert verdicts == {True, False}, field
    assert {c.values[0].accepted for c in DECODE_CASES} == {True, False}


# --- every pattern means the same in Python and ECMA-262 ---------------------------------------


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


PATTERNS = sorted(set(_patterns(SCHEMA)))
# Characters on which the two dialects are known to part: line terminators ($ and .), Unicode
# digits and letters (\d, \w), and the boundaries of the classes the contract uses.
TRICKY = list("az09AZ-._/ \t\n\r\x00\x1f\x7f\x85\x9f\xa0\u2028\u2029\u0661\uff41é🙂")
# Surrogates excluded: no JSON text carries one (the decoder refuses a lone one).
PROBES = st.text(st.sampled_from(TRICKY) | st.characters(exclude_categories=("Cs",)), max_size=12)


def test_the_schema_constrains_cluster_and_node_names_with_patterns() -> None:
    defs = SCHEMA["$defs"]
    assert "pattern" in defs["NodeAdded"]["properties"]["node"]
    assert "pattern" in json.dumps(defs["NodeAdded"]["properties"]["cluster"])


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=300, deadline=None, derandomize=False)
@given(text=PROBES, suffix=st.sampled_from(["", "\n", "\r\n", "\u2028"]))
def test_every_schema_pattern_means_the_same_in_python_and_ecma_262(
    pattern: str, text: str, suffix: str
) -> None:
    for value in (text, text + suffix, "a" + suffix, "default" + suffix, "worker-1.b" + suffix):
        python = re.search(pattern, value) is not None
        ecma = _ecma(pattern).find(value) is not None
        assert python == ecma, f"{pattern!r} on {value!r}: Python {python}, ECMA-262 {ecma}"


# --- what JSON Schema cannot say: documented exceptions, refused by the decoder alone ----------

NODE = b'{"type":"node.added","id":"n1","node":"worker-1"'


def _nested(levels: int, opener: bytes, closer: bytes, leaf: bytes = b"") -> bytes:
    """A node.added record whose objects and arrays nest ``levels`` deep, the record included."""
    inner = levels - 1
    return NODE + b',"future":' + opener * inner + leaf + closer * inner + b"}"


def _padded(size: int) -> bytes:
    """A valid node.added record of exactly ``size`` bytes."""
    head = NODE + b',"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


class ByteCase(NamedTuple):
    raw: bytes
    accepted: bool
    reason: tuple[str, ...]  # fragments a refusal's reason must contain (lower-cased)


DEPTH = ("32",)  # and a word for nesting: see test_byte_level_rules_are_the_decoders
BYTE_CASES = {
    # A JSON number with a fraction is an integer to JSON Schema ("24.0" has no fractional
    # part), but not to Go's encoding/json nor to msgspec.
    "mask-24.0": ByteCase(
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4MaskSize":24.0}', False, ()
    ),
    "mask-2.4e1": ByteCase(
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4MaskSize":2.4e1}', False, ()
    ),
    "mask-24": ByteCase(
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4MaskSize":24}', True, ()
    ),
    # Depth: the record itself is level 1.
    "depth-32-arrays": ByteCase(_nested(32, b"[", b"]"), True, ()),
    "depth-33-arrays": ByteCase(_nested(33, b"[", b"]"), False, DEPTH),
    "depth-32-objects": ByteCase(_nested(32, b'{"k":', b"}", b"1"), True, ()),
    "depth-33-objects": ByteCase(_nested(33, b'{"k":', b"}", b"1"), False, DEPTH),
    "depth-33-mixed": ByteCase(
        NODE + b',"future":' + b'[{"k":' * 16 + b"1" + b"}]" * 16 + b"}", False, DEPTH
    ),
    "depth-1000": ByteCase(_nested(1000, b"[", b"]"), False, DEPTH),
    "depth-5000-objects": ByteCase(_nested(5000, b'{"k":', b"}", b"1"), False, DEPTH),
    "brackets-in-strings-are-not-depth": ByteCase(
        NODE + b',"future":"' + b"[{" * 100 + b'"}', True, ()
    ),
    "size-65536": ByteCase(_padded(65536), True, ()),
    "size-65537": ByteCase(_padded(65537), False, ("65536",)),
    "utf8-valid-in-unknown-field": ByteCase(NODE + ',"future":"é🙂"}'.encode(), True, ()),
    "utf8-invalid-in-unknown-value": ByteCase(NODE + b',"future":"\xff"}', False, ()),
    "utf8-invalid-in-unknown-key": ByteCase(NODE + b',"fut\xc3ure":1}', False, ()),
    "utf8-overlong-in-unknown-field": ByteCase(NODE + b',"future":"\xc0\xaf"}', False, ()),
    "utf8-surrogate-in-unknown-field": ByteCase(NODE + b',"future":"\xed\xa0\x80"}', False, ()),
    "utf8-truncated-in-unknown-field": ByteCase(NODE + b',"future":"\xe2\x82"}', False, ()),
    "utf8-invalid-in-id": ByteCase(b'{"type":"node.added","id":"\xff","node":"n"}', False, ()),
    "lone-surrogate-escape-in-unknown-field": ByteCase(NODE + b',"future":"\\ud800"}', False, ()),
    "bom": ByteCase(b"\xef\xbb\xbf" + NODE + b"}", False, ("byte order mark",)),
    "bom-inside-a-string": ByteCase(NODE + ',"future":"\ufeff"}'.encode(), True, ()),
    "raw-control-character-in-a-string": ByteCase(
        b'{"type":"node.added","id":"a\x01","node":"n"}', False, ()
    ),
    "trailing-data": ByteCase(NODE + b"} x", False, ()),
    "two-records-on-one-line": ByteCase(NODE + b"}" + NODE + b"}", False, ()),
}


@pytest.mark.parametrize("case", BYTE_CASES.values(), ids=BYTE_CASES.keys())
def test_byte_level_rules_are_the_decoders(case: ByteCase) -> None:
    result = events.decode(case.raw)
    if case.accepted:
        assert not isinstance(result, events.DecodeFailure), result
        return
    assert isinstance(result, events.DecodeFailure), result
    for fragment in case.reason:
        assert fragment in result.reason.lower(), result.reason
    if case.reason == DEPTH:
        assert re.search("depth|deep|nest", result.reason), result.reason


@pytest.mark.parametrize("case", BYTE_CASES.values(), ids=BYTE_CASES.keys())
def test_byte_level_rules_are_beyond_the_schema(case: ByteCase) -> None:
    """Where the record parses as JSON at all, the schema accepts it: that is why it is listed here.

    If this fails, the schema has learnt to express the rule, and the example belongs in the
    main table.
    """
    try:
        text = case.raw.decode("utf-8")
        instance = json.loads(text)
    except (ValueError, RecursionError):
        return  # not JSON text, or too deep for Python's own parser: nothing to judge
    assert PYTHON_SCHEMA.is_valid(instance)
    assert ECMA_SCHEMA.is_valid(instance)


def test_str_and_bytes_of_one_record_get_the_same_verdict() -> None:
    """The 64 KiB limit counts UTF-8 bytes, whichever type the caller hands in."""
    head = '{"type":"node.added","id":"n1","node":"worker-1","pad":"'
    over = head + "é" * 33_000 + '"}'  # 33,060 characters, 66,060 bytes
    under = head + "é" * 32_000 + '"}'
    for text in (over, under, *[c.raw.decode() for c in BYTE_CASES.values() if c.raw.isascii()]):
        by_bytes, by_str = events.decode(text.encode()), events.decode(text)
        assert by_str == by_bytes
    assert isinstance(events.decode(over), events.DecodeFailure)
    assert not isinstance(events.decode(under), events.DecodeFailure)
    # A str that no UTF-8 can carry (a lone surrogate) is refused, not raised.
    assert isinstance(
        events.decode('{"type":"node.added","id":"a\ud800","node":"n"}'), events.DecodeFailure
    )


# --- under which cluster a refused record's decision is filed ----------------------------------


@pytest.mark.parametrize(
    ("cluster", "filed_under"),
    [
        ("east", "east"),
        (ABSENT, "default"),
        ("a" * 63, "a" * 63),
        ("a" * 64, None),  # once cut to 63 characters: another, real cluster's name
        ("a" * 63 + "b", None),
        ("East", None),
        ("default\n", None),
        ("a.b", None),
        ("a_b", None),
        ("", None),
        (5, None),
        (None, None),
        (["east"], None),
    ],
)
def test_a_refused_records_decision_names_its_cluster_only_when_valid(
    cluster: Any, filed_under: str | None
) -> None:
    body = record("node.added", node="Not_A_Node", cluster=cluster)
    decision, event = allocation.apply_record(state.State(), encode(body))
    assert event is None
    assert decision.error
    assert json.loads(events.encode_decision(decision))["cluster"] == filed_under


# --- core-level CIDR and address rules ---------------------------------------------------------


def _base_records() -> list[bytes]:
    """A dual-stack pool, a node (10.0.0.0/24, fd00::/120) and a pod holding 10.0.0.1, fd00::1."""
    return [
        encode(
            {
                "type": "pool.configured",
                "id": "pool",
                "clusterPoolIPv4PodCIDRList": ["10.0.0.0/16"],
                "clusterPoolIPv4MaskSize": 24,
                "clusterPoolIPv6PodCIDRList": ["fd00::/104"],
                "clusterPoolIPv6MaskSize": 120,
            }
        ),
        encode({"type": "node.added", "id": "n1", "node": "n1"}),
        encode({"type": "ip.requested", "id": "r1", "node": "n1", "owner": "ns/p"}),
    ]


def base_state() -> state.State:
    current = state.State()
    for raw in _base_records():
        decision, _ = allocation.apply_record(current, raw)
        assert decision.error is None, decision
    node = current.clusters["default"].nodes["n1"]
    assert node.pod_cidr_texts() == ("10.0.0.0/24", "fd00::/120")
    return current


def _record_for(kind: str, value: str) -> bytes:
    if kind == "pool4":
        return encode(
            {
                "type": "pool.configured",
                "id": "grow",
                "clusterPoolIPv4PodCIDRList": ["10.0.0.0/16", value],
                "clusterPoolIPv4MaskSize": 24,
                "clusterPoolIPv6PodCIDRList": ["fd00::/104"],
                "clusterPoolIPv6MaskSize": 120,
            }
        )
    if kind == "pool6":
        return encode(
            {
                "type": "pool.configured",
                "id": "grow",
                "clusterPoolIPv4PodCIDRList": ["10.0.0.0/16"],
                "clusterPoolIPv4MaskSize": 24,
                "clusterPoolIPv6PodCIDRList": ["fd00::/104", value],
                "clusterPoolIPv6MaskSize": 120,
            }
        )
    if kind == "podCIDRs":
        return encode({"type": "node.adopted", "id": "a", "node": "n2", "podCIDRs": [value]})
    if kind == "addresses":
        return encode({"type": "node.added", "id": "a", "node": "n2", "addresses": [value]})
    if kind == "adopted-addresses":
        return encode(
            {
                "type": "node.adopted",
                "id": "a",
                "node": "n2",
                "podCIDRs": ["10.0.9.0/24"],
                "addresses": [value],
            }
        )
    assert kind == "ip"
    return encode({"type": "ip.released", "id": "l", "node": "n1", "owner": "ns/p", "ip": value})


class Net(NamedTuple):
    kind: str
    value: str
    canonical: str | None  # the text it is shown as when accepted; None: refused
    mapped: bool = False  # an IPv4-mapped form: the reason must point at the IPv4 form


def _ok(kind: str, value: str, canonical: str) -> Any:
    return pytest.param(Net(kind, value, canonical), id=f"{kind}-{value!a}-ok")


def _no(kind: str, value: str, *, mapped: bool = False) -> Any:
    return pytest.param(Net(kind, value, None, mapped), id=f"{kind}-{value!a}-refused")


NET_CASES = [
    # pool elements, IPv4
    _ok("pool4", "10.1.0.0/16", "10.1.0.0/16"),
    _no("pool4", "10.1.0.0/255.255.0.0"),  # netmask form
    _no("pool4", "10.1.0.0/0.0.255.255"),  # hostmask form
    _no("pool4", "10.1.0.0/016"),  # leading zero in the prefix length
    _no("pool4", "10.1.0.0/+16"),
    _no("pool4", "10.1.0.0/ 16"),
    _no("pool4", "10.1.0.0 /16"),
    _no("pool4", "10.1.0.0/16 "),
    _no("pool4", "10.1.0.0/16\n"),
    _no("pool4", "010.1.0.0/16"),  # leading zero in an octet
    _no("pool4", "10.1.0.1/16"),  # host bits set
    _no("pool4", "10.1.0.0"),  # no prefix length: net.ParseCIDR and netip.ParsePrefix refuse it
    _no("pool4", "10.1.0.0/33"),
    _no("pool4", "10.1.0.0%eth0/16"),
    _no("pool4", "fd01::/104"),  # the other family
    # pool elements, IPv6
    _ok("pool6", "fd01::/104", "fd01::/104"),
    _ok("pool6", "FD01::/104", "fd01::/104"),
    _ok("pool6", "fd01:0000:0000:0000:0000:0000:0000:0000/104", "fd01::/104"),
    _ok("pool6", "fd01:0:0:0:0:0:0:0/104", "fd01::/104"),
    _ok("pool6", "::1.2.3.0/120", "::102:300/120"),  # embedded dotted quad, not mapped
    _ok("pool6", "::10.0.0.0/104", "::a00:0/104"),  # IPv4-compatible (deprecated), not mapped
    _ok("pool6", "fe80::/104", "fe80::/104"),
    _no("pool6", "fe80::%eth0/104"),  # zone
    _no("pool6", "fe80::%eth0/64"),
    _no("pool6", "fd01::/0104"),
    _no("pool6", "fd01::/104\n"),
    _no("pool6", "fd01::1/104"),
    _no("pool6", "fd01::"),
    _no("pool6", "fd01::/129"),
    _no("pool6", "0fd01::/104"),  # five hex digits in a group
    _no("pool6", "fd01::/ffff:ff00::"),
    _no("pool6", "::ffff:10.0.0.0/104", mapped=True),
    _no("pool6", "::ffff:a00:0/104", mapped=True),
    _no("pool6", "::FFFF:10.0.0.0/104", mapped=True),
    _no("pool6", "::ffff:0:0/96", mapped=True),
    _no("pool6", "10.1.0.0/16"),  # the other family
    # podCIDRs
    _ok("podCIDRs", "10.0.5.0/24", "10.0.5.0/24"),
    _no("podCIDRs", "10.0.5.0/255.255.255.0"),
    _no("podCIDRs", "10.0.5.0/024"),
    _no("podCIDRs", "10.0.5.0%eth0/24"),
    _no("podCIDRs", "10.0.5.0/24\n"),
    _no("podCIDRs", "010.0.5.0/24"),
    _no("podCIDRs", "10.0.5.1/24"),
    _no("podCIDRs", "10.0.5.0"),
    _ok("podCIDRs", "fd00::500/120", "fd00::500/120"),
    _ok("podCIDRs", "FD00::0500/120", "fd00::500/120"),
    _ok("podCIDRs", "fd00:0000:0000:0000:0000:0000:0000:0500/120", "fd00::500/120"),
    _ok("podCIDRs", "fd00::0.0.5.0/120", "fd00::500/120"),
    _no("podCIDRs", "fd00::500%eth0/120"),
    _no("podCIDRs", "fe80::%eth0/64"),
    _no("podCIDRs", "::ffff:10.0.5.0/120", mapped=True),
    _no("podCIDRs", "fd00::500/0120"),
    # node addresses
    _ok("addresses", "192.168.1.1", "192.168.1.1"),
    _no("addresses", "192.168.01.1"),
    _no("addresses", "192.168.1.1\n"),
    _no("addresses", " 192.168.1.1"),
    _no("addresses", "192.168.1.1/32"),
    _no("addresses", "192.168.1.1%eth0"),
    _ok("addresses", "fd12::12", "fd12::12"),
    _ok("addresses", "FD12::12", "fd12::12"),
    _ok("addresses", "fd12:0000:0000:0000:0000:0000:0000:0012", "fd12::12"),
    _ok("addresses", "0001:0002::", "1:2::"),
    _ok("addresses", "::1.2.3.4", "::102:304"),
    _ok("addresses", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
    _ok("addresses", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
    _ok("addresses", "fe80::1", "fe80::1"),
    _no("addresses", "fe80::1%eth0"),
    _no("addresses", "fe80::1%"),
    _no("addresses", "::ffff:192.168.1.1", mapped=True),
    _no("addresses", "::ffff:c0a8:101", mapped=True),
    _no("addresses", "::1.2.3.04"),
    _no("addresses", "fd12::12\n"),
    _ok("adopted-addresses", "fd12::12", "fd12::12"),
    _no("adopted-addresses", "fe80::1%eth0"),
    _no("adopted-addresses", "::ffff:192.168.1.1", mapped=True),
    # ip of ip.released (held: 10.0.0.1 and fd00::1)
    _ok("ip", "10.0.0.1", "10.0.0.1"),
    _no("ip", "010.0.0.1"),
    _no("ip", "10.0.0.01"),
    _no("ip", "10.0.0.1\n"),
    _no("ip", "10.0.0.1%eth0"),
    _ok("ip", "fd00::1", "fd00::1"),
    _ok("ip", "FD00::1", "fd00::1"),
    _ok("ip", "fd00:0:0:0:0:0:0:1", "fd00::1"),
    _ok("ip", "fd00:0000:0000:0000:0000:0000:0000:0001", "fd00::1"),
    _ok("ip", "fd00::0.0.0.1", "fd00::1"),
    _no("ip", "fd00::1%eth0"),
    _no("ip", "::ffff:10.0.0.1", mapped=True),
    _no("ip", "fd00::1/128"),
]


def _shown(cluster_document: dict[str, Any], kind: str, decision: dict[str, Any]) -> list[str]:
    """Where an accepted value shows up again, in canonical text."""
    if kind == "pool4":
        return list(cluster_document["pool"]["clusterPoolIPv4PodCIDRList"])
    if kind == "pool6":
        return list(cluster_document["pool"]["clusterPoolIPv6PodCIDRList"])
    if kind == "podCIDRs":
        return list(decision["podCIDRs"])
    if kind in ("addresses", "adopted-addresses"):
        return list(cluster_document["nodes"]["n2"]["addresses"])
    return list(decision["ips"])


@pytest.mark.parametrize("case", NET_CASES)
def test_core_accepts_exactly_the_contracts_cidrs_and_addresses(case: Net) -> None:
    current = base_state()
    before = document.digest(current)
    decision_obj, event = allocation.apply_record(current, _record_for(case.kind, case.value))
    decision = json.loads(events.encode_decision(decision_obj))
    if case.canonical is not None:
        assert event is not None, decision
        assert decision["error"] is None, decision
        cluster_document = document.state_document(current)["clusters"]["default"]
        assert case.canonical in _shown(cluster_document, case.kind, decision)
        return
    error = decision["error"]
    assert error, decision
    assert not error.startswith("internal error"), error
    # The reason names the value as given (escaped, when it holds a control character).
    assert case.value in error or repr(case.value)[1:-1] in error, error
    if case.mapped:
        assert "IPv4" in error, error
    assert document.digest(current) == before, "a refused value changed the state"
