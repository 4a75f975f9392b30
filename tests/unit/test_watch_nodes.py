"""The node-lifecycle producer (``producers.NodeProducer``) over the in-memory adapters.

No service: v1 Nodes live in a ``MemoryClusterClient``, the log is a ``MemoryEventLog`` and a
real ``PartitionAllocator`` applies it to a ``MemoryProjection`` the producer reads back, so
"the end state equals the Nodes present" is asked of the projection, as an operator would.
What is checked:
- Nodes created, changed (addresses) and deleted while it watches become node.added (with
  InternalIP then ExternalIP) and node.deleted, ids derived from UID and resourceVersion;
  heartbeat-like changes append nothing;
- restarts: a producer restarted with nothing changed appends nothing, also when the allocator
  has not applied its events yet (they are in the log's tail); Nodes created and deleted while
  it was down are reconciled; no node.deleted is ever refused (no duplicate);
- a 410 Gone watch lists again and appends only the difference;
- a Node name the contract refuses is skipped with a reason and counted; an address it
  refuses is left out;
- a listing without any Node deletes nothing unless told to;
- ``--mirror-node-podcidrs``: the node's CIDRs land in the Node's spec.podCIDRs once, a Node
  with other CIDRs is refused and reported, never retried;
- the leak check reports exactly the addresses whose pod is gone, as ip.released events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
import yaml

from service import allocator, metrics, producers
from service.adapters import memory
from service.adapters.kubernetes.memory import MemoryClusterClient
from service.domain import allocation, events, state
from service.processes import check
from tests import fakes, waiting

pytestmark = pytest.mark.anyio

DEADLINE_S = 20.0
POOL = (
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/16"],'
    b'"clusterPoolIPv4MaskSize":24}'
)
SETTINGS = allocator.LoopSettings(
    batch_max_records=50, batch_max_wait_s=0.01, lease_poll_s=0.01, backoff_initial_s=0.001
)


class World:
    """One cluster's Nodes, the log, the allocator applying it, and producers the test starts."""

    def __init__(self, tasks: anyio.abc.TaskGroup) -> None:
        self.tasks = tasks
        self.kube = MemoryClusterClient()
        self.log = memory.MemoryEventLog()
        self.tables = memory.MemoryProjectionTables(clock=fakes.ManualClock())
        self.reader = memory.MemoryProjectionReader(self.tables)
        self.allocator_stop = anyio.Event()

    def start_allocator(self) -> None:
        projection = memory.MemoryProjection(self.tables, holder="writer", lease_ttl_s=600.0)
        worker = allocator.PartitionAllocator(self.log, projection, 0, settings=SETTINGS)
        self.allocator_stop = anyio.Event()
        self.tasks.start_soon(worker.run, self.allocator_stop)

    @contextlib.asynccontextmanager
    async def producer(self, **options: object) -> AsyncIterator[producers.NodeProducer]:
        producer = producers.NodeProducer(
            "default",
            self.kube,
            self.log,
            self.reader,
            1,
            backoff_initial_s=0.001,
            backoff_max_s=0.01,
            mirror_interval_s=0.01,
            clock=lambda: "2026-12-02T00:00:00Z",
            **options,  # type: ignore[arg-type]
        )
        stop = anyio.Event()
        # Its own task group: leaving the context waits until the producer has stopped, so
        # what the test does next happens while it is down.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(producer.run, stop)
            try:
                with anyio.fail_after(DEADLINE_S):
                    await producer.reconciled()
                yield producer
            finally:
                stop.set()

    async def records(self) -> list[events.AnyEvent]:
        found = []
        for record in await self.log.read(0, 0, 100_000, 0):
            event = events.decode(record.value)
            assert not isinstance(event, events.DecodeFailure)
            found.append(event)
        return found

    async def node_events(self) -> list[events.AnyEvent]:
        return [e for e in await self.records() if e.type in ("node.added", "node.deleted")]

    async def applied(self) -> None:
        """Wait until the allocator has applied everything appended."""
        end = await self.log.end_offset(0)

        async def caught_up() -> bool:
            positions = await self.reader.positions()
            return bool(positions) and positions[0].next_offset >= end

        await waiting.until(caught_up, timeout=DEADLINE_S, what=f"the allocator at offset {end}")

    async def projected(self) -> dict[str, tuple[str, ...]]:
        await self.applied()
        return {
            view.name: tuple(str(a) for a in view.addresses)
            for view in await self.reader.nodes("default")
        }

    def kube_nodes(self) -> dict[str, tuple[str, ...]]:
        return {name: node.addresses for name, node in self.kube.kube_nodes.items()}

    async def assert_no_refused_node_event(self) -> None:
        """Every node decision of the log is a success: no node.deleted for a gone node."""
        oracle = state.State()
        for record in await self.log.read(0, 0, 100_000, 0):
            decision, event = allocation.apply_record(oracle, record.value)
            if event is not None and event.type == "node.deleted":
                assert decision.error is None, decision


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with anyio.create_task_group() as tasks:
        world = World(tasks)
        await world.log.append([(b"default", POOL)])
        world.start_allocator()
        yield world
        world.allocator_stop.set()
        tasks.cancel_scope.cancel()


