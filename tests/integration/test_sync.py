"""The sync worker against the real Kubernetes API server (Cilium's CRD) and real PostgreSQL.

The real allocator (``PartitionAllocator`` over the PostgreSQL table log) turns events into the
projection; the real ``ClusterSync`` mirrors it through the lightkube adapter onto CiliumNodes
served by kube-apiserver with Cilium's unmodified CRD, so every object written is
validated by the server against Cilium's schema (``metrics.rejected`` stays 0 in every test).
Nothing is mocked; 429 / Retry-After cannot be provoked on this server and is covered in
tests/unit/test_sync_unit.py with the in-memory client.

The API server is shared by the session: each test starts and ends with no CiliumNode at all.
Conditions are awaited with deadlines, never by sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.types import PatchType

from service import allocator, cli, sync
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import sync_store, table_log
from service.domain import addresses
from tests import waiting
from tests.harness.kube import KubeAPIServer

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]

CLUSTER = "default"
# Conditions on the API server and the database each cost a round trip or a connection.
POLL_S = 0.05
CiliumNode = create_global_resource("cilium.io", "v2", "CiliumNode", "ciliumnodes")
_ids = itertools.count()


# --- events ---------------------------------------------------------------------------------


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "id": f"t{next(_ids)}", "cluster": CLUSTER, **fields}


def pool(
    v4: str = "10.0.0.0/16", m4: int = 24, v6: str | None = "fd00::/104", m6: int = 120
) -> dict[str, Any]:
    fields: dict[str, Any] = {"clusterPoolIPv4PodCIDRList": [v4], "clusterPoolIPv4MaskSize": m4}
    if v6 is not None:
        fields |= {"clusterPoolIPv6PodCIDRList": [v6], "clusterPoolIPv6MaskSize": m6}
    return event("pool.configured", **fields)


def added(node: str) -> dict[str, Any]:
    return event("node.added", node=node)


def deleted(node: str) -> dict[str, Any]:
    return event("node.deleted", node=node)


class Ledger:
    """The real allocator over the PostgreSQL table log, running while the test runs."""

    def __init__(self, dsn: str) -> None:
        self.log = table_log.PostgresTableLog.from_dsn(dsn)
        self.projection = pg_projection.PostgresProjection.from_dsn(
            dsn, log_name="table", holder="test-allocator"
        )
        self.worker = allocator.PartitionAllocator(
            self.log, self.projection, 0, settings=allocator.LoopSettings(batch_max_wait_s=0.01)
        )

    async def append(self, *events: dict[str, Any]) -> None:
        """Append the events and wait until the allocator has committed them."""
        for start in range(0, len(events), 1000):
            chunk = events[start : start + 1000]
            await self.log.append([(e["cluster"].encode(), json.dumps(e).encode()) for e in chunk])
        await self.caught_up()

    async def caught_up(self) -> None:
        """Wait until the allocator has committed everything in the log (by anyone)."""
        end = await self.log.end_offset(0)
        await waiting.until(
            lambda: self.worker.metrics.next_offset.get(0, -1) >= end,
            timeout=60,
            what=f"the allocator to commit the log up to offset {end}",
        )


@pytest.fixture
async def ledger(pg_dsn: str) -> AsyncIterator[Ledger]:
    ledger = Ledger(pg_dsn)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ledger.worker.run, stop)
            yield ledger
            stop.set()
    finally:
        await ledger.projection.close()
        await ledger.log.close()


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture
async def raw(kube_apiserver: KubeAPIServer) -> AsyncIterator[AsyncClient]:
    """A plain lightkube client for what the test itself reads and writes, as other managers."""
    client = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    # A clean slate on the shared server, before and after.
    await client.deletecollection(CiliumNode)
    try:
        yield client
    finally:
        await client.deletecollection(CiliumNode)
        await client.close()


@pytest.fixture
async def kube(
    kube_apiserver: KubeAPIServer, raw: AsyncClient
) -> AsyncIterator[KubernetesClusterClient]:
    client = KubernetesClusterClient.connect(kube_apiserver.kubeconfig_path)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[sync_store.PostgresSyncStore]:
    store = sync_store.PostgresSyncStore.from_dsn(pg_dsn)
    try:
        yield store
    finally:
        await store.close()


def settings(**overrides: Any) -> sync.SyncSettings:
    values: dict[str, Any] = {
        "qps": 0,
        "poll_interval_s": 1.0,
        "resync_interval_s": 3600.0,
        "flush_interval_s": 0.02,
        "lock_poll_s": 0.1,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
        **overrides,
    }
    return sync.SyncSettings(**values)


@contextlib.asynccontextmanager
async def running(worker: sync.ClusterSync) -> AsyncIterator[sync.ClusterSync]:
    """Run ``worker`` in the background; stop it (and wait for it) on the way out."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        try:
            yield worker
        finally:
            stop.set()
    assert worker.metrics.rejected == 0, "the API server rejected a write (schema?)"


