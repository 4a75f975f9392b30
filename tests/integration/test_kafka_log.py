"""The Kafka adapter of the event log against a real Apache Kafka broker.

Uses the session's ``kafka_broker`` (tests/harness/kafka.py); each test gets topics of its own, so
tests do not see each other's records. The restart tests stop the shared broker and always leave
it running again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.to_thread
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service import errors
from service.adapters.kafka import log as kafka_log
from service.ports import Record
from tests.harness.kafka import KafkaBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

PARTITIONS = 3
DEADLINE_S = 30.0


@pytest.fixture
def topic_name() -> str:
    return f"ipledger.test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def topic(kafka_broker: KafkaBroker, topic_name: str) -> str:
    await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, PARTITIONS)
    return topic_name


@pytest.fixture
async def event_log(
    kafka_broker: KafkaBroker, topic: str
) -> AsyncIterator[kafka_log.KafkaEventLog]:
    log = await kafka_log.KafkaEventLog.open(kafka_broker.bootstrap, topic)
    try:
        yield log
    finally:
        await log.close()


async def read_until(
    log: kafka_log.KafkaEventLog, partition: int, start: int, count: int
) -> list[Record]:
    """Read ``partition`` from ``start`` until ``count`` records arrived or the deadline passed."""
    records: list[Record] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count and time.monotonic() < deadline:
        position = records[-1].offset + 1 if records else start
        records.extend(await log.read(partition, position, count - len(records), max_wait_s=1.0))
    return records


def by_partition(records: Sequence[Record]) -> dict[int, list[Record]]:
    grouped: dict[int, list[Record]] = {}
    for record in records:
        grouped.setdefault(record.partition, []).append(record)
    return grouped


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, None)]
        )
    finally:
        await admin.close()
    (resource,) = response.to_object()["resources"]
    return {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}


async def create_raw_topic(bootstrap: str, topic: str, config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    (result,) = response.to_object()["topic_errors"]
    assert result["error_code"] == 0, result


class TestAppendAndRead:
    async def test_round_trip_keeps_keys_values_and_positions(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        items = [(f"cluster-{i % 4}".encode(), f"event-{i}".encode()) for i in range(20)]

        appended = await event_log.append(items)

        assert [(record.key, record.value) for record in appended] == items
        assert all(record.timestamp_ms is not None for record in appended)
        for partition, expected in by_partition(appended).items():
            assert await read_until(event_log, partition, 0, len(expected)) == expected

    async def test_records_of_one_cluster_share_a_partition_in_append_order(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        key = b"cluster-a"
        appended: list[Record] = []
        for batch in range(5):
            appended += await event_log.append([(key, f"{batch}-{i}".encode()) for i in range(10)])

        (partition,) = {record.partition for record in appended}
        offsets = [record.offset for record in appended]
        assert offsets == list(range(offsets[0], offsets[0] + 50))
        read = await read_until(event_log, partition, offsets[0], 50)
        assert [record.value for record in read] == [record.value for record in appended]

    async def test_read_from_an_offset_in_the_middle_and_seek_back(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        appended = await event_log.append([(b"cluster-m", b"%d" % i) for i in range(10)])
        partition = appended[0].partition

        middle = await read_until(event_log, partition, 4, 6)
        first_three = await event_log.read(partition, 2, max_records=3, max_wait_s=5.0)
        next_ones = await event_log.read(partition, 5, max_records=2, max_wait_s=5.0)
        from_start = await read_until(event_log, partition, 0, 10)

        assert middle == appended[4:]
        assert first_three == appended[2:5]
        assert next_ones == appended[5:7]
        assert from_start == appended

    async def test_read_on_an_empty_partition_returns_nothing_after_the_wait(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        began = time.monotonic()
        records = await event_log.read(0, 0, max_records=10, max_wait_s=0.5)
        elapsed = time.monotonic() - began

        assert records == []
        assert 0.4 <= elapsed < 5.0

    async def test_a_waiting_read_returns_as_soon_as_a_record_arrives(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        (appended,) = await event_log.append([(b"cluster-w", b"first")])
        partition, start = appended.partition, appended.offset + 1
        assert await event_log.read(partition, appended.offset, 1, 5.0) == [appended]
        result: list[Record] = []

        async def reader() -> None:
            result.extend(await event_log.read(partition, start, 10, max_wait_s=20.0))

        began = time.monotonic()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            (later,) = await event_log.append([(b"cluster-w", b"second")])
        elapsed = time.monotonic() - began

        assert result == [later]
        assert elapsed < 10.0

    async def test_end_offset_is_the_next_offset_of_each_partition(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        assert [await event_log.end_offset(p) for p in await event_log.partitions()] == [0, 0, 0]

        appended = await event_log.append([(b"cluster-e", b"%d" % i) for i in range(7)])

        partition = appended[0].partition
        assert await event_log.end_offset(partition) == appended[-1].offset + 1 == 7

    async def test_partitions_are_those_of_the_topic(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        assert list(await event_log.partitions()) == [0, 1, 2]

    async def test_read_beyond_the_end_waits_like_an_empty_read_and_never_jumps(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        # Kafka itself rejects such a fetch (OFFSET_OUT_OF_RANGE); the port says "nothing yet".
        (first,) = await event_log.append([(b"cluster-x", b"0")])
        partition = first.partition

        began = time.monotonic()
        early = await event_log.read(partition, 3, 10, max_wait_s=0.5)
        elapsed = time.monotonic() - began
        rest = await event_log.append([(b"cluster-x", b"%d" % i) for i in range(1, 5)])

        assert early == []
        assert 0.4 <= elapsed < 5.0
        assert await read_until(event_log, partition, 3, 2) == rest[2:]

    async def test_an_unknown_partition_is_refused(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        with pytest.raises(errors.LogError, match="no partition 7"):
            await event_log.read(7, 0, 10, 0.1)
        with pytest.raises(errors.LogError, match="no partition 7"):
            await event_log.end_offset(7)

    async def test_append_of_nothing_is_nothing(self, event_log: kafka_log.KafkaEventLog) -> None:
        assert await event_log.append([]) == []


class TestConsumerOffsetCommit:
    async def test_committed_offset_is_visible_to_the_group(
        self, kafka_broker: KafkaBroker, topic: str
    ) -> None:
        group = f"ipledger-test-{uuid.uuid4().hex[:8]}"
        async with kafka_log.KafkaEventLog(kafka_broker.bootstrap, topic, group_id=group) as log:
            appended = await log.append([(b"cluster-c", b"%d" % i) for i in range(3)])
            partition = appended[0].partition
            await log.read(partition, 0, 10, 5.0)

            await log.commit_consumer_offset(partition, 3)
            await log.commit_consumer_offset((partition + 1) % PARTITIONS, 0)

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        try:
            await admin.start()
            committed = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        offsets = {tp.partition: meta.offset for tp, meta in committed.items()}
        assert offsets == {partition: 3, (partition + 1) % PARTITIONS: 0}

    async def test_every_partition_reads_and_commits_for_a_group_just_made(
        self, kafka_broker: KafkaBroker, topic: str
    ) -> None:
        # The allocator's start with several partitions: each partition's first read comes a
        # moment after the previous one, while the new group's coordinator is being looked up.
        # With one consumer whose assignment grew per partition, aiokafka's coordinator failed
        # an assertion then, and every read after it raised "Unexpected error during
        # coordination AssertionError()".
        group = f"ipledger-test-{uuid.uuid4().hex[:8]}"
        async with kafka_log.KafkaEventLog(kafka_broker.bootstrap, topic, group_id=group) as log:
            appended = await log.append([(b"cluster-%d" % i, b"%d" % i) for i in range(40)])
            expected = by_partition(appended)
            assert sorted(expected) == list(range(PARTITIONS))
            read: dict[int, list[Record]] = {}

            async def follow(partition: int) -> None:
                await log.read(partition, 0, 1, max_wait_s=0)
                records = await read_until(log, partition, 0, len(expected[partition]))
                await log.commit_consumer_offset(partition, len(records))
                # Reading goes on after the commit, as the allocator's does.
                assert await log.read(partition, len(records), 10, max_wait_s=0.2) == []
                read[partition] = records

            async with anyio.create_task_group() as tasks:
                for partition in range(PARTITIONS):
                    tasks.start_soon(follow, partition)

        assert read == expected
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        try:
            await admin.start()
            committed = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        assert {tp.partition: meta.offset for tp, meta in committed.items()} == {
            partition: len(records) for partition, records in expected.items()
        }

    async def test_commit_without_a_group_is_refused(
        self, event_log: kafka_log.KafkaEventLog
    ) -> None:
        with pytest.raises(errors.KafkaLogError, match="group_id"):
            await event_log.commit_consumer_offset(0, 0)


class TestEnsureTopics:
    async def test_creates_a_topic_that_keeps_every_event(
        self, kafka_broker: KafkaBroker, topic_name: str
    ) -> None:
        await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, 4)
        # A second call finds the topic suitable and leaves it alone.
        await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, 4)

        config = await topic_config(kafka_broker.bootstrap, topic_name)
        assert config["retention.ms"] == "-1"
        assert config["retention.bytes"] == "-1"
        assert config["cleanup.policy"] == "delete"
        async with kafka_log.KafkaEventLog(kafka_broker.bootstrap, topic_name) as log:
            assert list(await log.partitions()) == [0, 1, 2, 3]

    @pytest.mark.parametrize(
        ("config", "complaint"),
        [
            ({"retention.ms": "60000"}, "retention.ms=60000"),
            ({"retention.ms": "-1", "retention.bytes": "1048576"}, "retention.bytes=1048576"),
            ({"retention.ms": "-1", "cleanup.policy": "compact"}, "cleanup.policy=compact"),
        ],
        ids=["finite-time", "finite-size", "compacted"],
    )
    async def test_refuses_a_topic_that_would_lose_events(
        self, kafka_broker: KafkaBroker, topic_name: str, config: dict[str, str], complaint: str
    ) -> None:
        await create_raw_topic(kafka_broker.bootstrap, topic_name, config)

        with pytest.raises(errors.TopicConfigError, match=complaint):
            await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, 1)

    async def test_refuses_a_topic_with_another_partition_count(
        self, kafka_broker: KafkaBroker, topic_name: str
    ) -> None:
        await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, 2)

        with pytest.raises(errors.ConfigurationError, match="2 partitions but 3"):
            await kafka_log.ensure_topics(kafka_broker.bootstrap, topic_name, 3)

    async def test_opening_a_missing_topic_fails_clearly(
        self, kafka_broker: KafkaBroker, topic_name: str
    ) -> None:
        with pytest.raises(errors.KafkaLogError, match="does not exist"):
            await kafka_log.KafkaEventLog.open(kafka_broker.bootstrap, topic_name)


class TestBrokerRestart:
    @pytest.mark.parametrize("crash", [False, True], ids=["clean-restart", "kill-and-start"])
    async def test_no_record_is_lost_and_the_log_reconnects(
        self, kafka_broker: KafkaBroker, event_log: kafka_log.KafkaEventLog, crash: bool
    ) -> None:
        key = b"cluster-r"
        before = await event_log.append([(key, b"before-%d" % i) for i in range(25)])
        partition = before[0].partition
        assert await read_until(event_log, partition, 0, 25) == before

        try:
            if crash:
                await anyio.to_thread.run_sync(kafka_broker.kill)
            await anyio.to_thread.run_sync(kafka_broker.restart)
            after = await event_log.append([(key, b"after-%d" % i) for i in range(25)])
        finally:
            # Later tests share this broker: never leave it down.
            await anyio.to_thread.run_sync(kafka_broker.start)

        assert {record.partition for record in after} == {partition}
        assert [record.offset for record in after] == list(range(25, 50))
        assert await read_until(event_log, partition, 25, 25) == after
        assert await read_until(event_log, partition, 0, 50) == [*before, *after]
        assert await event_log.end_offset(partition) == 50
