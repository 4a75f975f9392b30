"""Records the projection cannot store never stop a partition (real PostgreSQL, real logs).

Two kinds of input: records written straight into the log, past every producer-side check (a
raw INSERT into the table log's ``log_record``, a raw aiokafka producer on the events topic),
with NUL, control characters, lone surrogates and invalid UTF-8 in their strings; and records the
decoder accepts but the database refuses, made real by a CHECK constraint added to the test
database (``pod_ip.owner <> 'ns/poison'``), which drives the allocator's search for the refused
record inside a failed batch. In every case each offset gets exactly one decision within a
deadline, the refused records are rejected with the database's reason and kept raw, and the
projection equals ``simulate`` over the log without them: every other record applied once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from service import allocator, errors, ports
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.domain import document, events
from tests import fakes, waiting
from tests.harness.kafka import KafkaBroker
from tests.raw_log import insert_raw, oracle
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio

DEADLINE_S = 60.0
POISON_OWNER = "ns/poison"
CHECK_REASON = (
    'CheckViolationError: new row for relation "pod_ip" violates check constraint "test_poison"'
)
# Pool and node of a cluster of its own, so that its requests always get an address (the mixed
# stream's clusters fill up and delete nodes): a poison request then really reaches pod_ip.
EDGE_PRELUDE = [
    b'{"type":"pool.configured","id":"edge-pool","cluster":"edge",'
    b'"clusterPoolIPv4PodCIDRList":["10.9.0.0/16"],"clusterPoolIPv4MaskSize":24}',
    b'{"type":"node.added","id":"edge-node","cluster":"edge","node":"edge-1"}',
]


@pytest.fixture
async def log(pg_dsn: str) -> AsyncIterator[table_log.PostgresTableLog]:
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    await event_log.partitions()  # creates the log_head row the raw inserts reserve offsets in
    yield event_log
    await event_log.close()


def edge_request(event_id: str, owner: str) -> bytes:
    return json.dumps(
        {
            "type": "ip.requested",
            "id": event_id,
            "cluster": "edge",
            "node": "edge-1",
            "owner": owner,
        }
    ).encode()


def poison(index: int) -> bytes:
    return edge_request(f"poison-{index}", POISON_OWNER)


def stream_with(poison_offsets: Sequence[int], total: int, seed: int = 5) -> list[bytes]:
    """``total`` records of three clusters, poison records at exactly ``poison_offsets``."""
    records = mixed_stream(total, seed=seed, clusters=("default", "east"))
    records[1:1] = EDGE_PRELUDE
    # Good requests of the poison's own cluster all along.
    for n, at in enumerate(range(len(records) - 1, 3, -37)):
        records.insert(at, edge_request(f"edge-{n}", f"ns/edge-{n}"))
    del records[total - len(poison_offsets) :]
    for n, offset in enumerate(sorted(poison_offsets)):
        records.insert(offset, poison(n))
    assert len(records) == total
    return records


def open_projection(dsn: str, log_name: str = "table") -> pg_projection.PostgresProjection:
    return pg_projection.PostgresProjection.from_dsn(dsn, log_name=log_name, holder="test")


async def add_poison_check(dsn: str) -> None:
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(
            f"ALTER TABLE pod_ip ADD CONSTRAINT test_poison CHECK (owner <> '{POISON_OWNER}')"
        )
    finally:
        await db.close()


async def wait_for(worker: allocator.PartitionAllocator, end: int) -> None:
    def position() -> int:
        return worker.metrics.next_offset.get(worker.partition, -1)

    await waiting.until(
        lambda: position() >= end,
        timeout=DEADLINE_S,
        what=lambda: f"offset {end} committed (at {position()})",
        interval=0.02,
    )


async def serve_until(
    worker: allocator.PartitionAllocator,
    *stages: tuple[int, Callable[[], Awaitable[object]] | None],
) -> None:
    """Run the allocator through ``(offset, then)`` stages: wait for each offset, run ``then``."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        for end, then in stages:
            await wait_for(worker, end)
            if then is not None:
                await then()
        stop.set()


async def decisions_and_rejections(
    dsn: str,
) -> tuple[dict[int, ports.CommittedDecision], dict[int, ports.Rejection]]:
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        decided = await reader.decisions(0)
        rejected = await reader.rejections(0)
    finally:
        await reader.close()
    offsets = [decision.offset for decision in decided]
    assert offsets == list(range(len(offsets))), "one decision per offset, none missing"
    return {d.offset: d for d in decided}, {r.offset: r for r in rejected}


