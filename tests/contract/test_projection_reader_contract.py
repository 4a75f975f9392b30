"""The contract of ``ports.ProjectionReader``, written once and run against every adapter.

Each test runs against ``MemoryProjectionReader`` (over the tables of a ``MemoryProjection`` and
the ``MemorySyncTables`` of a ``MemorySyncStore``) and ``PostgresProjectionReader`` (a fresh
migrated database of the test's own, ``pg_dsn``, read through a role that may only ``SELECT``:
every query of the suite so proves the reader never writes). What the reader reads is written
the way production writes it: the allocator's batches (``allocator.apply_records``) committed by
the adapter's projection, the sync worker's progress recorded by its sync store.

Expected answers come from the pure core, not from the adapters: the state document, the nodes'
fields and the pool use from ``simulate`` over the same log, versions from the batches that
touched each node, holdings from a scripted story of one address (the point-in-time questions
of ``docs/operations.md``), decisions and rejections from what ``apply_records`` decided.

Asserted for every adapter (the port's docstring states the contract):

- ``state`` / ``state_document`` equal ``simulate``'s, byte for byte once encoded;
- ``clusters``: every cluster with its pool elements' totals and use, node CIDRs and pod
  addresses (as the core counts them);
- ``nodes``: by name, every field, each filter (error, conflict, waiting, prefix) and paging by
  ``after``/``limit``; ``node`` for one, None for an unknown or deleted one;
- ``holder`` now and at a time, ``address_history``, ``owner_addresses``, ``owner_history``:
  holdings with the events that began and ended them, in the order they started;
- ``decisions`` and ``rejections`` of a partition from an offset, at most a limit, and its
  ``last_rejections``;
- ``positions`` (consumed and published offsets) and ``leases`` (holder, token, expired);
- ``sync_progress``: every node (tombstones too) with the recorded version and error;
- unknown clusters, nodes, owners, addresses and partitions give empty answers, not errors.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import sqlalchemy as sa

from service import allocator, ports
from service.adapters import memory
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import sync_store
from service.domain import allocation, document, events, state
from service.domain.pool import IPV4, IPV6
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio

LOG = "contract"
READER_ROLE = "ipledger_reader"
BATCH = 37


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def _timed(body: dict[str, object], at: str) -> bytes:
    return json.dumps({**body, "time": f"2026-11-17T{at}Z"}).encode()


# One address's story in cluster "default" (IPv4 only): who held 10.4.0.1, .2 and .3, and when.
STORY = [
    _timed(
        {
            "type": "pool.configured",
            "id": "p",
            "clusterPoolIPv4PodCIDRList": ["10.4.0.0/16"],
            "clusterPoolIPv4MaskSize": 24,
        },
        "09:00:00",
    ),
    _timed({"type": "node.added", "id": "n", "node": "w1"}, "09:00:01"),
    _timed({"type": "ip.requested", "id": "a", "node": "w1", "owner": "shop/cart-1"}, "10:00:00"),
    _timed({"type": "ip.released", "id": "b", "node": "w1", "owner": "shop/cart-1"}, "12:00:00"),
    _timed({"type": "ip.requested", "id": "c", "node": "w1", "owner": "ops/probe"}, "13:00:00"),
    _timed({"type": "ip.released", "id": "d", "node": "w1", "owner": "ops/probe"}, "13:30:00"),
    _timed({"type": "ip.requested", "id": "e", "node": "w1", "owner": "shop/cart-2"}, "14:00:00"),
]
OFFSET = {event_id: n for n, event_id in enumerate("pnabcde")}


def _log() -> list[bytes]:
    """The story, then a dual-stack cluster "east" of the mixed stream (nodes come and go, pod
    addresses of both families, malformed records), filled until nodes wait."""
    east = mixed_stream(400, seed=21, clusters=("east",))
    # More nodes than the pool has blocks for: some of them wait.
    spares = [
        json.dumps({"type": "node.added", "id": f"s{n}", "cluster": "east", "node": f"spare-{n}"})
        for n in range(20)
    ]
    return [*STORY, *east, *(spare.encode() for spare in spares)]


@dataclasses.dataclass
class World:
    """What the reader reads, written by the adapter's own projection and sync store."""

    reader: ports.ProjectionReader
    projection: ports.Projection
    store: ports.SyncStore
    log: list[bytes]
    token: int = 0
    #: Per node of each cluster: the version (last offset of the last batch that changed it).
    versions: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    cluster_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    applied: list[ports.AppliedRecord] = dataclasses.field(default_factory=list)

    async def commit_log(self) -> None:
        self.token = await _acquired(self.projection)
        current = state.State(track_changes=True)
        for start in range(0, len(self.log), BATCH):
            values = self.log[start : start + BATCH]
            records = [
                ports.Record(0, start + n, key_of(value), value, 1_795_000_000_000 + start + n)
                for n, value in enumerate(values)
            ]
            batch = allocator.apply_records(current, records, 0, self.token, partitions=1)
            await self.projection.commit(batch)
            self.applied.extend(batch.applied)
            for cluster, changes in batch.changes.items():
                self.cluster_versions[cluster] = batch.next_offset - 1
                for node in changes.nodes:
                    self.versions[cluster, node] = batch.next_offset - 1


