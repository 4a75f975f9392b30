"""The optional ClusterRoles of compose/kubernetes/rbac-optional.yaml, for real: enough, no more.

Applied to the real kube-apiserver (authorization ``Node,RBAC``) with rbac.yaml, as an operator
would. Each option then runs with credentials that have only its roles:

- ``ipledger sync --owner-references`` as the ``kube-system/ipledger-sync`` ServiceAccount (the
  base role and ``ipledger-sync-owner-references``): the CiliumNode it creates carries its Node's
  ownerReference, and nothing was refused;
- ``ipledger watch-nodes --mirror-node-podcidrs`` as ``kube-system/ipledger-watch-nodes``
  (``ipledger-watch-nodes`` and ``-podcidrs``): the Nodes reach the log, their spec.podCIDRs are
  written, nothing was refused; it may not read CiliumNodes or pods;
- the leak check as the user ``ipledger-operator`` (``ipledger-leak-check``): it lists pods and
  nothing else.

The bindings are deleted again at the end: tests/integration/test_rbac.py checks that the base
role alone reads no Node, on the same session server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.models.core_v1 import NodeAddress, NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from service import errors, producers, sync
from service.adapters.kubernetes.client import CiliumNode, KubernetesClusterClient
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import sync_store
from tests import waiting
from tests.harness.kube import REPO_ROOT, KubeAPIServer
from tests.integration import test_sync as sync_tests
from tests.integration.test_sync import CLUSTER, Ledger, added, converged, pool, settings

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]

BASE = REPO_ROOT / "compose" / "kubernetes" / "rbac.yaml"
OPTIONAL = REPO_ROOT / "compose" / "kubernetes" / "rbac-optional.yaml"

ledger = sync_tests.ledger


@pytest.fixture
async def roles(kube_apiserver: KubeAPIServer) -> AsyncIterator[None]:
    """Both files applied; the optional roles and bindings deleted afterwards."""
    await anyio.to_thread.run_sync(kube_apiserver.apply, BASE)
    await anyio.to_thread.run_sync(kube_apiserver.apply, OPTIONAL)
    try:
        yield
    finally:
        admin = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
        try:
            for document in yaml.safe_load_all(OPTIONAL.read_text()):
                if document and document["kind"] == "ClusterRoleBinding":
                    await admin.delete(ClusterRoleBinding, document["metadata"]["name"])
                elif document and document["kind"] == "ClusterRole":
                    await admin.delete(ClusterRole, document["metadata"]["name"])
        finally:
            await admin.close()


@pytest.fixture
async def admin(kube_apiserver: KubeAPIServer) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    await client.deletecollection(CiliumNode)
    await client.deletecollection(Node)
    try:
        yield client
    finally:
        await client.deletecollection(CiliumNode)
        await client.deletecollection(Node)
        await client.close()


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[sync_store.PostgresSyncStore]:
    store = sync_store.PostgresSyncStore.from_dsn(pg_dsn)
    try:
        yield store
    finally:
        await store.close()


async def create_node(admin: AsyncClient, name: str, address: str) -> Node:
    status = NodeStatus(addresses=[NodeAddress(type="InternalIP", address=address)])
    created: Node = await admin.create(Node(metadata=ObjectMeta(name=name), status=status))
    return created


def connect(kubeconfig: Path) -> KubernetesClusterClient:
    return KubernetesClusterClient.connect(kubeconfig)


async def test_sync_with_owner_references_needs_only_its_optional_role(
    roles: None,
    admin: AsyncClient,
    ledger: Ledger,
    store: sync_store.PostgresSyncStore,
    kube_apiserver: KubeAPIServer,
    pg_dsn: str,
) -> None:
    node = await create_node(admin, "node-a", "192.168.1.10")
    await ledger.append(pool(), added("node-a"))
    client = connect(kube_apiserver.service_account_kubeconfig("kube-system", "ipledger-sync"))
    worker = sync.ClusterSync(CLUSTER, client, store, settings(owner_references=True))
    try:
        async with sync_tests.running(worker):
            await converged(pg_dsn, client)
            await waiting.until(
                lambda: worker.metrics.owner_references == 1, timeout=10, what="the reference"
            )
    finally:
        await client.close()
    stored = await admin.get(CiliumNode, "node-a")
    assert [ref["uid"] for ref in stored["metadata"]["ownerReferences"]] == [node.metadata.uid]
    assert worker.metrics.retries == 0


async def test_watch_nodes_needs_only_its_optional_roles_and_reads_nothing_else(
    roles: None,
    admin: AsyncClient,
    ledger: Ledger,
    kube_apiserver: KubeAPIServer,
    pg_dsn: str,
) -> None:
    await ledger.append(pool())
    await create_node(admin, "node-a", "192.168.1.10")
    kubeconfig = kube_apiserver.service_account_kubeconfig("kube-system", "ipledger-watch-nodes")
    client = connect(kubeconfig)
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    producer = producers.NodeProducer(
        CLUSTER, client, ledger.log, reader, 1, mirror_pod_cidrs=True, mirror_interval_s=0.1
    )
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(producer.run, stop)
            await create_node(admin, "node-b", "192.168.1.11")

            async def mirrored() -> bool:
                await ledger.caught_up()
                nodes = [n async for n in admin.list(Node)]
                return len(nodes) == 2 and all(
                    n.spec is not None and n.spec.podCIDRs for n in nodes
                )

            await waiting.until(mirrored, timeout=30, what="both Nodes given spec.podCIDRs")
            stop.set()
        with pytest.raises(errors.ClusterApiRejectedError, match="403"):
            await client.list_nodes()  # CiliumNodes
        with pytest.raises(errors.ClusterApiRejectedError, match="403"):
            await client.list_pods()
    finally:
        await client.close()
        await reader.close()
    assert producer.metrics.failures == 0
    assert (producer.metrics.added, producer.metrics.pod_cidrs_written) == (2, 2)
    assert producer.metrics.pod_cidrs_refused == 0


async def test_the_leak_check_needs_only_to_list_pods(
    roles: None, admin: AsyncClient, ledger: Ledger, kube_apiserver: KubeAPIServer, pg_dsn: str
) -> None:
    await ledger.append(pool(), added("node-a"))
    client = connect(kube_apiserver.client_certificate_kubeconfig("ipledger-operator"))
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        report = await producers.find_leaks(CLUSTER, reader, client)
        with pytest.raises(errors.ClusterApiRejectedError, match="403"):
            await client.list_kube_nodes()
        with pytest.raises(errors.ClusterApiRejectedError, match="403"):
            await client.list_nodes()
    finally:
        await client.close()
        await reader.close()
    assert report.leaks == ()
