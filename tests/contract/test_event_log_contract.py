"""The contract of ``ports.EventLog``, written once and run against every adapter.

Each test runs three times: against ``MemoryEventLog`` (no service), the PostgreSQL
``PostgresTableLog`` (a fresh migrated database per test, ``pg_dsn``) and ``KafkaEventLog`` (a
topic of its own on the session's broker, ``kafka_broker``). The service fixtures are requested
only by the parameter that needs them, so ``-m "not postgres and not kafka"`` runs the memory
adapter alone without starting anything.

What the port promises, and therefore what is asserted here for every adapter:

- ``append`` returns the pairs in order with their positions; offsets are dense and increasing
  per partition; all records of one key share a partition, in append order.
- ``read`` returns records from exactly ``start`` on, consecutive, at most ``max_records``; it
  waits up to ``max_wait_s`` when there is nothing at ``start`` (also beyond the end), and a
  waiting read returns as soon as another task appends.
- Keys and values round-trip byte for byte, including the empty value ``b""``, the empty key
  ``b""`` and no key at all (``None``); what is read back equals what ``append`` returned,
  timestamps included.
- Unknown partitions, impossible read arguments and any use after ``close`` raise ``LogError``;
  ``close`` may be called twice.

Where the adapters differ, and so what is deliberately *not* asserted:

- Where a record without a key goes: partition 0 in memory and in PostgreSQL, wherever Kafka's
  producer puts it in Kafka. (A key gets the same partition in all three: Kafka's default
  partitioner, ``service.domain.partitioning``; that is tested with the adapters.)
- How much one ``read`` returns: memory and PostgreSQL return everything available up to
  ``max_records``; Kafka returns what its fetches have brought in, possibly fewer, so these
  tests read until they have what they expect, with a deadline. In particular a Kafka read with
  ``max_wait_s=0`` returns nothing until a fetch has completed (measured: about 50 ms of
  repeated zero-wait reads after a seek), although the records exist; memory and PostgreSQL
  return them at once.
- Atomicity of a failed ``append``: memory and PostgreSQL append all pairs or none; Kafka may
  have appended a prefix of some partitions (see ``KafkaEventLog.append``).
- ``partitions()`` after ``close``: Kafka still answers from its cache, the others refuse.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import pytest

from service import errors, ports
from service.adapters import memory
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import table_log
from tests.harness.kafka import KafkaBroker

pytestmark = pytest.mark.anyio

PARTITIONS = 3
DEADLINE_S = 30.0
# A read that should wait: long enough to tell waiting from not waiting, short enough for a suite.
SHORT_WAIT_S = 0.5

OpenLog = Callable[[int], Awaitable[ports.EventLog]]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def log_opener(request: pytest.FixtureRequest) -> OpenLog:
    """How to open a new, empty log of the parametrised adapter with a given partition count."""
    if request.param == "memory":

        async def open_memory(partitions: int) -> ports.EventLog:
            return memory.MemoryEventLog(partitions)

        return open_memory
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")

        async def open_postgres(partitions: int) -> ports.EventLog:
            return table_log.PostgresTableLog.from_dsn(dsn, partitions=partitions)

        return open_postgres
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")

    async def open_kafka(partitions: int) -> ports.EventLog:
        topic = f"ipledger.contract.{uuid.uuid4().hex[:12]}"
        await kafka_log.ensure_topics(broker.bootstrap, topic, partitions)
        return await kafka_log.KafkaEventLog.open(broker.bootstrap, topic)

    return open_kafka


@pytest.fixture
async def open_log(log_opener: OpenLog) -> AsyncIterator[OpenLog]:
    """``log_opener``, closing every log it opened when the test ends."""
    opened: list[ports.EventLog] = []

    async def open_(partitions: int) -> ports.EventLog:
        log = await log_opener(partitions)
        opened.append(log)
        return log

    try:
        yield open_
    finally:
        for log in opened:
            await log.close()


@pytest.fixture
async def log(open_log: OpenLog) -> ports.EventLog:
    """A new, empty log with ``PARTITIONS`` partitions."""
    return await open_log(PARTITIONS)


async def read_until(
    log: ports.EventLog, partition: int, start: int, count: int
) -> list[ports.Record]:
    """Read ``partition`` on from ``start`` until ``count`` records came; fail at the deadline."""
    records: list[ports.Record] = []
    with anyio.fail_after(DEADLINE_S):
        while len(records) < count:
            position = records[-1].offset + 1 if records else start
            records.extend(await log.read(partition, position, count - len(records), 1.0))
    return records


def by_partition(records: Sequence[ports.Record]) -> dict[int, list[ports.Record]]:
    grouped: dict[int, list[ports.Record]] = {}
    for record in records:
        grouped.setdefault(record.partition, []).append(record)
    return grouped


def assert_consecutive_from(records: Sequence[ports.Record], start: int) -> None:
    assert [record.offset for record in records] == list(range(start, start + len(records)))


class TestAppend:
    async def test_append_of_nothing_is_nothing(self, log: ports.EventLog) -> None:
        assert list(await log.append([])) == []
        assert [await log.end_offset(p) for p in await log.partitions()] == [0] * PARTITIONS

    async def test_append_returns_the_pairs_in_order_with_dense_offsets_per_partition(
        self, log: ports.EventLog
    ) -> None:
        items = [(b"cluster-%d" % (i % 7), b"event-%d" % i) for i in range(40)]

        first = await log.append(items[:25])
        second = await log.append(items[25:])

        appended = [*first, *second]
        assert [(record.key, record.value) for record in appended] == items
        partitions = await log.partitions()
        assert all(record.partition in partitions for record in appended)
        for records in by_partition(appended).values():
            # Dense from 0 across both appends, in the order the pairs were given.
            assert_consecutive_from(records, 0)

    async def test_records_of_one_key_share_a_partition_in_append_order(
        self, log: ports.EventLog
    ) -> None:
        appended: list[ports.Record] = []
        for batch in range(4):
            appended += await log.append(
                [(b"cluster-a", b"a-%d-%d" % (batch, i)) for i in range(5)]
                + [(b"cluster-b", b"b-%d" % batch)]
            )

        of_a = [record for record in appended if record.key == b"cluster-a"]
        (partition,) = {record.partition for record in of_a}
        assert len({record.partition for record in appended if record.key == b"cluster-b"}) == 1
        assert [record.offset for record in of_a] == sorted(record.offset for record in of_a)
        in_log = [
            record
            for record in await read_until(
                log, partition, 0, len(by_partition(appended)[partition])
            )
            if record.key == b"cluster-a"
        ]
        assert [record.value for record in in_log] == [record.value for record in of_a]

    async def test_records_read_back_equal_what_append_returned(self, log: ports.EventLog) -> None:
        appended = await log.append([(b"cluster-%d" % (i % 5), b"%d" % i) for i in range(20)])

        assert all(record.timestamp_ms is not None for record in appended)
        for partition, expected in by_partition(appended).items():
            assert await read_until(log, partition, 0, len(expected)) == expected

    async def test_keys_and_values_round_trip_byte_for_byte(self, log: ports.EventLog) -> None:
        every_byte = bytes(range(256))
        items: list[tuple[bytes | None, bytes]] = [
            (None, b"no key"),
            (b"", b"empty key"),
            (b"empty value", b""),
            (every_byte, every_byte),
            (b"\x00", b"\x00\x00"),
            (b"\xff\xfe not UTF-8", "caf\u00e9 \u2603".encode()),
            (b"large", every_byte * 256),  # 64 KiB
        ]

        appended = await log.append(items)

        assert [(record.key, record.value) for record in appended] == items
        read = [
            record
            for partition, expected in by_partition(appended).items()
            for record in await read_until(log, partition, 0, len(expected))
        ]
        assert len(read) == len(items)
        assert {(record.key, record.value) for record in read} == set(items)


class TestRead:
    async def test_read_from_the_start_and_from_the_middle(self, log: ports.EventLog) -> None:
        appended = await log.append([(b"cluster-m", b"%d" % i) for i in range(10)])
        partition = appended[0].partition

        assert await read_until(log, partition, 0, 10) == appended
        assert await read_until(log, partition, 4, 6) == appended[4:]
        # Back again: a read may go anywhere, not only forward.
        assert await read_until(log, partition, 1, 2) == appended[1:3]

    async def test_a_read_returns_at_most_max_records_from_start_on(
        self, log: ports.EventLog
    ) -> None:
        appended = await log.append([(b"cluster-r", b"%d" % i) for i in range(10)])
        partition = appended[0].partition

        for start, max_records in [(0, 1), (2, 3), (7, 100)]:
            read = await log.read(partition, start, max_records, max_wait_s=DEADLINE_S)
            assert 1 <= len(read) <= max_records
            assert list(read) == appended[start : start + len(read)]

    async def test_an_empty_read_waits_about_max_wait_s_and_returns_nothing(
        self, log: ports.EventLog
    ) -> None:
        began = anyio.current_time()
        read = await log.read(0, 0, 10, max_wait_s=SHORT_WAIT_S)
        elapsed = anyio.current_time() - began

        assert list(read) == []
        assert SHORT_WAIT_S * 0.9 <= elapsed < SHORT_WAIT_S + 5.0

    async def test_an_empty_read_without_a_wait_returns_at_once(self, log: ports.EventLog) -> None:
        began = anyio.current_time()
        assert list(await log.read(0, 0, 10, max_wait_s=0)) == []
        assert anyio.current_time() - began < 2.0

    async def test_a_read_beyond_the_end_waits_like_an_empty_read_and_never_jumps(
        self, log: ports.EventLog
    ) -> None:
        (first,) = await log.append([(b"cluster-x", b"0")])
        partition = first.partition

        began = anyio.current_time()
        early = await log.read(partition, 3, 10, max_wait_s=SHORT_WAIT_S)
        elapsed = anyio.current_time() - began
        rest = await log.append([(b"cluster-x", b"%d" % i) for i in range(1, 5)])

        assert list(early) == []
        assert SHORT_WAIT_S * 0.9 <= elapsed < SHORT_WAIT_S + 5.0
        assert await read_until(log, partition, 3, 2) == rest[2:]

    async def test_a_waiting_read_returns_as_soon_as_another_task_appends(
        self, log: ports.EventLog
    ) -> None:
        (first,) = await log.append([(b"cluster-w", b"first")])
        partition, start = first.partition, first.offset + 1
        received: list[ports.Record] = []

        async def read() -> None:
            received.extend(await log.read(partition, start, 10, max_wait_s=DEADLINE_S))

        with anyio.fail_after(DEADLINE_S / 2):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                # Every task is parked: the reader is waiting (memory) or has its fetch, query
                # or listener in flight (Kafka, PostgreSQL).
                await anyio.wait_all_tasks_blocked()
                appended_at = anyio.current_time()
                (later,) = await log.append([(b"cluster-w", b"second")])
        woke_after = anyio.current_time() - appended_at

        assert received == [later]
        assert woke_after < 5.0


class TestPositions:
    async def test_end_offset_is_the_offset_the_next_record_gets(self, log: ports.EventLog) -> None:
        assert [await log.end_offset(p) for p in await log.partitions()] == [0] * PARTITIONS

        appended = await log.append([(b"cluster-e", b"%d" % i) for i in range(7)])
        partition = appended[0].partition
        assert await log.end_offset(partition) == 7
        (next_one,) = await log.append([(b"cluster-e", b"7")])
        assert next_one.offset == 7
        assert await log.end_offset(partition) == 8

    @pytest.mark.parametrize("count", [1, PARTITIONS])
    async def test_partitions_are_numbered_from_zero(self, open_log: OpenLog, count: int) -> None:
        log = await open_log(count)

        assert list(await log.partitions()) == list(range(count))


class TestRefusals:
    async def test_an_unknown_partition_is_refused(self, log: ports.EventLog) -> None:
        with pytest.raises(errors.LogError, match="no partition 7"):
            await log.read(7, 0, 10, 0.1)
        with pytest.raises(errors.LogError, match="no partition 7"):
            await log.end_offset(7)

    @pytest.mark.parametrize(("start", "max_records"), [(-1, 10), (0, 0), (0, -5)])
    async def test_impossible_read_arguments_are_refused(
        self, log: ports.EventLog, start: int, max_records: int
    ) -> None:
        with pytest.raises(errors.LogError):
            await log.read(0, start, max_records, 0.1)

    async def test_a_closed_log_refuses_to_append_read_and_tell_its_end(
        self, log: ports.EventLog
    ) -> None:
        (record,) = await log.append([(b"cluster-c", b"before close")])

        await log.close()
        await log.close()

        with pytest.raises(errors.LogError):
            await log.append([(b"cluster-c", b"after close")])
        with pytest.raises(errors.LogError):
            await log.read(record.partition, 0, 10, 0.1)
        with pytest.raises(errors.LogError):
            await log.end_offset(record.partition)
