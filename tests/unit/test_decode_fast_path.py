"""``events.decode``'s fast path returns exactly what the strict decoder returns.

The fast path decodes without msgspec's pattern constraints and checks the patterned fields
(id, cluster, node, owner, time) itself; on any doubt it asks the strict decoder, whose twins of
the event types carry the patterns as constraints. A record the fast path accepted that the
strict decoder refuses, or an event that differs, would change a decision: the log would no
longer decide the same way as before. So every record here is decoded both ways (the strict
way by turning the fast path off) and the verdicts compared: same type, same fields, same reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import events

# Strings at the edges of every pattern: control characters (C0, DEL, C1), non-ASCII printable
# text, names with dots, capitals, dashes at the ends, a trailing newline, times with and without
# offsets, impossible dates, and each length limit.
TRICKY = [
    "a",
    "node-1",
    "n.zone-a",
    "N",
    "-a",
    "a-",
    "a..b",
    "a.b",
    "a\n",
    "a\x00",
    "a\x1f",
    "a\x7f",
    "a\x85",
    "a\x9f",
    "a\xa0",
    "é",
    "ns/pod-1",
    "ns/pod 1",
    "",
    "x" * 63,
    "x" * 64,
    "x" * 128,
    "x" * 129,
    "x" * 253,
    "x" * 254,
    "2026-11-26T08:00:00Z",
    "2026-11-26T08:00:00.123456789+01:00",
    "2026-02-30T08:00:00Z",
    "2026-11-26T08:00:00",
    "2026-11-26 08:00:00Z",
    "default",
    "east",
]
TYPES = [str(t.__struct_config__.tag) for t in events.EVENT_TYPES]
FIELDS = ["id", "cluster", "node", "owner", "time", "ip", "family"]


@contextmanager
def _strict_only() -> Iterator[None]:
    saved = events._fast_decode
    events._fast_decode = lambda raw: None
    try:
        yield
    finally:
        events._fast_decode = saved


def _verdict(raw: bytes) -> tuple[object, ...]:
    result = events.decode(raw)
    if isinstance(result, events.DecodeFailure):
        return ("refused", result.id, result.type, result.cluster, result.reason)
    return ("event", type(result), events.encode_event(result))


def _same_both_ways(raw: bytes) -> None:
    fast = _verdict(raw)
    with _strict_only():
        strict = _verdict(raw)
    assert fast == strict, raw


def _record(kind: str, values: dict[str, str]) -> bytes:
    body: dict[str, object] = {"type": kind, **values}
    if kind == "pool.configured":
        body.update(clusterPoolIPv4PodCIDRList=["10.0.0.0/8"], clusterPoolIPv4MaskSize=24)
    if kind == "node.adopted":
        body["podCIDRs"] = ["10.0.1.0/24"]
    return json.dumps(body).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(TYPES),
    values=st.dictionaries(
        st.sampled_from(FIELDS), st.sampled_from(TRICKY) | st.text(max_size=12), max_size=6
    ),
)
def test_fast_path_gives_the_strict_verdict(kind: str, values: dict[str, str]) -> None:
    _same_both_ways(_record(kind, values))


@pytest.mark.parametrize("field", ["id", "cluster", "node", "owner", "time"])
@pytest.mark.parametrize("text", TRICKY)
def test_each_patterned_field_at_each_edge(field: str, text: str) -> None:
    values = {"id": "e1", "node": "node-1", "owner": "ns/pod-1", field: text}
    for kind in ("ip.requested", "ip.released", "node.added"):
        _same_both_ways(_record(kind, values))


def test_a_name_seen_valid_does_not_pass_as_another_kind_of_name() -> None:
    # "a.b" is a valid node name (subdomain) but not a cluster name (label): remembering the
    # first must not let the second through.
    _same_both_ways(_record("node.added", {"id": "e1", "node": "a.b"}))
    refused = events.decode(_record("node.added", {"id": "e2", "node": "x", "cluster": "a.b"}))
    assert isinstance(refused, events.DecodeFailure)
    assert "`cluster` must be a DNS-1123 label" in refused.reason


def test_the_strict_decoder_keeps_the_patterns() -> None:
    with _strict_only():
        refused = events.decode(b'{"type":"node.deleted","id":"e1","node":"Node"}')
    assert isinstance(refused, events.DecodeFailure)
    assert "`node` must be a DNS-1123 subdomain" in refused.reason


def test_the_schema_still_publishes_the_patterns() -> None:
    schema = json.dumps(events.json_schema())
    assert '"pattern"' in schema
    assert events._NO_CONTROL.replace("\\", "\\\\") in schema