async def _acquired(projection: ports.Projection) -> int:
    token = await projection.try_acquire(0)
    assert token is not None
    return token


async def _grant_reader_role(dsn: str) -> str:
    """A DSN of the test database for a role that may connect and read, nothing else."""
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(
            f"DO $$ BEGIN CREATE ROLE {READER_ROLE} LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        await db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}")
    finally:
        await db.close()
    return sa.make_url(dsn).set(username=READER_ROLE).render_as_string(hide_password=False)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "memory":
        tables, sync_tables = memory.MemoryProjectionTables(), memory.MemorySyncTables()
        made = World(
            reader=memory.MemoryProjectionReader(tables, sync_tables),
            projection=memory.MemoryProjection(tables, holder="writer", log_name=LOG),
            store=memory.MemorySyncStore(sync_tables),
            log=_log(),
        )
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        made = World(
            reader=pg_reader.PostgresProjectionReader.from_dsn(await _grant_reader_role(dsn)),
            projection=pg_projection.PostgresProjection.from_dsn(
                dsn, log_name=LOG, holder="writer"
            ),
            store=sync_store.PostgresSyncStore.from_dsn(dsn),
            log=_log(),
        )
    try:
        await made.commit_log()
        yield made
    finally:
        await made.reader.close()
        await made.store.close()
        await made.projection.close()


def simulate(values: Sequence[bytes]) -> tuple[state.State, list[events.Decision]]:
    oracle = state.State()
    return oracle, [allocation.apply_record(oracle, value)[0] for value in values]


async def test_the_state_is_simulates_byte_for_byte(world: World) -> None:
    oracle, _ = simulate(world.log)
    assert document.digest(await world.reader.state()) == document.digest(oracle)
    assert document.encode_document(await world.reader.state_document()) == (
        document.encode_document(document.state_document(oracle))
    )


async def test_clusters_with_their_pools_and_the_use_of_each_element(world: World) -> None:
    oracle, _ = simulate(world.log)
    expected = [
        ports.ClusterView(
            name=name,
            partition=0,
            version=world.cluster_versions[name],
            ipv4_mask=cluster.pools[IPV4].mask,
            ipv6_mask=cluster.pools[IPV6].mask,
            elements=tuple(
                ports.PoolElementUse(
                    cidr=element.network,
                    mask=element.mask,
                    total=element.slots.capacity,
                    used=element.slots.used,
                    pod_ips=sum(
                        len(held.owner_of)
                        for node in cluster.nodes.values()
                        for held in node.ranges.values()
                        if cluster.pools[held.cidr.family].element_at(held.cidr.base) is element
                    ),
                )
                for family in (IPV4, IPV6)
                for element in cluster.pools[family].elements
            ),
            nodes=len(cluster.nodes),
        )
        for name, cluster in sorted(oracle.clusters.items())
    ]
    clusters = await world.reader.clusters()
    assert clusters == expected
    east = clusters[1]
    assert [e.cidr.version for e in east.elements] == [4, 6]
    assert all(e.free == e.total - e.used for e in east.elements)
    assert sum(e.used for e in east.elements) > 0
    assert sum(e.pod_ips for e in east.elements) > 0
    assert all(0 <= e.pod_ips <= e.pod_ip_capacity for e in east.elements)
    (story,) = clusters[0].elements
    # 10.4.0.0/16 by /24: w1's one /24 holds shop/cart-2's address, of 254.
    assert (story.used, story.pod_ips, story.pod_ip_capacity) == (1, 1, 254)


