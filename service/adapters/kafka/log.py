"""The Kafka adapter of the ``EventLog`` port: the event log as one Kafka topic.

The composition root builds a ``KafkaEventLog`` for the events topic after ``ensure_topics`` has
made sure the topic exists and keeps its records forever; the allocator appends and reads through
it. Records are keyed by the event's cluster, so Kafka's default partitioner (murmur2 of the key)
keeps each cluster in one partition, which gives each cluster's events one total order.

Appends go through an idempotent producer with ``acks="all"``: an append returns only once the
in-sync replicas have the records, and producer retries cannot duplicate or reorder them.
Reads use one consumer per partition, assigned its one partition once (manual assignment) and
positioned by explicit seeks; a consumer group is only used, when configured, to publish the
allocator's position for lag monitoring, never to decide where reading starts (the projection's
stored offset does that).

Why not one consumer for every partition: aiokafka's group coordinator does not survive a
consumer whose manual assignment changes while the coordinator is still being looked up (the
first seconds of a group, or after the coordinator moved). Its background routine then fails an
internal assertion for good, and every later fetch of that consumer raises
``KafkaError('Unexpected error during coordination AssertionError()')``: with several partitions,
growing the assignment as partitions were first read did exactly that, and no event was applied.
A consumer that keeps the assignment it was given never meets that path, and the partitions'
readers no longer wait for each other either. A reader whose consumer fails is replaced by a new
one at the next read, so no sticky driver state outlives the error that caused it.

``ensure_decisions_topic`` creates the decisions topic, which ``sink.KafkaDecisionSink``
writes; it keeps ordinary retention, being a feed derived from the log.

No aiokafka exception leaves this module: driver errors become ``errors.KafkaLogError`` (a
``errors.LogError``; clients are made and errors translated by ``driver``, as for the sink) and
unsuitable topics ``errors.TopicConfigError``.

Over 400 lines on purpose: topic checks, the per-partition readers and the append path share
the client settings and error translation of ``driver`` and are one adapter; splitting them
would spread one port's contract over several files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.structs import ConsumerRecord

from service import errors, ports
from service.adapters.kafka import driver

# What "keep every event forever" means for a Kafka topic: no time or size limit, and deletion
# (which never happens without limits) rather than compaction, which would drop all but the last
# event of each cluster.
REQUIRED_TOPIC_CONFIG: Mapping[str, str] = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}

_NO_TIMESTAMP = -1
# 0001-01-01T00:00:00.001Z and 9999-12-31T23:59:59.999Z in Unix milliseconds: datetime's range
# but its first microsecond, which PostgreSQL would store as -infinity (read back naive).
_EARLIEST_MS = -62_135_596_799_999
_LATEST_MS = 253_402_300_799_999
_BEYOND_END_POLL_S = 0.1
_METADATA_SETTLE_S = 10.0


async def ensure_topics(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create ``topic`` with unlimited retention, or check that the existing one has it.

    Returns once every partition has a leader. Raises ``errors.TopicConfigError`` if the topic
    exists with finite retention or compaction (the log is the source of truth: Kafka must never
    delete an event), ``errors.ConfigurationError`` if it exists with another partition count
    (clusters would move to other partitions), and ``KafkaLogError`` if Kafka fails.
    """
    if partitions < 1 or replication_factor < 1:
        raise errors.ConfigurationError(
            f"topic {topic!r} needs partitions >= 1 and replication_factor >= 1"
        )
    new_topic = NewTopic(
        topic,
        partitions,
        replication_factor,
        topic_configs=dict(REQUIRED_TOPIC_CONFIG),
    )

    async def check_existing(admin: AIOKafkaAdminClient) -> None:
        await _check_existing_topic(admin, topic, partitions)

    await _create_topic(bootstrap, topic, new_topic, check_existing, timeout_s)


