"""The public wire contract: events producers write to the log, and the decisions ipledger emits.

One JSON object per log record, UTF-8, tagged by ``type``. Producers in any language write these;
``ipledger schema`` prints the JSON Schema generated from the types below, so this module is the
single source of the contract. Decoding happens once, at the edge (``decode``); a record that does
not decode becomes a rejected decision with a reason, never an exception out of the core.

Field names on the wire are Cilium's Helm names where one exists (``clusterPoolIPv4PodCIDRList``,
``podCIDRs``); Python attribute names are snake_case. Unknown fields are ignored so that older
allocators can read newer producers' events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

# Every pattern means the same to Python's ``re`` (msgspec validates with it) and to ECMA-262
# (the published JSON Schema). Each ends with "no character follows" instead of ``$``, which in
# Python also matches before a final newline: "worker-1\n" would pass as a name.
_END = r"(?![\s\S])"
# Kubernetes' DNS-1123 label and subdomain (node names are subdomains).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
# C0 and C1 control characters: PostgreSQL text cannot hold NUL, and none belongs in an id.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_NO_CONTROL = rf"^[^{_CONTROL}]*{_END}"

# Size limits: every string and list on the wire is bounded so one record cannot exhaust memory.


def _pattern(pattern: str, **extra: Any) -> dict[str, Any]:
    """A pattern for the JSON Schema; ``decode`` checks it (see "strict and fast" below)."""
    return {"pattern": pattern, **extra}


EventId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, extra_json_schema=_pattern(_NO_CONTROL))
]
ClusterName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, extra_json_schema=_pattern(rf"^{_LABEL}{_END}"))
]
NodeName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=253, extra_json_schema=_pattern(rf"^{_SUBDOMAIN}{_END}")),
]
Owner = Annotated[
    str, msgspec.Meta(min_length=1, max_length=512, extra_json_schema=_pattern(_NO_CONTROL))
]
# RFC 3339's date-time, as Go's time.RFC3339 reads it: "T", an offset (a time without one would
# be read in the host's time zone), at most nanoseconds. Calendar ranges are checked on decode.
_RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    rf"(Z|[+-][0-9]{{2}}:[0-9]{{2}}){_END}"
)
EventTime = Annotated[
    str, msgspec.Meta(max_length=35, extra_json_schema=_pattern(_RFC3339, format="date-time"))
]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
CidrList = Annotated[tuple[Text, ...], msgspec.Meta(max_length=1024)]
AddressList = Annotated[tuple[Text, ...], msgspec.Meta(max_length=64)]
PodCidrs = Annotated[tuple[Text, ...], msgspec.Meta(max_length=2)]
MaskSize = Annotated[int, msgspec.Meta(ge=0, le=128)]
Family = Literal["ipv4", "ipv6"]

DEFAULT_CLUSTER = "default"
# An event's time is strictly between these once in UTC (``_storable``).
_FIRST_TIME = datetime.min.replace(tzinfo=UTC)
_LAST_TIME = datetime.max.replace(tzinfo=UTC)
_EDGE_YEARS = frozenset({1, 9999})
MAX_RECORD_BYTES = 64 * 1024
# Objects and arrays inside one another. An event needs 2; unknown fields may nest deeper, but
# not without bound: the JSON decoder recurses, and how deep it can go depends on the caller.
MAX_DEPTH = 32


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Fields every event carries.

    ``gc=False`` (inherited): events hold only strings, numbers, times and tuples of strings, so
    they cannot be part of a reference cycle, and the collector need not count or visit one per
    record.

    Like every constraint of the contract, ``time``'s is checked by ``decode``, not by the
    constructor: its pattern, then its calendar (no Feb 30; ``_check_time``).
    """

    # The event's ``type`` tag, as on the wire: a plain class attribute (set below for every
    # event type), read for every decision, where a property costs three times as much.
    type: ClassVar[str]

    id: EventId
    cluster: ClusterName = DEFAULT_CLUSTER
    time: EventTime | None = None

    def moment(self) -> datetime | None:
        """``time`` as an aware datetime, or None when the event has none."""
        return None if self.time is None else datetime.fromisoformat(self.time)


