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
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service import allocator, ports
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.audit import replay
from service.domain import document, events
from tests import waiting
from tests.harness import kafka as kafka_harness
from tests.harness.kafka import KafkaBroker
from tests.raw_log import insert_raw, oracle
from tests.streams import key_of, mixed_stream

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


async def run_allocator(log: ports.EventLog, dsn: str, end: int, log_name: str = "table") -> None:
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name=log_name, holder="h")
    worker = allocator.PartitionAllocator(log, projection, 0)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            # A failure retried is already the stall the promise excludes: stop waiting then.
            await waiting.until(
                lambda: worker.metrics.next_offset.get(0, -1) >= end or worker.metrics.failures > 0,
                timeout=DEADLINE_S,
                what=lambda: f"offset {end} committed",
                interval=0.02,
            )
            stop.set()
    finally:
        await projection.close()
    assert worker.metrics.failures == 0, "the allocator failed and retried, see the log"


async def assert_live_equals_simulate(
    dsn: str, records: Sequence[bytes], log_name: str = "table"
) -> None:
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
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name=log_name, holder="r")
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
        node_added("n1", "worker-1", "9999-12-31T23:59:59.999998999Z"),
        node_added("n2", "worker-2", "0001-01-01T00:00:00.000001Z"),
        ip_requested("r1", "worker-1", "ns/a", "9999-12-31T23:59:59+00:00"),
        ip_requested("r2", "worker-2", "ns/b", "0001-01-01T01:00:00.000001+01:00"),
    ]
    await log.append([(b"default", r) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)


# --- Kafka records no producer of the contract writes, from a plain client ---------------------


async def produce_raw(
    bootstrap: str,
    topic: str,
    items: Sequence[tuple[bytes | None, bytes | None, int | None]],
) -> None:
    """``(key, value, timestamp_ms)`` records on partition 0, as any client with write access."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, timestamp_ms in items:
            await producer.send_and_wait(
                topic, value=value, key=key, partition=0, timestamp_ms=timestamp_ms
            )
    finally:
        await producer.stop()


async def run_kafka_allocator(bootstrap: str, topic: str, dsn: str, end: int) -> None:
    event_log = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    try:
        await run_allocator(event_log, dsn, end, log_name=topic)
    finally:
        await event_log.close()


@pytest.mark.kafka
async def test_a_kafka_tombstone_is_rejected_not_retried_forever(
    kafka_broker: KafkaBroker, pg_dsn: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    good = [POOL, node_added("n1", "worker-1", None), ip_requested("r1", "worker-1", "ns/a", None)]
    await produce_raw(
        kafka_broker.bootstrap,
        topic,
        [
            (b"default", good[0], None),
            (b"default", None, None),  # the tombstone
            (b"default", None, None),  # and another
            (b"default", good[1], None),
            (b"default", good[2], None),
        ],
    )
    await run_kafka_allocator(kafka_broker.bootstrap, topic, pg_dsn, 5)
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        decided = await reader.decisions(0)
        rejected = {r.offset for r in await reader.rejections(0)}
    finally:
        await reader.close()
    assert [d.offset for d in decided] == [0, 1, 2, 3, 4]
    assert rejected == {1, 2}
    assert [d.error for d in decided].count(None) == 3


# Kafka keeps the producer's CreateTime unless the topic says LogAppendTime, and by default
# accepts any time in the past (log.message.timestamp.before.max.ms is unbounded).
HOSTILE_TIMESTAMPS = [
    pytest.param(
        -62135596800001,  # one ms before 0001-01-01T00:00:00Z
        id="before-year-1",
    ),
    pytest.param(
        -62135596800000,  # 0001-01-01T00:00:00Z: stored as -infinity, read back naive
        id="first-millisecond",
    ),
    pytest.param(-2, id="before-1970"),
    pytest.param(0, id="the-epoch"),
]


@pytest.mark.kafka
@pytest.mark.parametrize("timestamp_ms", HOSTILE_TIMESTAMPS)
async def test_a_hostile_kafka_timestamp_decides_alike_live_and_in_simulate(
    kafka_broker: KafkaBroker, pg_dsn: str, timestamp_ms: int
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        node_added("n2", "worker-2", None),
    ]
    try:
        await produce_raw(
            kafka_broker.bootstrap,
            topic,
            [(b"default", r, timestamp_ms if n else None) for n, r in enumerate(records)],
        )
    except KafkaError as exc:  # the broker refusing the time is as good: nothing to decide
        pytest.skip(f"the broker refused CreateTime {timestamp_ms}: {exc!r}")
    await run_kafka_allocator(kafka_broker.bootstrap, topic, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records, log_name=topic)
    await assert_verifies(kafka_broker.bootstrap, topic, pg_dsn, len(records))


# --- the table log: its rows written by any client with INSERT on log_record ------------------


@pytest.mark.parametrize(
    "appended_at",
    [
        pytest.param("infinity", id="infinity"),
        pytest.param("-infinity", id="minus-infinity"),
        pytest.param("0100-01-01 00:00:00+00 BC", id="before-year-1"),
        pytest.param("294000-01-01 00:00:00+00", id="after-year-9999"),
        pytest.param("0001-01-01 00:00:00+00", id="first-microsecond"),
    ],
)
async def test_a_hostile_table_log_time_decides_alike_live_and_in_simulate(
    log: table_log.PostgresTableLog, pg_dsn: str, appended_at: str
) -> None:
    await log.partitions()  # creates the log_head row the raw inserts reserve offsets in
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        node_added("n2", "worker-2", None),
    ]
    now = "2026-12-02 16:00:00+00"
    await insert_raw(
        pg_dsn, [(b"default", r, appended_at if n else now) for n, r in enumerate(records)]
    )
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)
    report = await verify(log, pg_dsn)
    assert report.divergence is None, report.divergence


# --- replay --verify after the attacks ----------------------------------------------------------


async def verify(event_log: ports.EventLog, dsn: str) -> replay.PartitionReport:
    live = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        return await replay.replay_partition(event_log, live, 0, 1)
    finally:
        await live.close()


async def assert_verifies(bootstrap: str, topic: str, dsn: str, records: int | None) -> None:
    """``replay --verify`` finds nothing; ``records``, when given, is how many it replayed."""
    event_log = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    try:
        report = await verify(event_log, dsn)
    finally:
        await event_log.close()
    assert records is None or report.records == records
    assert report.divergence is None, report.divergence


@pytest.mark.kafka
async def test_records_without_a_time_replay_to_the_same_rows(
    kafka_broker: KafkaBroker, pg_dsn: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        ip_requested("r2", "worker-1", "ns/b", None),
    ]
    await produce_raw(kafka_broker.bootstrap, topic, [(b"default", r, -1) for r in records])
    await run_kafka_allocator(kafka_broker.bootstrap, topic, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records, log_name=topic)
    await assert_verifies(kafka_broker.bootstrap, topic, pg_dsn, len(records))


# The last microsecond datetime can hold is the one PostgreSQL's driver spells as 'infinity'
# (asyncpg's and the writer's timestamptz encoders both map it), and 'infinity' is read back as a
# naive datetime.max: the time a producer wrote is not the time read back.
LAST_MICROSECOND = "9999-12-31T23:59:59.999999Z"
FIRST_MICROSECOND = "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(LAST_MICROSECOND, id="last-microsecond"),
        pytest.param(FIRST_MICROSECOND, id="first-microsecond"),
        pytest.param("9999-12-31T23:59:59.999998Z", id="one-before-the-last"),
        pytest.param("0001-01-01T00:00:00.000001Z", id="one-after-the-first"),
    ],
)
async def test_times_at_the_ends_of_the_range_replay_to_the_same_rows(
    log: table_log.PostgresTableLog, pg_dsn: str, when: str
) -> None:
    records = [
        POOL,
        node_added("n1", "worker-1", when),
        ip_requested("r1", "worker-1", "ns/a", when),
        ip_requested("r2", "worker-1", "ns/b", None),
        json.dumps(
            {"type": "ip.released", "id": "x1", "node": "worker-1", "owner": "ns/a", "time": when}
        ).encode(),
        node_added("n2", "worker-2", when),
        json.dumps({"type": "node.deleted", "id": "d2", "node": "worker-2", "time": when}).encode(),
    ]
    await log.append([(b"default", r) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)
    report = await verify(log, pg_dsn)
    assert report.records == len(records)
    assert report.divergence is None, report.divergence


# --- Kafka transactions: a transaction's marker takes an offset no consumer sees ----------------


async def transaction(bootstrap: str, topic: str, records: Sequence[bytes]) -> None:
    """``records`` in one committed transaction; returns once its commit marker is in the log."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
    await producer.start()
    try:
        async with producer.transaction():
            for record in records:
                await producer.send(topic, value=record, key=b"default", partition=0)
    finally:
        await producer.stop()
    event_log = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    try:
        # The coordinator writes the marker after the commit returns: one offset, no record.
        await waiting.until(
            lambda: _end_beyond(event_log, len(records)),
            timeout=DEADLINE_S,
            what="the transaction's commit marker",
        )
    finally:
        await event_log.close()


async def _end_beyond(event_log: kafka_log.KafkaEventLog, records: int) -> bool:
    return await event_log.end_offset(0) > records


@pytest.mark.kafka
async def test_a_transaction_marker_between_two_reads_does_not_stop_the_partition(
    kafka_broker: KafkaBroker, pg_dsn: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        ip_requested("r2", "worker-1", "ns/b", None),
    ]
    await transaction(kafka_broker.bootstrap, topic, records[:2])  # offsets 0, 1; marker at 2
    event_log = await kafka_log.KafkaEventLog.open(kafka_broker.bootstrap, topic)
    projection = pg_projection.PostgresProjection.from_dsn(pg_dsn, log_name=topic, holder="h")
    worker = allocator.PartitionAllocator(event_log, projection, 0)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            await waiting.until(
                lambda: worker.metrics.records_applied >= 2 or worker.metrics.failures > 0,
                timeout=DEADLINE_S,
                what=lambda: "the transaction's records applied",
                interval=0.02,
            )
            # Read from offset 2 on, where the marker is: the next records are at 3 and 4.
            await produce_raw(
                kafka_broker.bootstrap, topic, [(b"default", r, None) for r in records[2:]]
            )
            await waiting.until(
                lambda: (
                    worker.metrics.records_applied >= len(records) or worker.metrics.failures > 0
                ),
                timeout=DEADLINE_S,
                what=lambda: f"{len(records)} records applied",
                interval=0.02,
            )
            stop.set()
    finally:
        await projection.close()
        await event_log.close()
    assert worker.metrics.failures == 0, "the allocator failed and retried, see the log"
    await assert_applied_as_simulate(pg_dsn, records, topic)


@pytest.mark.kafka
async def test_a_transaction_marker_inside_a_read_replays_and_verifies(
    kafka_broker: KafkaBroker, pg_dsn: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        ip_requested("r2", "worker-1", "ns/b", None),
    ]
    await transaction(kafka_broker.bootstrap, topic, records[:2])
    await produce_raw(kafka_broker.bootstrap, topic, [(b"default", r, None) for r in records[2:]])
    event_log = await kafka_log.KafkaEventLog.open(kafka_broker.bootstrap, topic)
    try:
        # All four in one read, the marker's offset a gap inside it: applied, one decision each.
        await run_allocator(event_log, pg_dsn, 5, log_name=topic)
    finally:
        await event_log.close()
    await assert_applied_as_simulate(pg_dsn, records, topic)
    await assert_verifies(kafka_broker.bootstrap, topic, pg_dsn, None)  # the marker's or not


async def assert_applied_as_simulate(dsn: str, records: Sequence[bytes], log_name: str) -> None:
    """Every record decided as the core decides it, in order, and the same state digest; the
    marker's offset may have a decision of its own (a rejected one) or none."""
    expected_state, expected = oracle(records)
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        decided = await reader.decisions(0)
    finally:
        await reader.close()
    applied = [json.loads(d.body) for d in decided if d.error is None]
    assert applied == [json.loads(events.encode_decision(d)) for d in expected]
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name=log_name, holder="r")
    try:
        loaded = await projection.load()
    finally:
        await projection.close()
    assert document.digest(loaded.state) == document.digest(expected_state)


