"""Several partitions with several clusters each: every cluster applied on its home partition.

The allocator runs in-process here, one ``PartitionAllocator`` per partition sharing one
``Metrics`` as ``ipledger run`` wires them, on the PostgreSQL table log and on the Kafka log
(with a consumer group, as ``ipledger run`` has), each with 2 and 4 partitions. Eight clusters
are chosen so that every partition is the home of at least one (asserted, not assumed). Events go
in through the real adapters, keyed by cluster. The oracle is ``simulate``: the pure core over
the same records in memory.

A producer with another partitioner is played by writing a record straight onto another
partition: a raw ``INSERT`` into the table log (reserving its offset as the table log does), an
aiokafka producer with an explicit ``partition=``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from service import allocator, errors, metrics, ports
from service.adapters import memory
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.domain import document, events, partitioning
from tests import waiting
from tests.e2e.conftest import assert_projection_matches, simulate
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

# Homes with 2 partitions: 0 east alpha beta north, 1 default west lab edge; with 4: 0 alpha
# beta, 1 west edge, 2 east north, 3 default lab.
CLUSTERS = ("default", "east", "west", "alpha", "beta", "north", "lab", "edge")
TIMEOUT_S = 90.0


@dataclass
class Partitioned:
    """A log of ``partitions`` partitions, and a way to put a record on any partition."""

    log: ports.EventLog
    log_name: str
    partitions: int
    raw_append: Callable[[int, bytes, bytes], Awaitable[int]]


@pytest.fixture(
    params=[
        pytest.param(("table", 2), id="table-2"),
        pytest.param(("table", 4), id="table-4"),
        pytest.param(("kafka", 2), id="kafka-2", marks=pytest.mark.kafka),
        pytest.param(("kafka", 4), id="kafka-4", marks=pytest.mark.kafka),
    ]
)
async def partitioned(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[Partitioned]:
    kind, partitions = request.param
    if kind == "table":
        log = table_log.PostgresTableLog.from_dsn(pg_dsn, partitions=partitions)

        async def insert(partition: int, key: bytes, value: bytes) -> int:
            # What a producer writing SQL of its own would do: reserve the offset as the table
            # log does, insert, notify the readers.
            db = await asyncpg.connect(pg_dsn)
            try:
                async with db.transaction():
                    offset: int = await db.fetchval(
                        "UPDATE log_head SET next_offset = next_offset + 1 "
                        "WHERE partition = $1 RETURNING next_offset - 1",
                        partition,
                    )
                    await db.execute(
                        'INSERT INTO log_record (partition, "offset", key, value, appended_at) '
                        "VALUES ($1, $2, $3, $4, clock_timestamp())",
                        partition,
                        offset,
                        key,
                        value,
                    )
                    await db.execute(
                        "SELECT pg_notify($1, $2)", table_log.DEFAULT_CHANNEL, str(partition)
                    )
            finally:
                await db.close()
            return offset

        try:
            yield Partitioned(log, "table", partitions, insert)
        finally:
            await log.close()
        return
    broker = request.getfixturevalue("kafka_broker")
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(broker.bootstrap, topic, partitions)
    kafka = await kafka_log.KafkaEventLog.open(
        broker.bootstrap, topic, group_id=f"ipledger-test-{uuid.uuid4().hex[:8]}"
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()

    async def produce(partition: int, key: bytes, value: bytes) -> int:
        sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
        offset: int = sent.offset
        return offset

    try:
        yield Partitioned(kafka, f"kafka:{topic}", partitions, produce)
    finally:
        await producer.stop()
        await kafka.close()


def open_projection(dsn: str, log_name: str) -> pg_projection.PostgresProjection:
    return pg_projection.PostgresProjection.from_dsn(
        dsn, log_name=log_name, holder="test", lease_ttl_s=6.0
    )


async def append(log: ports.EventLog, records: Sequence[bytes]) -> list[ports.Record]:
    """Append as a well-behaved producer does: keyed by cluster, in chunks."""
    appended: list[ports.Record] = []
    for start in range(0, len(records), 500):
        chunk = records[start : start + 500]
        appended += await log.append([(key_of(record), record) for record in chunk])
    return appended


def by_partition(appended: Sequence[ports.Record], partitions: int) -> dict[int, list[bytes]]:
    """Each partition's record values in offset order."""
    ordered = sorted(appended, key=lambda record: (record.partition, record.offset))
    grouped: dict[int, list[bytes]] = {partition: [] for partition in range(partitions)}
    for record in ordered:
        assert record.offset == len(grouped[record.partition])
        grouped[record.partition].append(record.value)
    return grouped


