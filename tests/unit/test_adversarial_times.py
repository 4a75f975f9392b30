"""Event times the decoder accepts and the projection cannot hold as written (no services).

The live allocator stores an event's ``time`` as a PostgreSQL ``timestamptz``, which the driver
computes in UTC with a Python ``datetime``: a time outside years 1-9999 once in UTC does not
convert (the record is then rejected live as unstorable while ``simulate`` applies it), and the
first and last microseconds of that range are written as -infinity and infinity and read back as
naive datetimes (``replay --verify`` then reports the rows as differing). Each is proven against
real PostgreSQL in ``tests/integration/test_adversarial_records.py``; here the contract's side:
the decoder must refuse them, every way it is called, and accept the storable times next to them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.domain import allocation, events, state

NOT_STORABLE = [
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+00:01",  # year 0 in UTC
    "0001-01-01T00:59:59+01:00",
    "9999-12-31T23:59:59.999999Z",  # PostgreSQL's infinity
    "9999-12-31T23:59:59.999999999Z",  # the same microsecond: nanoseconds are cut off
    "0001-01-01T00:00:00Z",  # PostgreSQL's -infinity
    "0001-01-01T01:00:00+01:00",  # the same instant
]
STORABLE = [
    "9999-12-31T23:59:59.999998Z",
    "9999-12-31T23:59:59.999998999Z",
    "9999-12-31T22:59:59+00:00",
    "0001-01-01T00:00:00.000001Z",
    "0001-01-01T01:00:00.000001+01:00",
    "2026-11-26T08:00:00Z",
]


def record(kind: str, time: str) -> bytes:
    event: dict[str, object] = {"type": kind, "id": "e-1", "node": "worker-1", "time": time}
    if kind.startswith("ip."):
        event["owner"] = "ns/pod"
    return json.dumps(event).encode()


KINDS = ["node.added", "node.deleted", "ip.requested", "ip.released"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time", NOT_STORABLE)
def test_a_time_the_projection_cannot_hold_is_refused_at_decode(kind: str, time: str) -> None:
    decoded = events.decode(record(kind, time))
    assert isinstance(decoded, events.DecodeFailure)
    assert "`time`" in decoded.reason
    # Echoed as a refused record of its type, as every other refused field.
    assert (decoded.id, decoded.type, decoded.cluster) == ("e-1", kind, "default")
    # The same verdict as a whole record applied by the core (``simulate``): nothing applied.
    current = state.State()
    decision, _ = allocation.apply_record(current, record(kind, time))
    assert decision.error == decoded.reason


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time", STORABLE)
def test_a_storable_time_next_to_them_is_accepted(kind: str, time: str) -> None:
    decoded = events.decode(record(kind, time))
    assert not isinstance(decoded, events.DecodeFailure), decoded
    moment = decoded.moment()
    assert moment is not None
    in_utc = moment.astimezone(UTC)
    assert datetime.min.replace(tzinfo=UTC) < in_utc < datetime.max.replace(tzinfo=UTC)