async def until_logged(world: World, count: int) -> None:
    async def enough() -> bool:
        return len(await world.node_events()) >= count

    await waiting.until(enough, timeout=DEADLINE_S, what=f"{count} node events in the log")


async def test_nodes_become_node_events_with_ids_from_uid_and_version(world: World) -> None:
    world.kube.add_kube_node("node-a", ["192.168.1.10", "203.0.113.10"], uid="uid-a")
    async with world.producer():
        b = world.kube.add_kube_node("node-b", ["192.168.1.11"], uid="uid-b")
        await until_logged(world, 2)
        world.kube.add_kube_node("node-b", ["192.168.1.11"])  # a heartbeat: same addresses
        moved = world.kube.add_kube_node("node-b", ["192.168.1.12"])
        await until_logged(world, 3)
        world.kube.remove_kube_node("node-a")
        await until_logged(world, 4)
        assert await world.projected() == {"node-b": ("192.168.1.12",)}

    logged = await world.node_events()
    assert [(e.type, e.node, e.id) for e in logged] == [  # type: ignore[union-attr]
        ("node.added", "node-a", "k8s-node/uid-a/1"),
        ("node.added", "node-b", f"k8s-node/uid-b/{b.resource_version}"),
        ("node.added", "node-b", f"k8s-node/uid-b/{moved.resource_version}"),
        ("node.deleted", "node-a", f"k8s-node/uid-a/{int(moved.resource_version) + 1}/deleted"),
    ]
    first = logged[0]
    assert isinstance(first, events.NodeAdded)
    assert first.addresses == ("192.168.1.10", "203.0.113.10")
    assert first.cluster == "default" and first.time == "2026-12-02T00:00:00Z"


async def test_a_restart_appends_nothing_twice_even_before_the_allocator_applied_it(
    world: World,
) -> None:
    world.allocator_stop.set()  # the log's tail stays unapplied
    world.kube.add_kube_node("node-a", ["192.168.1.10"])
    async with world.producer():
        await until_logged(world, 1)
        world.kube.remove_kube_node("node-a")
        await until_logged(world, 2)
    appended = len(await world.records())

    async with world.producer():
        pass
    async with world.producer():
        pass

    assert len(await world.records()) == appended
    world.start_allocator()
    assert await world.projected() == {}
    await world.assert_no_refused_node_event()


async def test_what_happened_while_it_was_down_is_reconciled(world: World) -> None:
    for name in ("node-a", "node-b", "node-c"):
        world.kube.add_kube_node(name, ["192.168.1.1"])
    async with world.producer():
        await until_logged(world, 3)
    # Down: one Node goes, one comes, one changes its address, one is replaced by another of
    # the same name (same addresses: nothing to say).
    world.kube.remove_kube_node("node-a")
    world.kube.add_kube_node("node-d", ["192.168.1.4"])
    world.kube.add_kube_node("node-b", ["192.168.1.2"])
    world.kube.remove_kube_node("node-c")
    world.kube.add_kube_node("node-c", ["192.168.1.1"])

    async with world.producer() as producer:
        assert await world.projected() == world.kube_nodes()
        assert producer.metrics.added == 2 and producer.metrics.deleted == 1
    async with world.producer() as again:
        assert again.metrics.added == again.metrics.deleted == 0

    gone = [e for e in await world.node_events() if e.type == "node.deleted"]
    assert [e.id for e in gone] == [f"k8s-node-gone/node-a/{world.kube._version}"]
    await world.assert_no_refused_node_event()