async def test_a_50_mb_record_in_the_table_log_is_rejected_and_replays(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    """Past ``ipledger append`` (which refuses it at decode), straight into ``log_record``."""
    await log.partitions()
    huge = b'{"type":"node.added","id":"huge","node":"worker-9","pad":"' + b"x" * (50 << 20) + b'"}'
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        huge,
        b"\x00" * 1024,
        ip_requested("r1", "worker-1", "ns/a", None),
    ]
    now = "2026-12-02 16:00:00+00"
    await insert_raw(pg_dsn, [(b"default", r, now) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        rejected = {r.offset: r for r in await reader.rejections(0)}
    finally:
        await reader.close()
    assert sorted(rejected) == [2, 3]
    assert bytes(rejected[2].raw) == huge  # kept raw, whole
    report = await verify(log, pg_dsn)
    assert report.records == len(records)
    assert report.divergence is None, report.divergence


async def test_texts_of_unusual_characters_decide_alike_live_and_in_simulate(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    """Noncharacters, the last code point, a BOM, bidi overrides and C1's neighbours in ids and
    owners: the contract takes them (no control characters), PostgreSQL must store them."""
    texts = ["\uffff", "\ufffe", "\U0010ffff", "\ufeff", "\u202e", "\u00a0", "\u2028", "é"]
    records = [POOL, node_added("n1", "worker-1", None)]
    for n, text in enumerate(texts):
        records.append(ip_requested(f"id-{text}-{n}", "worker-1", f"ns/{text}", None))
        records.append(
            json.dumps(
                {
                    "type": "ip.released",
                    "id": f"rel{text}",
                    "node": "worker-1",
                    "owner": f"ns/{text}",
                },
                ensure_ascii=n % 2 == 0,
            ).encode()
        )
    await log.append([(b"default", r) for r in records])
    await run_allocator(log, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records)
    report = await verify(log, pg_dsn)
    assert report.divergence is None, report.divergence


# --- compressed batches: any Kafka client may compress, the allocator must read them all ---------


def console_produce(bootstrap: str, topic: str, codec: str, lines: Sequence[bytes]) -> None:
    """``key|value`` lines through Kafka's own console producer, compressed with ``codec``."""
    java, classpath = kafka_harness.find_java(), kafka_harness.read_classpath()
    assert java and classpath, "the broker fixture started, so both exist"
    result = subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--compression-codec",
            codec,
            "--reader-property",
            "parse.key=true",
            "--reader-property",
            "key.separator=|",
            "--producer-property",
            "linger.ms=50",
        ],
        input=b"\n".join(b"default|" + line for line in lines) + b"\n",
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# aiokafka reads snappy, lz4 and zstd batches only with cramjam, which pyproject.toml installs
# (aiokafka's extras of those names): without it every read of such a batch failed
# (UnsupportedCodecError, retried forever) and the partition stopped.
COMPRESSION_CODECS = ["gzip", "snappy", "lz4", "zstd"]


@pytest.mark.kafka
@pytest.mark.parametrize("codec", COMPRESSION_CODECS)
async def test_a_compressed_batch_is_read_and_decided_as_simulate_decides(
    kafka_broker: KafkaBroker, pg_dsn: str, codec: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    records = [
        POOL,
        node_added("n1", "worker-1", None),
        ip_requested("r1", "worker-1", "ns/a", None),
        ip_requested("r2", "worker-1", "ns/b", None),
    ]
    await anyio.to_thread.run_sync(console_produce, kafka_broker.bootstrap, topic, codec, records)
    await run_kafka_allocator(kafka_broker.bootstrap, topic, pg_dsn, len(records))
    await assert_live_equals_simulate(pg_dsn, records, log_name=topic)


# --- two allocators at once, configured differently, taking over from each other ---------------


async def test_two_allocators_configured_differently_decide_as_one(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    """One with the tree and 7-record batches, one without the tree and 500-record batches,
    both running on the same partition; the leader is stopped twice mid-stream. One decision
    per offset, the core's, and replay --verify passes."""
    records = mixed_stream(900, seed=21, clusters=("default",))
    settings = [
        allocator.LoopSettings(batch_max_records=7, lease_poll_s=0.05, renew_every_s=0.2),
        allocator.LoopSettings(
            batch_max_records=500, lease_poll_s=0.05, renew_every_s=0.2, tree=None
        ),
    ]
    projections = [
        pg_projection.PostgresProjection.from_dsn(
            pg_dsn, log_name="table", holder=f"a{n}", lease_ttl_s=1.0
        )
        for n in range(2)
    ]
    workers = [
        allocator.PartitionAllocator(log, projections[n], 0, settings=settings[n]) for n in range(2)
    ]
    stops = [anyio.Event(), anyio.Event()]
    every = list(workers)

    def committed() -> int:
        return max(w.metrics.next_offset.get(0, -1) for w in workers)

    try:
        async with anyio.create_task_group() as tasks:
            for worker, stop in zip(workers, stops, strict=True):
                tasks.start_soon(worker.run, stop)
            for part, end in ((0, 300), (300, 600), (600, 900)):
                await log.append([(key_of(r), r) for r in records[part:end]])
                await waiting.until(
                    lambda end=end: committed() >= end,
                    timeout=DEADLINE_S,
                    what=lambda end=end: f"offset {end} committed",
                )
                if end < 900:
                    # Stop whichever leads; a new one takes its place (the other takes over).
                    leader = next(n for n, w in enumerate(workers) if w.metrics.leader.get(0))
                    stops[leader].set()
                    stops[leader] = anyio.Event()
                    workers[leader] = allocator.PartitionAllocator(
                        log, projections[leader], 0, settings=settings[leader]
                    )
                    tasks.start_soon(workers[leader].run, stops[leader])
                    every.append(workers[leader])
            for stop in stops:
                stop.set()
    finally:
        for projection in projections:
            await projection.close()
    # Led three times at least: at the start and after each stop, by either configuration.
    # (A worker may be fenced: its replacement uses the same projection and so may take the
    # lease while the stopped one still finishes; the fence is what keeps that safe.)
    assert sum(w.metrics.takeovers for w in every) >= 3
    await assert_live_equals_simulate(pg_dsn, records)
    report = await verify(log, pg_dsn)
    assert report.records == len(records)
    assert report.divergence is None, report.divergence