def _expected_nodes(world: World, cluster: str) -> list[ports.NodeView]:
    oracle, _ = simulate(world.log)
    live = oracle.clusters[cluster]
    views = []
    for name in sorted(live.nodes):
        node = live.nodes[name]
        held = {f: len(r.owner_of) for f, r in node.ranges.items()}
        views.append(
            ports.NodeView(
                cluster=cluster,
                name=name,
                pod_cidrs=tuple(ipaddress.ip_network(text) for text in node.pod_cidr_texts()),
                error=node.error,
                conflict=node.conflict,
                addresses=tuple(node.addresses),
                waiting=name in live.waiting,
                pinned=node.pinned,
                ipv4_pod_ips=held.get(IPV4, 0),
                ipv6_pod_ips=held.get(IPV6, 0),
                version=world.versions[cluster, name],
                updated_at=datetime.datetime.min,  # compared apart
            )
        )
    return views


def _comparable(views: Sequence[ports.NodeView]) -> list[ports.NodeView]:
    for view in views:
        assert view.updated_at.tzinfo is not None
    return [dataclasses.replace(view, updated_at=datetime.datetime.min) for view in views]


async def test_nodes_by_name_with_every_field(world: World) -> None:
    expected = _expected_nodes(world, "east")
    assert len(expected) > 5
    nodes = await world.reader.nodes("east")
    assert _comparable(nodes) == expected
    assert any(view.ipv4_pod_ips and view.ipv6_pod_ips for view in nodes)
    (w1,) = await world.reader.nodes("default")
    assert (w1.name, w1.ipv4_pod_ips, w1.ipv6_pod_ips) == ("w1", 1, 0)
    for view in nodes[:3]:
        one = await world.reader.node("east", view.name)
        assert one == view


async def test_nodes_filtered_and_paged(world: World) -> None:
    expected = _expected_nodes(world, "east")
    reader = world.reader

    async def names(**filters: object) -> list[str]:
        return [view.name for view in await reader.nodes("east", **filters)]  # type: ignore[arg-type]

    for flag in (True, False):
        assert await names(error=flag) == [
            v.name for v in expected if (v.error is not None) is flag
        ]
        assert await names(conflict=flag) == [
            v.name for v in expected if (v.conflict is not None) is flag
        ]
        assert await names(waiting=flag) == [v.name for v in expected if v.waiting is flag]
    assert await names(prefix="node-1") == [v.name for v in expected if v.name.startswith("node-1")]
    assert await names(prefix="node-1", waiting=False) == [
        v.name for v in expected if v.name.startswith("node-1") and not v.waiting
    ]
    paged: list[str] = []
    after = ""
    while page := await names(after=after, limit=4):
        assert len(page) <= 4
        paged.extend(page)
        after = page[-1]
    assert paged == [v.name for v in expected]
    assert await names(limit=0) == []
    # Each kind of node the filters tell apart is there, or the filters were not tested.
    assert {v.error is None for v in expected} == {True, False}
    assert {v.waiting for v in expected} == {True, False}


async def test_a_deleted_or_unknown_node_is_not_a_node(world: World) -> None:
    oracle, _ = simulate(world.log)
    gone = {node for cluster, node in world.versions if cluster == "east"} - set(
        oracle.clusters["east"].nodes
    )
    assert gone
    for name in gone:
        assert await world.reader.node("east", name) is None
    assert await world.reader.node("east", "nobody") is None
    assert await world.reader.node("nowhere", "w1") is None
    assert await world.reader.nodes("nowhere") == []