async def run_partitions(
    log: ports.EventLog,
    projection: pg_projection.PostgresProjection,
    ends: Mapping[int, int],
    counters: allocator.Metrics,
) -> None:
    """One allocator per partition, as ``ipledger run``; stopped once all reached ``ends``."""
    stop = anyio.Event()
    loop = allocator.LoopSettings(batch_max_records=300)
    async with anyio.create_task_group() as tasks:
        for partition in ends:
            worker = allocator.PartitionAllocator(
                log, projection, partition, settings=loop, metrics=counters
            )
            tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: all(counters.next_offset.get(p, -1) >= end for p, end in ends.items()),
            timeout=TIMEOUT_S,
            what=lambda: f"the partitions' ends {dict(ends)} (at {dict(counters.next_offset)})",
            interval=0.02,
        )
        stop.set()


@pytest.fixture
async def reader(pg_dsn: str) -> AsyncIterator[ports.ProjectionReader]:
    """The read side of the test's database (it connects on first use)."""
    opened = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        yield opened
    finally:
        await opened.close()


def test_the_clusters_cover_every_partition() -> None:
    for partitions in (2, 4):
        homes = {partitioning.home_partition(name, partitions) for name in CLUSTERS}
        assert homes == set(range(partitions))


async def test_every_cluster_is_applied_on_its_home_partition_as_simulate_applies_it(
    partitioned: Partitioned, pg_dsn: str, reader: ports.ProjectionReader
) -> None:
    partitions = partitioned.partitions
    records = mixed_stream(2400, seed=31, clusters=CLUSTERS)
    appended = await append(partitioned.log, records)
    # The adapter placed every record on its cluster's home partition.
    assert all(
        record.partition == partitioning.partition_for(record.key, partitions)
        for record in appended
    )
    per_partition = by_partition(appended, partitions)
    assert all(per_partition.values()), "a partition without records tests nothing"
    projection = open_projection(pg_dsn, partitioned.log_name)
    counters = allocator.Metrics()
    try:
        await run_partitions(
            partitioned.log,
            projection,
            {p: len(mine) for p, mine in per_partition.items()},
            counters,
        )
    finally:
        await projection.close()

    await assert_projection_matches(pg_dsn, partitioned.log_name, per_partition)
    # Each partition's decisions are simulate's, in offset order.
    for partition, mine in per_partition.items():
        decided = await reader.decisions(partition)
        _, decisions = simulate(mine)
        assert [decision.body for decision in decided] == [
            events.encode_decision(decision) for decision in decisions
        ], f"partition {partition}"
    homes = {cluster.name: cluster.partition for cluster in await reader.clusters()}
    assert homes == {name: partitioning.home_partition(name, partitions) for name in CLUSTERS}
    malformed = sum(isinstance(events.decode(record), events.DecodeFailure) for record in records)
    assert counters.records_rejected == malformed > 0
    assert counters.records_wrong_partition == 0


