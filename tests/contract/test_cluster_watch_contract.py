"""The contract of ``ports.ClusterClient``'s watches, ownerReferences, v1 Nodes and pods.

The second half of the cluster-client contract suite (the first: test_cluster_client_contract.py),
run against ``MemoryClusterClient`` and ``KubernetesClusterClient`` on the session's real API
server. The v1 Node and pod tests need an API server that serves the core API (``/api/v1``);
against one that does not they are skipped, or fail under ``CI=true``.

Asserted for every adapter:
- a watch from a listing's version delivers every later change in order: created (ADDED),
  changed by another manager (MODIFIED, naming that manager for ``spec.ipam.podCIDRs``), deleted
  (DELETED); a watch from a version the server no longer has raises ``ClusterApiGoneError``;
- ``apply_owner`` sets exactly the ownerReference Cilium's agent sets (apiVersion v1, kind Node,
  name, uid), a later spec apply keeps it, and a missing CiliumNode is ``ClusterApiNotFoundError``
  (never created);
- v1 Nodes: get (None when missing), list with a version, a watch of added, changed and deleted
  Nodes with their InternalIP then ExternalIP addresses;
- ``set_kube_node_pod_cidrs`` sets spec.podCIDRs of the Node with that UID, refuses another
  value once set (``ClusterApiRejectedError``), a Node of another UID (``ClusterApiRejectedError``)
  and a missing Node (``ClusterApiNotFoundError``) without creating it;
- ``list_pods`` names every pod as ``namespace/name``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.core_v1 import Container, NodeAddress, NodeStatus, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, ServiceAccount

from service import errors, ports
from service.adapters.kubernetes import client as kube_client
from service.adapters.kubernetes.memory import MemoryClusterClient
from tests.harness.kube import KubeAPIServer

pytestmark = pytest.mark.anyio

V4 = ipaddress.IPv4Network("10.0.1.0/24")
DEADLINE_S = 15.0


@dataclass
class Cluster:
    """A client, and what other actors (a person, the kubelet, the scheduler) do to the cluster."""

    client: ports.ClusterClient
    edit_pod_cidrs: Callable[[str, Sequence[str], str], Awaitable[None]]
    delete_ciliumnode: Callable[[str], Awaitable[None]]
    add_node: Callable[[str, Sequence[tuple[str, str]]], Awaitable[ports.KubeNode]]
    delete_node: Callable[[str], Awaitable[None]]
    add_pod: Callable[[str, str], Awaitable[None]]
    serves_core: bool


@pytest.fixture(params=["memory", pytest.param("kubernetes", marks=pytest.mark.kube)])
def adapter(request: pytest.FixtureRequest) -> str:
    if request.param == "kubernetes":
        request.getfixturevalue("kube_apiserver")  # outside the event loop: starting blocks
    name: str = request.param
    return name


@pytest.fixture
async def cluster(adapter: str, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if adapter == "memory":
        yield _memory_cluster()
        return
    server: KubeAPIServer = request.getfixturevalue("kube_apiserver")
    raw = AsyncClient(config=KubeConfig.from_file(server.kubeconfig_path))
    client = kube_client.KubernetesClusterClient.connect(server.kubeconfig_path)
    serves_core = await _serves_core(raw)
    await _clean(raw, serves_core)

    async def edit_pod_cidrs(name: str, cidrs: Sequence[str], manager: str) -> None:
        body = {
            "apiVersion": kube_client.API_VERSION,
            "kind": kube_client.KIND,
            "metadata": {"name": name},
            "spec": {"ipam": {"podCIDRs": list(cidrs)}},
        }
        await raw.patch(
            kube_client.CiliumNode,
            name,
            body,
            patch_type=kube_client.PatchType.APPLY,
            field_manager=manager,
            force=True,
        )

    async def delete_ciliumnode(name: str) -> None:
        await raw.delete(kube_client.CiliumNode, name)

    async def add_node(name: str, addresses: Sequence[tuple[str, str]]) -> ports.KubeNode:
        status = NodeStatus(addresses=[NodeAddress(type=t, address=a) for t, a in addresses])
        if await client.get_kube_node(name) is None:
            # With its status, as a kubelet registers: Nodes take status on create.
            await raw.create(Node(metadata=ObjectMeta(name=name), status=status))
        else:
            await raw.patch(
                Node.Status,
                name,
                {"status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}},
                patch_type=kube_client.PatchType.MERGE,
            )
        found = await client.get_kube_node(name)
        assert found is not None
        return found

    async def delete_node(name: str) -> None:
        await raw.delete(Node, name)

    async def add_pod(namespace: str, name: str) -> None:
        # No controller-manager makes the namespace's default ServiceAccount, which the
        # ServiceAccount admission plugin looks up for every pod.
        for obj in (
            Namespace(metadata=ObjectMeta(name=namespace)),
            ServiceAccount(metadata=ObjectMeta(name="default", namespace=namespace)),
        ):
            with contextlib.suppress(ApiError):  # exists already
                await raw.create(obj)
        await raw.create(
            Pod(
                metadata=ObjectMeta(name=name, namespace=namespace),
                spec=PodSpec(containers=[Container(name="c", image="example.invalid/c")]),
            )
        )

    try:
        yield Cluster(
            client, edit_pod_cidrs, delete_ciliumnode, add_node, delete_node, add_pod, serves_core
        )
    finally:
        await client.close()
        await _clean(raw, serves_core)
        await raw.close()


def _memory_cluster() -> Cluster:
    memory = MemoryClusterClient()

    async def edit_pod_cidrs(name: str, cidrs: Sequence[str], manager: str) -> None:
        memory.edit(name, pod_cidrs=cidrs, manager=manager)

    async def delete_ciliumnode(name: str) -> None:
        memory.remove(name)

    async def add_node(name: str, addresses: Sequence[tuple[str, str]]) -> ports.KubeNode:
        order = {"InternalIP": 0, "ExternalIP": 1}
        kept = [a for t, a in sorted(addresses, key=lambda x: order.get(x[0], 2)) if t in order]
        return memory.add_kube_node(name, kept)

    async def delete_node(name: str) -> None:
        memory.remove_kube_node(name)

    async def add_pod(namespace: str, name: str) -> None:
        memory.pods.add(f"{namespace}/{name}")

    return Cluster(memory, edit_pod_cidrs, delete_ciliumnode, add_node, delete_node, add_pod, True)


async def _serves_core(raw: AsyncClient) -> bool:
    try:
        async for _ in raw.list(Node, chunk_size=1):
            break
    except ApiError:  # the standalone apiextensions-apiserver has no /api: 404
        return False
    return True


async def _clean(raw: AsyncClient, serves_core: bool) -> None:
    await raw.deletecollection(kube_client.CiliumNode)
    if serves_core:
        await raw.deletecollection(Node)


def needs_core(cluster: Cluster) -> None:
    if cluster.serves_core:
        return
    reason = "the test API server does not serve the core API (v1 Nodes, pods)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


async def _take(
    stream: AsyncIterator[ports.Change[ports.ObservedNode]], count: int
) -> list[ports.Change[ports.ObservedNode]]:
    taken: list[ports.Change[ports.ObservedNode]] = []
    with anyio.fail_after(DEADLINE_S):
        async for change in stream:
            taken.append(change)
            if len(taken) == count:
                break
    return taken


async def test_a_watch_delivers_every_change_after_the_listing(cluster: Cluster) -> None:
    client = cluster.client
    await client.apply_pod_cidrs("before", [V4])
    listing = await client.list_nodes_at()
    assert [n.name for n in listing.items] == ["before"] and listing.resource_version

    stream = client.watch_nodes(listing.resource_version)
    await client.apply_pod_cidrs("node-a", [V4])
    await cluster.edit_pod_cidrs("node-a", ["10.9.9.0/24"], "kubectl-edit")
    await cluster.delete_ciliumnode("node-a")
    changes = await _take(stream, 3)
    await stream.aclose()  # type: ignore[attr-defined]

    assert [(c.type, c.item.name) for c in changes] == [
        ("ADDED", "node-a"),
        ("MODIFIED", "node-a"),
        ("DELETED", "node-a"),
    ]
    edited = changes[1].item
    assert edited.pod_cidrs == ("10.9.9.0/24",)
    assert edited.pod_cidrs_managers == ("kubectl-edit",)
    assert int(changes[0].item.resource_version) < int(edited.resource_version)


async def test_a_watch_from_a_version_no_longer_kept_is_gone(cluster: Cluster) -> None:
    client = cluster.client
    if isinstance(client, MemoryClusterClient):
        for name in ("node-a", "node-b"):
            await client.apply_pod_cidrs(name, [V4])
        client.forget_history()
    stream = client.watch_nodes("1")
    with pytest.raises(errors.ClusterApiGoneError):
        await _take(stream, 1)


async def test_the_owner_reference_is_the_agents_and_survives_spec_applies(
    cluster: Cluster,
) -> None:
    client = cluster.client
    owner = ports.KubeNode(name="node-a", uid=str(uuid.uuid4()))
    await client.apply_pod_cidrs("node-a", [V4])

    owned = await client.apply_owner("node-a", owner)
    again = await client.apply_pod_cidrs("node-a", [ipaddress.IPv4Network("10.0.2.0/24")])

    assert owned.node_owner == owner.uid
    assert again.node_owner == owner.uid and again.pod_cidrs == ("10.0.2.0/24",)
    with pytest.raises(errors.ClusterApiNotFoundError):
        await client.apply_owner("ghost", owner)
    assert await client.get_node("ghost") is None


async def test_the_owner_reference_on_the_wire(kube_apiserver: KubeAPIServer) -> None:
    raw = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    client = kube_client.KubernetesClusterClient.connect(kube_apiserver.kubeconfig_path)
    try:
        await client.apply_pod_cidrs("node-a", [V4])
        await client.apply_owner("node-a", ports.KubeNode(name="node-a", uid="u-1"))
        stored = await raw.get(kube_client.CiliumNode, "node-a")
        refs = stored["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "u-1"}]
        managers = {e["manager"] for e in stored["metadata"]["managedFields"]}
        assert {"ipledger", "ipledger-owner"} <= managers
    finally:
        await client.close()
        await raw.deletecollection(kube_client.CiliumNode)
        await raw.close()


async def test_nodes_are_read_listed_and_watched(cluster: Cluster) -> None:
    needs_core(cluster)
    client = cluster.client
    assert await client.get_kube_node("node-a") is None
    first = await cluster.add_node(
        "node-a", [("ExternalIP", "203.0.113.1"), ("Hostname", "a"), ("InternalIP", "10.1.0.1")]
    )
    assert first.addresses == ("10.1.0.1", "203.0.113.1") and first.uid
    listing = await client.list_kube_nodes()
    assert [n.name for n in listing.items] == ["node-a"]

    stream = client.watch_kube_nodes(listing.resource_version)
    await cluster.add_node("node-b", [("InternalIP", "10.1.0.2")])
    await cluster.add_node("node-a", [("InternalIP", "10.1.0.9")])
    await cluster.delete_node("node-b")
    taken: list[ports.Change[ports.KubeNode]] = []
    with anyio.fail_after(DEADLINE_S):
        async for change in stream:
            taken.append(change)
            if len(taken) == 3:
                break
    await stream.aclose()  # type: ignore[attr-defined]

    assert [(c.type, c.item.name) for c in taken] == [
        ("ADDED", "node-b"),
        ("MODIFIED", "node-a"),
        ("DELETED", "node-b"),
    ]
    assert taken[1].item.addresses == ("10.1.0.9",) and taken[1].item.uid == first.uid


async def test_node_pod_cidrs_are_set_once_for_that_uid(cluster: Cluster) -> None:
    needs_core(cluster)
    client = cluster.client
    node = await cluster.add_node("node-a", [("InternalIP", "10.1.0.1")])

    with pytest.raises(errors.ClusterApiRejectedError):
        await client.set_kube_node_pod_cidrs("node-a", str(uuid.uuid4()), ["10.0.1.0/24"])
    patched = await client.set_kube_node_pod_cidrs("node-a", node.uid, ["10.0.1.0/24"])
    same = await client.set_kube_node_pod_cidrs("node-a", node.uid, ["10.0.1.0/24"])
    with pytest.raises(errors.ClusterApiRejectedError):
        await client.set_kube_node_pod_cidrs("node-a", node.uid, ["10.0.2.0/24"])
    with pytest.raises(errors.ClusterApiNotFoundError):
        await client.set_kube_node_pod_cidrs("ghost", node.uid, ["10.0.3.0/24"])

    assert patched.pod_cidrs == same.pod_cidrs == ("10.0.1.0/24",)
    assert await client.get_kube_node("ghost") is None


async def test_pods_are_listed_as_namespace_and_name(cluster: Cluster) -> None:
    needs_core(cluster)
    await cluster.add_pod("shop", f"cart-{uuid.uuid4().hex[:6]}")
    pods = await cluster.client.list_pods()
    assert any(p.startswith("shop/cart-") for p in pods)
    assert all(p.count("/") == 1 for p in pods)
