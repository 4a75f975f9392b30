"""The allocator loop (``allocator.PartitionAllocator``) against the in-memory adapters.

No service: the log is a ``MemoryEventLog``, the projection a ``MemoryProjection`` whose tables
(the "database") several allocators share and whose clock the test moves, so a lease expires
when the test says so and not after a sleep. The memory projection writes the rows PostgreSQL
would and rebuilds every state it loads from them, refuses what PostgreSQL would refuse (a
second decision for one offset among it), and can be told to fail (``fail_next``) or to refuse
rows (``add_check``, a CHECK constraint). What is checked, each time against ``simulate`` over
the same log:

- straight through: every record decided once, the projection equal to ``simulate``;
- batching: a batch holds at most ``batch_max_records`` records, batches follow each other
  without a gap, one decision per offset;
- fencing: a second allocator takes the lease of one that stalled past it; the first one's next
  commit is refused (``FencedError``), it writes nothing, stands by and does not lead again;
- reload after a failure: a commit that fails (before it landed, or after) makes the loop reload
  what is committed and go on, no record applied twice; a failed load is retried;
- isolation: a batch the projection refuses for one record's data is committed without it, the
  record rejected with the database's reason, the rest applied once; a rejection refused too is
  stored bare; a database that refuses even constant rows holds the partition up instead of
  skipping the record;
- the outbox relay publishes every committed decision in offset order, at least once.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import pytest

from service import allocator, errors, ports
from service.adapters import memory
from service.allocator.loop import HEAD_KEY
from service.domain import allocation, document, events, state
from tests import fakes, waiting
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio

DEADLINE_S = 20.0
SETTINGS = allocator.LoopSettings(
    batch_max_records=50,
    batch_max_wait_s=0.01,
    lease_poll_s=0.01,
    # Renewing only in commits (and after a load): then a stale writer's first write is a commit.
    renew_every_s=600.0,
    backoff_initial_s=0.001,
    backoff_max_s=0.01,
)
POISON = "ns/poison"
CHECK = 'CheckViolationError: new row for relation "pod_ip" violates check constraint "poison"'


class CountingProjection(memory.MemoryProjection):
    """A memory projection that counts the commits refused to it for a lost lease."""

    fenced_commits = 0

    async def commit(self, batch: ports.Batch) -> None:
        try:
            await super().commit(batch)
        except errors.FencedError:
            self.fenced_commits += 1
            raise


class Deployment:
    """One log and one projection database, and allocators on them that the test starts."""

    def __init__(self) -> None:
        self.clock = fakes.ManualClock()
        self.tables = memory.MemoryProjectionTables(clock=self.clock)
        self.log = memory.MemoryEventLog(clock_ms=lambda: 1_795_000_000_000)
        self.reader = memory.MemoryProjectionReader(self.tables)
        self.appended: list[bytes] = []
        self.batches: list[ports.Batch] = []
        self._tasks: anyio.abc.TaskGroup | None = None
        self._stops: list[anyio.Event] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A scope for allocators: the ones started in it are stopped when it ends."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                for stop in self._stops:
                    stop.set()

    async def append(self, values: Sequence[bytes]) -> None:
        await self.log.append([(key_of(value), value) for value in values])
        self.appended.extend(values)

    def start(
        self,
        holder: str = "writer",
        *,
        settings: allocator.LoopSettings = SETTINGS,
        sink: ports.DecisionSink | None = None,
    ) -> tuple[allocator.PartitionAllocator, CountingProjection]:
        """Start an allocator process for partition 0; it runs until ``running`` ends."""
        assert self._tasks is not None, "start allocators inside `async with running()`"
        projection = CountingProjection(self.tables, holder=holder, lease_ttl_s=6.0)
        worker = allocator.PartitionAllocator(
            self.log, projection, 0, settings=settings, sink=sink, on_commit=self.batches.append
        )
        stop = anyio.Event()
        self._stops.append(stop)
        self._tasks.start_soon(worker.run, stop)
        return worker, projection

    async def committed(self) -> int:
        """The partition's committed next offset."""
        positions = await self.reader.positions()
        return positions[0].next_offset if positions else 0

    async def assert_decided_once_as_simulate(self, refused: frozenset[int] = frozenset()) -> None:
        """Every offset has one decision, the simulated one (``refused``: rejected unstorable),
        and the projection's state is simulate's over the log without the refused records."""
        kept = [value for offset, value in enumerate(self.appended) if offset not in refused]
        oracle = state.State()
        expected = iter([allocation.apply_record(oracle, value)[0] for value in kept])
        decisions = await self.reader.decisions(0)
        assert [d.offset for d in decisions] == list(range(len(self.appended)))
        for decision in decisions:
            if decision.offset in refused:
                assert decision.error is not None
                assert decision.error.startswith(allocator.UNSTORABLE)
            else:
                assert decision.body == events.encode_decision(next(expected)), decision.offset
        assert document.digest(await self.reader.state()) == document.digest(oracle)