class PoolConfigured(Event, frozen=True, tag="pool.configured"):
    """Sets the cluster pool. An enabled family keeps its elements; new ones may be appended."""

    ipv4_cidrs: CidrList = msgspec.field(default=(), name="clusterPoolIPv4PodCIDRList")
    ipv4_mask: MaskSize | None = msgspec.field(default=None, name="clusterPoolIPv4MaskSize")
    ipv6_cidrs: CidrList = msgspec.field(default=(), name="clusterPoolIPv6PodCIDRList")
    ipv6_mask: MaskSize | None = msgspec.field(default=None, name="clusterPoolIPv6MaskSize")


class NodeAdded(Event, frozen=True, tag="node.added"):
    """A node joined: it gets one pod CIDR per enabled family, or waits with an error."""

    node: NodeName
    addresses: AddressList = ()


class NodeAdopted(Event, frozen=True, tag="node.adopted"):
    """Take over the exact CIDRs a node already has (migration from Cilium's operator, restore)."""

    node: NodeName
    pod_cidrs: PodCidrs = msgspec.field(name="podCIDRs")
    addresses: AddressList = ()


class NodeDeleted(Event, frozen=True, tag="node.deleted"):
    """A node left: its CIDRs and every pod address on it are released."""

    node: NodeName


class IpRequested(Event, frozen=True, tag="ip.requested"):
    """A pod address for ``owner`` on ``node``; no family means every enabled family."""

    node: NodeName
    owner: Owner
    family: Family | None = None


class IpReleased(Event, frozen=True, tag="ip.released"):
    """Give back ``owner``'s addresses on ``node`` (only ``ip`` when given)."""

    node: NodeName
    owner: Owner
    ip: Text | None = None


