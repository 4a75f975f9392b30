"""The real test Kubernetes API server, driven by lightkube the way the CiliumNode sync worker will.

Pins down the API behaviour the sync worker relies on: server-side apply of `spec.ipam.podCIDRs`
and of `status` through the status subresource under the `ipledger` field manager, conflicts
with other managers, the CRD schema's verdicts, resource versions, and objects surviving an API
server restart. Also checks the harness itself: the core API is served (it is kube-apiserver,
not a CRD-only server), credentials it mints have only what RBAC grants them, and the audit log
records requests, so a failure there points at the harness rather than at the code under test.

Runs against the session-scoped `kube_apiserver` fixture from tests/harness/kube.py. Every test
works on its own CiliumNode names and deletes them afterwards, because the server is shared.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import (
    Generic,
    GenericGlobalResource,
    GenericGlobalStatus,
    create_global_resource,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.authentication_v1 import SelfSubjectReview
from lightkube.resources.core_v1 import Namespace

from tests import waiting
from tests.harness.kube import KubeAPIServer

pytestmark = [pytest.mark.kube, pytest.mark.anyio]

FIELD_MANAGER = "ipledger"
OTHER_MANAGER = "cilium-operator"

CiliumNode = create_global_resource("cilium.io", "v2", "CiliumNode", "ciliumnodes")

NodeFactory = Callable[[], str]


@pytest.fixture
async def client(kube_apiserver: KubeAPIServer) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(
        config=KubeConfig.from_file(kube_apiserver.kubeconfig_path), field_manager=FIELD_MANAGER
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def new_node_name(client: AsyncClient) -> AsyncIterator[NodeFactory]:
    """Hands out unique CiliumNode names and deletes whatever exists under them at teardown."""
    names: list[str] = []

    def new_name() -> str:
        names.append(f"node-{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield new_name
    for name in names:
        try:
            await client.delete(CiliumNode, name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise


def ciliumnode(name: str, pod_cidrs: object) -> GenericGlobalResource:
    return CiliumNode(metadata=ObjectMeta(name=name), spec={"ipam": {"podCIDRs": pod_cidrs}})


def ciliumnode_status(name: str, status: dict[str, Any]) -> GenericGlobalStatus:
    return CiliumNode.Status(metadata=ObjectMeta(name=name), status=status)


def meta(obj: Generic) -> ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def managers(obj: Generic) -> set[tuple[str | None, str | None, str]]:
    """(manager, operation, subresource) of every managedFields entry."""
    return {
        (entry.manager, entry.operation, entry.subresource or "")
        for entry in meta(obj).managedFields or []
    }


async def api_error(call: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    return info.value


async def test_apply_creates_a_ciliumnode_with_pod_cidrs(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()

    applied = await client.apply(ciliumnode(name, ["10.0.1.0/24", "fd00:1::/96"]))

    assert applied["spec"]["ipam"]["podCIDRs"] == ["10.0.1.0/24", "fd00:1::/96"]
    assert managers(applied) == {(FIELD_MANAGER, "Apply", "")}
    stored = await client.get(CiliumNode, name)
    assert stored["spec"] == applied["spec"]
    assert meta(stored).resourceVersion == meta(applied).resourceVersion


async def test_reapplying_the_same_intent_changes_nothing(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    first = await client.apply(ciliumnode(name, ["10.0.2.0/24"]))

    again = await client.apply(ciliumnode(name, ["10.0.2.0/24"]))

    assert meta(again).resourceVersion == meta(first).resourceVersion


async def test_status_is_applied_through_the_status_subresource_only(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    await client.apply(ciliumnode(name, ["10.0.3.0/24"]))
    status = {"ipam": {"operator-status": {"error": "pool exhausted"}}}

    # Status sent with the main resource is dropped silently: the CRD has a status subresource.
    dropped = await client.apply(
        CiliumNode(
            metadata=ObjectMeta(name=name),
            spec={"ipam": {"podCIDRs": ["10.0.3.0/24"]}},
            status=status,
        )
    )
    assert "status" not in dropped
    applied = await client.apply(ciliumnode_status(name, status), name)

    assert applied["status"] == status
    assert applied["spec"]["ipam"]["podCIDRs"] == ["10.0.3.0/24"]
    assert managers(applied) == {(FIELD_MANAGER, "Apply", ""), (FIELD_MANAGER, "Apply", "status")}


async def test_operator_error_is_cleared_by_applying_an_empty_string(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    await client.apply(ciliumnode(name, ["10.0.7.0/24"]))
    failing = {"ipam": {"operator-status": {"error": "pool exhausted"}}}
    await client.apply(ciliumnode_status(name, failing), name)

    # Leaving the field out instead releases it, and SSA then stores the emptied parent as null,
    # which the CRD schema (type: object, not nullable) rejects: kubernetes/kubernetes#117447.
    omitted = await api_error(client.apply(ciliumnode_status(name, {"ipam": {}}), name))
    cleared = await client.apply(
        ciliumnode_status(name, {"ipam": {"operator-status": {"error": ""}}}),
        name,
    )

    assert omitted.status.code == 422
    assert cleared["status"]["ipam"]["operator-status"]["error"] == ""


async def test_apply_by_another_manager_of_the_same_field_conflicts(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    await client.apply(ciliumnode(name, ["10.0.4.0/24"]))

    conflict = await api_error(
        client.apply(ciliumnode(name, ["10.9.9.0/24"]), field_manager=OTHER_MANAGER)
    )

    assert conflict.status.code == 409
    assert conflict.status.reason == "Conflict"
    assert ".spec.ipam.podCIDRs" in (conflict.status.message or "")
    unchanged = await client.get(CiliumNode, name)
    assert unchanged["spec"]["ipam"]["podCIDRs"] == ["10.0.4.0/24"]

    taken = await client.apply(
        ciliumnode(name, ["10.9.9.0/24"]), field_manager=OTHER_MANAGER, force=True
    )
    assert taken["spec"]["ipam"]["podCIDRs"] == ["10.9.9.0/24"]
    assert managers(taken) == {(OTHER_MANAGER, "Apply", "")}


async def test_crd_schema_rejects_pod_cidrs_as_a_string(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    invalid = await api_error(client.create(ciliumnode(new_node_name(), "10.0.5.0/24")))

    assert invalid.status.code == 422
    assert invalid.status.reason == "Invalid"
    assert "spec.ipam.podCIDRs" in (invalid.status.message or "")


async def test_apply_rejects_schema_violations(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    negative = CiliumNode(metadata=ObjectMeta(name=name), spec={"ipam": {"min-allocate": -1}})

    invalid = await api_error(client.apply(negative))
    # A wrong *type* fails earlier, in SSA's typed conversion, which the apiserver reports as a
    # bare 500 (kubernetes/kubernetes#139253; a fix to 400 is proposed). The sync worker must
    # treat it as a permanent error, not retry it as a server fault.
    mistyped = await api_error(client.apply(ciliumnode(name, "10.0.6.0/24")))

    assert invalid.status.code == 422
    assert mistyped.status.code in (400, 500)
    assert "failed to create typed patch object" in (mistyped.status.message or "")
    assert (await api_error(client.get(CiliumNode, name))).status.code == 404


async def test_watch_from_the_list_resource_version_sees_only_later_changes(
    client: AsyncClient, new_node_name: NodeFactory
) -> None:
    names = {new_node_name(), new_node_name()}
    for index, name in enumerate(sorted(names)):
        await client.apply(ciliumnode(name, [f"10.0.{10 + index}.0/24"]))

    listing = client.list(CiliumNode)
    listed = {meta(node).name async for node in listing}
    later = new_node_name()
    await client.apply(ciliumnode(later, ["10.0.12.0/24"]))

    assert names <= listed
    watch = client.watch(CiliumNode, resource_version=listing.resourceVersion)
    # An async generator holding an open HTTP stream: close it, not just stop iterating.
    assert isinstance(watch, AsyncGenerator)
    with anyio.fail_after(10):
        async with contextlib.aclosing(watch) as events:
            event, node = await anext(events)
    assert (event, meta(node).name) == ("ADDED", later)


async def test_the_core_api_is_served(client: AsyncClient) -> None:
    default = await client.get(Namespace, "default")

    assert meta(default).name == "default"


async def test_minted_credentials_have_only_what_rbac_grants(
    kube_apiserver: KubeAPIServer, new_node_name: NodeFactory, client: AsyncClient
) -> None:
    user = f"reader-{uuid.uuid4().hex[:8]}"
    name = new_node_name()
    await client.apply(ciliumnode(name, ["10.0.30.0/24"]))
    reader = AsyncClient(
        config=KubeConfig.from_file(kube_apiserver.client_certificate_kubeconfig(user))
    )
    try:
        refused = await api_error(reader.get(CiliumNode, name))
        assert refused.response.status_code == 403

        kube_apiserver.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": user},
                    "rules": [
                        {"apiGroups": ["cilium.io"], "resources": ["ciliumnodes"], "verbs": ["get"]}
                    ],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": user},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": user,
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    ],
                },
            ]
        )

        async def readable() -> bool:
            try:
                await reader.get(CiliumNode, name)
            except ApiError as exc:
                if exc.status.code != 403:
                    raise
                return False
            return True

        # RBAC takes a new binding into account through an informer: shortly, not at once.
        await waiting.until(readable, timeout=30, what="the binding to take effect", interval=0.05)
        assert (await api_error(reader.get(Namespace, "default"))).response.status_code == 403
    finally:
        await reader.close()

    requests = [
        (e["verb"], e["objectRef"].get("resource"), e["responseStatus"]["code"])
        for e in kube_apiserver.audit_events(user=user)
    ]
    assert ("get", "ciliumnodes", 403) in requests
    assert ("get", "ciliumnodes", 200) in requests
    assert ("get", "namespaces", 403) in requests


async def test_a_service_account_token_authenticates_as_the_service_account(
    kube_apiserver: KubeAPIServer,
) -> None:
    kubeconfig = kube_apiserver.service_account_kubeconfig("default", "harness-check")
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    try:
        # Every authenticated identity may ask who it is; the answer names the ServiceAccount.
        review = await client.create(SelfSubjectReview())
        assert review.status is not None and review.status.userInfo is not None
        assert review.status.userInfo.username == "system:serviceaccount:default:harness-check"
        # Forbidden is decided before the object is looked up: 403, not 404.
        refused = await api_error(client.get(CiliumNode, "any-node"))
        assert refused.response.status_code == 403
        assert "system:serviceaccount:default:harness-check" in str(refused.status.message)
    finally:
        await client.close()


async def test_objects_survive_an_apiserver_restart(
    client: AsyncClient, kube_apiserver: KubeAPIServer, new_node_name: NodeFactory
) -> None:
    name = new_node_name()
    before = await client.apply(ciliumnode(name, ["10.0.20.0/24"]))
    await client.apply(
        ciliumnode_status(name, {"ipam": {"operator-status": {"error": "x"}}}),
        name,
    )

    await anyio.to_thread.run_sync(kube_apiserver.restart_apiserver)

    # The same client: its pooled connection died with the old process and must be replaced.
    after = await client.get(CiliumNode, name)
    assert meta(after).uid == meta(before).uid
    assert after["spec"]["ipam"]["podCIDRs"] == ["10.0.20.0/24"]
    assert after["status"]["ipam"]["operator-status"]["error"] == "x"
    reapplied = await client.apply(ciliumnode(name, ["10.0.20.0/24"]))
    assert managers(reapplied) == {(FIELD_MANAGER, "Apply", ""), (FIELD_MANAGER, "Apply", "status")}