def reached(worker: allocator.PartitionAllocator, end: int) -> Callable[[], bool]:
    return lambda: worker.metrics.next_offset.get(0, -1) >= end


async def reach(worker: allocator.PartitionAllocator, end: int) -> None:
    """Wait until ``worker`` has committed every record below ``end``."""
    await waiting.until(
        reached(worker, end),
        timeout=DEADLINE_S,
        what=lambda: f"offset {end} committed (at {worker.metrics.next_offset.get(0, -1)})",
    )


@pytest.fixture
def deployment() -> Deployment:
    return Deployment()


async def test_every_record_is_decided_once_and_the_projection_is_simulates(
    deployment: Deployment,
) -> None:
    await deployment.append(mixed_stream(600, seed=1, clusters=("default", "east")))
    async with deployment.running():
        worker, _ = deployment.start()
        await reach(worker, 600)
        await deployment.assert_decided_once_as_simulate()
        assert worker.metrics.records_applied == 600
        assert worker.metrics.records_rejected == len(await deployment.reader.rejections(0)) > 0
        assert (worker.metrics.takeovers, worker.metrics.failures, worker.metrics.fenced) == (
            1,
            0,
            0,
        )


async def test_batches_hold_at_most_batch_max_records_one_decision_per_offset(
    deployment: Deployment,
) -> None:
    records = mixed_stream(155, seed=2)
    await deployment.append(records[:125])
    async with deployment.running():
        worker, _ = deployment.start()
        await reach(worker, 125)
        # Everything was there when it started: full batches, then the rest.
        assert [len(batch.applied) for batch in deployment.batches] == [50, 50, 25]
        await deployment.append(records[125:])
        await reach(worker, 155)
        offset = 0
        for batch in deployment.batches:
            assert 1 <= len(batch.applied) <= SETTINGS.batch_max_records
            assert [a.record.offset for a in batch.applied] == list(
                range(offset, batch.next_offset)
            )
            offset = batch.next_offset
        assert offset == 155
        assert worker.metrics.batches_committed == len(deployment.batches)
        await deployment.assert_decided_once_as_simulate()


