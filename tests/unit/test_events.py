"""The wire contract: decoding, rejections with reasons, size limits, forward compatibility."""

from __future__ import annotations

import json

import pytest

from service.domain import allocation, events, state


def decide(line: bytes | str) -> dict[str, object]:
    decision, _ = allocation.apply_record(state.State(), line)
    out: dict[str, object] = json.loads(events.encode_decision(decision))
    return out


def test_unknown_type_is_rejected_with_its_name_echoing_id_and_cluster() -> None:
    assert decide(b'{"type":"node.renamed","id":"x1","cluster":"east"}') == {
        "id": "x1",
        "type": "node.renamed",
        "cluster": "east",
        "error": "invalid event: unknown event type 'node.renamed'",
    }


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"type":"node.added","id":"a"}', "missing required field `node`"),
        (b'{"type":"node.added","node":"n"}', "missing required field `id`"),
        (b'{"type":"node.added","id":"","node":"n"}', "at `$.id`"),
        (b'{"type":"node.added","id":"a","node":"N_1"}', "at `$.node`"),
        (b'{"type":"ip.requested","id":"a","node":"n","owner":"o","family":"ipv5"}', "$.family"),
        (b'{"type":"pool.configured","id":"a","clusterPoolIPv4MaskSize":"24"}', "Expected `int"),
        (b'{"id":"a","node":"n"}', "missing required field `type`"),
        (b'{"type":"node.added","id":"a","node":"n","time":"yesterday"}', "$.time"),
        (b"[1,2]", "Expected `object`"),
        (b'{"type":"node.added",', "truncated"),
        ('{"type":"node.added","id":"' + "x" * 129 + '","node":"n"}', "$.id"),
    ],
)
def test_malformed_events_are_rejected_with_a_clear_reason(
    line: bytes | str, fragment: str
) -> None:
    error = decide(line)["error"]
    assert isinstance(error, str)
    assert error.startswith("invalid event: ")
    assert fragment in error


def test_records_over_64_kib_are_rejected_before_decoding() -> None:
    line = json.dumps({"type": "node.added", "id": "a", "node": "n", "pad": "x" * 70_000})
    assert decide(line)["error"] == f"record is {len(line)} bytes, over the 65536-byte limit"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    decision = decide(b'{"type":"node.added","id":"a","node":"n","future":{"x":1}}')
    assert decision["error"] == "no pool configured for cluster default"
    assert decision["podCIDRs"] == []


def test_time_is_accepted_in_rfc3339_and_never_changes_the_decision() -> None:
    a = decide(b'{"type":"node.added","id":"a","node":"n","time":"2026-11-26T08:00:00Z"}')
    b = decide(b'{"type":"node.added","id":"a","node":"n","time":"1999-01-01T00:00:00+02:00"}')
    assert a == b


def test_json_schema_describes_every_event_type_with_wire_names() -> None:
    schema = events.json_schema()
    text = json.dumps(schema)
    for tag in (
        "pool.configured",
        "node.added",
        "node.adopted",
        "node.deleted",
        "ip.requested",
        "ip.released",
    ):
        assert f'"{tag}"' in text
    for name in ("clusterPoolIPv4PodCIDRList", "clusterPoolIPv6MaskSize", "podCIDRs", "owner"):
        assert f'"{name}"' in text
    assert "pod_cidrs" not in text


def test_decode_round_trips_an_encoded_event() -> None:
    event = events.NodeAdopted(id="a", node="n", pod_cidrs=("10.0.0.0/24",), cluster="c1")
    assert events.decode(events.encode_event(event)) == event
