"""Least privilege for real: `ipledger sync` and `ipledger adopt` with only the shipped ClusterRole.

compose/kubernetes/rbac.yaml is applied to the real kube-apiserver (authorization `Node,RBAC`)
as an operator would apply it. `ipledger sync` then runs as a process with a token of the
ServiceAccount it binds (minted through the TokenRequest API, as the kubelet mounts one into the
pod), and `ipledger adopt` with a client certificate for a user bound to the same ClusterRole.
Both must do their whole job with it, and be refused what they must not do: deleting
CiliumNodes (only `--delete-orphans` needs that, and the role leaves it out), anything outside
`cilium.io` CiliumNodes, granting themselves more. The API server's audit log, written as
requests end, shows which verbs they used and that none was refused during the normal work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import yaml
from lightkube import AsyncClient, KubeConfig

from service import errors, sync
from service.adapters.kubernetes.client import KubernetesClusterClient
from service.adapters.postgres import sync_store
from tests import waiting
from tests.harness.kube import REPO_ROOT, KubeAPIServer, kubectl
from tests.integration import test_sync as sync_tests
from tests.integration.test_sync import CLUSTER, added, converged, deleted, pool, settings

pytestmark = [pytest.mark.kube, pytest.mark.postgres, pytest.mark.anyio]

RBAC_FILE = REPO_ROOT / "compose" / "kubernetes" / "rbac.yaml"
ROLE = "ipledger-sync"
SA_NAMESPACE, SA_NAME = "kube-system", "ipledger-sync"
SA_USER = f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"
ADOPT_USER = "ipledger-adopt"

ledger = sync_tests.ledger


def shipped_rules() -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    (role,) = [d for d in documents if d["kind"] == "ClusterRole"]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def granted(verb: str, group: str, resource: str) -> bool:
    """Whether the shipped ClusterRole grants `verb` on `group`/`resource` (no wildcards in it)."""
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in shipped_rules()
    )


@pytest.fixture
def sync_kubeconfig(kube_apiserver: KubeAPIServer) -> Path:
    """The shipped RBAC applied, and a token of its ServiceAccount in a kubeconfig."""
    kube_apiserver.apply(RBAC_FILE)
    return kube_apiserver.service_account_kubeconfig(SA_NAMESPACE, SA_NAME)


@pytest.fixture
def adopt_kubeconfig(kube_apiserver: KubeAPIServer) -> Path:
    """A client certificate for a user bound (only) to the shipped ClusterRole."""
    kube_apiserver.apply(RBAC_FILE)
    kube_apiserver.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": ADOPT_USER},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": ROLE,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ADOPT_USER}
                ],
            }
        ]
    )
    return kube_apiserver.client_certificate_kubeconfig(ADOPT_USER)


@pytest.fixture
async def admin(kube_apiserver: KubeAPIServer) -> AsyncIterator[KubernetesClusterClient]:
    """The admin's ipledger client, on a server cleared of CiliumNodes before and after."""
    raw = AsyncClient(config=KubeConfig.from_file(kube_apiserver.kubeconfig_path))
    await raw.deletecollection(sync_tests.CiliumNode)
    client = KubernetesClusterClient.connect(kube_apiserver.kubeconfig_path)
    try:
        yield client
    finally:
        await client.close()
        await raw.deletecollection(sync_tests.CiliumNode)
        await raw.close()


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[sync_store.PostgresSyncStore]:
    store = sync_store.PostgresSyncStore.from_dsn(pg_dsn)
    try:
        yield store
    finally:
        await store.close()


class Audit:
    """The audit events of one user from a point in the log on."""

    def __init__(self, server: KubeAPIServer, user: str) -> None:
        self._server = server
        self._user = user
        self._skip = len(server.audit_events())

    def events(self) -> list[dict[str, Any]]:
        return [
            event
            for event in self._server.audit_events()[self._skip :]
            if event["user"]["username"] == self._user
        ]

    def requests(self) -> set[tuple[str, str, str, str, int]]:
        """(verb, group, resource, subresource, HTTP status) of each resource request."""
        seen = set()
        for event in self.events():
            ref = event.get("objectRef")
            if ref is None:
                continue
            seen.add(
                (
                    event["verb"],
                    ref.get("apiGroup", ""),
                    ref["resource"],
                    ref.get("subresource", ""),
                    event["responseStatus"]["code"],
                )
            )
        return seen


async def test_ipledger_sync_does_its_whole_job_with_only_the_shipped_role(
    ledger: sync_tests.Ledger,
    admin: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    sync_kubeconfig: Path,
    pg_dsn: str,
) -> None:
    audit = Audit(kube_apiserver, SA_USER)
    # Creates (node-a served, node-b waiting), a status error, then the error cleared.
    await ledger.append(pool(v4="10.0.0.0/24", m4=24, v6=None), added("node-a"), added("node-b"))
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_KUBECONFIG": str(sync_kubeconfig),
        "IPLEDGER_SYNC_QPS": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "sync"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await converged(pg_dsn, admin)
        assert (await admin.get_node("node-b")).error == "allocator full"  # type: ignore[union-attr]
        await ledger.append(deleted("node-a"))
        await converged(pg_dsn, admin)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=30))
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "forbidden" not in text.lower(), text

    used = audit.requests()
    assert used, "no request of the ServiceAccount in the audit log"
    refused = {request for request in used if request[4] >= 400}
    assert not refused, refused
    # The requests the job consists of (server-side apply is audited as patch, also when it
    # creates), each allowed by the role, and nothing else used.
    verbs = {(verb, group, resource, sub) for verb, group, resource, sub, _ in used}
    print("verbs used by ipledger sync:", sorted(verbs))
    assert {
        ("list", "cilium.io", "ciliumnodes", ""),
        ("watch", "cilium.io", "ciliumnodes", ""),
        ("patch", "cilium.io", "ciliumnodes", ""),
        ("patch", "cilium.io", "ciliumnodes", "status"),
    } <= verbs
    for verb, group, resource, sub in verbs:
        assert granted(verb, group, f"{resource}/{sub}" if sub else resource), (verb, resource, sub)


