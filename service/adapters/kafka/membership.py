"""``PartitionMembership`` on Kafka: the ``ipledger run`` processes form one consumer group.

Kafka's group coordinator is the distributed engine that decides which process leads which
partition of the events topic: each process runs one group consumer subscribed to the topic, and
the partitions the group assigns it are the ones it leads. A process that joins, stops (it
leaves the group) or dies (its session times out after ``session_timeout_s``) makes the group
rebalance. The consumer reads nothing: every partition it is assigned is paused at once, and its
``getmany`` calls only keep it a live member (aiokafka leaves the group of a consumer that
stops polling). The records themselves are read by ``log.KafkaEventLog``'s own consumers,
positioned by the projection's offsets, and the writer lease stays the single-writer guarantee:
the group only spreads the work.

What aiokafka 0.14 (the version installed) offers, and what is used:

- the classic group protocol only (JoinGroup/SyncGroup, eager rebalancing: every rebalance
  revokes every partition, then assigns). No cooperative rebalancing (KIP-429: aiokafka has no
  cooperative-sticky assignor) and no KIP-848 consumer protocol (no ConsumerGroupHeartbeat).
  Eager revocation costs nothing here: a revoked partition is not stopped; only the partitions
  missing from the next assignment are, and the ones assigned again keep their loaded state;
- the sticky assignor (KIP-54, ``StickyPartitionAssignor``), so a rebalance moves as few
  partitions as it can (each move reloads a partition's state in its new process) while keeping
  the counts within one. Its state lives on the class in aiokafka, so each membership gets a
  subclass of its own (two memberships in one process would otherwise share one assignment);
- static membership (KIP-345, ``group_instance_id``) when an instance id is configured
  (``IPLEDGER_INSTANCE_ID``, e.g. a StatefulSet's pod name): a restart within the session
  timeout gets its partitions back without a rebalance. aiokafka then sends no LeaveGroup on
  stop, so the partitions of a static member that stops for good wait for its session timeout.

Driver errors are logged and retried here with a new consumer (the last assignment stands
meanwhile); nothing of aiokafka leaves this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from service import backoff
from service.adapters.kafka import driver

log = logging.getLogger("ipledger.members")
# The broker's lowest allowed session timeout by default (group.min.session.timeout.ms): a dead
# member is noticed this long after its last heartbeat, well within the 10 s takeover goal.
SESSION_TIMEOUT_S = 6.0
HEARTBEAT_S = 1.0
_POLL_MS = 1000


def group_id(topic: str) -> str:
    """The group of the allocators of ``topic`` (not the lag-monitoring group, which holds
    offsets committed by manually assigned consumers and must have no members)."""
    return f"ipledger-run.{topic}"


class KafkaMembership:
    """One group consumer of the events topic; its assignment is this process's partitions."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        instance_id: str | None = None,
        client_id: str = "ipledger-run",
        session_timeout_s: float = SESSION_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._instance_id = instance_id
        self._client_id = client_id
        self._session_timeout_s = session_timeout_s
        self._heartbeat_s = heartbeat_s
        # A class of its own: aiokafka's sticky assignor keeps the last assignment on the class.
        self._assignor = type(
            "IpledgerSticky",
            (StickyPartitionAssignor,),
            {"member_assignment": None, "generation": StickyPartitionAssignor.generation},
        )

    async def run(self, assigned: Callable[[frozenset[int]], None]) -> None:
        """Be a member until cancelled; a failing consumer is replaced after a backoff."""
        failures = 0
        while True:
            consumer = self._consumer()
            consumer.subscribe([self._topic], listener=_Listener(consumer, self._topic, assigned))
            try:
                await consumer.start()
                while True:
                    # Paused partitions: returns nothing, but counts as a poll.
                    await consumer.getmany(timeout_ms=_POLL_MS)
                    failures = 0
            except driver.DRIVER_ERRORS as exc:
                failures += 1
                delay = backoff.delay(failures, initial_s=0.5, max_s=self._session_timeout_s)
                log.warning(
                    "allocator group %s: %r; rejoining in %.1fs", group_id(self._topic), exc, delay
                )
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._session_timeout_s):
                    try:
                        await consumer.stop()  # leaves the group (a static member excepted)
                    except driver.DRIVER_ERRORS as exc:
                        log.warning("allocator group %s: leaving: %r", group_id(self._topic), exc)
            await anyio.sleep(delay)

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            group_id=group_id(self._topic),
            group_instance_id=self._instance_id,
            partition_assignment_strategy=(self._assignor,),
            session_timeout_ms=driver.milliseconds(self._session_timeout_s),
            heartbeat_interval_ms=driver.milliseconds(self._heartbeat_s),
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Pauses what the group assigns (nothing is read here) and reports it."""

    def __init__(
        self, consumer: AIOKafkaConsumer, topic: str, assigned: Callable[[frozenset[int]], None]
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Eager rebalancing revokes everything each time: nothing is stopped until the next
        # assignment shows what really moved (meanwhile the writer leases fence).
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer.pause(*assigned)
        mine = frozenset(tp.partition for tp in assigned if tp.topic == self._topic)
        log.info("allocator group %s: assigned partitions %s", group_id(self._topic), sorted(mine))
        self._assigned(mine)
