"""The allocator against real PostgreSQL with the table log: projection, decisions, rejections.

Each test gets a fresh migrated database. The allocator runs in-process here; the crash and
standby tests in tests/e2e run it as real processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from service import allocator, errors
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.domain import allocation, document, state
from tests import fakes, waiting
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio


def simulate(records: list[bytes]) -> state.State:
    oracle = state.State()
    for record in records:
        allocation.apply_record(oracle, record)
    return oracle


@pytest.fixture
async def log(pg_dsn: str) -> AsyncIterator[table_log.PostgresTableLog]:
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    yield event_log
    await event_log.close()


def open_projection(
    dsn: str, holder: str = "test", ttl: float = 6.0
) -> pg_projection.PostgresProjection:
    return pg_projection.PostgresProjection.from_dsn(
        dsn, log_name="table", holder=holder, lease_ttl_s=ttl
    )


async def run_until(worker: allocator.PartitionAllocator, end: int, timeout: float = 60.0) -> None:
    """Run the allocator until it has committed everything below ``end``, then stop it."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: worker.metrics.next_offset.get(worker.partition, -1) >= end,
            timeout=timeout,
            what=lambda: (
                f"offset {end} committed (at {worker.metrics.next_offset.get(worker.partition)})"
            ),
            interval=0.02,
        )
        stop.set()


