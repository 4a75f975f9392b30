"""The contract of ``ports.ClusterClient``, written once and run against every adapter.

Each test runs against ``MemoryClusterClient`` (no service), ``FileClusterClient`` (a fresh
directory) and ``KubernetesClusterClient`` on the session's real API server with Cilium's CRD
(``kube_apiserver``, requested only by the Kubernetes parameter; its CiliumNodes are all deleted
before and after each test). "Another writer" is Cilium's agent: the memory client's ``edit``,
an edit of the node's YAML file, or a lightkube apply under the field manager ``cilium-agent``.

Asserted for every adapter: an apply creates a missing object and returns it as stored; applies
replace exactly ipledger's fields (IPv4 then IPv6 CIDRs as given, pod addresses split by family,
a family without addresses absent) and keep the other writer's addresses; the status error is set
and cleared with "", and cannot be applied to a missing object (``ClusterApiNotFoundError``);
get, list and delete report missing objects without raising; a listing names the managers of
``spec.ipam.podCIDRs``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta

from service import errors, ports
from service.adapters.kubernetes import client as kube_client
from service.adapters.kubernetes.files import FileClusterClient
from service.adapters.kubernetes.memory import MemoryClusterClient
from tests.harness.kube import KubeAPIServer

pytestmark = pytest.mark.anyio

V4 = ipaddress.IPv4Network("10.0.1.0/24")
V6 = ipaddress.IPv6Network("fd00::100/120")


@dataclass(frozen=True)
class ClientUnderTest:
    """A client, and how another writer (Cilium's agent) sets a node's addresses."""

    client: ports.ClusterClient
    agent_writes_addresses: Callable[[str, Sequence[str]], Awaitable[None]]


@pytest.fixture(params=["memory", "files", pytest.param("kubernetes", marks=pytest.mark.kube)])
def adapter(request: pytest.FixtureRequest) -> str:
    if request.param == "kubernetes":
        # Requested here, outside the event loop: starting the server blocks.
        request.getfixturevalue("kube_apiserver")
    name: str = request.param
    return name


@pytest.fixture
async def under_test(
    adapter: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ClientUnderTest]:
    if adapter == "files":
        files = FileClusterClient(tmp_path / "ciliumnodes")

        async def edit_file(name: str, addresses: Sequence[str]) -> None:
            path = files.directory / f"{name}.yaml"
            new = {"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": name}}
            obj = yaml.safe_load(path.read_text()) if path.exists() else new
            obj.setdefault("spec", {})["addresses"] = [
                {"type": "InternalIP", "ip": ip} for ip in addresses
            ]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj))

        yield ClientUnderTest(files, edit_file)
        await files.close()
        return
    if adapter == "memory":
        memory = MemoryClusterClient()

        async def edit(name: str, addresses: Sequence[str]) -> None:
            memory.edit(name, addresses=addresses, manager="cilium-agent")

        yield ClientUnderTest(memory, edit)
        await memory.close()
        return
    server: KubeAPIServer = request.getfixturevalue("kube_apiserver")
    raw = AsyncClient(config=KubeConfig.from_file(server.kubeconfig_path))
    await raw.deletecollection(kube_client.CiliumNode)
    client = kube_client.KubernetesClusterClient.connect(server.kubeconfig_path)

    async def apply_addresses(name: str, addresses: Sequence[str]) -> None:
        spec = {"addresses": [{"type": "InternalIP", "ip": ip} for ip in addresses]}
        await raw.apply(
            kube_client.CiliumNode(metadata=ObjectMeta(name=name), spec=spec),
            field_manager="cilium-agent",
        )

    try:
        yield ClientUnderTest(client, apply_addresses)
    finally:
        await client.close()
        await raw.deletecollection(kube_client.CiliumNode)
        await raw.close()


async def test_apply_creates_the_object_and_returns_it_as_stored(
    under_test: ClientUnderTest,
) -> None:
    client = under_test.client

    applied = await client.apply_pod_cidrs("node-a", [V4, V6])

    assert applied.name == "node-a"
    assert applied.pod_cidrs == ("10.0.1.0/24", "fd00::100/120")
    assert applied.error is None
    assert applied.resource_version
    assert await client.get_node("node-a") == applied


async def test_apply_replaces_only_ipledgers_fields(under_test: ClientUnderTest) -> None:
    client = under_test.client
    await under_test.agent_writes_addresses("node-a", ["192.0.2.10"])

    await client.apply_pod_cidrs("node-a", [V4, V6])
    replaced = await client.apply_pod_cidrs("node-a", [ipaddress.IPv4Network("10.0.2.0/24")])

    assert replaced.pod_cidrs == ("10.0.2.0/24",)
    assert replaced.addresses == ("192.0.2.10",)


async def test_pod_addresses_go_to_the_pool_of_their_family(under_test: ClientUnderTest) -> None:
    client = under_test.client
    pods: dict[ports.Address, str] = {
        ipaddress.ip_address("10.0.1.5"): "default/web-1",
        ipaddress.ip_address("fd00::105"): "default/web-1",
    }

    both = await client.apply_pod_cidrs("node-a", [V4, V6], pod_ips=pods)
    only_v4 = await client.apply_pod_cidrs(
        "node-a", [V4, V6], pod_ips={ipaddress.ip_address("10.0.1.5"): "default/web-1"}
    )
    none = await client.apply_pod_cidrs("node-a", [V4, V6], pod_ips={})

    assert both.pool == {"10.0.1.5": "default/web-1"}
    assert both.ipv6_pool == {"fd00::105": "default/web-1"}
    assert only_v4.pool == {"10.0.1.5": "default/web-1"}
    assert only_v4.ipv6_pool is None
    assert none.pool is None and none.ipv6_pool is None


async def test_the_status_error_is_set_and_cleared(under_test: ClientUnderTest) -> None:
    client = under_test.client
    await client.apply_pod_cidrs("node-a", [])

    failing = await client.apply_status_error("node-a", "allocator full")
    cleared = await client.apply_status_error("node-a", "")

    assert failing.error == "allocator full"
    assert cleared.error == ""
    assert cleared.pod_cidrs == ()


async def test_status_of_a_missing_object_is_not_found(under_test: ClientUnderTest) -> None:
    with pytest.raises(errors.ClusterApiNotFoundError):
        await under_test.client.apply_status_error("ghost", "x")


async def test_missing_objects_are_reported_without_raising(under_test: ClientUnderTest) -> None:
    client = under_test.client
    await client.apply_pod_cidrs("node-a", [V4])

    assert await client.get_node("ghost") is None
    assert await client.delete_node("node-a") is True
    assert await client.delete_node("node-a") is False
    assert await client.list_nodes() == []


async def test_a_listing_names_who_manages_pod_cidrs(under_test: ClientUnderTest) -> None:
    client = under_test.client
    await client.apply_pod_cidrs("node-a", [V4])
    await under_test.agent_writes_addresses("node-b", ["192.0.2.11"])

    listed = {node.name: node for node in await client.list_nodes()}

    assert listed["node-a"].pod_cidrs_managers == ("ipledger",)
    assert listed["node-b"].pod_cidrs_managers == ()
    assert listed["node-b"].pod_cidrs == ()