async def projection_nodes(dsn: str) -> dict[str, tuple[list[str], str | None, int]]:
    """Live nodes of the projection: name -> (pod CIDRs, error, version)."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        nodes = await reader.nodes(CLUSTER)
    finally:
        await reader.close()
    return {
        n.name: ([addresses.format_network(c) for c in n.pod_cidrs], n.error, n.version)
        for n in nodes
    }


async def progress(dsn: str) -> dict[str, tuple[int, str | None]]:
    """What the sync worker recorded: name -> (mirrored version, error)."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        nodes = await reader.sync_progress(CLUSTER)
    finally:
        await reader.close()
    return {n.name: (n.synced_version, n.error) for n in nodes if n.synced_version is not None}


async def mismatches(dsn: str, kube: KubernetesClusterClient) -> list[str]:
    """How the CiliumNodes differ from the projection's live nodes (empty: converged)."""
    wanted = await projection_nodes(dsn)
    listed = {n.name: n for n in await kube.list_nodes()}
    problems = []
    for name, (cidrs, error, _) in wanted.items():
        node = listed.get(name)
        if node is None:
            problems.append(f"{name}: no CiliumNode")
        elif list(node.pod_cidrs) != cidrs:
            problems.append(f"{name}: podCIDRs {list(node.pod_cidrs)} != {cidrs}")
        elif (node.error or "") != (error or ""):
            problems.append(f"{name}: error {node.error!r} != {error!r}")
    return problems


async def converged(dsn: str, kube: KubernetesClusterClient, timeout: float = 30.0) -> None:
    problems: list[str] = []

    async def check() -> bool:
        problems[:] = await mismatches(dsn, kube)
        return not problems

    await waiting.until(
        check,
        timeout=timeout,
        what=lambda: f"every CiliumNode to match the projection (still {problems[:5]})",
        interval=POLL_S,
    )


def sent_once(worker: sync.ClusterSync) -> int:
    """Applies sent, not counting those repeated after a failure (a timeout on a busy machine)."""
    return worker.metrics.applies - worker.metrics.retries


def meta(obj: Any) -> ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def pod_cidr_managers(obj: Any) -> set[str]:
    return {
        entry.manager
        for entry in meta(obj).managedFields or []
        if "f:podCIDRs" in (entry.fieldsV1 or {}).get("f:spec", {}).get("f:ipam", {})
    }


# --- the tests ---------------------------------------------------------------------------------


