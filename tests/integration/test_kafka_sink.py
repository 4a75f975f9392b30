"""The Kafka decision sink and its topic against a real broker, beyond the port contract.

The contract (``tests/contract/test_decision_sink_contract.py``) covers publishing; here are the
Kafka-only parts: ``ensure_decisions_topic`` (ordinary retention, an existing topic left alone),
a missing topic failing at start, and aiokafka errors reaching callers as ``KafkaSinkError``.
"""

from __future__ import annotations

import uuid

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from service import errors
from service.adapters.kafka import log as kafka_log
from service.adapters.kafka import sink as kafka_sink
from tests.harness.kafka import KafkaBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


@pytest.fixture
def topic_name() -> str:
    return f"ipledger.decisions.test.{uuid.uuid4().hex[:12]}"


async def describe(bootstrap: str, topic: str) -> tuple[dict[str, str], int]:
    """The topic's configuration and partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, None)]
        )
        (resource,) = response.to_object()["resources"]
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    config = {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}
    return config, len(description["partitions"])


async def test_the_decisions_topic_keeps_ordinary_retention(
    kafka_broker: KafkaBroker, topic_name: str
) -> None:
    await kafka_log.ensure_decisions_topic(kafka_broker.bootstrap, topic_name, 2)

    config, partitions = await describe(kafka_broker.bootstrap, topic_name)

    assert partitions == 2
    assert config["cleanup.policy"] == "delete"
    assert config["retention.ms"] == str(7 * 24 * 3600 * 1000)  # the broker's default


async def test_an_existing_decisions_topic_is_left_as_it_is(
    kafka_broker: KafkaBroker, topic_name: str
) -> None:
    await kafka_log.ensure_decisions_topic(
        kafka_broker.bootstrap, topic_name, 1, retention_ms=3_600_000
    )

    await kafka_log.ensure_decisions_topic(kafka_broker.bootstrap, topic_name, 4)

    config, partitions = await describe(kafka_broker.bootstrap, topic_name)
    assert (config["retention.ms"], partitions) == ("3600000", 1)


async def test_impossible_topic_settings_are_refused(kafka_broker: KafkaBroker) -> None:
    with pytest.raises(errors.ConfigurationError):
        await kafka_log.ensure_decisions_topic(kafka_broker.bootstrap, "t", 0)
    with pytest.raises(errors.ConfigurationError):
        await kafka_log.ensure_decisions_topic(kafka_broker.bootstrap, "t", 1, retention_ms=0)


async def test_a_missing_topic_fails_at_start_without_waiting(
    kafka_broker: KafkaBroker, topic_name: str
) -> None:
    sink = kafka_sink.KafkaDecisionSink(kafka_broker.bootstrap, topic_name)

    with anyio.fail_after(10), pytest.raises(errors.KafkaSinkError, match="does not exist"):
        await sink.start()
    with pytest.raises(errors.LogError, match="closed"):
        await sink.publish([(b"e1", b"d1")])


async def test_an_unstarted_sink_refuses_to_publish(topic_name: str) -> None:
    sink = kafka_sink.KafkaDecisionSink("127.0.0.1:1", topic_name)

    with pytest.raises(errors.LogError, match="not started"):
        await sink.publish([(b"e1", b"d1")])


async def test_driver_errors_reach_callers_as_sink_errors(
    kafka_broker: KafkaBroker, topic_name: str
) -> None:
    await kafka_log.ensure_decisions_topic(kafka_broker.bootstrap, topic_name)
    async with await kafka_sink.KafkaDecisionSink.open(kafka_broker.bootstrap, topic_name) as sink:
        # Over the producer's max_request_size (1 MiB): aiokafka refuses it before sending.
        with pytest.raises(errors.KafkaSinkError) as raised:
            await sink.publish([(b"e1", b"d1"), (b"e2", b"x" * (2 << 20))])

    assert isinstance(raised.value.__cause__, KafkaError)