async def assert_matches_oracle(
    dsn: str, records: Sequence[bytes], refused: set[int], log_name: str = "table"
) -> None:
    """Projection and decisions equal the pure core's over the log without ``refused``."""
    kept = [record for offset, record in enumerate(records) if offset not in refused]
    expected_state, expected = oracle(kept)
    projection = open_projection(dsn, log_name)
    try:
        loaded = await projection.load()
    finally:
        await projection.close()
    assert document.state_document(loaded.state) == document.state_document(expected_state)
    assert document.digest(loaded.state) == document.digest(expected_state)
    decided, _ = await decisions_and_rejections(dsn)
    assert len(decided) == len(records)
    kept_offsets = [offset for offset in range(len(records)) if offset not in refused]
    for offset, decision in zip(kept_offsets, expected, strict=True):
        assert json.loads(decided[offset].body) == json.loads(events.encode_decision(decision)), (
            f"offset {offset}"
        )


def assert_unstorable(
    decision: ports.CommittedDecision,
    rejection: ports.Rejection,
    raw: bytes,
    reason: str,
    cluster: str,
) -> None:
    error = f"{allocator.UNSTORABLE}: {reason}"
    assert (decision.event_id, decision.type, decision.error) == (None, None, error)
    assert decision.cluster == cluster
    assert json.loads(decision.body)["error"] == error
    assert rejection.reason == error
    assert bytes(rejection.raw) == raw


# --- a record the decoder accepts and the database refuses: the search inside a failed batch ----


@pytest.mark.parametrize(
    "poison_offsets",
    [
        pytest.param([600], id="one-in-the-middle"),
        pytest.param([450, 700], id="two-in-one-batch"),
        pytest.param([600, 601], id="two-adjacent"),
        pytest.param([400, 799], id="first-and-last-of-a-batch"),
        pytest.param([3, 1199], id="early-and-last-of-the-log"),
    ],
)
async def test_a_record_the_database_refuses_is_rejected_and_the_rest_applied_once(
    log: table_log.PostgresTableLog, pg_dsn: str, poison_offsets: list[int]
) -> None:
    await add_poison_check(pg_dsn)
    records = stream_with(poison_offsets, 1200)
    assert [records[offset] for offset in poison_offsets] == [
        poison(n) for n in range(len(poison_offsets))
    ]
    appended = await log.append([(key_of(r), r) for r in records])
    assert [r.offset for r in appended] == list(range(len(records)))
    commits: list[list[int]] = []
    projection = open_projection(pg_dsn)
    worker = allocator.PartitionAllocator(
        log,
        projection,
        0,
        # Every record is in the log before the allocator starts: batches are [0, 400), ...
        settings=allocator.LoopSettings(batch_max_records=400),
        on_commit=lambda batch: commits.append([a.record.offset for a in batch.applied]),
    )
    later = [edge_request("later-1", "ns/later-1"), poison(99), edge_request("later-2", "ns/l2")]
    everything = records + later
    try:
        await serve_until(
            worker,
            (len(records), lambda: log.append([(b"edge", r) for r in later])),
            (len(everything), None),
        )
    finally:
        await projection.close()

    refused = {*poison_offsets, len(records) + 1}
    decided, rejected = await decisions_and_rejections(pg_dsn)
    for offset in refused:
        assert_unstorable(
            decided[offset], rejected[offset], everything[offset], CHECK_REASON, "edge"
        )
        # Found by taking the failed batch apart: the refused record was committed on its own.
        assert [offset] in commits
    await assert_matches_oracle(pg_dsn, everything, refused)
    # Every record was committed exactly once, in order; no failed batch was committed whole.
    assert [offset for commit in commits for offset in commit] == list(range(len(everything)))
    assert worker.metrics.records_unstorable == len(refused)
    assert worker.metrics.records_rejected == len(rejected)
    assert worker.metrics.records_applied == len(everything)
    # Only the refused records were rejected here: the stream's own junk decodes to rejections
    # too, but never with the projection's reason.
    assert {o for o, r in rejected.items() if r.reason.startswith(allocator.UNSTORABLE)} == (
        refused
    )


