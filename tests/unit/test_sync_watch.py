"""The sync worker's watch and ownerReferences, over the in-memory client and store.

- a hand edit of ``spec.ipam.podCIDRs`` (or of the status error) is put back by the watch, long
  before the next resync, and logged naming the field manager that made it;
- a watch that expired (410 Gone) asks for a listing and goes on from it;
- a CiliumNode deleted behind the worker's back is not recreated by the watch (garbage collection
  deleting it with its Node must win); the next resync writes it if the node still exists;
- with ``owner_references``, a CiliumNode the worker creates gets the ownerReference of its v1
  Node when there is one, none when there is not; without the option no Node is read.
tests/integration/test_sync_watch.py does the same against the real API server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import pytest

from service import errors, ports, sync
from service.adapters import memory
from service.adapters.kubernetes.memory import MemoryClusterClient
from tests import waiting
from tests.fakes import intent

pytestmark = pytest.mark.anyio

CLUSTER = "default"
# No resync during a test: whatever is repaired, the watch repaired.
QUIET = sync.SyncSettings(qps=0, resync_interval_s=3600, poll_interval_s=0.05, flush_interval_s=0)


@pytest.fixture
async def client() -> AsyncIterator[MemoryClusterClient]:
    kube = MemoryClusterClient()
    yield kube
    await kube.close()


async def mirrored(store: memory.MemorySyncStore, name: str, version: int) -> None:
    await waiting.until(
        lambda: store.tables.progress(CLUSTER).get(name) == (version, None),
        timeout=5,
        what=f"node {name}'s version {version} mirrored",
    )


async def test_a_hand_edit_is_put_back_by_the_watch_and_logged(
    client: MemoryClusterClient, caplog: pytest.LogCaptureFixture
) -> None:
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 3, "10.0.1.0/24"))
    store.tables.put(CLUSTER, intent("b", 3, "10.0.2.0/24"))
    worker = sync.ClusterSync(CLUSTER, client, store, QUIET)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await mirrored(store, "a", 3)
        await mirrored(store, "b", 3)
        with caplog.at_level(logging.WARNING, logger="ipledger.sync"):
            client.edit("a", pod_cidrs=["10.9.9.0/24"], manager="kubectl-edit")
            client.edit("b", error="someone else's error", manager="kubectl-patch")
            await waiting.until(
                lambda: (
                    client.nodes["a"].pod_cidrs == ("10.0.1.0/24",)
                    and client.nodes["b"].error in (None, "")
                ),
                timeout=5,
                what="both hand edits put back",
            )
        stop.set()

    assert worker.metrics.resyncs == 1  # the first listing only
    assert worker.metrics.drift_repairs == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("['10.9.9.0/24']" in w and "kubectl-edit" in w for w in warnings), warnings


async def test_an_expired_watch_lists_again_and_continues(client: MemoryClusterClient) -> None:
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 1, "10.0.1.0/24"))
    worker = sync.ClusterSync(CLUSTER, client, store, QUIET)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await mirrored(store, "a", 1)
        client.forget_history()
        await waiting.until(lambda: worker.metrics.resyncs == 2, timeout=5, what="a relisting")
        client.edit("a", pod_cidrs=["10.9.9.0/24"])
        await waiting.until(
            lambda: client.nodes["a"].pod_cidrs == ("10.0.1.0/24",),
            timeout=5,
            what="the edit after the relisting put back by the new watch",
        )
        stop.set()
    assert worker.metrics.watch_restarts == 1


async def test_a_deleted_ciliumnode_is_not_recreated_by_the_watch(
    client: MemoryClusterClient,
) -> None:
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 1, "10.0.1.0/24"))
    worker = sync.ClusterSync(CLUSTER, client, store, QUIET)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await mirrored(store, "a", 1)
        events_before = worker.metrics.watch_events
        client.remove("a")
        await waiting.until(
            lambda: worker.metrics.watch_events > events_before,
            timeout=5,
            what="the deletion watched",
        )
        assert "a" not in client.nodes
        worker.request_resync()
        await waiting.until(lambda: "a" in client.nodes, timeout=5, what="the resync's write")
        stop.set()


async def test_a_created_ciliumnode_gets_the_ownerreference_of_its_node(
    client: MemoryClusterClient,
) -> None:
    node = client.add_kube_node("a", ["192.168.1.10"])
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 1, "10.0.1.0/24"))
    store.tables.put(CLUSTER, intent("no-node", 1, "10.0.2.0/24"))
    settings = sync.SyncSettings(qps=0, flush_interval_s=0, owner_references=True)
    worker = sync.ClusterSync(CLUSTER, client, store, settings)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await mirrored(store, "a", 1)
        await mirrored(store, "no-node", 1)
        store.tables.put(CLUSTER, intent("a", 2, "10.0.3.0/24"))
        await mirrored(store, "a", 2)
        stop.set()

    assert client.nodes["a"].node_owner == node.uid
    assert client.nodes["a"].pod_cidrs == ("10.0.3.0/24",)
    assert client.nodes["no-node"].node_owner is None
    assert worker.metrics.owner_references == 1
    owners = [r.name for r in client.requests if r.verb == "owner"]
    assert owners == ["a"]  # once, at creation; the later apply needs none


async def test_without_the_option_no_node_is_read(client: MemoryClusterClient) -> None:
    client.add_kube_node("a")
    store = memory.MemorySyncStore()
    store.tables.put(CLUSTER, intent("a", 1, "10.0.1.0/24"))
    worker = sync.ClusterSync(CLUSTER, client, store, QUIET)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await mirrored(store, "a", 1)
        stop.set()
    assert client.nodes["a"].node_owner is None
    assert not [r for r in client.requests if r.verb in ("get-node", "owner")]


class NodesForbidden(MemoryClusterClient):
    """A client whose credentials may not read v1 Nodes (the base ClusterRole only)."""

    async def get_kube_node(self, name: str) -> ports.KubeNode | None:
        self._record("get-node", name)
        raise errors.ClusterApiRejectedError(
            f'reading Node {name}: HTTP 403: nodes "{name}" is forbidden', status=403
        )


async def test_without_the_role_to_read_nodes_the_ciliumnode_is_still_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = NodesForbidden()
    store = memory.MemorySyncStore()
    for name in ("a", "b"):
        store.tables.put(CLUSTER, intent(name, 1, "10.0.1.0/24"))
    settings = sync.SyncSettings(qps=0, flush_interval_s=0, owner_references=True)
    worker = sync.ClusterSync(CLUSTER, client, store, settings)
    stop = anyio.Event()
    with caplog.at_level(logging.ERROR, logger="ipledger.sync"):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            await mirrored(store, "a", 1)
            await mirrored(store, "b", 1)
            stop.set()
    assert client.nodes["a"].pod_cidrs == ("10.0.1.0/24",)
    assert worker.metrics.rejected == 0
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "ipledger-sync-owner-references" in said
