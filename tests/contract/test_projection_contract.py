"""The contract of ``ports.Projection``, written once and run against every adapter.

Each test runs against ``MemoryProjection`` (projections over one ``MemoryProjectionTables`` whose
clock the test moves) and ``PostgresProjection`` (a fresh migrated database of the test's own,
``pg_dsn``, requested only by the PostgreSQL parameter, so ``-m "not postgres"`` starts nothing).
Several projections on one database with different holders stand for several allocator
processes. Batches are made as the allocator makes them (``allocator.apply_records`` over
records of ``tests.streams``); time passes with ``Database.wait`` (memory: the clock moves at
once; PostgreSQL: the database's clock runs while the test sleeps), and a takeover is waited for
as a condition with a deadline.

Asserted for every adapter (the port's docstring states the contract):

- an empty projection: offset 0, nothing consumed, an empty state, no decisions, outbox at 0;
- a commit writes the batch and its offset together: afterwards the offset, the consumed
  offsets, one decision per offset (the published JSON) and a loaded state equal to the
  writer's (and to ``simulate``'s) digest; ``load()`` of all partitions too;
- ``load`` gives the state as of the last commit whatever order the rows come back in: nodes in
  arrival order (not name order), and the loaded state decides the next events as the live one;
- the lease: one holder at a time; the same holder taking it again gets a new token, which
  fences the old one; ``release`` hands it over at once and does nothing with a stale token;
  an expired lease is taken over, and the old writer's ``commit``, ``renew`` and
  ``advance_outbox`` raise ``FencedError`` and write nothing; renewing keeps others out past
  the TTL; a lapsed lease cannot be renewed even when nobody took it;
- a batch holding a value the store cannot keep raises ``ProjectionDataError`` with a reason and
  writes nothing; the lease is kept and the next batch commits;
- a partition fed by another log is refused with ``ConfigurationError``;
- the outbox pages decisions by ``start``/``limit``, and its position moves only when fenced;
- partitions are independent: their own leases, offsets and clusters.

Not asserted, because the adapters differ there on purpose: the text of a data error's reason
(PostgreSQL's words, or the memory adapter's naming the column), and what a failed connection
does (memory: ``fail_next``; tested with the allocator loop in tests/unit).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import msgspec
import pytest

from service import allocator, errors, ports
from service.adapters import memory
from service.adapters.memory_audit import MemoryAuditReader
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import projection as pg_projection
from service.domain import allocation, document, events, merkle, partitioning, state
from tests import fakes
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio

DEADLINE_S = 15.0
TTL_S = 1.0
LOG = "contract"


@dataclasses.dataclass
class Database:
    """One database of the adapter under test, and the projections opened on it."""

    new_projection: Callable[[str, float, str], ports.Projection]
    #: Let ``seconds`` pass on the database's clock.
    wait: Callable[[float], Awaitable[None]]
    #: The audit reader (``ports.AuditReader``) over the same database.
    new_audit: Callable[[], ports.AuditReader]
    opened: list[ports.Projection] = dataclasses.field(default_factory=list)
    audits: list[ports.AuditReader] = dataclasses.field(default_factory=list)

    def projection(
        self, holder: str = "writer", *, ttl: float = TTL_S, log: str = LOG
    ) -> ports.Projection:
        """A new projection (one allocator process) on this database, closed after the test."""
        opened = self.new_projection(holder, ttl, log)
        self.opened.append(opened)
        return opened

    def audit(self) -> ports.AuditReader:
        opened = self.new_audit()
        self.audits.append(opened)
        return opened


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    if request.param == "memory":
        clock = fakes.ManualClock()
        tables = memory.MemoryProjectionTables(clock=clock)

        async def move(seconds: float) -> None:
            clock.now += datetime.timedelta(seconds=seconds)

        db = Database(
            lambda holder, ttl, log: memory.MemoryProjection(
                tables, holder=holder, log_name=log, lease_ttl_s=ttl
            ),
            move,
            lambda: MemoryAuditReader(tables),
        )
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        db = Database(
            lambda holder, ttl, log: pg_projection.PostgresProjection.from_dsn(
                dsn, log_name=log, holder=holder, lease_ttl_s=ttl
            ),
            anyio.sleep,
            lambda: pg_audit.PostgresAuditReader.from_dsn(dsn),
        )
    try:
        yield db
    finally:
        for opened in db.opened:
            await opened.close()
        for audit in db.audits:
            await audit.close()


def records(values: Sequence[bytes], *, start: int = 0, partition: int = 0) -> list[ports.Record]:
    """``values`` as the log returns them from offset ``start`` of ``partition``."""
    return [
        ports.Record(
            partition=partition,
            offset=start + n,
            key=key_of(value),
            value=value,
            timestamp_ms=1_795_000_000_000 + start + n,
        )
        for n, value in enumerate(values)
    ]


def simulate(values: Sequence[bytes]) -> state.State:
    oracle = state.State()
    for value in values:
        allocation.apply_record(oracle, value)
    return oracle


def batch_of(
    current: state.State,
    values: Sequence[bytes],
    token: int,
    *,
    start: int,
    partition: int = 0,
    partitions: int = 1,
) -> ports.Batch:
    return allocator.apply_records(
        current,
        records(values, start=start, partition=partition),
        partition,
        token,
        partitions=partitions,
    )


async def acquired(projection: ports.Projection, partition: int = 0) -> int:
    token = await projection.try_acquire(partition)
    assert token is not None, "the lease should be free"
    return token


async def take_over(db: Database, projection: ports.Projection, partition: int = 0) -> int:
    """Wait (with a deadline) until ``projection`` gets the lease, letting the clock run."""
    with anyio.fail_after(DEADLINE_S):
        while (token := await projection.try_acquire(partition)) is None:
            await db.wait(TTL_S / 10)
    return token


async def test_an_empty_projection_has_nothing_committed(database: Database) -> None:
    projection = database.projection()
    assert await projection.next_offset(0) == 0
    assert await projection.consumed_offsets() == {}
    loaded = await projection.load([0])
    assert (loaded.next_offset, loaded.state.clusters) == (0, {})
    assert (await projection.load()).state.clusters == {}
    assert await projection.decisions_after(0, 0, 100) == []
    assert await projection.outbox_offset(0) == 0


async def test_a_commit_writes_the_batch_and_its_offset_together(database: Database) -> None:
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(300, seed=4)
    current = (await projection.load([0])).state
    for start in range(0, len(values), 100):
        batch = batch_of(current, values[start : start + 100], token, start=start)
        await projection.commit(batch)
        end = start + 100
        assert await projection.next_offset(0) == end
        assert await projection.consumed_offsets() == {0: end}
        loaded = await projection.load([0])
        assert loaded.next_offset == end
        assert document.digest(loaded.state) == document.digest(current)
        assert document.digest(loaded.state) == document.digest(simulate(values[:end]))
    decided = await projection.decisions_after(0, 0, 1000)
    assert [offset for offset, _, _ in decided] == list(range(len(values)))
    oracle = state.State()
    for (_, event_id, body), value in zip(decided, values, strict=True):
        decision, _ = allocation.apply_record(oracle, value)
        assert body == events.encode_decision(decision)
        assert event_id == decision.id
    every = await projection.load()
    assert every.next_offset == 0
    assert document.state_document(every.state) == document.state_document(simulate(values))


def _event(type_: str, **fields: object) -> bytes:
    return msgspec.json.encode({"type": type_, "id": f"{type_}-{fields.get('node', '')}", **fields})


ARRIVALS = [
    _event(
        "pool.configured",
        clusterPoolIPv4PodCIDRList=["10.1.0.0/24"],
        clusterPoolIPv4MaskSize=26,
    ),
    _event("node.added", node="n-c"),
    _event("node.added", node="n-a"),
    _event("node.added", node="n-b"),
    _event("node.added", node="n-d"),
    # Full now (four /26 in a /24): n-e waits, and n-a's deletion gives its block to n-e.
    _event("node.added", node="n-e"),
    _event("node.deleted", node="n-a", id="del-a"),
    _event("node.added", node="n-a", id="again-a"),
]
AFTERWARDS = [
    _event("node.deleted", node="n-c", id="del-c"),
    _event("ip.requested", node="n-b", owner="ns/p1"),
    _event("node.deleted", node="n-e", id="del-e"),
]


async def test_load_restores_nodes_in_arrival_order_whatever_the_rows_order(
    database: Database,
) -> None:
    projection = database.projection()
    token = await acquired(projection)
    live = state.State(track_changes=True)
    await projection.commit(batch_of(live, ARRIVALS[:4], token, start=0))
    await projection.commit(batch_of(live, ARRIVALS[4:], token, start=4))
    loaded = (await projection.load([0])).state
    arrival = ["n-c", "n-b", "n-d", "n-e", "n-a"]
    assert [node.name for node in loaded.clusters["default"].by_arrival()] == arrival
    assert list(loaded.clusters["default"].nodes) == arrival
    assert loaded.clusters["default"].waiting.names() == ["n-a"]
    assert document.digest(loaded) == document.digest(live)
    later = records(AFTERWARDS, start=len(ARRIVALS))
    assert allocator.apply_records(loaded, later, 0, token, partitions=1).applied == (
        allocator.apply_records(live, later, 0, token, partitions=1).applied
    )
    assert document.digest(loaded) == document.digest(live)


async def test_one_holder_at_a_time_and_a_new_token_fences_the_old(database: Database) -> None:
    first, second = database.projection("first"), database.projection("second")
    token = await acquired(first)
    assert token > 0
    assert await second.try_acquire(0) is None
    again = await acquired(first)
    assert again > token
    with pytest.raises(errors.FencedError):
        await first.renew(0, token)
    await first.renew(0, again)
    assert await second.try_acquire(0) is None


async def test_release_hands_the_lease_over_at_once(database: Database) -> None:
    first, second = database.projection("first"), database.projection("second")
    token = await acquired(first)
    batch = batch_of((await first.load([0])).state, mixed_stream(20), token, start=0)
    await first.release(0, token)
    taken = await acquired(second)
    assert taken > token
    with pytest.raises(errors.FencedError):
        await first.commit(batch)
    assert await second.next_offset(0) == 0
    assert await second.decisions_after(0, 0, 100) == []
    # Releasing with a token that is no longer current changes nothing.
    await first.release(0, token)
    assert await first.try_acquire(0) is None
    await second.renew(0, taken)


async def test_an_expired_lease_is_taken_over_and_the_old_writer_is_fenced(
    database: Database,
) -> None:
    first, second = database.projection("first"), database.projection("second")
    values = mixed_stream(60, seed=9)
    token = await acquired(first)
    await first.commit(batch_of((await first.load([0])).state, values[:30], token, start=0))
    await first.advance_outbox(0, token, 10)
    stalled = batch_of((await first.load([0])).state, values[30:], token, start=30)
    # The first writer stalls past its lease; the second takes over.
    taken = await take_over(database, second)
    assert taken > token
    with pytest.raises(errors.FencedError):
        await first.commit(stalled)
    with pytest.raises(errors.FencedError):
        await first.renew(0, token)
    with pytest.raises(errors.FencedError):
        await first.advance_outbox(0, token, 30)
    assert await second.next_offset(0) == 30
    assert await second.outbox_offset(0) == 10
    assert len(await second.decisions_after(0, 0, 100)) == 30
    current = (await second.load([0])).state
    await second.commit(batch_of(current, values[30:], taken, start=30))
    assert await second.next_offset(0) == len(values)
    assert document.digest((await first.load([0])).state) == document.digest(simulate(values))


async def test_renewing_keeps_the_lease_past_its_ttl(database: Database) -> None:
    first, second = database.projection("first"), database.projection("second")
    token = await acquired(first)
    for _ in range(6):  # 1.8 TTLs in all, renewed every 0.3 of one
        await database.wait(0.3 * TTL_S)
        await first.renew(0, token)
        assert await second.try_acquire(0) is None


async def test_a_lapsed_lease_cannot_be_renewed_even_if_nobody_took_it(
    database: Database,
) -> None:
    first = database.projection("first")
    token = await acquired(first)
    await database.wait(1.5 * TTL_S)
    with pytest.raises(errors.FencedError):
        await first.renew(0, token)


@pytest.mark.parametrize("bad", ["nul \x00 inside", "lone surrogate \ud800"])
async def test_a_batch_the_store_cannot_hold_writes_nothing_and_keeps_the_lease(
    database: Database, bad: str
) -> None:
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(40, seed=12)
    current = (await projection.load([0])).state
    await projection.commit(batch_of(current, values[:20], token, start=0))
    refused = batch_of((await projection.load([0])).state, values[20:], token, start=20)
    poisoned = refused.applied[5]
    refused.applied[5] = dataclasses.replace(
        poisoned, decision=msgspec.structs.replace(poisoned.decision, id=bad)
    )
    with pytest.raises(errors.ProjectionDataError) as raised:
        await projection.commit(refused)
    assert raised.value.reason
    assert "\x00" not in raised.value.reason
    assert await projection.next_offset(0) == 20
    assert len(await projection.decisions_after(0, 0, 100)) == 20
    assert document.digest((await projection.load([0])).state) == document.digest(current)
    await projection.renew(0, token)
    await projection.commit(batch_of(current, values[20:], token, start=20))
    assert await projection.next_offset(0) == 40


async def test_a_partition_fed_by_another_log_is_refused(database: Database) -> None:
    one = database.projection("one", log="one")
    token = await acquired(one)
    await one.commit(batch_of((await one.load([0])).state, mixed_stream(10), token, start=0))
    two = database.projection("two", log="two")
    with pytest.raises(errors.ConfigurationError):
        await two.next_offset(0)
    with pytest.raises(errors.ConfigurationError):
        await two.load([0])


async def test_the_outbox_pages_decisions_and_moves_when_fenced(database: Database) -> None:
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(50, seed=3)
    await projection.commit(batch_of(state.State(track_changes=True), values, token, start=0))
    first = await projection.decisions_after(0, 0, 20)
    rest = await projection.decisions_after(0, 20, 1000)
    assert [row[0] for row in first] == list(range(20))
    assert [row[0] for row in rest] == list(range(20, 50))
    assert await projection.decisions_after(0, 50, 10) == []
    assert await projection.outbox_offset(0) == 0
    await projection.advance_outbox(0, token, 20)
    assert await projection.outbox_offset(0) == 20
    with pytest.raises(errors.FencedError):
        await projection.advance_outbox(0, token + 1, 50)
    assert await projection.outbox_offset(0) == 20


def _cluster_on(partition: int, partitions: int) -> str:
    return next(
        name
        for name in (f"c{n}" for n in range(100))
        if partitioning.home_partition(name, partitions) == partition
    )


async def test_partitions_have_their_own_leases_offsets_and_clusters(database: Database) -> None:
    first, second = database.projection("first"), database.projection("second")
    names = [_cluster_on(p, 2) for p in (0, 1)]
    streams = [mixed_stream(30 + 10 * p, seed=p, clusters=(names[p],)) for p in (0, 1)]
    zero = await acquired(first, 0)
    assert await second.try_acquire(0) is None
    one = await acquired(second, 1)
    await first.commit(
        batch_of(state.State(track_changes=True), streams[0], zero, start=0, partitions=2)
    )
    await second.commit(
        batch_of(
            state.State(track_changes=True), streams[1], one, start=0, partition=1, partitions=2
        )
    )
    assert await first.consumed_offsets() == {0: 30, 1: 40}
    assert sorted((await first.load([1])).state.clusters) == [names[1]]
    assert (await first.load([1])).next_offset == 40
    assert sorted((await first.load()).state.clusters) == sorted(names)
    assert sorted((await first.load([0, 1])).state.clusters) == sorted(names)
    assert [row[0] for row in await second.decisions_after(1, 0, 100)] == list(range(40))


async def test_completed_subtree_roots_commit_with_their_batch_and_are_stored_once(
    database: Database,
) -> None:
    # What O(log n) proofs read (merkle.STORED_LEVEL and up): every perfect subtree the
    # batches' leaves completed, whatever the batch bounds, in the batch's transaction.
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(1_300, seed=13)
    current, tree = (await projection.load([0])).state, merkle.Tree()
    evidence = allocator.TreeSettings(head_every=10_000, digest_every=10_000)
    start = 0
    for size in (1, 254, 1, 300, 744):
        batch = allocator.apply_records(
            current,
            records(values[start : start + size], start=start),
            0,
            token,
            partitions=1,
            tree=tree,
            evidence=evidence,
        )
        start += size
        if start == len(values):
            # A second store of a stored root keeps the first (a conflict never refuses a batch).
            batch.subtrees.append(merkle.Subtree(0, merkle.STORED_LEVEL, bytes(32)))
        await projection.commit(batch)
    oracle = state.State()
    leaves = [
        merkle.leaf_hash(events.encode_decision(allocation.apply_record(oracle, v)[0]), v)
        for v in values
    ]
    expected = {}
    for level in range(merkle.STORED_LEVEL, 11):
        for first in range(0, len(values) - (1 << level) + 1, 1 << level):
            root = merkle.subtree_root(leaves, first, first + (1 << level))
            expected[(first, level)] = root
    audit = database.audit()
    assert (await audit.rows([0])).tree_nodes == {
        (0, level, first): (root.hex(),) for (first, level), root in expected.items()
    }
    wanted = [(0, 8), (256, 8), (0, 10), (1024, 8), (1280, 8), (100, 8), (0, 11)]
    assert await audit.subtrees(0, wanted) == {w: expected[w] for w in wanted if w in expected}
    assert await audit.subtrees(1, wanted) == {}
    assert await audit.leaves(0, 300, 250) == leaves[250:300]
    assert await audit.leaves(0, 2, 0) == leaves[:2]
    # One head by its size, or the latest (a head per batch end: 1, 255, 256, 556, 1,300).
    latest, of_256 = await audit.head(0), await audit.head(0, 256)
    assert latest is not None and latest.head.size == len(values)
    assert latest == (await audit.heads(0))[-1]
    assert of_256 is not None and of_256.head.size == 256
    assert await audit.head(0, 257) is None
    assert await audit.head(1) is None


async def test_the_digest_of_committed_decisions_is_ports_decision_digest_of_them(
    database: Database,
) -> None:
    # What replay --verify compares a chunk's decisions with: each adapter's digest of a range
    # must be the one computed here over the same decisions (PostgreSQL's in SQL), and must
    # change with any byte of a body or leaf, and with a decision missing.
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(300, seed=17)
    current = (await projection.load([0])).state
    batch = allocator.apply_records(
        current, records(values), 0, token, partitions=1, tree=merkle.Tree()
    )
    await projection.commit(batch)
    audit = database.audit()
    stored = await audit.decisions(0, 0, len(values))
    for start, end in ((0, 300), (10, 137), (299, 300), (50, 50), (290, 400)):
        wanted = [(d.offset, d.body, d.leaf) for d in stored if start <= d.offset < end]
        assert await audit.decision_digest(0, start, end) == (
            len(wanted),
            ports.decision_digest(wanted),
        )
    assert await audit.decision_digest(1, 0, 300) == (0, ports.decision_digest([]))
    whole = ports.decision_digest([(d.offset, d.body, d.leaf) for d in stored])
    first = stored[0]
    for changed in (
        [(first.offset, first.body + b" ", first.leaf)],
        [(first.offset, first.body, bytes(32))],
        [(first.offset, first.body, None)],
        [],
    ):
        rest = [(d.offset, d.body, d.leaf) for d in stored[1:]]
        assert ports.decision_digest(changed + rest) != whole


async def test_tree_heads_commit_with_their_batch_and_load_resumes_the_tree(
    database: Database,
) -> None:
    projection = database.projection()
    token = await acquired(projection)
    values = mixed_stream(250, seed=12)
    loaded = await projection.load([0])
    assert loaded.tree is None
    current, tree = loaded.state, merkle.Tree()
    evidence = allocator.TreeSettings(head_every=40, digest_every=120)
    for start in range(0, len(values), 100):
        batch = allocator.apply_records(
            current,
            records(values[start : start + 100], start=start),
            0,
            token,
            partitions=1,
            tree=tree,
            evidence=evidence,
        )
        await projection.commit(batch)
    heads = await projection.heads_between(0, 0, len(values))
    # Every 40 records and at each batch's end (100, 200, 250), chained, by size.
    assert [h.head.size for h in heads] == [40, 80, 100, 120, 160, 200, 240, 250]
    assert [h.head.previous for h in heads] == [None, *(h.hash.hex() for h in heads[:-1])]
    assert [h.head.state_digest is not None for h in heads] == [
        h.head.size % 120 == 0 for h in heads
    ]
    assert [h.head.size for h in await projection.heads_between(0, 100, 200)] == [120, 160, 200]
    oracle = state.State()
    leaves = [
        merkle.leaf_hash(events.encode_decision(allocation.apply_record(oracle, v)[0]), v)
        for v in values
    ]
    assert all(h.head.root == merkle.subtree_root(leaves, 0, h.head.size).hex() for h in heads)
    resumed = (await projection.load([0])).tree
    assert resumed is not None
    assert (resumed.size, resumed.root(), resumed.last_head) == (250, tree.root(), heads[-1].hash)
