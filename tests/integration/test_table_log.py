"""The PostgreSQL table log against the real server: order, density, waiting, and no skipped offset.

The central property is the one ``ports.Record`` promises: a reader that continues from the last
offset it saw never skips a record, even while many appenders commit concurrently. The naive
design (a ``bigserial`` offset) breaks it, and ``test_a_bigserial_offset_lets_a_reader_skip``
shows how, so that the concurrent test below is known to test something.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
import sqlalchemy as sa
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service import errors, ports
from service.adapters.postgres import embedded, schema
from service.adapters.postgres import table_log as tl
from tests import waiting

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


def kafka_partition(key: bytes | None, partitions: int) -> int:
    """The partition aiokafka's default partitioner (murmur2, as the Java client) gives ``key``."""
    assert key is not None
    everything = list(range(partitions))
    chosen: int = DefaultPartitioner()(key, everything, everything)
    return chosen


@pytest.fixture
async def log(pg_dsn: str) -> AsyncIterator[tl.PostgresTableLog]:
    log = tl.PostgresTableLog.from_dsn(pg_dsn)
    try:
        yield log
    finally:
        await log.close()


def _engine(dsn: str) -> AsyncEngine:
    return create_async_engine(sa.make_url(dsn).set(drivername="postgresql+asyncpg"))


# --- Appending and reading ------------------------------------------------------------------------


async def test_appended_records_read_back_in_order_with_their_positions(
    log: tl.PostgresTableLog,
) -> None:
    items = [(b"cluster-a", b"first"), (None, b"second"), (b"cluster-a", b"third")]

    appended = await log.append(items)

    assert [(r.partition, r.offset, r.key, r.value) for r in appended] == [
        (0, 0, b"cluster-a", b"first"),
        (0, 1, None, b"second"),
        (0, 2, b"cluster-a", b"third"),
    ]
    assert all(r.timestamp_ms is not None for r in appended)
    assert await log.read(0, 0, 100, max_wait_s=0) == appended
    assert await log.end_offset(0) == 3
    assert list(await log.partitions()) == [0]


async def test_offsets_are_dense_per_partition_and_keys_keep_their_partition(
    pg_dsn: str,
) -> None:
    log = tl.PostgresTableLog.from_dsn(pg_dsn, partitions=3)
    try:
        keys = [f"cluster-{n}".encode() for n in range(10)]
        appended: list[ports.Record] = []
        for batch in range(20):
            appended += await log.append([(key, b"%d" % batch) for key in keys[batch % 7 :]])

        for partition in await log.partitions():
            mine = [r for r in appended if r.partition == partition]
            assert [r.offset for r in mine] == list(range(len(mine)))
            assert await log.read(partition, 0, 10_000, max_wait_s=0) == mine
            assert await log.end_offset(partition) == len(mine)
        # Where Kafka's own producer would put each key: a cluster has one home in either log.
        assert all(r.partition == kafka_partition(r.key, 3) for r in appended)
    finally:
        await log.close()


async def test_reading_from_the_middle_returns_at_most_max_records(
    log: tl.PostgresTableLog,
) -> None:
    appended = await log.append([(None, b"%d" % n) for n in range(10)])

    assert await log.read(0, 4, 3, max_wait_s=0) == appended[4:7]
    assert await log.read(0, 8, 100, max_wait_s=0) == appended[8:]
    assert await log.read(0, 10, 100, max_wait_s=0) == []


async def test_an_empty_read_returns_nothing_once_its_wait_is_over(
    log: tl.PostgresTableLog,
) -> None:
    started = anyio.current_time()
    assert await log.read(0, 0, 10, max_wait_s=0) == []
    assert anyio.current_time() - started < 2.0

    started = anyio.current_time()
    assert await log.read(0, 0, 10, max_wait_s=0.3) == []
    assert 0.3 <= anyio.current_time() - started < 2.3