async def test_the_lease_stays_alive_while_a_failed_batch_is_taken_apart(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    await add_poison_check(pg_dsn)
    records = stream_with([150], 200)
    await log.append([(key_of(r), r) for r in records])
    projection = fakes.SlowLoadingProjection.from_dsn(
        pg_dsn, log_name="table", holder="slow", lease_ttl_s=1.0
    )
    worker = allocator.PartitionAllocator(
        log, projection, 0, settings=allocator.LoopSettings(renew_every_s=0.3)
    )
    try:
        await serve_until(worker, (len(records), None))
    finally:
        await projection.close()
    # Reloaded while searching (each reload three times the lease), and never lost the lease.
    assert projection.loads > 1
    assert worker.metrics.fenced == 0
    assert worker.metrics.failures == 0
    assert worker.metrics.takeovers == 1
    assert worker.metrics.records_unstorable == 1
    await assert_matches_oracle(pg_dsn, records, {150})


# --- records written straight into the log, past every producer-side check ----------------------


def hostile_records() -> list[tuple[bytes | None, bytes]]:
    """Valid JSON (mostly) that no producer of the contract writes; each must end in a rejection.

    Some decode (before the contract refused NUL and control characters) and are then refused by
    PostgreSQL, some are refused at decode; the test accepts either, never a stall.
    """
    edge = b"edge"
    return [
        (
            edge,
            rb'{"type":"ip.requested","id":"nul-owner","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/\u0000evil"}',
        ),
        (
            edge,
            rb'{"type":"ip.requested","id":"nul-\u0000-id","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/ok"}',
        ),
        (
            edge,
            rb'{"type":"ip.requested","id":"nul-node","cluster":"edge","node":"edge-1\u0000",'
            rb'"owner":"ns/ok"}',
        ),
        (
            edge,
            rb'{"type":"ip.requested","id":"ctl-owner","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/\u001b[31m"}',
        ),
        (
            edge,
            rb'{"type":"ip.requested","id":"surrogate","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/\ud800"}',
        ),
        (
            edge,
            rb'{"type":"ip.requested","id":"\udfff","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/x"}',
        ),
        (
            edge,
            b'{"type":"ip.requested","id":"bad-utf8","cluster":"edge","node":"edge-1",'
            b'"owner":"ns/\xff\xfe"}',
        ),
        (
            edge,
            b'{"type":"ip.requested","id":"encoded-surrogate","cluster":"edge",'
            b'"node":"edge-1","owner":"ns/\xed\xa0\x80"}',
        ),
        (edge, rb'{"type":"node.\u0000added","id":"nul-type","cluster":"edge","node":"n"}'),
        (
            b"e\x00dge",
            rb'{"type":"node.added","id":"nul-cluster","cluster":"e\u0000dge",'
            rb'"node":"n"}',
        ),
        (
            edge,
            rb'{"type":"ip.released","id":"nul-release","cluster":"edge","node":"edge-1",'
            rb'"owner":"ns/\u0000"}',
        ),
        (edge, b"\x00\x00\x00\x00"),
    ]


async def test_hostile_records_inserted_into_the_table_log_never_stop_the_partition(
    log: table_log.PostgresTableLog, pg_dsn: str
) -> None:
    good = mixed_stream(600, seed=9, clusters=("default", "east"))
    good[1:1] = EDGE_PRELUDE
    hostile = hostile_records()
    items: list[tuple[bytes | None, bytes]] = [(key_of(r), r) for r in good[:300]]
    # Each hostile record between good ones, with a good request of its cluster right after.
    for n, item in enumerate(hostile):
        items += [item, (b"edge", edge_request(f"after-{n}", f"ns/after-{n}"))]
    items += [(key_of(r), r) for r in good[300:]]
    await insert_raw(pg_dsn, [(key, value, None) for key, value in items])
    records = [value for _, value in items]
    hostile_offsets = {n for n, item in enumerate(items) if item in hostile}
    assert len(hostile_offsets) == len(hostile)

    projection = open_projection(pg_dsn)
    worker = allocator.PartitionAllocator(
        log, projection, 0, settings=allocator.LoopSettings(batch_max_records=250)
    )
    try:
        await serve_until(worker, (len(records), None))
    finally:
        await projection.close()
    await assert_all_rejected_and_the_rest_applied(pg_dsn, records, hostile_offsets, "table")
    assert worker.metrics.failures == 0
    assert worker.metrics.records_applied == len(records)


async def assert_all_rejected_and_the_rest_applied(
    dsn: str, records: Sequence[bytes], hostile: set[int], log_name: str
) -> None:
    decided, rejected = await decisions_and_rejections(dsn)
    assert len(decided) == len(records)
    assert hostile <= set(rejected)
    for offset in hostile:
        assert rejected[offset].reason, offset
        assert bytes(rejected[offset].raw) == records[offset]
        assert decided[offset].error == rejected[offset].reason
    # Refused by the projection (not at decode): nothing of the record echoed in the decision.
    unstorable = {o for o, r in rejected.items() if r.reason.startswith(allocator.UNSTORABLE)}
    for offset in unstorable:
        assert (decided[offset].event_id, decided[offset].type) == (None, None)
    await assert_matches_oracle(dsn, records, unstorable, log_name)


@pytest.mark.kafka
async def test_hostile_records_produced_to_kafka_never_stop_the_partition(
    kafka_broker: KafkaBroker, pg_dsn: str
) -> None:
    topic = f"ipledger.test.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic, 1)
    good = mixed_stream(400, seed=4, clusters=("default", "east"))
    good[1:1] = EDGE_PRELUDE
    items: list[tuple[bytes | None, bytes]] = [(key_of(r), r) for r in good[:200]]
    for n, item in enumerate(hostile_records()):
        items += [item, (b"edge", edge_request(f"after-{n}", f"ns/after-{n}"))]
    items += [(key_of(r), r) for r in good[200:]]
    # A plain producer, as any client with write access to the topic.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send(topic, value=value, key=key, partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    records = [value for _, value in items]
    hostile = {n for n, item in enumerate(items) if item in hostile_records()}

    event_log = await kafka_log.KafkaEventLog.open(kafka_broker.bootstrap, topic)
    projection = open_projection(pg_dsn, topic)
    worker = allocator.PartitionAllocator(
        event_log, projection, 0, settings=allocator.LoopSettings(batch_max_records=150)
    )
    try:
        await serve_until(worker, (len(records), None))
    finally:
        await projection.close()
        await event_log.close()
    await assert_all_rejected_and_the_rest_applied(pg_dsn, records, hostile, topic)
    assert worker.metrics.failures == 0


# --- the projection's own classification, against the real database ---------------------------


async def test_the_projection_reports_values_it_cannot_store_as_data_errors(pg_dsn: str) -> None:
    projection = open_projection(pg_dsn)
    try:
        token = await projection.try_acquire(0)
        assert token is not None
        current = (await projection.load([0])).state

        def batch(offset: int, event_id: str, body: bytes = b"{}") -> ports.Batch:
            record = ports.Record(0, offset, b"default", f"record {offset}".encode(), None)
            decision = events.Decision(
                id=event_id, type="node.added", cluster="default", error=None
            )
            applied = ports.AppliedRecord(record, decision, body, None, None, rejected=False)
            return ports.Batch(0, token, offset + 1, current, applied=[applied])

        refused = {
            "a\x00b": "CharacterNotInRepertoireError: ",
            # asyncpg encodes the parameter in the client (the batch's event ids, an array)
            "a\ud800b": "DataError: invalid input for query argument",
            os.urandom(10_000).hex(): "ProgramLimitExceededError: index row",  # over a btree row
        }
        for offset, (event_id, reason) in enumerate(refused.items()):
            with pytest.raises(errors.ProjectionDataError) as caught:
                await projection.commit(batch(offset, event_id))
            assert caught.value.reason.startswith(reason)
            # The reason itself is storable: the rejection that replaces the record commits.
            record = ports.Record(
                0, offset, b"default", event_id.encode("utf-8", "surrogatepass"), None
            )
            rejection = allocator.unstorable_record(record, caught.value.reason)
            await projection.commit(ports.Batch(0, token, offset + 1, current, applied=[rejection]))
        # Fencing stays what it is, a lost lease, not a refused value.
        fenced = batch(len(refused), "fine")
        fenced.token = token + 1
        with pytest.raises(errors.FencedError):
            await projection.commit(fenced)
        assert await projection.next_offset(0) == len(refused)
    finally:
        await projection.close()
    _, rejected = await decisions_and_rejections(pg_dsn)
    assert sorted(rejected) == list(range(len(refused)))
    for offset, reason in enumerate(refused.values()):
        assert rejected[offset].reason.startswith(f"{allocator.UNSTORABLE}: {reason}")
