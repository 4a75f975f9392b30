"""Hostile records against the promise, on real PostgreSQL: same log, same decisions, everywhere.

Each attack here is a record a producer of the contract could write (it passes the JSON Schema
and ``events.decode``), appended to the table log and applied by a real allocator. The promise
is that its decision and the state after it are the pure core's (``allocation.apply_record``,
what ``ipledger simulate`` runs): the live allocator may not decide otherwise because the
database, rather than the log, refused something. Records the database refuses are rejected
(``tests/integration/test_unstorable_records.py``), which keeps the partition moving, but then
``simulate`` over the same log gives another digest: the contract must refuse such a record at
decode instead, so that every path rejects it alike (docs/operations.md, "Records the projection
cannot store": "a gap in the contract").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest

from service import allocator
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.domain import allocation, document, events, state
from tests import waiting

pytestmark = pytest.mark.anyio

DEADLINE_S = 60.0
POOL = (
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/16"],'
    b'"clusterPoolIPv4MaskSize":24}'
)


def node_added(event_id: str, node: str, time: str | None) -> bytes:
    event: dict[str, object] = {"type": "node.added", "id": event_id, "node": node}
    if time is not None:
        event["time"] = time
    return json.dumps(event).encode()


def ip_requested(event_id: str, node: str, owner: str, time: str | None) -> bytes:
    event: dict[str, object] = {"type": "ip.requested", "id": event_id, "node": node}
    event["owner"] = owner
    if time is not None:
        event["time"] = time
    return json.dumps(event).encode()


@pytest.fixture
async def log(pg_dsn: str) -> AsyncIterator[table_log.PostgresTableLog]:
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    yield event_log
    await event_log.close()


def oracle(records: Sequence[bytes]) -> tuple[state.State, list[events.Decision]]:
    """What the pure core (``ipledger simulate``) decides over ``records``."""
    current = state.State()
    return current, [allocation.apply_record(current, record)[0] for record in records]


async def run_allocator(log: table_log.PostgresTableLog, dsn: str, end: int) -> None:
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="table", holder="h")
    worker = allocator.PartitionAllocator(log, projection, 0)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            await waiting.until(
                lambda: worker.metrics.next_offset.get(0, -1) >= end,
                timeout=DEADLINE_S,
                what=lambda: f"offset {end} committed",
                interval=0.02,
            )
            stop.set()
    finally:
        await projection.close()


async def assert_live_equals_simulate(dsn: str, records: Sequence[bytes]) -> None:
    expected_state, expected = oracle(records)
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        decided = await reader.decisions(0)
    finally:
        await reader.close()
    assert [d.offset for d in decided] == list(range(len(records)))
    for offset, (committed, decision) in enumerate(zip(decided, expected, strict=True)):
        assert json.loads(committed.body) == json.loads(events.encode_decision(decision)), (
            f"offset {offset}: live {committed.body!r}"
        )
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="table", holder="r")
    try:
        loaded = await projection.load()
    finally:
        await projection.close()
    assert document.digest(loaded.state) == document.digest(expected_state)


# Times Go's time.RFC3339 and Python's fromisoformat both read, within years 1-9999 as written,
# whose instant in UTC is outside Python's datetime range: asyncpg converts every timestamptz to
# UTC in the client (OverflowError), the commit fails, and the allocator rejects the record as
# unstorable, while the pure core applies it.
OUT_OF_RANGE_TIMES = [
    pytest.param("9999-12-31T23:59:59-01:00", id="after-9999-in-utc"),
    pytest.param("0001-01-01T00:00:00+00:01", id="before-year-1-in-utc"),
]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "service/domain/events.py (helper E's) accepts a time whose UTC instant is outside "
        "years 1-9999: the projection refuses it (OverflowError in asyncpg's timestamptz "
        "encoder) and the live decision is 'could not store', while simulate applies it"
    ),
)
@pytest.mark.parametrize("when", OUT_OF_RANGE_TIMES)
async def test_a_time_beyond_the_utc_range_decides_alike_live_and_in_simulate(
    log: table_log.PostgresTableLog, pg_dsn: str, when: str
) -> None:
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        node_added("n2", "worker-2", when),
        ip_requested("r1", "worker-1", "ns/a", when),
        ip_requested("r2", "worker-1", "ns/b", None),
    ]
    await log.append([(b"default", r) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)


async def test_the_latest_and_earliest_storable_times_decide_alike_live_and_in_simulate(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    """The edges that are inside the range: stored, and decided as the core decides."""
    records = [
        POOL,
        node_added("n1", "worker-1", "9999-12-31T23:59:59.999999999Z"),
        node_added("n2", "worker-2", "0001-01-01T00:00:00Z"),
        ip_requested("r1", "worker-1", "ns/a", "9999-12-31T23:59:59+00:00"),
        ip_requested("r2", "worker-2", "ns/b", "0001-01-01T01:00:00+01:00"),
    ]
    await log.append([(b"default", r) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)