async def test_projection_matches_simulate_and_every_record_has_a_decision(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    records = mixed_stream(3000)
    for start in range(0, len(records), 500):
        chunk = records[start : start + 500]
        await log.append([(key_of(r), r) for r in chunk])
    projection = open_projection(pg_dsn)
    worker = allocator.PartitionAllocator(
        log, projection, 0, settings=allocator.LoopSettings(batch_max_records=700)
    )
    await run_until(worker, len(records))
    loaded = await projection.load()
    await projection.close()
    assert document.digest(loaded.state) == document.digest(simulate(records))
    assert document.state_document(loaded.state) == document.state_document(simulate(records))

    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        decisions = await reader.decisions(0)
        positions = await reader.positions()
        rejected = await reader.rejections(0)
    finally:
        await reader.close()
    assert [decision.offset for decision in decisions] == list(range(len(records)))
    assert [(p.partition, p.next_offset) for p in positions] == [(0, len(records))]
    assert rejected
    for rejection in rejected:
        assert rejection.raw == records[rejection.offset]
        assert rejection.reason.startswith("invalid event:")
    # The view ip_holding against its two tables (no read of the port covers every address).
    db = await asyncpg.connect(pg_dsn)
    try:
        held = await db.fetchval("SELECT count(*) FROM pod_ip")
        open_holdings = await db.fetchval("SELECT count(*) FROM ip_holding WHERE to_offset IS NULL")
        assert held == open_holdings > 0
        finished = await db.fetch("SELECT from_offset, to_offset FROM ip_history")
        assert finished
        assert all(r["from_offset"] < r["to_offset"] < len(records) for r in finished)
    finally:
        await db.close()
    assert worker.metrics.records_rejected == len(rejected)


async def test_bad_input_is_rejected_with_reasons_and_the_offset_advances(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    pool = (
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
        b'"clusterPoolIPv4MaskSize":24}'
    )
    items: list[tuple[bytes | None, bytes]] = [
        (b"default", pool),
        (b"default", b"{not json"),
        (b"default", b'{"type":"node.exploded","id":"u"}'),
        (b"default", b'{"type":"node.adopted","id":"c","node":"n","podCIDRs":["10.0.0.300/24"]}'),
        (b"default", b'{"type":"node.added","id":"big","node":"n","pad":"' + b"x" * 70_000 + b'"}'),
        (b"default", b'{"type":"ip.requested","id":"u2","node":"ghost","owner":"o"}'),
        (b"east", b'{"type":"node.added","id":"k","node":"n"}'),
        (None, b'{"type":"node.added","id":"k2","node":"n"}'),
        (b"default", b'{"type":"node.added","id":"ok","node":"n"}'),
    ]
    await log.append(items)
    projection = open_projection(pg_dsn)
    worker = allocator.PartitionAllocator(log, projection, 0)
    await run_until(worker, len(items))
    await projection.close()
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        decisions = {d.offset: (d.error, json.loads(d.body)) for d in await reader.decisions(0)}
        rejections = {r.offset: r.reason for r in await reader.rejections(0)}
    finally:
        await reader.close()
    assert decisions[0][0] is None
    assert decisions[1][0].startswith("invalid event: JSON is malformed")
    assert decisions[2][0] == "invalid event: unknown event type 'node.exploded'"
    assert decisions[3][0].startswith("invalid CIDR '10.0.0.300/24'")
    assert decisions[4][0] == f"record is {len(items[4][1])} bytes, over the 65536-byte limit"
    assert decisions[5][0] == "unknown node ghost"
    assert decisions[6][0] == "record key 'east' does not match the event's cluster 'default'"
    assert decisions[7][0] == "record key None does not match the event's cluster 'default'"
    assert decisions[8][0] is None and decisions[8][1]["podCIDRs"] == ["10.0.0.0/24"]
    # Records that are not events at all, or break the keying contract, are kept raw.
    assert set(rejections) == {1, 2, 4, 6, 7}
    assert worker.metrics.records_rejected == 5
    assert worker.metrics.decisions_with_error == 2


async def test_a_writer_that_lost_its_lease_cannot_commit(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    first = open_projection(pg_dsn, holder="first", ttl=1.0)
    second = open_projection(pg_dsn, holder="second", ttl=30.0)
    try:
        token = await first.try_acquire(0)
        assert token is not None
        assert await second.try_acquire(0) is None
        records = mixed_stream(50)
        appended = await log.append([(key_of(r), r) for r in records])
        loaded = await first.load([0])
        batch = allocator.apply_records(loaded.state, appended, 0, token, partitions=1)
        # The first writer stalls past its lease; the second takes over.
        taken: int | None = None

        async def second_takes_over() -> bool:
            nonlocal taken
            taken = await second.try_acquire(0)
            return taken is not None

        await waiting.until(
            second_takes_over,
            timeout=10,
            what="the second writer taking the first one's expired lease",
            interval=0.1,
        )
        assert taken is not None and taken > token
        with pytest.raises(errors.FencedError):
            await first.commit(batch)
        with pytest.raises(errors.FencedError):
            await first.renew(0, token)
        assert await second.next_offset(0) == 0
        await second.commit(
            allocator.apply_records(
                (await second.load([0])).state, appended, 0, taken, partitions=1
            )
        )
        assert await second.next_offset(0) == len(records)
    finally:
        await first.close()
        await second.close()


async def test_restart_continues_from_the_stored_offset_without_reapplying(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    records = mixed_stream(1200, seed=11)
    await log.append([(key_of(r), r) for r in records[:600]])
    projection = open_projection(pg_dsn)
    await run_until(allocator.PartitionAllocator(log, projection, 0), 600)
    await log.append([(key_of(r), r) for r in records[600:]])
    worker = allocator.PartitionAllocator(log, projection, 0)
    await run_until(worker, len(records))
    loaded = await projection.load()
    await projection.close()
    assert worker.metrics.records_applied == 600
    assert document.digest(loaded.state) == document.digest(simulate(records))


async def test_point_in_time_who_held_an_address_and_why(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    def event(body: str, at: str) -> tuple[bytes, bytes]:
        return b"default", (body[:-1] + f',"time":"2026-11-{at}Z"}}').encode()

    items = [
        event(
            '{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.4.0.0/16"],'
            '"clusterPoolIPv4MaskSize":24}',
            "17T09:00:00",
        ),
        event('{"type":"node.added","id":"n","node":"w1"}', "17T09:00:01"),
        event('{"type":"ip.requested","id":"a","node":"w1","owner":"shop/cart-1"}', "17T10:00:00"),
        event('{"type":"ip.released","id":"b","node":"w1","owner":"shop/cart-1"}', "17T12:00:00"),
        event('{"type":"ip.requested","id":"c","node":"w1","owner":"ops/probe"}', "17T13:00:00"),
        event('{"type":"ip.released","id":"d","node":"w1","owner":"ops/probe"}', "17T13:30:00"),
        event('{"type":"ip.requested","id":"e","node":"w1","owner":"shop/cart-2"}', "17T14:00:00"),
    ]
    await log.append(items)
    projection = open_projection(pg_dsn)
    await run_until(allocator.PartitionAllocator(log, projection, 0), len(items))
    await projection.close()

    def at(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text)

    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)

    async def held(address: str, when: str) -> tuple[str, str, str | None] | None:
        holding = await reader.holder("default", ipaddress.ip_address(address), at=at(when))
        return None if holding is None else (holding.owner, holding.node, holding.from_event_id)

    try:
        at_11 = await held("10.4.0.1", "2026-11-17T11:00:00Z")
        at_13_15 = await held("10.4.0.2", "2026-11-17T13:15:00Z")
        at_12_30 = await held("10.4.0.1", "2026-11-17T12:30:00Z")
        now = await held("10.4.0.3", "2026-11-18T00:00:00Z")
    finally:
        await reader.close()
    assert at_11 == ("shop/cart-1", "w1", "a")
    assert at_13_15 == ("ops/probe", "w1", "c")
    assert at_12_30 is None
    assert now == ("shop/cart-2", "w1", "e")


async def test_the_lease_is_kept_alive_while_a_long_load_runs(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    records = mixed_stream(300, seed=2)
    await log.append([(key_of(r), r) for r in records])
    projection = fakes.SlowLoadingProjection.from_dsn(
        pg_dsn, log_name="table", holder="slow", lease_ttl_s=1.0
    )
    worker = allocator.PartitionAllocator(
        log, projection, 0, settings=allocator.LoopSettings(renew_every_s=0.3)
    )
    await run_until(worker, len(records))
    await projection.close()
    assert worker.metrics.fenced == 0
    assert worker.metrics.takeovers == 1