AnyEvent = PoolConfigured | NodeAdded | NodeAdopted | NodeDeleted | IpRequested | IpReleased
EVENT_TYPES: tuple[type[Event], ...] = (
    PoolConfigured,
    NodeAdded,
    NodeAdopted,
    NodeDeleted,
    IpRequested,
    IpReleased,
)
for _event_type in EVENT_TYPES:
    _event_type.type = str(_event_type.__struct_config__.tag)


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What applying one event did. ``error`` is None on success, else the reason.

    ``podCIDRs`` and ``conflict`` are present for node events, ``ips`` for ip events.
    """

    id: str | None
    type: str | None
    cluster: str | None  # None: a rejected record that names no valid cluster
    error: str | None
    pod_cidrs: tuple[str, ...] | msgspec.UnsetType = msgspec.field(
        default=msgspec.UNSET, name="podCIDRs"
    )
    conflict: str | msgspec.UnsetType | None = msgspec.UNSET
    ips: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET


class _Envelope(msgspec.Struct):
    """Lenient view of a record that failed to decode, to echo what it can."""

    id: Any = None
    type: Any = None
    cluster: Any = msgspec.UNSET


_TAGS = frozenset(str(t.__struct_config__.tag) for t in EVENT_TYPES)
# Every constraint but the patterns (``decode``'s fast path; the strict decoder is below).
_decoder = msgspec.json.Decoder(AnyEvent)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()
_CLUSTER_NAME = re.compile(_LABEL)
_EVENT_ID = re.compile(f"[^{_CONTROL}]{{1,128}}")
_UNKNOWN_TYPE = re.compile(f"[^{_CONTROL}]{{1,64}}")
_BOM = b"\xef\xbb\xbf"
_LEFT_BRACKET = ord("[")
_LEFT_BRACE = ord("{")
# JSON strings, escapes included, so that brackets inside them are not counted as nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Control characters in text echoed into a reason, spelt as escapes so the reason is storable.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


class DecodeFailure(msgspec.Struct, frozen=True):
    """A record that is not a valid event: what could be read of it, and why it was refused.

    ``id`` and ``type`` are echoed only when they are valid; ``cluster`` is the record's when it
    is a valid cluster name, the default one when the record names none, and None when it names
    an invalid one (never a cut-down name, which could be another cluster's).
    """

    id: str | None
    type: str | None
    cluster: str | None
    reason: str


def decode(raw: bytes | str) -> AnyEvent | DecodeFailure:
    """Decode one record; never raises, whatever the bytes and whatever the caller's stack."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # a lone surrogate fails the check below
    if len(raw) > MAX_RECORD_BYTES:
        return _failure(f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    if not raw.isascii():  # an ASCII record is valid UTF-8 and cannot start with a BOM
        if raw.startswith(_BOM):
            return _failure(
                "record starts with a UTF-8 byte order mark (U+FEFF); write JSON without it"
            )
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _failure(f"record is not valid UTF-8 (byte {exc.start})")
    # Most records have no "[" and a single "{", so they cannot nest: two memchr calls tell (an int
    # ``in`` bytes; ``b"[" in raw`` would cost as much as a count). Only the others have their
    # brackets counted, and only one with many of them is measured properly.
    if (_LEFT_BRACKET in raw or _LEFT_BRACE in raw.partition(b"{")[2]) and (
        raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(raw) > MAX_DEPTH
    ):
        return _failure(
            f"record nests objects and arrays deeper than the depth limit of {MAX_DEPTH} levels"
        )
    fast = _fast_decode(raw)
    if fast is not None:
        return fast
    try:
        event: AnyEvent = _strict_decode(raw)
    except msgspec.DecodeError as exc:
        reason = _PATTERN_ERROR.sub(_explain_pattern, str(exc))
    except Exception as exc:  # never expected: decode must not raise, whatever msgspec does
        reason = f"{type(exc).__name__}: {exc}"
    else:
        return event
    try:
        envelope = _envelope_decoder.decode(raw)
    except Exception:
        envelope = _Envelope()
    kind = envelope.type if isinstance(envelope.type, str) else None
    if kind is not None and kind not in _TAGS:
        reason = f"unknown event type {kind[:64]!r}"
        if not _UNKNOWN_TYPE.fullmatch(kind):
            kind = None  # echoed only when storable
    cluster: str | None = DEFAULT_CLUSTER
    if envelope.cluster is not msgspec.UNSET:
        valid = isinstance(envelope.cluster, str) and len(envelope.cluster) <= 63
        cluster = envelope.cluster if valid and _CLUSTER_NAME.fullmatch(envelope.cluster) else None
    event_id = envelope.id
    return DecodeFailure(
        id=event_id if isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id) else None,
        type=kind,
        cluster=cluster,
        reason=f"invalid event: {reason.translate(_ESCAPES)}",
    )


# --- strict and fast -----------------------------------------------------------------------------
# msgspec checks a ``Meta`` pattern by calling Python's ``re`` for each string, about 2 µs each:
# three quarters of decoding an ``ip.requested``. So the event types above carry their patterns in
# the JSON Schema only (``_pattern``), and ``_decoder`` checks every other constraint; ``decode``
# then checks the patterned fields itself, cheaply: a printable text has no control characters
# (one C call); a time is checked by its shape (``_TIME_SHAPES``); a node or cluster name already
# seen valid is looked up in a bounded set. Whenever that decode or a check fails, ``decode``
# asks the strict decoder, whose twins of the event types carry the patterns as msgspec
# constraints: a refused record gets exactly the strict decoder's reason, and an accepted one is
# the event the strict decoder returns. The checks never accept a string its pattern refuses
# (each is the pattern's own regex or implies it), so the fast path can only ever return what the
# strict decoder would.


def _with_patterns(annotation: Any) -> Any:
    """``annotation`` with each schema-only pattern made a msgspec constraint."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        inner, *metas = args
        kept = [
            # Patterns are on strings only, so only the length bounds are to be kept.
            msgspec.Meta(
                min_length=m.min_length,
                max_length=m.max_length,
                pattern=m.extra_json_schema["pattern"],
            )
            if isinstance(m, msgspec.Meta)
            and m.extra_json_schema
            and "pattern" in m.extra_json_schema
            else m
            for m in metas
        ]
        return Annotated[(_with_patterns(inner), *kept)]
    if origin in (Union, UnionType) and args:
        return Union[tuple(_with_patterns(a) for a in args)]  # noqa: UP007
    if origin is tuple and args:
        return tuple[tuple(_with_patterns(a) for a in args)]  # type: ignore[misc]
    return annotation


def _check_time(event: Event) -> None:
    """The strict twins' ``__post_init__``: ``time``, once its pattern matched, is a date."""
    if event.time is not None:
        try:
            moment = datetime.fromisoformat(event.time)
        except ValueError as exc:  # Feb 30: msgspec turns it into a refused record
            raise ValueError(f"`time` {event.time!r} is not a date-time: {exc}") from None
        if not _storable(moment):
            raise ValueError(
                f"`time` {event.time!r} is not strictly between 0001-01-01T00:00:00Z and "
                "9999-12-31T23:59:59.999999Z"
            )


def _storable(moment: datetime) -> bool:
    """Whether the projection stores ``moment`` as it is (a ``timestamptz``, made in UTC).

    9999-12-31T23:59:59-01:00 is year 10000 in UTC, beyond datetime's range: the projection
    would refuse what simulate applies. datetime's first and last microseconds are PostgreSQL's
    -infinity and infinity, read back as naive datetimes: a replay would differ. Only times
    written in those two years can be either.
    """
    if moment.year not in _EDGE_YEARS:
        return True
    try:
        return _FIRST_TIME < moment.astimezone(UTC) < _LAST_TIME
    except OverflowError:
        return False


def _strict_twin(event_type: type[Event]) -> type[msgspec.Struct]:
    """A subclass of ``event_type`` whose fields check their patterns, and ``time`` its date."""
    hints = get_type_hints(event_type, include_extras=True)
    fields = []
    for info in msgspec.structs.fields(event_type):
        default = msgspec.field(name=info.encode_name)
        if info.default is not msgspec.NODEFAULT:
            default = msgspec.field(default=info.default, name=info.encode_name)
        fields.append((info.name, _with_patterns(hints[info.name]), default))
    return msgspec.defstruct(
        event_type.__name__,
        fields,
        bases=(event_type,),
        tag=event_type.__struct_config__.tag,
        kw_only=True,
        frozen=True,
        gc=False,
        module=__name__,
        namespace={"__post_init__": _check_time},
    )


_STRICT: dict[type[msgspec.Struct], Callable[..., Any]] = {_strict_twin(t): t for t in EVENT_TYPES}
_strict_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[tuple(_STRICT)])  # noqa: UP007
_NO_CONTROL_SEARCH = re.compile(_NO_CONTROL).search
_from_iso = datetime.fromisoformat
_NODE_SEARCH = re.compile(rf"^{_SUBDOMAIN}{_END}").search
_CLUSTER_SEARCH = re.compile(rf"^{_LABEL}{_END}").search
# ``_RFC3339`` without a regex (a third of the cost): an ASCII text matches it exactly when,
# with every digit read as 0, it is one of these shapes. The shapes' fixed characters are no
# digits, so each must be there as it is, and each 0 stands for exactly one digit.
_DIGITS_AS_ZERO = bytes(b"0"[0] if b"0"[0] <= b <= b"9"[0] else b for b in range(256))
_TIME_SHAPES = frozenset(
    f"0000-00-00T00:00:00{fraction}{offset}".encode()
    for fraction in ["", *("." + "0" * digits for digits in range(1, 10))]
    for offset in ("Z", "+00:00", "-00:00")
)
_WITH_NODE = frozenset({NodeAdded, NodeAdopted, NodeDeleted, IpRequested, IpReleased})
_WITH_OWNER = frozenset({IpRequested, IpReleased})
# Names checked valid (each check is a regex), nodes and clusters apart (a subdomain with a dot
# is no label); each set is cleared when full, so memory stays bounded.
_VALID_NODES: set[str] = set()
_VALID_CLUSTERS: set[str] = set()
_VALID_NAMES_MAX = 1 << 16


