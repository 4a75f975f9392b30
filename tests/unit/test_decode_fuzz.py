"""Byte-level fuzzing of the edge: no record, however malformed, may crash or halt the core.

The allocator applies whatever the log holds. ``events.decode`` and ``allocation.apply_record``
must therefore return for every input (never raise), give the same verdict whatever the caller's
own stack depth (a depth limit that moved with the stack would make the same log decide
differently in the allocator and in ``ipledger simulate``), and a record that is refused must
leave the state exactly as it was.

Inputs are arbitrary bytes, and valid records of every event type (from examples/ and
tests.streams) mutated the ways real corruption and hostile producers do: bit flips, inserted and
deleted bytes, truncation, two records spliced, an unknown field nested up to 5,000 levels,
control characters and newlines in string fields, invalid UTF-8 in unknown fields, a byte order
mark in front. The same mutations, drawn from a seeded ``random.Random``, make one stream that
goes through ``ipledger simulate --decisions`` as a subprocess: one decision per record.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import allocation, document, events, state
from tests.streams import mixed_stream

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
T = TypeVar("T")

# --- seeds: valid records of every event type --------------------------------------------------

# Records that exercise what the examples and the mixed stream do not: an IPv6 pool, released
# addresses named by ip, adoption with node addresses, deletion, a time with an offset.
EXTRA_SEEDS = [
    b'{"type":"pool.configured","id":"p6","cluster":"east","clusterPoolIPv4PodCIDRList":'
    b'["10.8.0.0/16"],"clusterPoolIPv4MaskSize":24,"clusterPoolIPv6PodCIDRList":["fd08::/104"],'
    b'"clusterPoolIPv6MaskSize":120,"time":"2026-11-26T09:00:00+01:00"}',
    b'{"type":"node.added","id":"e1","cluster":"east","node":"east-1.zone-a",'
    b'"addresses":["192.168.8.1","fd12::8:1"]}',
    b'{"type":"node.adopted","id":"e2","cluster":"east","node":"east-2","podCIDRs":'
    b'["10.8.7.0/24","fd08::700/120"],"addresses":["10.8.7.1"]}',
    b'{"type":"ip.requested","id":"e3","cluster":"east","node":"east-2","owner":"shop/db-0",'
    b'"family":"ipv6"}',
    b'{"type":"ip.released","id":"e4","cluster":"east","node":"east-2","owner":"shop/db-0",'
    b'"ip":"fd08::701"}',
    b'{"type":"node.deleted","id":"e5","cluster":"east","node":"east-1.zone-a",'
    b'"time":"2026-11-26T10:00:00Z"}',
]


def _lines(path: Path) -> list[bytes]:
    return [line.strip() for line in path.read_bytes().splitlines() if line.strip()]


def _valid(records: Sequence[bytes]) -> list[bytes]:
    return [r for r in records if not isinstance(events.decode(r), events.DecodeFailure)]


# The history every fuzzed record is applied on top of: a pool, nodes, pods in two clusters.
HISTORY = _valid(
    [
        *_lines(EXAMPLES / "helm-default-pool.jsonl"),
        *_lines(EXAMPLES / "events.jsonl"),
        *EXTRA_SEEDS[:4],
    ]
)
SEEDS = _valid([*HISTORY, *EXTRA_SEEDS, *mixed_stream(200, seed=11)])


def history_state() -> state.State:
    current = state.State()
    for record in HISTORY:
        allocation.apply_record(current, record)
    return current


# --- mutations, written once for Hypothesis and for a seeded random.Random ---------------------


class Pick(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def blob(self, max_size: int) -> bytes: ...


class DrawPick:
    """Choices drawn by Hypothesis, so that failures shrink."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        value: int = self.draw(st.integers(lo, hi))
        return value

    def choice(self, options: Sequence[T]) -> T:
        value: T = self.draw(st.sampled_from(options))
        return value

    def blob(self, max_size: int) -> bytes:
        value: bytes = self.draw(st.binary(min_size=1, max_size=max_size))
        return value


