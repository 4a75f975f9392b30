"""The producer examples of docs/events.md, run as written against a real Kafka broker.

The Python (aiokafka), kcat and Kafka console-producer examples are read from the doc (the code
block after each ``<!-- producer: ... -->`` marker), so the doc cannot drift from what works.
Each test gives the example a topic of its own with four partitions: the topic name,
``kafka:9092`` and ``bin/kafka-console-producer.sh`` are the only words replaced (by the topic,
the test broker and the console producer's class on the harness's classpath, kafka-tools from
compose/kafka/pom.xml). kcat is Debian's package, which `make services` installs as root
(compose/debian-tools.sh): without it that test is skipped, and fails under CI=true. Then
every record on the topic is read back and must be a valid event, keyed by its cluster, on
that cluster's home partition (``service.domain.partitioning``) - which is what the allocator
checks before applying anything.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters.kafka import log as kafka_log
from service.domain import events, partitioning
from tests import deployment
from tests.harness import kafka
from tests.harness.kafka import KafkaBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
PARTITIONS = 4
DOC_TOPIC = "ipledger.events"


def example(name: str) -> str:
    """The code block right after ``<!-- producer: name -->`` in docs/events.md."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- producer: {name} -->\n```[a-z]+\n(.*?)\n```", text, flags=re.DOTALL)
    assert match, f"docs/events.md has no '{name}' producer example"
    return match.group(1)


@pytest.fixture
async def topic(kafka_broker: KafkaBroker) -> str:
    name = f"ipledger.docs.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(kafka_broker.bootstrap, name, PARTITIONS)
    return name


async def records_on(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """Every record of ``topic``: (partition, key, value), read up to the end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[int, bytes | None, bytes]] = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=5000)
                for record in batch.get(tp, []):
                    assert record.value is not None
                    found.append((tp.partition, record.key, record.value))
        return found
    finally:
        await consumer.stop()


def assert_keyed_on_home_partitions(
    found: list[tuple[int, bytes | None, bytes]], expected_ids: set[str]
) -> None:
    seen: set[str] = set()
    for partition, key, value in found:
        event = events.decode(value)
        assert not isinstance(event, events.DecodeFailure), (value, event)
        assert key == event.cluster.encode()
        assert partition == partitioning.home_partition(event.cluster, PARTITIONS)
        seen.add(event.id)
    assert seen == expected_ids


def ids_in(code: str) -> set[str]:
    return set(re.findall(r'"id": ?"([^"]+)"', code))


async def test_the_python_example(kafka_broker: KafkaBroker, topic: str, tmp_path: Path) -> None:
    code = example("python")
    assert code.count(DOC_TOPIC) == 1
    script = tmp_path / "produce.py"
    script.write_text(code.replace(DOC_TOPIC, topic), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_broker.bootstrap},
    )
    assert result.returncode == 0, result.stderr
    found = await records_on(kafka_broker.bootstrap, topic)
    assert_keyed_on_home_partitions(found, ids_in(code))
    assert len(found) == 3


async def test_the_console_producer_example(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    java, classpath = kafka.find_java(), kafka.read_classpath()
    assert java and classpath, "the broker fixture started, so both exist"
    code = example("console")
    console = (
        f"{shlex.quote(java)} -cp {shlex.quote(classpath)} org.apache.kafka.tools.ConsoleProducer"
    )
    for word, replacement in (
        ("bin/kafka-console-producer.sh", console),
        ("kafka:9092", kafka_broker.bootstrap),
        (DOC_TOPIC, topic),
    ):
        assert code.count(word) == 1, word
        code = code.replace(word, replacement)
    script = tmp_path / "produce.sh"
    script.write_text(f"set -euo pipefail\n{code}\n", encoding="utf-8")
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = await records_on(kafka_broker.bootstrap, topic)
    assert_keyed_on_home_partitions(found, ids_in(example("console")))
    assert len(found) == 1


async def test_the_kcat_example(kafka_broker: KafkaBroker, topic: str, tmp_path: Path) -> None:
    deployment.debian_tool("kcat")  # the script below runs kcat from PATH
    code = example("kcat")
    for word, replacement in (("kafka:9092", kafka_broker.bootstrap), (DOC_TOPIC, topic)):
        assert code.count(word) == 1, word
        code = code.replace(word, replacement)
    script = tmp_path / "produce.sh"
    script.write_text(f"set -euo pipefail\n{code}\n", encoding="utf-8")
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = await records_on(kafka_broker.bootstrap, topic)
    assert_keyed_on_home_partitions(found, ids_in(example("kcat")))
    assert len(found) == 1
    # The example's cluster is one whose CRC-32 partition (librdkafka's default) is not its
    # home, so without -X partitioner=murmur2_random this test would fail.
    (key,) = {key for _, key, _ in found}
    assert key is not None
    assert zlib.crc32(key) % PARTITIONS != partitioning.home_partition(key.decode(), PARTITIONS)