async def test_new_nodes_get_ciliumnodes_with_ipv4_then_ipv6_cidrs(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"), added("node-b"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings())

    async with running(worker):
        await converged(pg_dsn, kube)
        expected = await projection_nodes(pg_dsn)
        await waiting.until(
            lambda: _synced_at_versions(pg_dsn, expected),
            timeout=30,
            what="node_sync to record the versions",
            interval=POLL_S,
        )

    a = await raw.get(CiliumNode, "node-a")
    cidrs = a["spec"]["ipam"]["podCIDRs"]
    assert [c.count(":") > 0 for c in cidrs] == [False, True]
    assert cidrs == expected["node-a"][0]
    assert {(e.manager, e.operation) for e in meta(a).managedFields or []} == {
        ("ipledger", "Apply")
    }
    assert "status" not in a  # no error: nothing to write
    assert sent_once(worker) == 2


async def _synced_at_versions(dsn: str, expected: dict[str, tuple[list[str], Any, int]]) -> bool:
    recorded = await progress(dsn)
    return all(recorded.get(name) == (version, None) for name, (_, _, version) in expected.items())


async def test_fields_of_other_managers_are_left_alone(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    # What Cilium's agent writes on start: its addresses, before any pod CIDR exists.
    agent = {"addresses": [{"type": "InternalIP", "ip": "192.0.2.10"}], "health": {"ipv4": "x"}}
    await raw.apply(
        CiliumNode(metadata=ObjectMeta(name="node-a"), spec=agent), field_manager="cilium-agent"
    )
    await ledger.append(pool(), added("node-a"))

    async with running(sync.ClusterSync(CLUSTER, kube, store, settings())):
        await converged(pg_dsn, kube)

    stored = await raw.get(CiliumNode, "node-a")
    assert stored["spec"]["addresses"] == agent["addresses"]
    assert stored["spec"]["health"] == agent["health"]
    assert {e.manager for e in meta(stored).managedFields or []} == {"cilium-agent", "ipledger"}
    assert pod_cidr_managers(stored) == {"ipledger"}


async def test_a_foreign_manager_taking_pod_cidrs_is_reverted_at_resync_and_logged(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ipledger applies with force: Cilium's operator (or anyone) loses spec.ipam.podCIDRs."""
    await ledger.append(pool(), added("node-a"))
    # At the resync: without the watch, which puts it back at once (test_nodes_and_watch.py).
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(watch=False))

    async with running(worker):
        await converged(pg_dsn, kube)
        ours = (await raw.get(CiliumNode, "node-a"))["spec"]["ipam"]["podCIDRs"]
        foreign = CiliumNode(
            metadata=ObjectMeta(name="node-a"), spec={"ipam": {"podCIDRs": ["10.99.0.0/24"]}}
        )
        # Without force the server refuses: the field is ipledger's.
        with pytest.raises(Exception, match="conflict"):
            await raw.apply(foreign, field_manager="cilium-operator")
        taken = await raw.apply(foreign, field_manager="cilium-operator", force=True)
        assert pod_cidr_managers(taken) == {"cilium-operator"}

        with caplog.at_level(logging.WARNING, logger="ipledger.sync"):
            worker.request_resync()

            async def put_back() -> bool:
                node = await raw.get(CiliumNode, "node-a")
                return bool(node["spec"]["ipam"]["podCIDRs"] == ours)

            await waiting.until(
                put_back, timeout=30, what="the resync to put podCIDRs back", interval=POLL_S
            )

    restored = await raw.get(CiliumNode, "node-a")
    assert pod_cidr_managers(restored) == {"ipledger"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("10.99.0.0/24" in w and "cilium-operator" in w for w in warnings), warnings
    assert worker.metrics.drift_repairs == 1


async def test_hand_edits_of_spec_and_status_are_repaired(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"), added("node-b"))
    # The resync's repair: without the watch, which would put the edits back at once
    # (tests/integration/test_nodes_and_watch.py).
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(watch=False))

    async with running(worker):
        await converged(pg_dsn, kube)
        # kubectl edit: a merge patch (an Update, not an Apply) by another manager.
        await raw.patch(
            CiliumNode,
            "node-a",
            {"spec": {"ipam": {"podCIDRs": ["10.0.200.0/24"]}}},
            patch_type=PatchType.MERGE,
            field_manager="kubectl-edit",
        )
        await raw.patch(
            CiliumNode.Status,
            "node-b",
            {"status": {"ipam": {"operator-status": {"error": "made up"}}}},
            patch_type=PatchType.MERGE,
            field_manager="kubectl-edit",
        )
        assert await mismatches(pg_dsn, kube)
        worker.request_resync()
        await converged(pg_dsn, kube)

    assert worker.metrics.drift_repairs == 2
    b = await raw.get(CiliumNode, "node-b")
    assert b["status"]["ipam"]["operator-status"]["error"] == ""


async def test_status_error_is_set_while_a_node_waits_and_cleared_when_it_is_served(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    # Room for exactly one node CIDR.
    await ledger.append(pool(v4="10.0.0.0/24", m4=24, v6=None), added("node-a"), added("node-b"))

    async with running(sync.ClusterSync(CLUSTER, kube, store, settings())):
        await converged(pg_dsn, kube)
        waiting = await raw.get(CiliumNode, "node-b")
        error = (await projection_nodes(pg_dsn))["node-b"][1]
        assert error
        assert waiting["status"]["ipam"]["operator-status"]["error"] == error
        assert waiting["spec"]["ipam"]["podCIDRs"] == []

        await ledger.append(deleted("node-a"))
        await converged(pg_dsn, kube)

    served = await raw.get(CiliumNode, "node-b")
    assert served["spec"]["ipam"]["podCIDRs"] == ["10.0.0.0/24"]
    assert served["status"]["ipam"]["operator-status"]["error"] == ""
    # The deleted node's CiliumNode is left to Kubernetes' garbage collection.
    assert (await raw.get(CiliumNode, "node-a"))["spec"]["ipam"]["podCIDRs"] == ["10.0.0.0/24"]


async def test_orphans_are_deleted_only_when_asked(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"), added("node-b"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(delete_orphans=True))

    async with running(worker):
        await converged(pg_dsn, kube)
        await ledger.append(deleted("node-a"))

        async def gone() -> bool:
            return {n.name for n in await kube.list_nodes()} == {"node-b"}

        await waiting.until(
            gone, timeout=30, what="node-a's CiliumNode to be deleted", interval=POLL_S
        )

    assert worker.metrics.deletes == 1


async def test_pod_addresses_are_mirrored_into_the_pools(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(
        pool(),
        added("node-a"),
        event("ip.requested", node="node-a", owner="default/web-1"),
        event("ip.requested", node="node-a", owner="default/web-2", family="ipv4"),
    )

    async def pools() -> tuple[dict[str, Any], dict[str, Any]]:
        ipam = (await raw.get(CiliumNode, "node-a"))["spec"]["ipam"]
        return ipam.get("pool", {}), ipam.get("ipv6-pool", {})

    async with running(sync.ClusterSync(CLUSTER, kube, store, settings(mirror_pod_ips=True))):
        await converged(pg_dsn, kube)

        async def mirrored() -> bool:
            v4, v6 = await pools()
            return len(v4) == 2 and len(v6) == 1

        await waiting.until(
            mirrored, timeout=30, what="the pod addresses in spec.ipam.pool", interval=POLL_S
        )
        v4, v6 = await pools()
        assert sorted(e["owner"] for e in v4.values()) == ["default/web-1", "default/web-2"]
        assert [e["owner"] for e in v6.values()] == ["default/web-1"]

        await ledger.append(event("ip.released", node="node-a", owner="default/web-1"))

        async def released() -> bool:
            v4, v6 = await pools()
            return [e["owner"] for e in v4.values()] == ["default/web-2"] and not v6

        await waiting.until(
            released, timeout=30, what="the released addresses to leave the pools", interval=POLL_S
        )


async def test_without_create_missing_a_node_waits_for_its_ciliumnode(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"))
    worker = sync.ClusterSync(
        CLUSTER, kube, store, settings(create_missing=False, waiting_recheck_s=0.2)
    )

    async with running(worker):

        async def reported() -> bool:
            return (await progress(pg_dsn)).get("node-a", (0, None))[1] == (
                sync.WAITING_FOR_CILIUMNODE
            )

        await waiting.until(
            reported, timeout=30, what="node_sync to report node-a as waiting", interval=POLL_S
        )
        assert await kube.list_nodes() == []

        # Cilium's agent starts on the node and creates its CiliumNode.
        await raw.apply(
            CiliumNode(
                metadata=ObjectMeta(name="node-a"),
                spec={"addresses": [{"type": "InternalIP", "ip": "192.0.2.10"}]},
            ),
            field_manager="cilium-agent",
        )
        await converged(pg_dsn, kube)

        async def recorded() -> bool:
            return (await progress(pg_dsn))["node-a"][1] is None

        await waiting.until(
            recorded, timeout=30, what="node_sync to record node-a as mirrored", interval=POLL_S
        )


async def test_sync_continues_across_an_apiserver_restart(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    # Paced so that the restart lands in the middle of the writes.
    await ledger.append(pool(v4="10.0.0.0/8"), *(added(f"node-{i:03}") for i in range(300)))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(qps=100, burst=10))

    async with running(worker):
        await waiting.until(
            lambda: worker.metrics.nodes_mirrored >= 50, timeout=30, what="50 nodes mirrored"
        )
        await anyio.to_thread.run_sync(kube_apiserver.restart_apiserver)
        await converged(pg_dsn, kube, timeout=60)

    assert worker.metrics.retries >= 1
    assert worker.metrics.nodes_mirrored >= 300


async def test_a_restarted_worker_redoes_nothing_that_was_recorded(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), *(added(f"node-{i:03}") for i in range(100)))
    first = sync.ClusterSync(CLUSTER, kube, store, settings(qps=200, burst=20))
    async with running(first):
        # Polled often: the first worker must be stopped before it mirrors all 100.
        await waiting.until(
            lambda: first.metrics.nodes_mirrored >= 40,
            timeout=30,
            what="40 nodes mirrored",
            interval=0.005,
        )
    # Stopped half way: what it wrote was recorded on the way out.
    recorded = await progress(pg_dsn)
    assert 40 <= len(recorded) < 100
    assert len(recorded) == first.metrics.nodes_mirrored

    second = sync.ClusterSync(CLUSTER, kube, store, settings())
    async with running(second):
        await converged(pg_dsn, kube)
        await waiting.until(
            lambda: _all_recorded(pg_dsn, 100),
            timeout=30,
            what="node_sync to record every node",
            interval=POLL_S,
        )

    # The rest, and no more: of those, the writes that were in flight when the first stopped
    # (at most its concurrency) may have landed; the second finds them true and skips them.
    left = 100 - len(recorded)
    assert second.metrics.nodes_mirrored == left
    assert second.metrics.unchanged <= first.settings.concurrency
    assert sent_once(second) == left - second.metrics.unchanged


async def _all_recorded(dsn: str, count: int) -> bool:
    return len([e for _, e in (await progress(dsn)).values() if e is None]) == count


async def test_one_instance_at_a_time_and_the_second_takes_over(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"))
    stores = [sync_store.PostgresSyncStore.from_dsn(pg_dsn) for _ in range(2)]
    first, second = (sync.ClusterSync(CLUSTER, kube, s, settings()) for s in stores)
    stop_first = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first.run, stop_first)
            await converged(pg_dsn, kube)
            assert first.metrics.leader
            async with running(second):
                await waiting.until(
                    lambda: second.metrics.lock_waits >= 3,
                    timeout=10,
                    what="the second worker to wait three times for the lock",
                )
                await ledger.append(added("node-b"))
                await converged(pg_dsn, kube)
                assert first.metrics.leader and not second.metrics.leader
                assert second.metrics.requests == 0

                stop_first.set()
                await waiting.until(
                    lambda: second.metrics.leader,
                    timeout=10,
                    what="the second worker to lead once the first stopped",
                )
                await ledger.append(added("node-c"))
                await converged(pg_dsn, kube)
                assert sent_once(second) == 1
    finally:
        for store in stores:
            await store.close()
    assert first.metrics.takeovers == second.metrics.takeovers == 1
    assert sent_once(first) == 2


async def test_losing_the_database_session_loses_the_lock_and_the_worker_recovers(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(lock_check_s=0.1))

    async with running(worker):
        await converged(pg_dsn, kube)
        db = await asyncpg.connect(pg_dsn)
        try:
            holder = await db.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
            assert holder is not None
            await db.execute("SELECT pg_terminate_backend($1)", holder)
        finally:
            await db.close()
        await waiting.until(
            lambda: worker.metrics.takeovers >= 2,
            timeout=10,
            what="the worker to take the lock again on a new session",
        )
        await ledger.append(added("node-b"))
        await converged(pg_dsn, kube)
        await waiting.until(
            lambda: _all_recorded(pg_dsn, 2),
            timeout=30,
            what="node_sync to record node-b",
            interval=POLL_S,
        )

    assert worker.metrics.fenced == 1


async def test_adopt_takes_existing_pod_cidrs_and_reports_those_outside_the_pool(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ledger.append(pool())
    # What Cilium's operator left behind: three nodes, one of them outside ipledger's pool.
    existing = {
        "node-a": ["10.0.7.0/24", "fd00::700/120"],
        "node-b": ["10.0.9.0/24", "fd00::900/120"],
        "node-c": ["172.16.0.0/24"],
    }
    for name, cidrs in existing.items():
        await raw.apply(
            CiliumNode(metadata=ObjectMeta(name=name), spec={"ipam": {"podCIDRs": cidrs}}),
            field_manager="cilium-operator",
        )
    before = {n.name: n.resource_version for n in await kube.list_nodes()}

    argv = [
        "adopt",
        "--from-kubernetes",
        "--database-url",
        pg_dsn,
        "--kubeconfig",
        str(kube_apiserver.kubeconfig_path),
    ]
    code = await anyio.to_thread.run_sync(cli.main, argv)
    out = capsys.readouterr().out

    assert code == 1
    assert "appended 2 node.adopted event(s)" in out
    assert "refused node-c: 172.16.0.0/24 is outside the pool" in out
    await ledger.caught_up()  # the allocator applies what adopt appended
    nodes = await projection_nodes(pg_dsn)
    assert {name: cidrs for name, (cidrs, _, _) in nodes.items()} == {
        "node-a": existing["node-a"],
        "node-b": existing["node-b"],
    }

    # Switching over: the sync worker finds every adopted CiliumNode already right.
    worker = sync.ClusterSync(CLUSTER, kube, store, settings())
    async with running(worker):
        await waiting.until(
            lambda: _all_recorded(pg_dsn, 2),
            timeout=30,
            what="node_sync to record the adopted nodes",
            interval=POLL_S,
        )
    assert worker.metrics.applies == 0
    after = {n.name: n.resource_version for n in await kube.list_nodes()}
    assert after == before

    # Running adopt again appends nothing new.
    again = await anyio.to_thread.run_sync(cli.main, argv)
    assert again == 1
    assert "appended 0 node.adopted event(s); 2 already adopted" in capsys.readouterr().out


async def test_a_thousand_nodes_converge(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(v4="10.0.0.0/8"), *(added(f"node-{i:04}") for i in range(1000)))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(concurrency=16))
    started = time.monotonic()

    async with running(worker):
        await converged(pg_dsn, kube, timeout=120)
        elapsed = time.monotonic() - started
        await waiting.until(
            lambda: _all_recorded(pg_dsn, 1000),
            timeout=30,
            what="node_sync to record all 1,000 nodes",
            interval=POLL_S,
        )

    # One write per node: no error to write, no node written twice.
    assert sent_once(worker) == 1000, worker.metrics
    assert worker.metrics.status_applies == 0
    assert worker.metrics.nodes_mirrored == 1000
    print(f"1,000 CiliumNodes converged in {elapsed:.1f}s")


async def test_ipledger_sync_runs_as_a_process_and_stops_cleanly_on_sigterm(
    ledger: Ledger,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    await ledger.append(pool(), added("node-a"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_KUBECONFIG": str(kube_apiserver.kubeconfig_path),
        "IPLEDGER_SYNC_QPS": "0",
        "IPLEDGER_SYNC_METRICS_PORT": str(port),
    }
    log_path = tmp_path / "sync.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "sync"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            await converged(pg_dsn, kube)
            await ledger.append(added("node-b"))
            await converged(pg_dsn, kube)
            await waiting.until(
                lambda: _all_recorded(pg_dsn, 2),
                timeout=30,
                what="the process to record its progress",
                interval=POLL_S,
            )
            exported = await anyio.to_thread.run_sync(_scrape, port)
            assert 'ipledger_sync_nodes_mirrored_total{cluster="default"} 2.0\n' in exported
            assert 'ipledger_sync_leader{cluster="default"} 1.0\n' in exported
            process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "cluster default: stopped: 2 nodes mirrored" in output


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
        return text