class RandomPick:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, max_size))


CONTROL = ["\x00", "\n", "\r", "\t", "\x01", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\u2028"]
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3",  # a lead byte without its continuation
    b"\x80",  # a continuation byte alone
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong, three bytes
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # five-byte form
]
BOM = b"\xef\xbb\xbf"
STRING_FIELDS = ("id", "cluster", "node", "owner", "type", "time", "ip", "family")


def flip(pick: Pick, data: bytes) -> bytes:
    if not data:
        return data
    i = pick.integer(0, len(data) - 1)
    return data[:i] + bytes([data[i] ^ (1 << pick.integer(0, 7))]) + data[i + 1 :]


def insert(pick: Pick, data: bytes) -> bytes:
    i = pick.integer(0, len(data))
    return data[:i] + pick.blob(8) + data[i:]


def delete(pick: Pick, data: bytes) -> bytes:
    if not data:
        return data
    i = pick.integer(0, len(data) - 1)
    return data[:i] + data[i + pick.integer(1, 16) :]


def truncate(pick: Pick, data: bytes) -> bytes:
    return data[: pick.integer(0, len(data))]


def splice(pick: Pick, data: bytes) -> bytes:
    other = pick.choice(SEEDS)
    return data[: pick.integer(0, len(data))] + other[pick.integer(0, len(other)) :]


def _with_unknown_field(data: bytes, field: bytes) -> bytes:
    """``data`` with ``field`` (``"name":value``) added before its closing brace."""
    end = data.rfind(b"}")
    if end < 0:
        return data + field
    return data[:end] + b"," + field + data[end:]


def deep_nest(pick: Pick, data: bytes) -> bytes:
    levels = pick.integer(10, 5000)
    opener, leaf, closer = pick.choice(
        [(b"[", b"", b"]"), (b'{"k":', b"1", b"}"), (b'[{"k":', b"null", b"}]")]
    )
    nested = opener * levels + leaf + closer * levels
    if pick.integer(0, 3) == 0:
        nested = nested[: pick.integer(0, len(nested))]  # never closed
    return _with_unknown_field(data, b'"zz":' + nested)


def control_in_string(pick: Pick, data: bytes) -> bytes:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        return data
    fields = [f for f in STRING_FIELDS if isinstance(body.get(f), str)]
    if not isinstance(body, dict) or not fields:
        return data
    field = pick.choice(fields)
    value: str = body[field]
    at = pick.choice([0, len(value), pick.integer(0, len(value))])
    char = pick.choice(CONTROL)
    if pick.integer(0, 1):
        body[field] = value[:at] + char + value[at:]
        text = json.dumps(body, ensure_ascii=pick.integer(0, 1) == 1)
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate stays as bad bytes
    # Unescaped, as a careless producer writes it: not valid JSON where it is a control char.
    needle = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    where = data.find(needle)
    if where < 0:
        return data
    cut = where + 1 + len(value[:at].encode())
    return data[:cut] + char.encode() + data[cut:]


def invalid_utf8(pick: Pick, data: bytes) -> bytes:
    junk = pick.choice(INVALID_UTF8)
    if pick.integer(0, 1):
        return _with_unknown_field(data, b'"zz":"a' + junk + b'b"')
    return _with_unknown_field(data, b'"z' + junk + b'":1')


