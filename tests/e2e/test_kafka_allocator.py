"""The allocator as real ``ipledger run`` processes on the real Kafka log and real PostgreSQL.

Each test gets topics of its own on the session's broker (``IPLEDGER_EVENTS_TOPIC``,
``IPLEDGER_DECISIONS_TOPIC``) and a database of its own; ``ipledger init`` creates the topics as
an operator would. The oracle is ``simulate``: the pure core applied to the same records in
memory. Besides the projection, the decisions topic is read back with a plain aiokafka consumer,
as a downstream consumer would: at least once, so duplicates may appear, but every offset must be
there, first seen in log order, under the event id as key.

The helpers here are shared with ``test_faults.py``.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import reader as pg_reader
from service.allocator.loop import HEAD_KEY
from service.domain import events, merkle
from tests.e2e.conftest import (
    Allocators,
    assert_projection_matches,
    consumed,
    kill_at_random_points,
    simulate,
    wait_consumed,
)
from tests.harness.kafka import KafkaBroker
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]
KILLS = 6
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Deployment:
    """One ipledger deployment on Kafka: its database, broker and topics."""

    dsn: str
    bootstrap: str
    events_topic: str
    decisions_topic: str

    @classmethod
    def new(cls, dsn: str, bootstrap: str) -> Deployment:
        suffix = uuid.uuid4().hex[:12]
        return cls(dsn, bootstrap, f"ipledger.events.{suffix}", f"ipledger.decisions.{suffix}")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "IPLEDGER_DATABASE_URL": self.dsn,
            "IPLEDGER_LOG": "kafka",
            "IPLEDGER_KAFKA_BOOTSTRAP": self.bootstrap,
            "IPLEDGER_EVENTS_TOPIC": self.events_topic,
            "IPLEDGER_DECISIONS_TOPIC": self.decisions_topic,
            **extra,
        }

    @property
    def log_name(self) -> str:
        return f"kafka:{self.events_topic}"

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run ``ipledger ARGS`` to completion; its exit code and its output."""
        with anyio.fail_after(CLI_TIMEOUT_S):
            result = await anyio.run_process(
                [sys.executable, "-m", "service.cli", *args],
                env={**os.environ, **self.env()},
                check=False,
            )
        return result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    async def init(self) -> None:
        code, output = await self.cli("init")
        assert code == 0, output
        assert "topics ready" in output, output

    async def append(self, records: Sequence[bytes], chunk: int = 1000) -> None:
        """Append as a well-behaved producer does: keyed by cluster, acks=all."""
        event_log = await kafka_log.KafkaEventLog.open(self.bootstrap, self.events_topic)
        try:
            for start in range(0, len(records), chunk):
                part = records[start : start + chunk]
                await event_log.append([(key_of(r), r) for r in part])
        finally:
            await event_log.close()


