"""ipledger's CiliumNode writes against the CiliumNode CRD of each Cilium release tested.

compose/kube/cilium-crds.txt pins each Cilium version's `ciliumnodes.yaml` (taken unmodified
from Cilium's Go module by compose/kube/build.sh, checked by sha256). For each, a kube-apiserver
of its own installs that CRD and the sync core path runs on it for real: events through the
allocator into the projection, the sync worker applying `spec.ipam.podCIDRs` (IPv4 and IPv6),
`spec.ipam.pool` from pod addresses, and `status.ipam.operator-status` (set while a node waits,
cleared when it is served). The server validates every write against that version's schema, so
a CRD change that refused one of ipledger's fields fails here (`metrics.rejected` stays 0).
docs/sync.md carries the resulting matrix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from service import sync
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import sync_store
from tests import waiting
from tests.harness.kube import KubeAPIServer, cilium_crd_versions, crd_path, require_services
from tests.integration import test_sync as sync_tests
from tests.integration.test_sync import (
    CLUSTER,
    CiliumNode,
    added,
    converged,
    deleted,
    event,
    pool,
    running,
    settings,
)

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]

ledger = sync_tests.ledger


@pytest.fixture(scope="module", params=cilium_crd_versions())
def versioned_apiserver(request: pytest.FixtureRequest) -> Iterator[KubeAPIServer]:
    """A kube-apiserver with the CiliumNode CRD of one Cilium version, for this module only."""
    crd = crd_path(request.param)
    require_services(crd)
    with KubeAPIServer(crd_file=crd) as server:
        yield server


@pytest.fixture
async def raw(versioned_apiserver: KubeAPIServer) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(versioned_apiserver.kubeconfig_path))
    await client.deletecollection(CiliumNode)
    try:
        yield client
    finally:
        await client.deletecollection(CiliumNode)
        await client.close()


@pytest.fixture
async def kube(
    versioned_apiserver: KubeAPIServer, raw: AsyncClient
) -> AsyncIterator[KubernetesClusterClient]:
    client = KubernetesClusterClient.connect(versioned_apiserver.kubeconfig_path)
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


def ipam(obj: Any) -> dict[str, Any]:
    found: dict[str, Any] = obj["spec"]["ipam"]
    return found


async def test_ipledgers_writes_are_valid_against_the_crd(
    versioned_apiserver: KubeAPIServer,
    ledger: sync_tests.Ledger,
    kube: KubernetesClusterClient,
    raw: AsyncClient,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    # One IPv4 node CIDR and plenty of IPv6: node-b waits for IPv4 ("allocator full").
    await ledger.append(
        pool(v4="10.0.0.0/24", m4=24, v6="fd00::/104", m6=120),
        added("node-a"),
        added("node-b"),
        event("ip.requested", node="node-a", owner="default/web-1"),
    )
    worker = sync.ClusterSync(CLUSTER, kube, store, settings(mirror_pod_ips=True))

    async with running(worker):  # asserts metrics.rejected == 0 on the way out
        await converged(pg_dsn, kube)
        served = await raw.get(CiliumNode, "node-a")
        unserved = await raw.get(CiliumNode, "node-b")
        assert ipam(served)["podCIDRs"] == ["10.0.0.0/24", "fd00::/120"]
        assert "status" not in served

        async def pools_mirrored() -> bool:
            pools = ipam(await raw.get(CiliumNode, "node-a"))
            return len(pools.get("pool", {})) == 1 and len(pools.get("ipv6-pool", {})) == 1

        await waiting.until(
            pools_mirrored, timeout=30, what="web-1's addresses in the pools", interval=0.05
        )
        assert unserved["status"]["ipam"]["operator-status"]["error"] == "allocator full"

        await ledger.append(deleted("node-a"))
        await converged(pg_dsn, kube)

    cleared = await raw.get(CiliumNode, "node-b")
    assert ipam(cleared)["podCIDRs"][0] == "10.0.0.0/24"
    assert cleared["status"]["ipam"]["operator-status"]["error"] == ""
    assert worker.metrics.rejected == 0