def _holding(address: str, owner: str, start: str, end: str | None) -> ports.Holding:
    began = json.loads(STORY[OFFSET[start]])
    ended = json.loads(STORY[OFFSET[end]]) if end is not None else None
    return ports.Holding(
        cluster="default",
        address=ipaddress.ip_address(address),
        node="w1",
        owner=owner,
        partition=0,
        from_offset=OFFSET[start],
        from_time=_at(began["time"]),
        from_event_id=start,
        to_offset=None if end is None else OFFSET[end],
        to_time=None if ended is None else _at(ended["time"]),
        to_event_id=end,
    )


CART_1 = _holding("10.4.0.1", "shop/cart-1", "a", "b")
PROBE = _holding("10.4.0.2", "ops/probe", "c", "d")
CART_2 = _holding("10.4.0.3", "shop/cart-2", "e", None)


async def test_who_holds_an_address_now_and_at_a_time(world: World) -> None:
    reader = world.reader
    address = ipaddress.ip_address
    assert await reader.holder("default", address("10.4.0.3")) == CART_2
    assert await reader.holder("default", address("10.4.0.1")) is None
    at = _at("2026-11-17T11:00:00Z")
    assert await reader.holder("default", address("10.4.0.1"), at=at) == CART_1
    at = _at("2026-11-17T13:15:00Z")
    assert await reader.holder("default", address("10.4.0.2"), at=at) == PROBE
    at = _at("2026-11-17T12:30:00Z")
    assert await reader.holder("default", address("10.4.0.1"), at=at) is None
    at = _at("2026-11-18T00:00:00Z")
    assert await reader.holder("default", address("10.4.0.3"), at=at) == CART_2
    assert await reader.holder("nowhere", address("10.4.0.3")) is None


async def test_the_history_of_an_address_and_of_an_owner(world: World) -> None:
    reader = world.reader
    address = ipaddress.ip_address
    assert await reader.address_history("default", address("10.4.0.1")) == [CART_1]
    assert await reader.address_history("default", address("10.4.0.3")) == [CART_2]
    assert await reader.address_history("default", address("10.4.9.9")) == []
    assert await reader.owner_history("default", "shop/cart-1") == [CART_1]
    assert await reader.owner_addresses("default", "shop/cart-1") == []
    assert await reader.owner_addresses("default", "shop/cart-2") == [CART_2]
    assert await reader.owner_history("default", "nobody") == []


async def test_the_history_of_a_busy_owner_matches_its_decisions(world: World) -> None:
    """Every holding of an owner of the mixed stream starts at a decision that gave it the
    address and, if it ended, ends at one that took it back; the current ones are its
    addresses now, in address order."""
    reader = world.reader
    owner = "ns/pod-3"
    history = await reader.owner_history("east", owner)
    assert history
    assert [h.from_offset for h in history] == sorted(h.from_offset for h in history)
    by_offset = {applied.record.offset: applied for applied in world.applied}
    for holding in history:
        began = by_offset[holding.from_offset]
        assert holding.from_event_id == began.decision.id
        assert json.loads(began.record.value)["owner"] == owner
        if holding.to_offset is not None:
            assert holding.to_offset > holding.from_offset
            assert holding.to_event_id == by_offset[holding.to_offset].decision.id
    now = [h for h in history if h.to_offset is None]
    assert await reader.owner_addresses("east", owner) == sorted(
        now, key=lambda h: (h.address.version, int(h.address))
    )
    for holding in now:
        assert (await reader.address_history("east", holding.address))[-1] == holding
        assert await reader.holder("east", holding.address) == holding


async def test_decisions_and_rejections_from_an_offset(world: World) -> None:
    reader = world.reader
    _, decided = simulate(world.log)
    decisions = await reader.decisions(0)
    assert [d.offset for d in decisions] == list(range(len(world.log)))
    assert [d.body for d in decisions] == [events.encode_decision(d) for d in decided]
    assert [(d.event_id, d.type, d.cluster, d.error) for d in decisions] == [
        (d.id, d.type, d.cluster, d.error) for d in decided
    ]
    assert decisions[OFFSET["a"]].event_time == _at("2026-11-17T10:00:00Z")
    assert decisions[OFFSET["a"]].log_time is not None
    assert await reader.decisions(0, 100, 10) == decisions[100:110]
    assert await reader.decisions(0, len(world.log)) == []
    rejected = [a for a in world.applied if a.rejected]
    assert rejected
    rejections = await reader.rejections(0)
    assert [(r.offset, r.reason, r.key, r.raw) for r in rejections] == [
        (a.record.offset, a.decision.error, a.record.key, a.record.value) for a in rejected
    ]
    assert await reader.rejections(0, rejections[1].offset, 1) == [rejections[1]]
    assert await reader.last_rejections(0, 2) == rejections[-2:]
    assert await reader.last_rejections(0, len(rejections) + 5) == rejections
    assert await reader.last_rejections(0, 0) == []
    assert await reader.last_rejections(7, 3) == []
    assert await reader.decisions(7) == []
    assert await reader.rejections(7) == []


