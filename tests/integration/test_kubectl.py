"""What an operator sees with kubectl: the machine's kubectl against the real kube-apiserver.

ipledger runs for real (events appended to the PostgreSQL table log, the allocator, the
projection, the sync worker) and the test then looks at the result the way Cilium's cluster-pool
guide tells operators to: the guide's exact troubleshooting command for allocation errors, and
`kubectl get ciliumnodes` for the pod CIDRs. The CRD is Cilium's own, so the columns kubectl
prints are the ones Cilium defines. The kubectl versions tried are in docs/sync.md.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient, KubeConfig

from service import sync
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import sync_store
from tests.harness.kube import KubeAPIServer, kubectl
from tests.integration import test_sync as sync_tests
from tests.integration.test_sync import CLUSTER, added, converged, deleted, pool, running, settings

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]

# Cilium's cluster-pool IPAM guide, "Troubleshooting / Look for allocation errors", verbatim.
GUIDE_COMMAND = (
    "kubectl get ciliumnodes -o jsonpath='{range .items[*]}{.metadata.name}"
    '{"\\t"}{.status.ipam.operator-status}{"\\n"}{end}\''
)

ledger = sync_tests.ledger


@pytest.fixture
async def kube(kube_apiserver: KubeAPIServer) -> AsyncIterator[KubernetesClusterClient]:
    """ipledger's client, on a server cleared of CiliumNodes before and after the test."""
    admin = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    await admin.deletecollection(sync_tests.CiliumNode)
    client = KubernetesClusterClient.connect(kube_apiserver.kubeconfig_path)
    try:
        yield client
    finally:
        await client.close()
        await admin.deletecollection(sync_tests.CiliumNode)
        await admin.close()


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[sync_store.PostgresSyncStore]:
    store = sync_store.PostgresSyncStore.from_dsn(pg_dsn)
    try:
        yield store
    finally:
        await store.close()


def run_kubectl(server: KubeAPIServer, *args: str) -> str:
    done = kubectl(server.kubeconfig_path, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def guide_lines(server: KubeAPIServer) -> dict[str, str]:
    """The guide's command as a shell would split it, run as the admin: name -> what it shows."""
    program, *args = shlex.split(GUIDE_COMMAND)
    assert program == "kubectl"
    lines = run_kubectl(server, *args).splitlines()
    return dict(line.split("\t", 1) for line in lines)


async def test_the_guides_command_shows_allocator_full_only_for_the_node_the_pool_cannot_serve(
    ledger: sync_tests.Ledger,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    # Room for exactly one node CIDR: node-b waits.
    await ledger.append(pool(v4="10.0.0.0/24", m4=24, v6=None), added("node-a"), added("node-b"))

    async with running(sync.ClusterSync(CLUSTER, kube, store, settings())):
        await converged(pg_dsn, kube)
        shown = guide_lines(kube_apiserver)

        assert shown == {"node-a": "", "node-b": '{"error":"allocator full"}'}

        # Once the pool can serve it, the operator sees the error cleared, as Cilium clears it.
        await ledger.append(deleted("node-a"))
        await converged(pg_dsn, kube)
        assert guide_lines(kube_apiserver)["node-b"] == '{"error":""}'


async def test_kubectl_get_ciliumnodes_lists_the_nodes_and_their_pod_cidrs(
    ledger: sync_tests.Ledger,
    kube: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(), added("node-a"), added("node-b"))

    async with running(sync.ClusterSync(CLUSTER, kube, store, settings())):
        await converged(pg_dsn, kube)
    wanted = {
        name: cidrs for name, (cidrs, _, _) in (await sync_tests.projection_nodes(pg_dsn)).items()
    }

    # The columns are the CRD's own (Cilium defines no pod CIDR column), so the names are there...
    table = run_kubectl(kube_apiserver, "get", "ciliumnodes").splitlines()
    assert table[0].split() == ["NAME", "CILIUMINTERNALIP", "INTERNALIP", "AGE"]
    assert sorted(row.split()[0] for row in table[1:]) == ["node-a", "node-b"]
    # ...and the pod CIDRs are one column away, IPv4 then IPv6 as ipledger allocated them.
    columns = run_kubectl(
        kube_apiserver,
        "get",
        "ciliumnodes",
        "-o",
        "custom-columns=NAME:.metadata.name,PODCIDRS:.spec.ipam.podCIDRs[*]",
        "--no-headers",
    )
    shown = dict(line.split() for line in columns.splitlines())
    assert shown == {name: ",".join(cidrs) for name, cidrs in wanted.items()}
    assert all(len(cidrs) == 2 for cidrs in wanted.values())
    # The single-object view an operator reaches for next.
    one = run_kubectl(
        kube_apiserver, "get", "ciliumnode", "node-a", "-o", "jsonpath={.spec.ipam.podCIDRs}"
    )
    assert one == '["' + '","'.join(wanted["node-a"]) + '"]'


def test_kubectl_discovers_the_core_api_and_ciliums_resources(
    kube_apiserver: KubeAPIServer,
) -> None:
    # What apiextensions-apiserver alone could not do: kubectl needs /api and /apis discovery.
    resources = run_kubectl(kube_apiserver, "api-resources", "--no-headers", "-o", "name")
    names = set(resources.split())
    assert {"nodes", "namespaces", "ciliumnodes.cilium.io"} <= names
    explained = run_kubectl(kube_apiserver, "explain", "ciliumnode.spec.ipam.podCIDRs")
    assert "podCIDRs" in explained