async def test_ipledger_adopt_does_its_whole_job_with_only_the_shipped_role(
    ledger: sync_tests.Ledger,
    admin: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    adopt_kubeconfig: Path,
    pg_dsn: str,
) -> None:
    await ledger.append(pool(v6=None))
    for name, cidrs in {"node-a": ["10.0.7.0/24"], "node-b": ["10.0.9.0/24"]}.items():
        await admin.apply_pod_cidrs(name, cidrs)
    audit = Audit(kube_apiserver, ADOPT_USER)

    # As an operator runs it: the command, in a process of its own.
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "adopt",
                "--from-kubernetes",
                "--database-url",
                pg_dsn,
                "--kubeconfig",
                str(adopt_kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    )

    assert done.returncode == 0, done
    assert "appended 2 node.adopted event(s)" in done.stdout
    await ledger.caught_up()
    nodes = await sync_tests.projection_nodes(pg_dsn)
    assert {name: cidrs for name, (cidrs, _, _) in nodes.items()} == {
        "node-a": ["10.0.7.0/24"],
        "node-b": ["10.0.9.0/24"],
    }
    # Adopting reads; it writes nothing to the cluster.
    assert {(v, r, code) for v, _, r, _, code in audit.requests()} == {("list", "ciliumnodes", 200)}


async def test_deleting_ciliumnodes_is_refused_without_the_delete_orphans_rule(
    ledger: sync_tests.Ledger,
    admin: KubernetesClusterClient,
    kube_apiserver: KubeAPIServer,
    sync_kubeconfig: Path,
    store: sync_store.PostgresSyncStore,
    pg_dsn: str,
) -> None:
    assert not granted("delete", "cilium.io", "ciliumnodes")
    audit = Audit(kube_apiserver, SA_USER)
    await ledger.append(pool(), added("node-a"), added("node-b"))
    limited = KubernetesClusterClient.connect(sync_kubeconfig)
    try:
        # With --delete-orphans but the role as shipped: the deletion is refused, the orphan
        # stays, and the worker goes on mirroring the rest.
        worker = sync.ClusterSync(CLUSTER, limited, store, settings(delete_orphans=True))
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            await converged(pg_dsn, admin)
            await ledger.append(deleted("node-a"))

            def refused() -> bool:
                # The server audits the refusal before the worker has read the answer: wait
                # for the worker to have counted it too.
                return worker.metrics.rejected >= 1 and any(
                    r[0] == "delete" and r[4] == 403 for r in audit.requests()
                )

            await waiting.until(refused, timeout=30, what="the delete to be refused", interval=0.05)
            stop.set()
        assert await admin.get_node("node-a") is not None
        # Counted as a write the server refused, not retried as if it could succeed later.
        assert worker.metrics.request_errors == {"403": 1}
        assert worker.metrics.rejected == 1

        with pytest.raises(errors.ClusterApiRejectedError) as refusal:
            await limited.delete_node("node-b")
        assert refusal.value.status == 403
    finally:
        await limited.close()
    assert await admin.get_node("node-b") is not None


def test_everything_outside_ciliumnodes_is_refused(
    kube_apiserver: KubeAPIServer, sync_kubeconfig: Path, adopt_kubeconfig: Path
) -> None:
    for kubeconfig in (sync_kubeconfig, adopt_kubeconfig):

        def can(*args: str, kubeconfig: Path = kubeconfig) -> bool:
            done = kubectl(kubeconfig, "auth", "can-i", *args)
            assert done.stdout.strip() in {"yes", "no"}, done
            return done.stdout.strip() == "yes"

        # The job.
        for verb in ("get", "list", "watch", "create", "patch"):
            assert can(verb, "ciliumnodes.cilium.io")
        assert can("patch", "ciliumnodes.cilium.io", "--subresource=status")
        # Not the job: deleting or replacing CiliumNodes, other Cilium resources, other groups,
        # the core API (Nodes only if a documented option needs them), RBAC itself.
        assert not can("delete", "ciliumnodes.cilium.io")
        assert not can("deletecollection", "ciliumnodes.cilium.io")
        assert not can("update", "ciliumnodes.cilium.io")
        for resource in ("ciliumendpoints", "ciliumidentities", "ciliumnetworkpolicies"):
            assert not can("list", f"{resource}.cilium.io")
        assert not can("list", "deployments.apps", "--all-namespaces")
        assert not can("create", "leases.coordination.k8s.io", "-n", "kube-system")
        assert not can("list", "secrets", "--all-namespaces")
        assert not can("list", "pods", "--all-namespaces") or granted("list", "", "pods")
        assert can("list", "nodes") == granted("list", "", "nodes")
        for verb in ("create", "patch", "update", "delete"):
            assert not can(verb, "nodes")
        assert not can("create", "clusterrolebindings.rbac.authorization.k8s.io")
        assert not can("escalate", "clusterroles.rbac.authorization.k8s.io")

    # And for real, not only as a review: the server answers Forbidden.
    done = kubectl(sync_kubeconfig, "get", "secrets", "-n", "kube-system")
    assert done.returncode != 0
    assert "Forbidden" in done.stderr or "forbidden" in done.stderr