def _new_name(text: str, valid: set[str], search: Callable[[str], re.Match[str] | None]) -> bool:
    """Check a name not in ``valid`` yet; remember it when it is valid."""
    if search(text) is None:
        return False
    if len(valid) >= _VALID_NAMES_MAX:
        valid.clear()
    valid.add(text)
    return True


def _fast_decode(raw: bytes) -> AnyEvent | None:
    """The event the strict decoder would return for ``raw``, or None: ask the strict one.

    The checks are written out, not called: this runs for every record. A printable text has no
    control character (``_NO_CONTROL``): C0, DEL and C1 are all of Unicode category Cc, which is
    never printable; a text that is not printable (a non-ASCII space, say) is left to the regex.
    """
    try:
        event: AnyEvent = _decoder.decode(raw)
    except Exception:  # the strict decoder says why
        return None
    text = event.id
    if not text.isprintable() and _NO_CONTROL_SEARCH(text) is None:
        return None
    text = event.cluster
    if (
        text != DEFAULT_CLUSTER
        and text not in _VALID_CLUSTERS
        and not _new_name(text, _VALID_CLUSTERS, _CLUSTER_SEARCH)
    ):
        return None
    time = event.time
    if time is not None:
        if not (time.isascii() and time.encode().translate(_DIGITS_AS_ZERO) in _TIME_SHAPES):
            return None
        try:
            moment = _from_iso(time)  # ``_check_time``: here, not in a ``__post_init__``
        except Exception:  # the strict decoder says why (and would see any other exception)
            return None
        if moment.year in _EDGE_YEARS and not _storable(moment):
            return None
    kind = type(event)
    if kind in _WITH_NODE:
        text = event.node  # type: ignore[union-attr]
        if text not in _VALID_NODES and not _new_name(text, _VALID_NODES, _NODE_SEARCH):
            return None
        if kind in _WITH_OWNER:
            text = event.owner  # type: ignore[union-attr]
            if not text.isprintable() and _NO_CONTROL_SEARCH(text) is None:
                return None
    return event