async def read_published(
    bootstrap: str, topic: str, count: int, timeout: float
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of the decisions topic, from its start, until ``count`` distinct log
    offsets have appeared (or the deadline passes: the caller's assertions then say what is
    missing)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    messages: list[tuple[bytes, bytes]] = []
    offsets: set[int] = set()
    try:
        # One partition, as `ipledger init` creates it for a one-partition log.
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        with anyio.move_on_after(timeout):
            while len(offsets) < count:
                fetched = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
                for message in fetched.get(tp, ()):
                    messages.append((message.key, message.value))
                    if message.key != HEAD_KEY:
                        offsets.add(json.loads(message.value)["offset"])
    finally:
        await consumer.stop()
    return messages


def assert_published(messages: Sequence[tuple[bytes, bytes]], records: Sequence[bytes]) -> int:
    """Every decision published, new offsets in log order, duplicates identical; returns how
    many duplicates there were.

    A consumer de-duplicates by the log position each value carries: keeping the first message
    per offset must give exactly simulate's decisions, in order, keyed by the event id.
    """
    _, decisions = simulate(records)
    first: dict[int, tuple[bytes, dict[str, object]]] = {}
    duplicates = 0
    for key, value in messages:
        if key == HEAD_KEY:
            continue
        body = json.loads(value)
        offset = body["offset"]
        assert body["partition"] == 0
        if offset in first:
            assert first[offset] == (key, body), f"offset {offset} published twice, differently"
            duplicates += 1
            continue
        # A republished stretch may go back, but an offset never seen before is the next one.
        assert offset == len(first), f"offset {offset} published before {len(first)}"
        first[offset] = (key, body)
    assert len(first) == len(records), f"{len(records) - len(first)} decisions not published"
    for offset, decision in enumerate(decisions):
        expected = {
            "partition": 0,
            "offset": offset,
            **json.loads(events.encode_decision(decision)),
        }
        assert first[offset] == ((decision.id or "").encode(), expected), offset
    return duplicates


async def test_a_prefilled_topic_gives_the_simulated_state_and_one_decision_per_offset(
    pg_dsn: str, kafka_broker: KafkaBroker, allocators: Allocators
) -> None:
    deployment = Deployment.new(pg_dsn, kafka_broker.bootstrap)
    records = mixed_stream(6000, seed=11)
    await deployment.init()
    await deployment.append(records)

    process = allocators.start(deployment.env(IPLEDGER_BATCH_MAX_RECORDS="700"))
    await wait_consumed(pg_dsn, len(records), 60, allocators)

    await assert_projection_matches(pg_dsn, deployment.log_name, records)
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        rejected = len(await reader.rejections(0))
    finally:
        await reader.close()
    malformed = sum(isinstance(events.decode(r), events.DecodeFailure) for r in records)
    assert malformed > 0
    assert rejected == malformed
    assert process.poll() is None, allocators.logs()


async def test_decisions_are_published_after_commit_in_order_keyed_by_event_id(
    pg_dsn: str, kafka_broker: KafkaBroker, allocators: Allocators
) -> None:
    deployment = Deployment.new(pg_dsn, kafka_broker.bootstrap)
    records = mixed_stream(3000, seed=12)
    await deployment.init()
    await deployment.append(records[:1000])
    allocators.start(deployment.env(IPLEDGER_BATCH_MAX_RECORDS="300"))
    await wait_consumed(pg_dsn, 1000, 60, allocators)
    # The rest arrives while it runs: decisions of a tailing allocator are published too.
    for start in range(1000, len(records), 250):
        await deployment.append(records[start : start + 250])
    await wait_consumed(pg_dsn, len(records), 60, allocators)

    messages = await read_published(
        kafka_broker.bootstrap, deployment.decisions_topic, len(records), 30
    )

    assert_published(messages, records)
    await assert_projection_matches(pg_dsn, deployment.log_name, records)
    # Published only after commit: the outbox never runs ahead of the decisions table.
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        (position,) = await reader.positions()
    finally:
        await reader.close()
    assert (position.partition, position.published) == (0, len(records))
    # The tree heads too: each after the decisions it covers, as committed, the last one
    # covering every record.
    audit = pg_audit.PostgresAuditReader.from_dsn(pg_dsn)
    try:
        stored = {h.head.size: h.head for h in await audit.heads(0)}
    finally:
        await audit.close()
    seen: set[int] = set()
    published: dict[int, merkle.TreeHead] = {}
    for key, value in messages:
        body = json.loads(value)
        if key != HEAD_KEY:
            seen.add(body["offset"])
            continue
        head = merkle.decode_head(body["treeHead"])
        assert body["partition"] == head.partition == 0
        assert set(range(head.size)) <= seen, f"head {head.size} before its decisions"
        published[head.size] = head
    assert published == stored
    assert max(published) == len(records)


async def test_kill_9_at_random_points_with_kafka_loses_nothing_and_applies_nothing_twice(
    pg_dsn: str, kafka_broker: KafkaBroker, allocators: Allocators
) -> None:
    deployment = Deployment.new(pg_dsn, kafka_broker.bootstrap)
    records = mixed_stream(8000, seed=13)
    await deployment.init()
    await deployment.append(records)
    env = deployment.env(IPLEDGER_BATCH_MAX_RECORDS="10", IPLEDGER_LEASE_TTL_S="1")
    await kill_at_random_points(pg_dsn, allocators, env, len(records), KILLS, seed=20261127)
    assert await consumed(pg_dsn) < len(records)

    allocators.start(env)
    await wait_consumed(pg_dsn, len(records), 120, allocators)

    await assert_projection_matches(pg_dsn, deployment.log_name, records)
    # The outbox survived the kills too: at least once, so every decision was published.
    messages = await read_published(
        kafka_broker.bootstrap, deployment.decisions_topic, len(records), 60
    )
    assert_published(messages, records)


@pytest.mark.parametrize(
    ("config", "shown"),
    [
        ({"retention.ms": "60000"}, "retention.ms=60000"),
        ({"retention.ms": "-1", "cleanup.policy": "compact"}, "cleanup.policy=compact"),
    ],
    ids=["finite-retention", "compacted"],
)
async def test_run_and_init_refuse_a_topic_that_would_not_keep_every_event(
    pg_dsn: str, kafka_broker: KafkaBroker, config: dict[str, str], shown: str
) -> None:
    deployment = Deployment.new(pg_dsn, kafka_broker.bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(deployment.events_topic, 1, 1, topic_configs=config)]
        )
    finally:
        await admin.close()
    assert response.to_object()["topic_errors"][0]["error_code"] == 0

    for command in ("run", "init"):
        code, output = await deployment.cli(command)
        assert code != 0, f"ipledger {command} accepted {config}:\n{output}"
        assert f"topic {deployment.events_topic!r}" in output, output
        assert shown in output, output
        assert "Traceback" not in output, output
        assert "Unclosed" not in output, output  # nothing left open on the way out