async def test_a_stalled_writer_is_fenced_when_another_takes_the_lease_and_stands_by(
    deployment: Deployment,
) -> None:
    records = mixed_stream(220, seed=3)
    await deployment.append(records[:100])
    async with deployment.running():
        first, first_projection = deployment.start("first")
        await reach(first, 100)
        # The first writer stalls: its lease runs out (on the database's clock) and the second,
        # standing by, takes it over and loads what was committed.
        deployment.clock.now += datetime.timedelta(seconds=7)
        second, _ = deployment.start("second")
        await waiting.until(
            lambda: second.metrics.leader.get(0, False) and reached(second, 100)(),
            timeout=DEADLINE_S,
            what="the second writer leading at offset 100",
        )
        # Both read the next records; only the second may commit them.
        await deployment.append(records[100:150])
        await waiting.until(
            lambda: first.metrics.fenced == 1 and reached(second, 150)(),
            timeout=DEADLINE_S,
            what="the first writer fenced and the second at offset 150",
        )
        assert first_projection.fenced_commits >= 1
        assert first.metrics.leader[0] is False
        assert first.metrics.records_applied == 100
        assert first.metrics.next_offset[0] == 100
        await deployment.append(records[150:])
        await reach(second, 220)
        # The first stood by all along: the second's lease is valid on the database's clock.
        assert (first.metrics.takeovers, first.metrics.leader[0]) == (1, False)
        assert second.metrics.takeovers == 1
        (lease,) = await deployment.reader.leases()
        assert (lease.holder, lease.expired) == ("second", False)
        await deployment.assert_decided_once_as_simulate()


