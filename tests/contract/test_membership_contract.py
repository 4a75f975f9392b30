"""The contract of ``ports.PartitionMembership``, run against every adapter.

Against ``MemoryGroup`` (no service), ``PostgresMembership`` (member rows in a fresh migrated
database, ``pg_dsn``) and ``KafkaMembership`` (a consumer group on a topic of its own on the
session's broker, ``kafka_broker``). Each member runs in this process as a task.

What the port promises, and so what is asserted for every adapter:

- a lone member is assigned every partition;
- members share the partitions: each one exactly once, the counts within one;
- when a member leaves (its ``run`` cancelled), the others are assigned its partitions.

Not asserted: how soon (memory at once, PostgreSQL at the next heartbeat, Kafka after a
rebalance, all within the deadline) nor which member gets which partition (the Kafka group's
assignor decides that, not ``service.shares``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
import pytest

from service import ports
from service.adapters import memory_membership
from service.adapters.kafka import log as kafka_log
from service.adapters.kafka import membership as kafka_membership
from service.adapters.postgres import members as pg_members
from tests import waiting
from tests.harness.kafka import KafkaBroker

pytestmark = pytest.mark.anyio
PARTITIONS = (0, 1, 2, 3)
DEADLINE_S = 30.0

# name -> a member of the test's group
NewMember = Callable[[str], ports.PartitionMembership]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
async def new_member(request: pytest.FixtureRequest) -> NewMember:
    if request.param == "memory":
        group = memory_membership.MemoryGroup(PARTITIONS)
        return group.member
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return lambda name: pg_members.PostgresMembership.from_dsn(
            dsn, PARTITIONS, name, ttl_s=3.0, heartbeat_s=0.2
        )
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    topic = f"ipledger.contract.{uuid.uuid4().hex[:12]}"
    await kafka_log.ensure_topics(broker.bootstrap, topic, len(PARTITIONS))
    return lambda name: kafka_membership.KafkaMembership(broker.bootstrap, topic, client_id=name)


class Members:
    """Members running as tasks, and what each was last assigned."""

    def __init__(self, tasks: anyio.abc.TaskGroup, new_member: NewMember) -> None:
        self._tasks = tasks
        self._new = new_member
        self.assigned: dict[str, frozenset[int]] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}

    def start(self, name: str) -> None:
        membership = self._new(name)
        scope = anyio.CancelScope()
        self._scopes[name] = scope

        def assigned(partitions: frozenset[int]) -> None:
            self.assigned[name] = partitions

        async def run() -> None:
            with scope:
                await membership.run(assigned)

        self._tasks.start_soon(run)

    def stop(self, name: str) -> None:
        self._scopes.pop(name).cancel()
        self.assigned.pop(name, None)

    def shared(self, names: set[str]) -> bool:
        """Every partition once over ``names``, the counts within one."""
        if set(self.assigned) != names:
            return False
        parts = [p for name in names for p in self.assigned[name]]
        counts = [len(self.assigned[name]) for name in names]
        return sorted(parts) == list(PARTITIONS) and max(counts) - min(counts) <= 1

    async def wait_shared(self, names: set[str]) -> None:
        await waiting.until(
            lambda: self.shared(names),
            timeout=DEADLINE_S,
            what=lambda: f"{len(PARTITIONS)} partitions shared by {sorted(names)}: {self.assigned}",
            interval=0.05,
        )


async def test_a_lone_member_leads_every_partition(new_member: NewMember) -> None:
    async with anyio.create_task_group() as tasks:
        members = Members(tasks, new_member)
        members.start("a")
        await members.wait_shared({"a"})
        assert members.assigned["a"] == frozenset(PARTITIONS)
        tasks.cancel_scope.cancel()


async def test_members_share_and_take_over_from_one_that_leaves(new_member: NewMember) -> None:
    async with anyio.create_task_group() as tasks:
        members = Members(tasks, new_member)
        members.start("a")
        await members.wait_shared({"a"})
        members.start("b")
        await members.wait_shared({"a", "b"})
        assert {len(members.assigned[name]) for name in "ab"} == {2}
        members.stop("a")
        await members.wait_shared({"b"})
        tasks.cancel_scope.cancel()