async def ensure_decisions_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    retention_ms: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the decisions topic ``topic`` (for ``sink.KafkaDecisionSink``) unless it exists.

    Unlike the events topic, the decisions topic keeps ordinary, finite retention: it is a feed
    for consumers, not the source of truth. Every decision follows from the event log (the same
    log always gives the same decisions), and the projection in PostgreSQL holds their result,
    so a decision Kafka has deleted can be recomputed by replay. ``retention_ms`` sets the
    topic's ``retention.ms``; ``None`` leaves the broker's default (7 days unless configured).

    An existing topic is accepted as it is, whatever its retention and partition count: those
    are the operator's to choose. Decisions are keyed by event id, so with several partitions
    their order holds per partition only; consumers order and de-duplicate by the log partition
    and offset each decision carries. Returns once every partition has a leader. Raises
    ``errors.ConfigurationError`` for impossible arguments and ``KafkaLogError`` if Kafka fails.
    """
    if partitions < 1 or replication_factor < 1 or (retention_ms is not None and retention_ms < 1):
        raise errors.ConfigurationError(
            f"topic {topic!r} needs partitions >= 1, replication_factor >= 1 and a positive "
            "retention_ms (or None)"
        )
    configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
    new_topic = NewTopic(topic, partitions, replication_factor, topic_configs=configs)
    await _create_topic(bootstrap, topic, new_topic, None, timeout_s)


async def _create_topic(
    bootstrap: str,
    topic: str,
    new_topic: NewTopic,
    check_existing: Callable[[AIOKafkaAdminClient], Awaitable[None]] | None,
    timeout_s: float,
) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="ipledger-admin",
        request_timeout_ms=driver.milliseconds(timeout_s),
    )
    try:
        await admin.start()
        response = await admin.create_topics([new_topic], timeout_ms=driver.milliseconds(timeout_s))
        (result,) = response.to_object()["topic_errors"]
        error = for_code(result["error_code"])
        if error is TopicAlreadyExistsError:
            if check_existing is not None:
                await check_existing(admin)
        elif result["error_code"] != 0:
            raise errors.KafkaLogError(
                f"creating topic {topic!r} failed: {error.__name__}: {result['error_message']}"
            )
        await _wait_for_leaders(admin, topic, deadline=time.monotonic() + timeout_s)
    except driver.DRIVER_ERRORS as exc:
        raise errors.KafkaLogError(
            f"could not ensure topic {topic!r} on {bootstrap}: {exc!r}"
        ) from exc
    finally:
        await admin.close()


async def _check_existing_topic(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, None)
    # A topic created a moment ago (by someone else) can be known to the controller before the
    # broker's metadata has it: "already exists" then "unknown topic" for a short while.
    deadline = time.monotonic() + _METADATA_SETTLE_S
    while True:
        (response,) = await admin.describe_configs([resource])
        (described,) = response.to_object()["resources"]
        error = for_code(described["error_code"])
        if error is UnknownTopicOrPartitionError and time.monotonic() < deadline:
            await anyio.sleep(0.1)
            continue
        if described["error_code"] != 0:
            raise errors.KafkaLogError(f"describing topic {topic!r} failed: {error.__name__}")
        break
    actual = {entry["config_names"]: entry["config_value"] for entry in described["config_entries"]}
    wrong = {
        name: actual.get(name)
        for name, required in REQUIRED_TOPIC_CONFIG.items()
        if actual.get(name) != required
    }
    if wrong:
        found = ", ".join(f"{name}={value}" for name, value in sorted(wrong.items()))
        wanted = ", ".join(f"{name}={value}" for name, value in REQUIRED_TOPIC_CONFIG.items())
        raise errors.TopicConfigError(
            f"topic {topic!r} exists but would not keep every event: it has {found}; "
            f"the event log needs {wanted} (fix it with kafka-configs --alter, or use a new topic)"
        )
    (description,) = await admin.describe_topics([topic])
    existing = len(description["partitions"])
    if existing != partitions:
        raise errors.ConfigurationError(
            f"topic {topic!r} has {existing} partitions but {partitions} are configured; "
            "changing the count would move clusters to other partitions"
        )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, deadline: float) -> None:
    # A freshly created topic is in the controller's metadata before every partition has a
    # leader; producing to it before then fails with NOT_LEADER / UNKNOWN_TOPIC.
    while True:
        (description,) = await admin.describe_topics([topic])
        described = description["partitions"]
        if (
            description["error_code"] == 0
            and described
            and all(partition["leader"] >= 0 for partition in described)
        ):
            return
        if time.monotonic() >= deadline:
            raise errors.KafkaLogError(f"topic {topic!r} has partitions without a leader")
        await anyio.sleep(0.05)


def _dense(partition: int, start: int, end: int, records: list[ports.Record]) -> list[ports.Record]:
    """``records`` with an empty record at every offset from ``start`` to ``end`` that has none.

    The event log's offsets are dense (``ports.Record``); a Kafka partition's are not where a
    transactional producer wrote: each commit or abort marker takes an offset that no consumer
    is given. An empty value there is a record that does not decode, so the offset gets its
    rejected decision, in the allocator and in every replay alike (the markers never move).
    """
    if (not records and end <= start) or (
        records and records[0].offset == start and records[-1].offset - start == len(records) - 1
    ):
        return records
    dense: list[ports.Record] = []
    expected = start
    for record in records:
        dense.extend(
            ports.Record(partition, offset, None, b"", None)
            for offset in range(expected, record.offset)
        )
        dense.append(record)
        expected = record.offset + 1
    dense.extend(
        ports.Record(partition, offset, None, b"", None) for offset in range(expected, end)
    )
    return dense


def _timestamp_ms(timestamp: int | None) -> int | None:
    """The record's time, within what a ``datetime`` (and so the projection) can hold.

    Kafka keeps the producer's CreateTime, and by default accepts any time in the past: a
    client may write -62135596800001 (before year 1), which ``datetime.fromtimestamp`` refuses
    with ValueError. Clamped here, once, so the allocator and a replay see the same time.
    """
    if timestamp is None or timestamp == _NO_TIMESTAMP:
        return None
    return min(max(timestamp, _EARLIEST_MS), _LATEST_MS)


@dataclass(slots=True)
class _Reader:
    """The consumer of one partition: assigned ``tp`` once, at its start, and never again."""

    consumer: AIOKafkaConsumer
    tp: TopicPartition
    # Where the consumer continues, so that a reader going forward never pays for a seek (a
    # seek drops the records already prefetched); None when unknown (after a failed fetch).
    position: int | None


class KafkaEventLog:
    """``EventLog`` over one Kafka topic, for one process (the allocator) at a time.

    Use ``await KafkaEventLog.open(...)`` or ``async with KafkaEventLog(...)``; ``close()`` is
    required. Each partition is read by a consumer of its own, made at its first read: reads of
    one partition are serialised, reads of different partitions and appends run side by side.
    ``group_id`` enables ``commit_consumer_offset``; the group never chooses positions.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        group_id: str | None = None,
        client_id: str = "ipledger",
        request_timeout_s: float = 30.0,
        linger_ms: int = 0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._client_id = client_id
        self._request_timeout_ms = driver.milliseconds(request_timeout_s)
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        # Metadata only (topics, offsets): it is assigned nothing and fetches nothing.
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: tuple[int, ...] | None = None
        self._readers: dict[int, _Reader] = {}
        self._reader_locks: dict[int, anyio.Lock] = {}
        self._closed = False

    @classmethod
    async def open(
        cls,
        bootstrap: str,
        topic: str,
        *,
        group_id: str | None = None,
        client_id: str = "ipledger",
        request_timeout_s: float = 30.0,
        linger_ms: int = 0,
    ) -> KafkaEventLog:
        """A started log; see ``start()``."""
        log = cls(
            bootstrap,
            topic,
            group_id=group_id,
            client_id=client_id,
            request_timeout_s=request_timeout_s,
            linger_ms=linger_ms,
        )
        await log.start()
        return log

    async def start(self) -> None:
        """Connect the producer and the consumer and check that the topic exists.

        Raises ``KafkaLogError`` when Kafka cannot be reached or the topic is missing (create it
        with ``ensure_topics``); nothing is left open then.
        """
        if self._closed:
            raise errors.KafkaLogError("the Kafka event log is closed")
        if self._producer is not None:
            return
        self._producer = driver.idempotent_producer(
            self._bootstrap,
            client_id=self._client_id,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
        )
        self._consumer = driver.consumer(
            self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
        )
        async with driver.starting(
            errors.KafkaLogError, f"could not connect to Kafka at {self._bootstrap}", self.close
        ):
            await self._producer.start()
            await self._consumer.start()
            await self.partitions()

    async def __aenter__(self) -> KafkaEventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def partitions(self) -> Sequence[int]:
        """The partition numbers of the topic (fetched once: they never change)."""
        if self._partitions is None:
            producer, consumer = self._clients()
            try:
                # Checked first because the producer would wait a full request timeout for a
                # topic that does not exist before failing.
                if self._topic not in await consumer.topics():
                    raise errors.KafkaLogError(
                        f"topic {self._topic!r} does not exist on {self._bootstrap}; "
                        "create it with ensure_topics"
                    )
                found: set[int] = await producer.partitions_for(self._topic)
            except driver.DRIVER_ERRORS as exc:
                raise errors.KafkaLogError(f"could not list partitions of {self._topic!r}") from exc
            self._partitions = tuple(sorted(found))
        return self._partitions

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[ports.Record]:
        """Append ``(key, value)`` pairs in order; return once all are acknowledged by all ISRs.

        On ``KafkaLogError`` a prefix of the pairs of some partitions may have been appended:
        the caller must re-read the log rather than assume none was.
        """
        if not items:
            return []
        producer, _ = self._clients()
        # One explicit timestamp for the whole append: left to itself, aiokafka 0.14 reports the
        # first record's CreateTime for every record of a batch, which then differs from what a
        # reader gets back.
        acknowledged = await driver.send_in_order(
            producer,
            self._topic,
            items,
            error=errors.KafkaLogError,
            doing=f"appending {len(items)} records to {self._topic!r} failed",
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        return [
            ports.Record(
                partition=metadata.partition,
                offset=metadata.offset,
                key=key,
                value=value,
                timestamp_ms=_timestamp_ms(metadata.timestamp),
            )
            for (key, value), metadata in zip(items, acknowledged, strict=True)
        ]

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[ports.Record]:
        """Up to ``max_records`` records of ``partition`` from offset ``start`` on, in order.

        Waits up to ``max_wait_s`` for the first record, then returns what it has, possibly
        nothing; a ``start`` beyond the end of the partition counts as "nothing yet". Reading on
        from the last record returned costs no seek.
        """
        if start < 0 or max_records < 1 or max_wait_s < 0:
            raise errors.KafkaLogError(
                f"cannot read {max_records} records from offset {start} waiting {max_wait_s} s"
            )
        await self._check_partition(partition)
        deadline = anyio.current_time() + max_wait_s
        async with self._reader_lock(partition):
            while True:
                reader = await self._reader(partition, start)
                try:
                    if reader.position != start:
                        reader.consumer.seek(reader.tp, start)
                        reader.position = start
                    remaining = max(0.0, deadline - anyio.current_time())
                    fetched = await reader.consumer.getmany(
                        reader.tp,
                        timeout_ms=driver.milliseconds(remaining),
                        max_records=max_records,
                    )
                except OffsetOutOfRangeError as exc:
                    # The consumer's position after a failed fetch is unknown: seek next time.
                    reader.position = None
                    await self._check_not_deleted(reader.tp, start, exc)
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        return []
                    # Kafka answers a fetch beyond the end with OFFSET_OUT_OF_RANGE instead of
                    # waiting for the offset to exist, so poll for it until time is up.
                    await anyio.sleep(min(remaining, _BEYOND_END_POLL_S))
                    continue
                except driver.DRIVER_ERRORS as exc:
                    await self._drop_reader(partition)
                    raise errors.KafkaLogError(
                        f"reading {self._topic!r} partition {partition} from offset {start} "
                        f"failed: {exc!r}"
                    ) from exc
                records = [self._record(message) for message in fetched.get(reader.tp, ())]
                if records:
                    end = records[-1].offset + 1
                else:
                    # The consumer passes over offsets that hold no record (a transaction's
                    # commit or abort marker); its position says how far it went.
                    with driver.translate(
                        errors.KafkaLogError,
                        f"reading {self._topic!r} partition {partition} from offset {start}",
                    ):
                        end = await reader.consumer.position(reader.tp)
                records = _dense(partition, start, end, records)
                if len(records) > max_records:
                    del records[max_records:]
                    reader.position = None  # fetched beyond what is returned: seek next time
                elif records:
                    reader.position = records[-1].offset + 1
                return records

    async def end_offset(self, partition: int) -> int:
        """The offset the next record appended to ``partition`` will get (its high watermark)."""
        await self._check_partition(partition)
        _, consumer = self._clients()
        tp = TopicPartition(self._topic, partition)
        with driver.translate(
            errors.KafkaLogError,
            f"could not get the end offset of {self._topic!r} partition {partition}",
            name_cause=False,
        ):
            offsets: dict[TopicPartition, int] = await consumer.end_offsets([tp])
        return offsets[tp]

    async def commit_consumer_offset(self, partition: int, offset: int) -> None:
        """Publish ``offset`` (the next offset to process) as the group's position, for lag.

        Monitoring only: consumer lag is ``end_offset - offset``. Needs ``group_id``. The
        allocator's real position is the one stored with its projection.
        """
        if self._group_id is None:
            raise errors.KafkaLogError(
                "commit_consumer_offset needs a KafkaEventLog with a group_id"
            )
        if offset < 0:
            raise errors.KafkaLogError(f"cannot commit the negative offset {offset}")
        await self._check_partition(partition)
        # Kafka only takes commits for assigned partitions: the partition's reader commits. Not
        # under the reader's lock, so a read waiting for records does not hold the commit up.
        reader = self._readers.get(partition)
        if reader is None:
            async with self._reader_lock(partition):
                reader = await self._reader(partition, offset)
        try:
            await reader.consumer.commit({reader.tp: offset})
        except driver.DRIVER_ERRORS as exc:
            await self._drop_reader(partition, reader)
            raise errors.KafkaLogError(
                f"committing offset {offset} of {self._topic!r} partition {partition} "
                f"for group {self._group_id!r} failed: {exc!r}"
            ) from exc

    async def close(self) -> None:
        """Stop the producer (after flushing) and the consumer; safe to call twice."""
        self._closed = True
        producer, self._producer = self._producer, None
        consumer, self._consumer = self._consumer, None
        readers, self._readers = list(self._readers.values()), {}
        try:
            if producer is not None:
                with driver.translate(
                    errors.KafkaLogError,
                    f"closing the producer of {self._topic!r} failed",
                    name_cause=False,
                ):
                    await producer.stop()
        finally:
            for reader in readers:
                await reader.consumer.stop()
            if consumer is not None:
                await consumer.stop()

    def _clients(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        if self._producer is None or self._consumer is None:
            state = "closed" if self._closed else "not started"
            raise errors.KafkaLogError(f"the Kafka event log of {self._topic!r} is {state}")
        return self._producer, self._consumer

    async def _check_partition(self, partition: int) -> None:
        if partition not in await self.partitions():
            raise errors.KafkaLogError(
                f"no partition {partition}: topic {self._topic!r} has partitions "
                f"{list(await self.partitions())}"
            )

    async def _check_not_deleted(
        self, tp: TopicPartition, start: int, cause: OffsetOutOfRangeError
    ) -> None:
        _, consumer = self._clients()
        with driver.translate(
            errors.KafkaLogError, f"could not get the start offset of {tp}", name_cause=False
        ):
            beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets([tp])
        if start < beginnings[tp]:
            raise errors.KafkaLogError(
                f"offset {start} of {self._topic!r} partition {tp.partition} is gone: the "
                f"partition now starts at {beginnings[tp]} (was retention changed?)"
            ) from cause

    def _reader_lock(self, partition: int) -> anyio.Lock:
        return self._reader_locks.setdefault(partition, anyio.Lock())

    async def _reader(self, partition: int, position: int) -> _Reader:
        """The reader of ``partition``, made and positioned at ``position`` if there is none.

        Call with the partition's reader lock held.
        """
        reader = self._readers.get(partition)
        if reader is not None:
            return reader
        self._clients()  # refuses a log that is closed or not started
        consumer = driver.consumer(
            self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
            group_id=self._group_id,
            # Never jump silently: a start beyond the log end is a bug, and with infinite
            # retention there is nothing before the log start to fall back to.
            auto_offset_reset="none",
        )
        tp = TopicPartition(self._topic, partition)
        async with driver.starting(
            errors.KafkaLogError,
            f"could not start a consumer of {self._topic!r} partition {partition}",
            consumer.stop,
        ):
            await consumer.start()
            # Assigned once and positioned before any await lets its fetcher run, so it never
            # fetches from a position of its own choosing; nothing ever re-assigns it.
            consumer.assign([tp])
            consumer.seek(tp, position)
        if self._closed:
            await consumer.stop()
            raise errors.KafkaLogError(f"the Kafka event log of {self._topic!r} is closed")
        reader = _Reader(consumer=consumer, tp=tp, position=position)
        self._readers[partition] = reader
        return reader

    async def _drop_reader(self, partition: int, reader: _Reader | None = None) -> None:
        """Stop the reader of ``partition`` (only if it is still ``reader``, when given)."""
        current = self._readers.get(partition)
        if current is None or (reader is not None and current is not reader):
            return
        del self._readers[partition]
        # It failed already; a new reader is made at the next read either way.
        with contextlib.suppress(*driver.DRIVER_ERRORS):
            await current.consumer.stop()

    def _record(self, message: ConsumerRecord) -> ports.Record:
        partition: int = message.partition
        offset: int = message.offset
        value: bytes | None = message.value
        if value is None:
            # A tombstone: ipledger never writes one, but any client of the topic can. Raising
            # would fail every read of this offset and stop the partition; as an empty value it
            # is a record like any other that does not decode, rejected with its reason.
            value = b""
        return ports.Record(
            partition=partition,
            offset=offset,
            key=message.key,
            value=value,
            timestamp_ms=_timestamp_ms(message.timestamp),
        )