@pytest.mark.parametrize("landed", [False, True], ids=["before-it-landed", "after-it-landed"])
async def test_a_failed_commit_reloads_what_is_committed_and_applies_nothing_twice(
    deployment: Deployment, landed: bool
) -> None:
    await deployment.append(mixed_stream(300, seed=4))
    failed: list[int] = []

    def fail_the_second_commit(batch: ports.Batch) -> None:
        deployment.batches.append(batch)
        if not failed:
            failed.append(batch.next_offset)
            deployment.tables.fail_next("commit", landed=landed)

    projection = memory.MemoryProjection(deployment.tables, holder="writer")
    worker = allocator.PartitionAllocator(
        deployment.log, projection, 0, settings=SETTINGS, on_commit=fail_the_second_commit
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await reach(worker, 300)
        stop.set()
    assert (worker.metrics.failures, worker.metrics.takeovers) == (1, 2)
    # The batch after the first: committed anew from offset 50, or landed and continued after.
    starts = [batch.applied[0].record.offset for batch in deployment.batches]
    assert starts.count(50) == (0 if landed else 1)
    assert starts.count(100) == 1
    assert worker.metrics.records_unstorable == 0
    await deployment.assert_decided_once_as_simulate()


async def test_a_failed_load_is_retried(deployment: Deployment) -> None:
    await deployment.append(mixed_stream(80, seed=5))
    deployment.tables.fail_next("load", count=2)
    async with deployment.running():
        worker, _ = deployment.start()
        await reach(worker, 80)
        assert (worker.metrics.failures, worker.metrics.takeovers) == (2, 3)
        await deployment.assert_decided_once_as_simulate()


def edge_stream(total: int, poison_at: Sequence[int]) -> list[bytes]:
    """A pool, a node and address requests; those at ``poison_at`` by the owner a check refuses."""

    def event(body: dict[str, object]) -> bytes:
        return json.dumps(body).encode()

    values = [
        event(
            {
                "type": "pool.configured",
                "id": "pool",
                "clusterPoolIPv4PodCIDRList": ["10.9.0.0/16"],
                "clusterPoolIPv4MaskSize": 22,
            }
        ),
        event({"type": "node.added", "id": "node", "node": "edge-1"}),
    ]
    for offset in range(len(values), total):
        owner = POISON if offset in poison_at else f"ns/o-{offset}"
        values.append(
            event({"type": "ip.requested", "id": f"r{offset}", "node": "edge-1", "owner": owner})
        )
    return values


async def test_a_record_the_projection_cannot_store_is_rejected_and_the_rest_committed(
    deployment: Deployment,
) -> None:
    poison = frozenset({37, 38, 120})
    deployment.tables.add_check("pod_ip", "poison", lambda row: row.owner != POISON)
    await deployment.append(edge_stream(200, poison))
    async with deployment.running():
        worker, _ = deployment.start()
        await reach(worker, 200)
        assert worker.metrics.records_unstorable == len(poison)
        await deployment.assert_decided_once_as_simulate(refused=poison)
        error = f"{allocator.UNSTORABLE}: {CHECK}"
        decisions = await deployment.reader.decisions(0)
        rejections = await deployment.reader.rejections(0)
        assert [r.offset for r in rejections] == sorted(poison)
        for rejection in rejections:
            decision = decisions[rejection.offset]
            assert (decision.event_id, decision.type, decision.cluster) == (None, None, "default")
            assert decision.error == json.loads(decision.body)["error"] == error
            assert (rejection.reason, rejection.raw) == (
                error,
                deployment.appended[rejection.offset],
            )
            assert rejection.key == b"default"
        assert await deployment.reader.owner_addresses("default", POISON) == []


async def test_a_rejection_the_projection_refuses_too_is_stored_bare(
    deployment: Deployment,
) -> None:
    deployment.tables.add_check("pod_ip", "poison", lambda row: row.owner != POISON)
    deployment.tables.add_check("rejection", "keyless", lambda row: row.key is None)
    await deployment.append(edge_stream(60, [30]))
    async with deployment.running():
        worker, _ = deployment.start()
        await reach(worker, 60)
        (rejection,) = await deployment.reader.rejections(0)
        assert (rejection.offset, rejection.key, rejection.reason) == (
            30,
            None,
            allocator.UNSTORABLE,
        )
        assert rejection.raw == deployment.appended[30]
        assert (await deployment.reader.decisions(0, 30, 1))[0].error == allocator.UNSTORABLE
        await deployment.assert_decided_once_as_simulate(refused=frozenset({30}))


async def test_a_database_refusing_constant_rows_holds_the_partition_up_without_skipping(
    deployment: Deployment,
) -> None:
    deployment.tables.add_check("pod_ip", "poison", lambda row: row.owner != POISON)
    deployment.tables.add_check(
        "decision", "no_rejections", lambda row: not (row.error or "").startswith("the projection")
    )
    await deployment.append(edge_stream(80, [40]))
    async with deployment.running():
        worker, _ = deployment.start()
        await waiting.until(
            lambda: worker.metrics.failures >= 3, timeout=DEADLINE_S, what="three failed commits"
        )
        # All before the record is committed, nothing from it on: no offset without a decision.
        assert await deployment.committed() == 40
        deployment.tables.drop_check("no_rejections")
        await reach(worker, 80)
        await deployment.assert_decided_once_as_simulate(refused=frozenset({40}))


async def test_committed_decisions_are_published_in_offset_order_at_least_once(
    deployment: Deployment,
) -> None:
    sink = memory.MemoryDecisionSink()
    sink.fail_next(delivered=3)
    await deployment.append(mixed_stream(240, seed=6))
    async with deployment.running():
        worker, _ = deployment.start(sink=sink)
        await reach(worker, 240)
        await waiting.until(
            lambda: deployment.tables.outbox.get(0) == 240,
            timeout=DEADLINE_S,
            what="the outbox position at 240",
        )
        everything = list(sink.published)
        published = [(k, v) for k, v in everything if k != HEAD_KEY]
        offsets = [json.loads(value)["offset"] for _, value in published]
        # The failed publish delivered three decisions, published again by the retry.
        assert offsets == [0, 1, 2, *range(240)]
        # Each tree head after the decisions it covers, and the last one covering them all.
        sizes = []
        for at, (key, value) in enumerate(everything):
            if key == HEAD_KEY:
                size = json.loads(value)["treeHead"]["size"]
                before = [json.loads(v)["offset"] for k, v in everything[:at] if k != HEAD_KEY]
                assert size - 1 in before
                sizes.append(size)
        assert sizes and sizes[-1] == 240
        decisions = await deployment.reader.decisions(0)
        first = {json.loads(value)["offset"]: (key, value) for key, value in reversed(published)}
        for decision in decisions:
            key, value = first[decision.offset]
            assert key == (decision.event_id or "").encode()
            body = json.loads(value)
            assert (body.pop("partition"), body.pop("offset")) == (0, decision.offset)
            assert body == json.loads(decision.body)