async def test_an_expired_watch_lists_again_and_appends_only_the_difference(
    world: World,
) -> None:
    world.kube.add_kube_node("node-a", ["192.168.1.10"])
    async with world.producer() as producer:
        await until_logged(world, 1)
        world.kube.forget_history()  # the next watch request gets 410 Gone
        world.kube.add_kube_node("node-b", ["192.168.1.11"])
        await until_logged(world, 2)
        await waiting.until(
            lambda: producer.metrics.reconciles >= 2, timeout=DEADLINE_S, what="a relisting"
        )
        assert await world.projected() == world.kube_nodes()
    assert len(await world.node_events()) == 2


async def test_a_name_the_contract_refuses_is_skipped_and_counted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.kube.add_kube_node("Node_A", ["192.168.1.10"])
    world.kube.add_kube_node("node-b", ["::ffff:10.0.0.1", "192.168.1.11"])
    with caplog.at_level(logging.WARNING, "ipledger.watch_nodes"):
        async with world.producer() as producer:
            await until_logged(world, 1)
            assert producer.metrics.skipped == 1
            assert producer.metrics.addresses_dropped == 1
    assert await world.projected() == {"node-b": ("192.168.1.11",)}
    assert "Node 'Node_A' skipped" in caplog.text
    assert "address '::ffff:10.0.0.1' left out" in caplog.text


async def test_an_empty_listing_deletes_nothing_unless_allowed(world: World) -> None:
    world.kube.add_kube_node("node-a", ["192.168.1.10"])
    async with world.producer():
        await until_logged(world, 1)
    world.kube.remove_kube_node("node-a")

    async with world.producer() as held:
        assert held.metrics.deletions_held == 1
    assert await world.projected() == {"node-a": ("192.168.1.10",)}

    async with world.producer(allow_deleting_all=True) as allowed:
        assert allowed.metrics.deleted == 1
    assert await world.projected() == {}


async def test_node_pod_cidrs_are_mirrored_once_and_a_different_value_is_refused(
    world: World,
) -> None:
    world.kube.add_kube_node("node-a", ["192.168.1.10"])
    world.kube.add_kube_node("node-b", ["192.168.1.11"])
    world.kube.kube_nodes["node-b"] = world.kube.kube_nodes["node-b"].__class__(
        name="node-b", uid=world.kube.kube_nodes["node-b"].uid, pod_cidrs=("10.99.0.0/24",)
    )
    async with world.producer(mirror_pod_cidrs=True) as producer:
        await until_logged(world, 2)
        await world.applied()
        await waiting.until(
            lambda: world.kube.kube_nodes["node-a"].pod_cidrs != (),
            timeout=DEADLINE_S,
            what="node-a's spec.podCIDRs",
        )
        await waiting.until(
            lambda: producer.metrics.pod_cidrs_refused == 1,
            timeout=DEADLINE_S,
            what="node-b refused",
        )
        assert await producer.mirror_once() == 0  # nothing left to write, nothing retried
    view = await world.reader.node("default", "node-a")
    assert view is not None
    assert world.kube.kube_nodes["node-a"].pod_cidrs == tuple(str(c) for c in view.pod_cidrs)
    assert world.kube.kube_nodes["node-b"].pod_cidrs == ("10.99.0.0/24",)
    assert producer.metrics.pod_cidrs_written == 1 and producer.metrics.pod_cidrs_refused == 1
    assert [r.verb for r in world.kube.requests].count("patch-node") == 1


