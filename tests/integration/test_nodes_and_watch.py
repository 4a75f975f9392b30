"""Issue 12's v1 Node work against the real API server, real PostgreSQL and the real allocator.

- the sync worker's watch puts a hand edit of ``spec.ipam.podCIDRs`` back within seconds, with no
  resync, and logs the field manager that made it;
- with ``owner_references`` a CiliumNode the worker creates carries exactly the ownerReference
  Cilium's agent sets (apiVersion v1, kind Node, name, uid of the v1 Node);
- ``NodeProducer`` (``ipledger watch-nodes``): Nodes created and deleted while it runs and while
  it is down, producer restarted: the projection's nodes equal the Nodes present, and no
  node.deleted was ever refused (no duplicate decision-changing event);
- the leak check finds exactly the addresses whose pod was deleted.

The v1 Node tests need an API server serving the core API (they are skipped without one, and
fail under ``CI=true``). Garbage collection is kube-controller-manager's, which the harness does
not run: ``garbage_collector`` runs that binary (built by compose/kube/build.sh) with its
garbage-collector controller alone, for the one test that deletes a Node and waits for its
CiliumNode to go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import Container, NodeAddress, NodeStatus, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, ServiceAccount
from lightkube.types import PatchType

from service import producers, sync
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import sync_store
from service.domain import allocation, events, state
from tests import waiting
from tests.harness.kube import KubeAPIServer, binary_dir
from tests.integration.test_sync import (  # noqa: F401 - fixtures
    CLUSTER,
    POLL_S,
    CiliumNode,
    Ledger,
    _scrape,
    added,
    converged,
    event,
    kube,
    ledger,
    pool,
    raw,
    running,
    settings,
    store,
)

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]


@pytest.fixture
async def core(raw: AsyncClient) -> AsyncIterator[AsyncClient]:  # noqa: F811
    """``raw`` on a server with the core API; no Node before or after the test."""
    try:
        async for _ in raw.list(Node, chunk_size=1):
            break
    except ApiError:
        reason = "the test API server does not serve the core API (v1 Nodes, pods)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    await raw.deletecollection(Node)
    try:
        yield raw
    finally:
        await raw.deletecollection(Node)


async def create_node(core: AsyncClient, name: str, *internal: str) -> Any:
    status = NodeStatus(addresses=[NodeAddress(type="InternalIP", address=a) for a in internal])
    return await core.create(Node(metadata=ObjectMeta(name=name), status=status))


async def test_a_hand_edit_is_put_back_by_the_watch_within_seconds(
    ledger: Ledger,  # noqa: F811
    kube: KubernetesClusterClient,  # noqa: F811
    raw: AsyncClient,  # noqa: F811
    store: sync_store.PostgresSyncStore,  # noqa: F811
    pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await ledger.append(pool(), added("node-a"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(resync_interval_s=3600.0))

    async with running(worker):
        await converged(pg_dsn, kube)
        ours = (await raw.get(CiliumNode, "node-a"))["spec"]["ipam"]["podCIDRs"]
        with caplog.at_level(logging.WARNING, logger="ipledger.sync"):
            # kubectl edit: a merge patch by the manager kubectl-edit.
            await raw.patch(
                CiliumNode,
                "node-a",
                {"spec": {"ipam": {"podCIDRs": ["10.0.200.0/24"]}}},
                patch_type=PatchType.MERGE,
                field_manager="kubectl-edit",
            )

            async def put_back() -> bool:
                node = await raw.get(CiliumNode, "node-a")
                return bool(node["spec"]["ipam"]["podCIDRs"] == ours)

            taken = await waiting.until(
                put_back, timeout=10, what="the watch to put podCIDRs back", interval=POLL_S
            )

    assert worker.metrics.resyncs == 1, "repaired by a resync, not by the watch"
    assert worker.metrics.drift_repairs == 1
    assert taken < 5, f"put back after {taken:.1f}s"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("10.0.200.0/24" in w and "kubectl-edit" in w for w in warnings), warnings


async def test_a_created_ciliumnode_carries_the_ownerreference_of_its_node(
    ledger: Ledger,  # noqa: F811
    kube: KubernetesClusterClient,  # noqa: F811
    core: AsyncClient,
    store: sync_store.PostgresSyncStore,  # noqa: F811
    pg_dsn: str,
) -> None:
    node = await create_node(core, "node-a", "192.168.1.10")
    await ledger.append(pool(), added("node-a"), added("node-without-node"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(owner_references=True))

    async with running(worker):
        await converged(pg_dsn, kube)
        await waiting.until(
            lambda: worker.metrics.owner_references == 1, timeout=10, what="the ownerReference"
        )
        # A later change of the node (a new CIDR after node.deleted + node.added) keeps it.

    owned = await core.get(CiliumNode, "node-a")
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": node.metadata.uid}
    ]
    orphan = await core.get(CiliumNode, "node-without-node")
    assert not orphan["metadata"].get("ownerReferences")


@contextlib.asynccontextmanager
async def producing(
    kube: KubernetesClusterClient,  # noqa: F811
    ledger: Ledger,  # noqa: F811
    pg_dsn: str,
) -> AsyncIterator[producers.NodeProducer]:
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    producer = producers.NodeProducer(
        CLUSTER, kube, ledger.log, reader, 1, backoff_initial_s=0.05, backoff_max_s=0.5
    )
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(producer.run, stop)
            with anyio.fail_after(30):
                await producer.reconciled()
            try:
                yield producer
            finally:
                stop.set()
    finally:
        await reader.close()


async def projected(pg_dsn: str) -> dict[str, tuple[str, ...]]:
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        return {n.name: tuple(str(a) for a in n.addresses) for n in await reader.nodes(CLUSTER)}
    finally:
        await reader.close()


async def present(core: AsyncClient) -> dict[str, tuple[str, ...]]:
    found = {}
    async for node in core.list(Node):
        addresses = node.status.addresses if node.status is not None else None
        found[node.metadata.name] = tuple(
            a.address for a in addresses or () if a.type == "InternalIP"
        )
    return found


async def test_watch_nodes_end_state_equals_the_nodes_present_across_restarts(
    ledger: Ledger,  # noqa: F811
    kube: KubernetesClusterClient,  # noqa: F811
    core: AsyncClient,
    pg_dsn: str,
) -> None:
    await ledger.append(pool())
    for i in range(3):
        await create_node(core, f"node-{i}", f"192.168.1.{i}")

    async with producing(kube, ledger, pg_dsn) as first:
        await create_node(core, "node-3", "192.168.1.3")
        await core.delete(Node, "node-0")
        await core.patch(
            Node.Status,
            "node-1",
            {"status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.101"}]}},
            patch_type=PatchType.MERGE,
        )

        async def watched() -> bool:
            return first.metrics.added >= 5 and first.metrics.deleted >= 1

        await waiting.until(watched, timeout=15, what="the watched changes appended")
    # Down: Nodes come and go; one is deleted and created again under its name.
    await core.delete(Node, "node-2")
    await create_node(core, "node-4", "192.168.1.4")
    await core.delete(Node, "node-3")
    await create_node(core, "node-3", "192.168.1.3")
    async with producing(kube, ledger, pg_dsn) as second:
        pass
    async with producing(kube, ledger, pg_dsn) as third:
        pass
    await ledger.caught_up()

    assert await projected(pg_dsn) == await present(core)
    assert (second.metrics.added, second.metrics.deleted) == (1, 1)
    assert (third.metrics.added, third.metrics.deleted) == (0, 0)
    # The log again through the core: every node.deleted deleted something.
    oracle = state.State()
    for record in await ledger.log.read(0, 0, 100_000, 0):
        decision, decoded = allocation.apply_record(oracle, record.value)
        if decoded is not None and decoded.type == "node.deleted":
            assert decision.error is None, decision


async def test_the_leak_check_finds_exactly_the_addresses_of_deleted_pods(
    ledger: Ledger,  # noqa: F811
    kube: KubernetesClusterClient,  # noqa: F811
    core: AsyncClient,
    pg_dsn: str,
) -> None:
    for obj in (
        Namespace(metadata=ObjectMeta(name="shop")),
        ServiceAccount(metadata=ObjectMeta(name="default", namespace="shop")),
    ):
        with contextlib.suppress(ApiError):
            await core.create(obj)
    spec = PodSpec(containers=[Container(name="c", image="example.invalid/c")])
    for name in ("cart-1", "cart-2", "cart-3"):
        with contextlib.suppress(ApiError):
            await core.delete(Pod, name, namespace="shop")
        await core.create(Pod(metadata=ObjectMeta(name=name, namespace="shop"), spec=spec))
    await ledger.append(
        pool(),
        added("node-a"),
        *(
            event("ip.requested", node="node-a", owner=f"shop/{name}", family="ipv4")
            for name in ("cart-1", "cart-2", "cart-3")
        ),
    )
    await core.delete(Pod, "cart-2", namespace="shop", grace_period=0)

    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:

        async def gone() -> bool:
            return "shop/cart-2" not in await kube.list_pods()

        await waiting.until(gone, timeout=10, what="pod cart-2 gone")
        report = await producers.find_leaks(CLUSTER, reader, kube)
        held = await reader.owner_addresses(CLUSTER, "shop/cart-2")
    finally:
        await reader.close()
        for name in ("cart-1", "cart-3"):
            with contextlib.suppress(ApiError):
                await core.delete(Pod, name, namespace="shop", grace_period=0)

    assert [(leak.owner, leak.node) for leak in report.leaks] == [("shop/cart-2", "node-a")]
    assert [leak.address for leak in report.leaks] == [str(h.address) for h in held]
    release = report.leaks[0].release()
    assert isinstance(events.decode(events.encode_event(release)), events.IpReleased)


async def test_ipledger_watch_nodes_runs_as_a_process_and_stops_cleanly_on_sigterm(
    ledger: Ledger,  # noqa: F811
    core: AsyncClient,
    kube_apiserver: KubeAPIServer,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    await ledger.append(pool())
    await create_node(core, "node-a", "192.168.1.10")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_KUBECONFIG": str(kube_apiserver.kubeconfig_path),
    }
    log_path = tmp_path / "watch-nodes.log"
    command = [sys.executable, "-m", "service.cli", "watch-nodes", "--metrics-port", str(port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            await create_node(core, "node-b", "192.168.1.11")

            async def both() -> bool:
                await ledger.caught_up()
                return set(await projected(pg_dsn)) == {"node-a", "node-b"}

            await waiting.until(both, timeout=30, what="both Nodes in the projection")
            exported = await anyio.to_thread.run_sync(_scrape, port)
            assert 'ipledger_watch_nodes_added_total{cluster="default"} 2.0\n' in exported
            process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "cluster default: stopped: 2 node.added and 0 node.deleted appended" in output


async def test_ipledger_check_leaks_prints_the_releases_and_appending_them_ends_the_leak(
    ledger: Ledger,  # noqa: F811
    core: AsyncClient,
    kube_apiserver: KubeAPIServer,
    pg_dsn: str,
) -> None:
    for obj in (
        Namespace(metadata=ObjectMeta(name="web")),
        ServiceAccount(metadata=ObjectMeta(name="default", namespace="web")),
    ):
        with contextlib.suppress(ApiError):
            await core.create(obj)
    with contextlib.suppress(ApiError):
        await core.delete(Pod, "front-1", namespace="web", grace_period=0)
    spec = PodSpec(containers=[Container(name="c", image="example.invalid/c")])
    await core.create(Pod(metadata=ObjectMeta(name="front-1", namespace="web"), spec=spec))
    await ledger.append(
        pool(),
        added("node-a"),
        event("ip.requested", node="node-a", owner="web/front-1"),  # both families
        event("ip.requested", node="node-a", owner="web/front-gone"),
    )
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_KUBECONFIG": str(kube_apiserver.kubeconfig_path),
    }

    def ipledger(*args: str, given: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", *args]
        return subprocess.run(
            command, env=env, input=given, capture_output=True, text=True, timeout=60, check=False
        )

    def check() -> subprocess.CompletedProcess[str]:
        return ipledger("check", "--kubernetes", "--leaks")

    try:
        first = await anyio.to_thread.run_sync(check)
        releases = [line for line in first.stdout.splitlines() if line.startswith("{")]
        given = "\n".join(releases) + "\n"
        appended = await anyio.to_thread.run_sync(lambda: ipledger("append", "-", given=given))
        await ledger.caught_up()
        second = await anyio.to_thread.run_sync(check)
    finally:
        with contextlib.suppress(ApiError):
            await core.delete(Pod, "front-1", namespace="web", grace_period=0)

    assert first.returncode == 1, first.stderr
    leak_lines = [line for line in first.stdout.splitlines() if "held by" in line]
    assert len(leak_lines) == 2 and all("web/front-gone" in line for line in leak_lines)
    assert "leaks: cluster default: 4 address(es) held" in first.stdout
    assert len(releases) == 2 and appended.returncode == 0, appended.stderr
    assert "leaks: cluster default: 2 address(es) held" in second.stdout
    assert "held by" not in second.stdout


@pytest.fixture(scope="module")
def garbage_collector(
    kube_apiserver: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """kube-controller-manager with only its garbage collector, on the session's API server.

    Module-scoped (the leak check counts it as the module's, not a test's); yields its pid.
    """
    binary = binary_dir() / "kube-controller-manager"
    if not binary.exists():
        reason = f"{binary} not built: make services"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("kcm") / "kube-controller-manager.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(binary),
                f"--kubeconfig={kube_apiserver.kubeconfig_path}",
                "--controllers=garbage-collector-controller",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--secure-port=0",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_garbage_collection_deletes_the_ciliumnode_with_its_node(
    garbage_collector: int,
    ledger: Ledger,  # noqa: F811
    kube: KubernetesClusterClient,  # noqa: F811
    core: AsyncClient,
    store: sync_store.PostgresSyncStore,  # noqa: F811
    pg_dsn: str,
) -> None:
    await create_node(core, "node-a", "192.168.1.10")
    await create_node(core, "node-b", "192.168.1.11")
    await ledger.append(pool(), added("node-a"), added("node-b"))
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(owner_references=True))
    async with running(worker):
        await converged(pg_dsn, kube)
        await waiting.until(
            lambda: worker.metrics.owner_references == 2, timeout=10, what="both ownerReferences"
        )
        await core.delete(Node, "node-a")

        async def collected() -> bool:
            return await kube.get_node("node-a") is None

        # The collector's informers start with it: the first collection may take a while.
        await waiting.until(collected, timeout=60, what="node-a's CiliumNode collected")
        assert await kube.get_node("node-b") is not None