async def test_an_append_wakes_a_waiting_reader_at_once(pg_dsn: str) -> None:
    # A fallback poll of a minute: only the NOTIFY can wake the reader within the deadline.
    reader = tl.PostgresTableLog.from_dsn(pg_dsn, fallback_poll_s=60)
    writer = tl.PostgresTableLog.from_dsn(pg_dsn)
    received: list[ports.Record] = []

    async def read() -> None:
        received.extend(await reader.read(0, 0, 10, max_wait_s=60))

    async def reader_is_waiting() -> bool:
        # White-box: the reader is parked on its wake-up event, its query having found nothing.
        wakeup = reader._wakeups.get(0)
        return wakeup is not None and wakeup.statistics().tasks_waiting == 1

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                await waiting.until(
                    reader_is_waiting, timeout=10, what="the reader listening for appends"
                )
                woken_from = anyio.current_time()
                appended = await writer.append([(None, b"wake up")])
        assert received == list(appended)
        assert anyio.current_time() - woken_from < 2.0
    finally:
        await reader.close()
        await writer.close()


# --- The skipped-offset hazard -------------------------------------------------------------------


async def test_a_bigserial_offset_lets_a_reader_skip(pg_dsn: str) -> None:
    """The hazard the table log's design avoids, shown on the naive design."""
    engine = _engine(pg_dsn)
    try:
        async with engine.begin() as setup:
            await setup.execute(
                sa.text('CREATE TABLE naive_log ("offset" bigserial PRIMARY KEY, value bytea)')
            )

        async def read_from(connection: AsyncConnection, start: int) -> list[int]:
            rows = await connection.execute(
                sa.text('SELECT "offset" FROM naive_log WHERE "offset" >= :start ORDER BY 1'),
                {"start": start},
            )
            await connection.commit()
            return list(rows.scalars())

        async with engine.connect() as slow, engine.connect() as fast, engine.connect() as reader:
            await slow.execute(sa.text("INSERT INTO naive_log (value) VALUES ('slow')"))  # 1
            await fast.execute(sa.text("INSERT INTO naive_log (value) VALUES ('fast')"))  # 2
            await fast.commit()
            seen = await read_from(reader, 1)
            next_offset = seen[-1] + 1
            await slow.commit()
            seen += await read_from(reader, next_offset)
            everything = await read_from(reader, 0)

        assert seen == [2]
        assert everything == [1, 2]  # offset 1 was committed, and the reader will never see it
    finally:
        await engine.dispose()


async def test_an_appender_waits_for_the_uncommitted_append_before_it(
    pg_dsn: str, log: tl.PostgresTableLog
) -> None:
    """The same race on the table log: the later append cannot commit first."""
    await log.partitions()
    engine = _engine(pg_dsn)
    head, record = schema.log_head, schema.log_record
    try:
        async with engine.connect() as slow, engine.connect() as observer:

            async def appender_blocked_on_a_lock() -> bool:
                blocked = await observer.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
                await observer.commit()
                return blocked == 1

            # An appender half-way through: offset 0 reserved and written, not yet committed.
            await slow.execute(sa.update(head).where(head.c.partition == 0).values(next_offset=1))
            await slow.execute(
                sa.insert(record).values(
                    partition=0, offset=0, value=b"slow", appended_at=sa.func.now()
                )
            )
            fast: list[ports.Record] = []

            async def append_fast() -> None:
                fast.extend(await log.append([(None, b"fast")]))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(append_fast)
                    await waiting.until(
                        appender_blocked_on_a_lock,
                        timeout=10,
                        what="the second appender blocked on the first one's lock",
                    )
                    assert await log.read(0, 0, 10, max_wait_s=0) == []
                    await slow.commit()

        assert [r.offset for r in fast] == [1]
        assert [r.value for r in await log.read(0, 0, 10, max_wait_s=0)] == [b"slow", b"fast"]
    finally:
        await engine.dispose()