async def test_the_leak_check_reports_exactly_the_addresses_of_gone_pods(world: World) -> None:
    world.kube.add_kube_node("node-a", ["192.168.1.10"])
    async with world.producer():
        await until_logged(world, 1)
    requests = [
        {"type": "ip.requested", "id": f"r{i}", "node": "node-a", "owner": owner}
        for i, owner in enumerate(["shop/cart-1", "shop/cart-2", "kube-system/dns", "host-agent"])
    ]
    await world.log.append([(b"default", json.dumps(r).encode()) for r in requests])
    await world.applied()
    world.kube.pods = {"shop/cart-1", "kube-system/dns"}

    report = await producers.find_leaks("default", world.reader, world.kube)

    assert report.held == 4 and report.pods == 2
    assert [(leak.owner, leak.node) for leak in report.leaks] == [("shop/cart-2", "node-a")]
    assert [leak.owner for leak in report.not_pods] == ["host-agent"]
    release = report.leaks[0].release()
    assert release.ip == report.leaks[0].address and release.owner == "shop/cart-2"
    assert release.id == report.leaks[0].release().id  # the same event every time
    # Appending it releases exactly that address (and nothing is released by the check).
    assert len(await world.reader.owner_addresses("default", "shop/cart-2")) == 1
    await world.log.append([(b"default", events.encode_event(release))])
    await world.applied()
    assert await world.reader.owner_addresses("default", "shop/cart-2") == []
    again = await producers.find_leaks("default", world.reader, world.kube)
    assert again.leaks == () and again.held == 3


def test_every_counter_is_exported_labelled_by_cluster() -> None:
    east = producers.ProducerMetrics(added=3, skipped=1)
    text = metrics.render(metrics.watch_nodes_registry({"east": east}))
    assert 'ipledger_watch_nodes_added_total{cluster="east"} 3.0' in text
    assert 'ipledger_watch_nodes_skipped_total{cluster="east"} 1.0' in text
    for field in dataclasses.fields(producers.ProducerMetrics):
        assert f"ipledger_watch_nodes_{field.name}_total" in text


def test_each_option_has_a_clusterrole_of_its_own_with_only_what_it_uses() -> None:
    path = Path(__file__).parents[2] / "compose" / "kubernetes" / "rbac-optional.yaml"
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    roles = {
        d["metadata"]["name"]: {
            (group, resource): sorted(rule["verbs"])
            for rule in d["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        for d in documents
        if d["kind"] == "ClusterRole"
    }
    assert roles == {
        "ipledger-sync-owner-references": {("", "nodes"): ["get"]},
        "ipledger-watch-nodes": {("", "nodes"): ["list", "watch"]},
        "ipledger-watch-nodes-podcidrs": {("", "nodes"): ["patch"]},
        "ipledger-leak-check": {("", "pods"): ["list"]},
    }
    bound = {
        d["roleRef"]["name"]: [(s["kind"], s["name"]) for s in d["subjects"]]
        for d in documents
        if d["kind"] == "ClusterRoleBinding"
    }
    assert bound == {
        "ipledger-sync-owner-references": [("ServiceAccount", "ipledger-sync")],
        "ipledger-watch-nodes": [("ServiceAccount", "ipledger-watch-nodes")],
        "ipledger-watch-nodes-podcidrs": [("ServiceAccount", "ipledger-watch-nodes")],
        "ipledger-leak-check": [("User", "ipledger-operator")],
    }


def test_leaks_are_problems_of_the_check_report_with_their_releases() -> None:
    leak = producers.Leak("default", "node-a", "shop/cart-2", "10.0.1.2")
    found = producers.LeakReport("default", held=3, pods=2, leaks=(leak,), not_pods=())
    report = check.Report(
        checked=[check.Checked(check.LEAKS, "default", 3, 2)],
        problems=check.leak_problems(found),
        releases=[leak.release()],
    )

    lines = report.lines()
    assert lines[0] == "leaks: cluster default: 3 address(es) held, 2 pod(s)"
    assert lines[1].startswith("  10.0.1.2: held by shop/cart-2 on node node-a, and no such pod")
    released = events.decode(lines[3])
    assert isinstance(released, events.IpReleased)
    assert (released.node, released.owner, released.ip) == ("node-a", "shop/cart-2", "10.0.1.2")
    assert lines[-1] == "found 1 problem"
    document = report.as_json()
    assert document["releases"] == [json.loads(lines[3])]
    assert document["problems"][0]["kind"] == "leaked"