async def test_positions_and_leases(world: World) -> None:
    reader = world.reader
    (position,) = await reader.positions()
    assert (position.partition, position.log, position.next_offset, position.published) == (
        0,
        LOG,
        len(world.log),
        None,
    )
    assert position.updated_at.tzinfo is not None
    await world.projection.advance_outbox(0, world.token, 100)
    (position,) = await reader.positions()
    assert position.published == 100
    (lease,) = await reader.leases()
    assert (lease.partition, lease.holder, lease.token, lease.expired) == (
        0,
        "writer",
        world.token,
        False,
    )
    await world.projection.release(0, world.token)
    (lease,) = await reader.leases()
    assert (lease.token, lease.expired) == (world.token, True)


async def test_sync_progress_of_every_node_tombstones_included(world: World) -> None:
    oracle, _ = simulate(world.log)
    touched = sorted(node for cluster, node in world.versions if cluster == "east")
    live = oracle.clusters["east"].nodes
    before = await world.reader.sync_progress("east")
    assert before == [
        ports.NodeSync(
            name=name,
            version=world.versions["east", name],
            deleted=name not in live,
            synced_version=None,
            error=None,
        )
        for name in touched
    ]
    assert not any(progress.mirrored for progress in before)
    assert await world.store.try_lock("east")
    first, second = touched[0], touched[1]
    await world.store.record_synced(
        "east",
        [(first, world.versions["east", first], None), (second, 0, "the API server said no")],
    )
    after = {progress.name: progress for progress in await world.reader.sync_progress("east")}
    assert after[first].synced_version == world.versions["east", first]
    assert after[first].mirrored and after[first].error is None
    assert (after[second].synced_version, after[second].error) == (0, "the API server said no")
    assert after[second].mirrored is (world.versions["east", second] == 0)
    assert await world.reader.sync_progress("nowhere") == []


async def test_as_of_an_offset_is_simulate_over_the_prefix(world: World) -> None:
    """The history readers (``cluster_at``, ``nodes_at``, ``node_at``) at offsets inside and at
    the ends of batches answer as ``simulate`` over the records up to that offset."""
    reader = world.reader
    last = len(world.log) - 1
    assert await reader.applied_offset(0) == last
    assert await reader.applied_offset(7) is None
    assert await reader.cluster_partitions() == {"default": 0, "east": 0}
    for at in (OFFSET["n"], BATCH - 1, BATCH, 100, 250, last):
        oracle, _ = simulate(world.log[: at + 1])
        for name, cluster in sorted(oracle.clusters.items()):
            view = await reader.cluster_at(name, at)
            assert view is not None
            assert (view.name, view.partition, view.offset) == (name, 0, at)
            assert [(e.cidr, e.total, e.used) for e in view.elements] == [
                (e.network, e.slots.capacity, e.slots.used)
                for family in (IPV4, IPV6)
                for e in cluster.pools[family].elements
            ]
            assert view.nodes == len(cluster.nodes)
            assert view.nodes_waiting == len(cluster.waiting)
            assert view.nodes_in_error == sum(1 for n in cluster.nodes.values() if n.error)
            nodes = await reader.nodes_at(name, at)
            assert [n.name for n in nodes] == sorted(cluster.nodes, key=str.encode)
            for view_at in nodes:
                node = cluster.nodes[view_at.name]
                held = {f: len(r.owner_of) for f, r in node.ranges.items()}
                assert tuple(str(c) for c in view_at.pod_cidrs) == tuple(node.pod_cidr_texts())
                assert (view_at.error, view_at.conflict, view_at.pinned) == (
                    node.error,
                    node.conflict,
                    node.pinned,
                )
                assert view_at.waiting is (view_at.name in cluster.waiting)
                assert (view_at.ipv4_pod_ips, view_at.ipv6_pod_ips) == (
                    held.get(IPV4, 0),
                    held.get(IPV6, 0),
                )
                assert view_at.changed_offset <= at
            if nodes:
                assert await reader.node_at(name, nodes[0].name, at) == nodes[0]
                assert await reader.nodes_at(name, at, after=nodes[0].name, limit=1) == nodes[1:2]
    # "east" begins after the story; nobody is a node before being added.
    assert await reader.cluster_at("east", OFFSET["e"]) is None
    assert await reader.node_at("default", "w1", OFFSET["p"]) is None
    w1 = await reader.node_at("default", "w1", last)
    assert w1 is not None and (w1.changed_offset, w1.changed_event_id) == (OFFSET["n"], "n")
    at_eleven = await reader.applied_offset(0, at_time=_at("2026-11-17T11:00:00Z"))
    assert at_eleven == OFFSET["a"]
    assert await reader.applied_offset(0, at_time=_at("2026-11-16T00:00:00Z")) is None