async def test_a_record_off_its_clusters_home_partition_is_refused_and_changes_nothing(
    partitioned: Partitioned, pg_dsn: str, reader: ports.ProjectionReader
) -> None:
    partitions = partitioned.partitions
    good = mixed_stream(600, seed=32, clusters=CLUSTERS)
    appended = await append(partitioned.log, good)
    home = partitioning.home_partition("east", partitions)
    wrong = (home + 1) % partitions
    intruders = [
        # Would add a node to "east" in the wrong partition's writer, and give it a pool there.
        b'{"type":"node.added","id":"intruder-1","cluster":"east","node":"intruder"}',
        b'{"type":"pool.configured","id":"intruder-2","cluster":"east",'
        b'"clusterPoolIPv4PodCIDRList":["172.16.0.0/16"],"clusterPoolIPv4MaskSize":24}',
    ]
    placed = [await partitioned.raw_append(wrong, b"east", value) for value in intruders]
    # "east" goes on at home after the refused records.
    later = [b'{"type":"node.added","id":"after-1","cluster":"east","node":"after"}']
    appended += await append(partitioned.log, later)
    per_partition = by_partition(appended, partitions)
    ends = {p: len(mine) for p, mine in per_partition.items()}
    ends[wrong] += len(intruders)
    assert placed == list(range(ends[wrong] - len(intruders), ends[wrong]))
    projection = open_projection(pg_dsn, partitioned.log_name)
    counters = allocator.Metrics()
    try:
        await run_partitions(partitioned.log, projection, ends, counters)
        loaded = await projection.load()
    finally:
        await projection.close()

    reason = (
        f"cluster 'east' belongs to partition {home} of {partitions} (murmur2 of the key); "
        f"this record is on partition {wrong}: the producer must use Kafka's default (murmur2) "
        "partitioner"
    )
    decided = [d for d in await reader.decisions(wrong) if d.offset in placed]
    assert [(d.offset, d.cluster, d.event_id, d.error) for d in decided] == [
        (placed[0], "east", "intruder-1", reason),
        (placed[1], "east", "intruder-2", reason),
    ]
    kept = [r for r in await reader.rejections(wrong) if r.offset in placed]
    assert [(r.offset, r.reason, r.key, r.raw) for r in kept] == [
        (offset, reason, b"east", value) for offset, value in zip(placed, intruders, strict=True)
    ]
    assert counters.records_wrong_partition == len(intruders)
    exported = metrics.render(metrics.allocator_registry(counters))
    assert "ipledger_records_wrong_partition_total 2.0\n" in exported
    malformed = sum(isinstance(events.decode(record), events.DecodeFailure) for record in good)
    assert counters.records_rejected == malformed + len(intruders)
    # Every cluster, "east" included, is what the well-placed records alone make of it; it
    # lives once, on its home partition, without the intruder's node or pool.
    oracle, _ = simulate([record for p in sorted(per_partition) for record in per_partition[p]])
    assert document.state_document(loaded.state) == document.state_document(oracle)
    assert "intruder" not in loaded.state.clusters["east"].nodes
    assert "after" in loaded.state.clusters["east"].nodes
    (east,) = [cluster for cluster in await reader.clusters() if cluster.name == "east"]
    assert east.partition == home
    for partition, end in ends.items():
        offsets = [decision.offset for decision in await reader.decisions(partition)]
        assert offsets == list(range(end)), f"partition {partition}"


async def test_an_allocator_refuses_a_log_with_fewer_partitions_than_the_projection_consumed(
    pg_dsn: str,
) -> None:
    four = table_log.PostgresTableLog.from_dsn(pg_dsn, partitions=4)
    projection = open_projection(pg_dsn, "table")
    try:
        appended = await append(four, mixed_stream(400, seed=33, clusters=CLUSTERS))
        ends = {p: len(mine) for p, mine in by_partition(appended, 4).items()}
        await run_partitions(four, projection, ends, allocator.Metrics())
        assert set(await projection.consumed_offsets()) == {0, 1, 2, 3}

        # Another log of 2 partitions fed to the same projection (the table log itself refuses
        # to shrink, so the projection's check is shown with a log that knows no better).
        two = memory.MemoryEventLog(2)
        with pytest.raises(errors.ConfigurationError, match="cannot change"):
            await allocator.check_partition_count(two, projection)
        worker = allocator.PartitionAllocator(two, projection, 0)
        with (
            anyio.fail_after(TIMEOUT_S),
            pytest.raises(errors.ConfigurationError, match="at least 4"),
        ):
            await worker.run(anyio.Event())
        assert worker.metrics.failures == 0, "a changed partition count is not retried"
    finally:
        await projection.close()
        await four.close()


async def test_an_allocator_refuses_clusters_whose_home_moved_with_more_partitions(
    pg_dsn: str,
) -> None:
    two = table_log.PostgresTableLog.from_dsn(pg_dsn, partitions=2)
    projection = open_projection(pg_dsn, "table")
    try:
        appended = await append(two, mixed_stream(400, seed=34, clusters=CLUSTERS))
        ends = {p: len(mine) for p, mine in by_partition(appended, 2).items()}
        await run_partitions(two, projection, ends, allocator.Metrics())

        # "default" was built on partition 1 of 2; with 4 partitions its home is 3.
        assert partitioning.home_partition("default", 2) == 1
        assert partitioning.home_partition("default", 4) == 3
        four = memory.MemoryEventLog(4)
        assert await allocator.check_partition_count(four, projection) == 4
        worker = allocator.PartitionAllocator(four, projection, 1)
        with (
            anyio.fail_after(TIMEOUT_S),
            pytest.raises(errors.ConfigurationError, match="partition count changed"),
        ):
            await worker.run(anyio.Event())
    finally:
        await projection.close()
        await two.close()