# Values a producer might put in an address or CIDR field: accepted spellings and every refused
# form of the contract (zone, netmask, leading zeros, IPv4-mapped, host bits, trailing newline).
NET_VALUES = [
    "10.0.0.0/8",
    "10.9.0.0/16",
    "10.0.42.0/24",
    "10.0.42.0/255.255.255.0",
    "10.0.42.0/024",
    "010.0.42.0/24",
    "10.0.42.1/24",
    "10.0.42.0",
    "10.0.42.0/24\n",
    "fd00::2a00/120",
    "FD00::2A00/120",
    "fd00:0000:0000:0000:0000:0000:0000:2a00/120",
    "fd00::0.0.42.0/120",
    "fd00::2a00%eth0/120",
    "fe80::%eth0/64",
    "::ffff:10.0.42.0/120",
    "::ffff:0:0/96",
    "fd00::/104",
    "fd01::/104",
    "192.168.10.11",
    "192.168.010.11",
    "fd12::12",
    "FD12:0:0:0:0:0:0:12",
    "::1.2.3.4",
    "fe80::1%eth0",
    "::ffff:192.168.10.11",
    "10.0.0.1",
    "fd00::1",
]
NET_FIELDS = (
    "clusterPoolIPv4PodCIDRList",
    "clusterPoolIPv6PodCIDRList",
    "podCIDRs",
    "addresses",
    "ip",
)
NAMES = ["worker-1", "worker-2", "legacy-1", "east-2", "node-3", "ghost", "default", "east"]