def _strict_decode(raw: bytes) -> AnyEvent:
    """Decode with every constraint a msgspec one (raises ``msgspec.DecodeError``)."""
    event: AnyEvent = _STRICT[type(twin := _strict_decoder.decode(raw))](
        **msgspec.structs.asdict(twin)
    )
    return event


# msgspec names the regex a string failed; the reason names the rule instead.
_PATTERN_ERROR = re.compile(r"Expected `str` matching regex '.*' - at `\$\.(\w+)`", re.DOTALL)
_RULES = {
    "id": "text without control characters",
    "owner": "text without control characters",
    "cluster": "a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends)",
    "node": "a DNS-1123 subdomain (labels of a-z, 0-9 and '-' joined by '.')",
    "time": "an RFC 3339 date-time with an offset, e.g. 2026-11-26T08:00:00Z",
}


def _explain_pattern(match: re.Match[str]) -> str:
    field = match.group(1)
    return f"`{field}` must be {_RULES.get(field, 'well-formed')} - at `$.{field}`"


def _failure(reason: str) -> DecodeFailure:
    return DecodeFailure(id=None, type=None, cluster=None, reason=reason)


def _depth(raw: bytes) -> int:
    """How deep objects and arrays nest in ``raw`` (strings skipped; malformed JSON welcome)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break  # enough to refuse it
        else:
            depth -= 1
    return deepest


def encode_event(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def encode_decision(decision: Decision) -> bytes:
    """The decision as the JSON object of the contract; unset parts are left out."""
    return _encoder.encode(decision)


def json_schema() -> dict[str, Any]:
    """JSON Schema of one log record (any event), generated from the types above."""
    schema: dict[str, Any] = msgspec.json.schema(AnyEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ipledger event"
    return schema
