"""The contract of ``ports.DecisionSink``, written once and run against every adapter.

Each test runs against ``MemoryDecisionSink`` (no service) and ``KafkaDecisionSink`` (a decisions
topic of its own on the session's broker, ``kafka_broker``, requested only by the Kafka
parameter). What a sink published is read back the way its consumers would: from the memory
sink's list, or with an aiokafka consumer from the topic.

Asserted for every adapter: published items arrive in order, keys and values byte for byte,
nothing else arrives; publishing nothing is a no-op; a closed sink refuses to publish with
``LogError`` (even nothing), and ``close`` may be called twice.

Not asserted, because it differs: the Kafka topic here has one partition, so "in order" means
the total order of the publishes; a decisions topic with more partitions keeps order per
partition only (see ``log.ensure_decisions_topic``), which the memory sink does not model.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service import errors, ports
from service.adapters import memory
from service.adapters.kafka import log as kafka_log
from service.adapters.kafka import sink as kafka_sink
from tests.harness.kafka import KafkaBroker

pytestmark = pytest.mark.anyio

DEADLINE_S = 30.0

Items = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class SinkUnderTest:
    """A sink and how to see what it published: ``published(count)`` waits for ``count`` items."""

    sink: ports.DecisionSink
    published: Callable[[int], Awaitable[Items]]


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def adapter(request: pytest.FixtureRequest) -> str:
    if request.param == "kafka":
        # Requested here, outside the event loop: starting the broker blocks.
        request.getfixturevalue("kafka_broker")
    name: str = request.param
    return name


@pytest.fixture
async def under_test(adapter: str, request: pytest.FixtureRequest) -> AsyncIterator[SinkUnderTest]:
    if adapter == "memory":
        memory_sink = memory.MemoryDecisionSink()

        async def from_list(count: int) -> Items:
            with anyio.fail_after(DEADLINE_S):
                return list(await memory_sink.wait_for_published(count))

        try:
            yield SinkUnderTest(memory_sink, from_list)
        finally:
            await memory_sink.close()
        return

    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    topic = f"ipledger.decisions.contract.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_decisions_topic(broker.bootstrap, topic, partitions=1)

    async def from_topic(count: int) -> Items:
        return await consume(broker.bootstrap, topic, count)

    async with kafka_sink.KafkaDecisionSink(broker.bootstrap, topic) as sink:
        yield SinkUnderTest(sink, from_topic)


async def consume(bootstrap: str, topic: str, count: int) -> Items:
    """Every record of the one-partition ``topic`` once it has ``count``; fail at the deadline.

    Reads on to the end of the partition after ``count``, so that extra records show.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    received: Items = []
    try:
        await consumer.start()
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        with anyio.fail_after(DEADLINE_S):
            end = count
            while len(received) < end:
                fetched = await consumer.getmany(partition, timeout_ms=1000)
                received += [(message.key, message.value) for message in fetched.get(partition, [])]
                if len(received) >= count:
                    end = (await consumer.end_offsets([partition]))[partition]
    finally:
        await consumer.stop()
    return received


async def test_published_items_arrive_in_order_byte_for_byte(under_test: SinkUnderTest) -> None:
    every_byte = bytes(range(256))
    batches: list[Items] = [
        [(b"event-%d" % i, b'{"decision": %d}' % i) for i in range(10)],
        [(b"event-10", b""), (b"", b"empty key"), (every_byte, every_byte * 64)],
        [(b"event-%d" % i, b"%d" % i) for i in range(11, 30)],
    ]

    for batch in batches:
        await under_test.sink.publish(batch)

    expected = [item for batch in batches for item in batch]
    assert await under_test.published(len(expected)) == expected


async def test_publishing_nothing_publishes_nothing(under_test: SinkUnderTest) -> None:
    await under_test.sink.publish([])
    await under_test.sink.publish([(b"event-1", b"only")])

    assert await under_test.published(1) == [(b"event-1", b"only")]


async def test_a_closed_sink_refuses_to_publish(under_test: SinkUnderTest) -> None:
    await under_test.sink.publish([(b"event-1", b"before close")])

    await under_test.sink.close()
    await under_test.sink.close()

    with pytest.raises(errors.LogError):
        await under_test.sink.publish([(b"event-2", b"after close")])
    with pytest.raises(errors.LogError):
        await under_test.sink.publish([])
    assert await under_test.published(1) == [(b"event-1", b"before close")]