def respell(pick: Pick, data: bytes) -> bytes:
    """A still-valid JSON record with one address, CIDR, name or mask replaced."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if not isinstance(body, dict):
        return data
    field = pick.choice([*NET_FIELDS, "node", "cluster", "owner", "clusterPoolIPv4MaskSize"])
    if field in NET_FIELDS[:4]:
        values = list(body.get(field) or [])
        value = pick.choice(NET_VALUES)
        if values and pick.integer(0, 1):
            values[pick.integer(0, len(values) - 1)] = value
        else:
            values.append(value)
        body[field] = values
    elif field == "ip":
        body[field] = pick.choice(NET_VALUES)
    elif field == "clusterPoolIPv4MaskSize":
        body[field] = pick.choice([8, 16, 24, 26, 30, 31, 32])
    else:
        body[field] = pick.choice(NAMES)
    return json.dumps(body).encode()


def bom(pick: Pick, data: bytes) -> bytes:
    return BOM + data


def pad(pick: Pick, data: bytes) -> bytes:
    """Grow the record to around the 64 KiB limit with an unknown field."""
    target = pick.integer(65_530, 65_540)
    room = max(0, target - len(data) - len(b',"pad":""'))
    return _with_unknown_field(data, b'"pad":"' + b"x" * room + b'"')


MUTATIONS = (
    respell,  # twice: most other mutations make records that do not decode at all
    respell,
    flip,
    insert,
    delete,
    truncate,
    splice,
    deep_nest,
    control_in_string,
    invalid_utf8,
    bom,
    pad,
)


def mutate(pick: Pick) -> bytes:
    data = pick.choice(SEEDS)
    for _ in range(pick.integer(1, 3)):
        data = pick.choice(MUTATIONS)(pick, data)
    return data


@st.composite
def mutated_records(draw: Callable[[Any], Any]) -> bytes:
    return mutate(DrawPick(draw))


# --- the properties ----------------------------------------------------------------------------


def at_stack_depth(frames: int, call: Callable[[], T]) -> T:
    """``call()`` made ``frames`` Python frames deeper than here."""
    if frames <= 0:
        return call()
    return at_stack_depth(frames - 1, call)


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


def check_record(raw: bytes | str) -> None:
    result = events.decode(raw)
    assert isinstance(result, (events.DecodeFailure, *events.EVENT_TYPES)), result
    # The same verdict 500 frames down, and close to the interpreter's recursion limit.
    assert at_stack_depth(500, lambda: events.decode(raw)) == result
    near_limit = sys.getrecursionlimit() - _stack_depth() - 100
    assert at_stack_depth(near_limit, lambda: events.decode(raw)) == result

    current = history_state()
    before = document.digest(current)
    decision, event = allocation.apply_record(current, raw)
    out = json.loads(events.encode_decision(decision))
    assert set(out) >= {"id", "type", "cluster", "error"}
    assert not (out["error"] or "").startswith("internal error"), out
    assert (event is None) == isinstance(result, events.DecodeFailure)
    if event is None:
        assert out["error"], out
        assert document.digest(current) == before, "a record that did not decode changed the state"
        return
    assert event == result
    if out["error"] and not registers_the_node(current, event, out["error"]):
        assert document.digest(current) == before, f"a rejection changed the state: {out}"


def registers_the_node(current: state.State, event: events.AnyEvent, error: str) -> bool:
    """Whether an error decision is a node left waiting (or pinned) with that error.

    ``node.added`` with "allocator full" or no pool, and ``node.adopted`` of CIDRs that are not
    free, register the node: the state changes, and the error is the node's own. Every other
    error decision (unknown node, invalid CIDR or address, refused pool change, range full,
    address not held) is a rejection.
    """
    if not isinstance(event, (events.NodeAdded, events.NodeAdopted)):
        return False
    cluster = current.clusters.get(event.cluster)
    node = cluster.nodes.get(event.node) if cluster is not None else None
    return node is not None and node.error == error


FUZZ = settings(
    max_examples=600,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_seeds_cover_every_event_type() -> None:
    kinds = {type(events.decode(r)) for r in SEEDS}
    assert kinds == set(events.EVENT_TYPES)


@FUZZ
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_record(raw)


@FUZZ
@given(text=st.text(st.characters(exclude_categories=()), max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    check_record(text)


@settings(FUZZ, max_examples=2000)  # where the bugs were: worth the most examples
@given(raw=mutated_records())
def test_mutated_records_never_raise_and_refusals_change_nothing(raw: bytes) -> None:
    check_record(raw)


def test_a_lone_surrogate_in_a_str_record_is_refused_not_raised() -> None:
    check_record('{"type":"node.added","id":"a\ud800","node":"n"}')
    check_record('{"type":"node.added","id":"a","node":"n","zz":"\udfff"}')


def test_the_reported_deep_record_is_refused_at_any_stack_depth() -> None:
    """The report: an unknown field 1,000 levels deep (2 KB) raised RecursionError."""
    raw = b'{"type":"node.added","id":"a","node":"n","zz":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert len(raw) < 2100
    for frames in (0, 500, sys.getrecursionlimit() - _stack_depth() - 100):
        result = at_stack_depth(frames, lambda: events.decode(raw))
        assert isinstance(result, events.DecodeFailure), frames
        assert "32" in result.reason, result.reason


def test_the_depth_limit_does_not_move_with_the_callers_stack() -> None:
    def nested(levels: int) -> bytes:
        inner = levels - 1  # the record itself is the first level
        return (
            b'{"type":"node.added","id":"a","node":"n","zz":' + b"[" * inner + b"]" * inner + b"}"
        )

    headroom = sys.getrecursionlimit() - _stack_depth() - 100
    for levels in (2, 31, 32, 33, 100, 600, 999, 5000):
        raw = nested(levels)
        verdicts = {
            isinstance(at_stack_depth(frames, lambda: events.decode(raw)), events.NodeAdded)  # noqa: B023
            for frames in (0, 250, 500, headroom)
        }
        assert verdicts == {levels <= 32}, levels


def test_simulate_gives_one_decision_per_record(tmp_path: Path) -> None:
    """A stream of mutated records through ``ipledger simulate --decisions``, as a user runs it.

    One decision per non-blank line (mutations may put a newline inside a record, which makes it
    two lines of the file), and the decisions are exactly the core's.
    """
    rng = random.Random(20261126)
    pick = RandomPick(rng)
    records = [*HISTORY, *(mutate(pick) for _ in range(400))]
    records += [rng.randbytes(rng.randint(1, 300)) for _ in range(100)]
    records.insert(len(HISTORY), BOM + SEEDS[-1])
    data = b"\n".join(records) + b"\n"
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)

    lines = [line.strip() for line in data.split(b"\n") if line.strip()]
    current = state.State()
    expected = [events.encode_decision(allocation.apply_record(current, line)[0]) for line in lines]

    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", "--decisions", str(path)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in done.stderr
    decisions = done.stdout.splitlines()
    assert len(decisions) == len(lines)
    assert decisions == expected
    assert all(isinstance(json.loads(d), dict) for d in decisions)
