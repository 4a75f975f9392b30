"""``events.decode``'s fast path checks ``time``, ``id`` and ``owner`` without their regexes.

The fast path reads every digit of an ASCII time as 0 and looks the result up among the shapes
the RFC 3339 regex allows (``events._TIME_SHAPES``), and takes a printable id or owner as one
without control characters; the strict decoder and the published JSON Schema keep the regexes
(``events._RFC3339``, ``events._NO_CONTROL``). The checks must accept exactly what the regexes
accept (the time) or only what they accept (the texts, where the regex decides the rest), or a
record would be decided differently depending on which path read it. Times here are valid ones
with single characters replaced, inserted or removed, from an alphabet of what a near miss is
made of: other digits (Arabic-Indic, fullwidth), lower-case separators, spaces, newlines, signs.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import events

VALID = [
    "2026-11-26T08:00:00Z",
    "2026-11-26T08:00:00+01:00",
    "2026-11-26T08:00:00.1-23:59",
    "2026-11-26T08:00:00.123456789Z",
    "2025-06-01T12:00:00.000000Z",
]
NEAR = "0123456789-:.TtZz+ \n\u0662\uff15\u00b2x"
_REGEX = re.compile(events._RFC3339)


def _shaped(text: str) -> bool:
    """The fast path's check of ``time``, as ``events._fast_decode`` writes it."""
    return text.isascii() and text.encode().translate(events._DIGITS_AS_ZERO) in events._TIME_SHAPES


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    text = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.sampled_from(NEAR))
        if edit == "insert":
            text.insert(at, char)
        elif at < len(text):
            if edit == "replace":
                text[at] = char
            else:
                del text[at]
    return "".join(text)


@settings(max_examples=3000, deadline=None)
@given(text=near_misses() | st.text(alphabet=NEAR, max_size=40))
def test_the_shape_check_is_the_regex(text: str) -> None:
    assert _shaped(text) == (_REGEX.search(text) is not None), repr(text)


def test_every_fraction_length_and_offset_is_a_shape() -> None:
    for digits in range(10):
        fraction = "." + "7" * digits if digits else ""
        for offset in ("Z", "+05:30", "-00:00"):
            assert _shaped(f"2026-11-26T08:00:00{fraction}{offset}")
    assert not _shaped("2026-11-26T08:00:00.1234567890Z")  # ten digits: over nanoseconds
    assert not _shaped("2026-11-26T08:00:00.Z")


@settings(max_examples=500, deadline=None)
@given(text=near_misses())
def test_a_record_with_that_time_gets_the_strict_verdict(text: str) -> None:
    raw = json.dumps({"type": "ip.requested", "id": "e1", "node": "n", "owner": "o", "time": text})
    fast = events._fast_decode(raw.encode())
    strict: object
    try:
        strict = events._strict_decode(raw.encode())
    except Exception:
        strict = None
    # Only the time varies, so the fast path refuses exactly what the strict decoder refuses.
    assert (fast is None) == (strict is None), raw
    if fast is not None:
        assert events.encode_event(fast) == events.encode_event(strict)  # type: ignore[arg-type]


def test_a_printable_text_has_no_control_characters() -> None:
    # Every code point: C0, DEL and C1 are category Cc, which ``str.isprintable`` never accepts.
    no_control = re.compile(events._NO_CONTROL)
    printable = "".join(c for c in map(chr, range(0x110000)) if c.isprintable())
    assert no_control.search(printable) is not None
    assert not any(chr(c).isprintable() for c in [*range(0x20), *range(0x7F, 0xA0)])


@pytest.mark.parametrize("opener", ["[", '{"a":', '[{"a":'])
@pytest.mark.parametrize("levels", [30, 31, 32, 40])
@pytest.mark.parametrize("owner", ["o", "o{[{", "o{{"])  # brackets in a string count, harmlessly
def test_nesting_is_refused_past_the_limit_whichever_brackets(
    opener: str, levels: int, owner: str
) -> None:
    # ``decode`` counts brackets only in a record with a "[" or a second "{".
    closer = "".join("]" if c == "[" else "}" for c in reversed(opener) if c in "[{")
    nested = opener * levels + "1" + closer * levels
    raw = f'{{"type":"ip.requested","id":"e","node":"n","owner":"{owner}","zz":{nested}}}'
    decided = events.decode(raw.encode())
    by_depth = isinstance(decided, events.DecodeFailure) and "depth limit" in decided.reason
    assert by_depth == (events._depth(raw.encode()) > events.MAX_DEPTH)
    assert by_depth == (levels * opener.count("[") + levels * opener.count("{") + 1 > 32)