async def test_concurrent_appenders_never_make_a_tailing_reader_skip(pg_dsn: str) -> None:
    # Each appender and reader has its own engine, as separate processes would. With a bigserial
    # offset (see above) the readers would see offsets out of commit order and miss some.
    appenders, appends_each, partitions = 8, 200, 2
    appended: list[ports.Record] = []
    read: dict[int, list[ports.Record]] = {p: [] for p in range(partitions)}
    appenders_done = anyio.Event()

    async def append(number: int) -> None:
        rng = random.Random(number)
        log = tl.PostgresTableLog.from_dsn(pg_dsn, partitions=partitions, pool_size=1)
        try:
            for n in range(appends_each):
                batch = [
                    (b"cluster-%d" % rng.randrange(8), b"%d/%d/%d" % (number, n, i))
                    for i in range(rng.randint(1, 5))
                ]
                appended.extend(await log.append(batch))
        finally:
            await log.close()

    async def tail(partition: int) -> None:
        log = tl.PostgresTableLog.from_dsn(pg_dsn, partitions=partitions, pool_size=1)
        next_offset = 0
        try:
            while True:
                drained = appenders_done.is_set()
                records = await log.read(partition, next_offset, 50, max_wait_s=0.5)
                read[partition] += records
                if records:
                    next_offset = records[-1].offset + 1
                elif drained:
                    return
        finally:
            await log.close()

    with anyio.fail_after(240):
        async with anyio.create_task_group() as everyone:
            for partition in range(partitions):
                everyone.start_soon(tail, partition)
            async with anyio.create_task_group() as writers:
                for number in range(appenders):
                    writers.start_soon(append, number)
            appenders_done.set()

    for partition in range(partitions):
        offsets = [r.offset for r in read[partition]]
        assert offsets == list(range(len(offsets))), f"partition {partition} skipped offsets"
        mine = sorted((r for r in appended if r.partition == partition), key=lambda r: r.offset)
        assert mine == read[partition]
    assert len(appended) == sum(len(records) for records in read.values())
    assert all(read.values()), "every partition got records"


# --- Failure -------------------------------------------------------------------------------------


async def test_acknowledged_appends_survive_a_killed_server(
    pg_server: embedded.EmbeddedPostgres, pg_dsn: str, log: tl.PostgresTableLog
) -> None:
    appended = await log.append([(None, b"%d" % n) for n in range(50)])
    assert await log.read(0, 0, 100, max_wait_s=0.01) == appended  # and now listens

    await anyio.to_thread.run_sync(pg_server.kill)
    await anyio.to_thread.run_sync(pg_server.start)

    # The connections opened before the crash are dead. Calls that meet one fail with a
    # TableLogError and discard it; the same log object then works again.
    async def read_everything() -> Sequence[ports.Record]:
        for _ in range(3):
            with contextlib.suppress(errors.TableLogError):
                return await log.read(0, 0, 100, max_wait_s=0.01)
        return await log.read(0, 0, 100, max_wait_s=0.01)

    assert await read_everything() == appended
    assert [r.offset for r in await log.append([(None, b"after")])] == [50]


async def test_a_log_opened_with_another_partition_count_is_refused(pg_dsn: str) -> None:
    one = tl.PostgresTableLog.from_dsn(pg_dsn, partitions=1)
    two = tl.PostgresTableLog.from_dsn(pg_dsn, partitions=2)
    try:
        await one.append([(b"key", b"value")])
        # As the Kafka adapter refuses a topic of another size: clusters would change partition.
        with pytest.raises(errors.ConfigurationError, match="1 partitions but 2 are configured"):
            await two.partitions()
        with pytest.raises(errors.ConfigurationError, match="move clusters"):
            await two.append([(b"key", b"value")])
    finally:
        await one.close()
        await two.close()


async def test_driver_errors_reach_callers_as_table_log_errors() -> None:
    nowhere = tl.PostgresTableLog.from_dsn(
        f"postgresql://postgres@127.0.0.1:{embedded.free_port()}/postgres"
    )
    try:
        with pytest.raises(errors.TableLogError) as raised:
            await nowhere.append([(None, b"value")])
        assert raised.value.__cause__ is not None
        with pytest.raises(errors.TableLogError, match="no partition 1"):
            await nowhere.read(1, 0, 10, max_wait_s=0)
    finally:
        await nowhere.close()