async def test_the_basis_and_the_answer_read_together(world: World) -> None:
    """``*_based`` give the basis ``ports.Based`` defines and, at it, what the separate reads
    give (the query API's hot routes read both in one statement)."""
    reader = world.reader
    last = len(world.log) - 1
    ip = ipaddress.ip_address("10.4.0.1")
    at_eleven = _at("2026-11-17T11:00:00Z")
    cases: list[tuple[ports.Wanted, int | None]] = [
        (None, last),
        (OFFSET["a"], OFFSET["a"]),
        (OFFSET["n"], OFFSET["n"]),
        (10**12, last),
        (at_eleven, OFFSET["a"]),
        (_at("2026-11-17T13:00:00Z"), OFFSET["c"]),
        (_at("2026-11-16T00:00:00Z"), None),
    ]
    for wanted, basis in cases:
        by_address = await reader.address_history_based("default", 0, ip, wanted)
        by_owner = await reader.owner_history_based("default", 0, "shop/cart-1", wanted)
        node = await reader.node_based("default", 0, "w1", wanted)
        for based in (by_address, by_owner, node):
            assert (based.applied, based.basis) == (last, basis), wanted
        if basis is None:
            assert (by_address.value, by_owner.value, node.value) == ([], [], None)
            continue
        assert by_address.value == [
            h for h in await reader.address_history("default", ip) if h.from_offset <= basis
        ]
        assert by_owner.value == [
            h
            for h in await reader.owner_history("default", "shop/cart-1")
            if h.from_offset <= basis
        ]
        assert node.value == await reader.node_at("default", "w1", basis)
    assert (await reader.address_history_based("default", 0, ip, OFFSET["b"])).value == [CART_1]
    assert (await reader.address_history_based("default", 0, ip, OFFSET["n"])).value == []
    nothing = await reader.node_based("default", 7, "w1", None)
    assert (nothing.applied, nothing.basis, nothing.value) == (None, None, None)
    assert (await reader.node_based("default", 0, "nobody", None)).value is None


async def test_a_clusters_decisions_and_rejections_up_to_an_offset(world: World) -> None:
    reader = world.reader
    decisions = await reader.cluster_decisions("east", 0, 200, 1000)
    assert decisions
    assert all(d.cluster == "east" and d.offset <= 200 for d in decisions)
    assert [d.offset for d in decisions] == sorted(d.offset for d in decisions)
    expected = [d for d in await reader.decisions(0) if d.cluster == "east" and d.offset <= 200]
    assert decisions == expected
    assert await reader.cluster_decisions("east", 0, 200, 3) == expected[:3]
    rejections = await reader.cluster_rejections("east", 0, len(world.log), 1000)
    by_offset = {d.offset: d for d in await reader.decisions(0)}
    assert rejections == [
        r for r in await reader.rejections(0) if by_offset[r.offset].cluster == "east"
    ]
    assert rejections
    assert await reader.cluster_decisions("nowhere", 0, 10, 10) == []
