"""The lightkube adapter of ``ports.ClusterClient``: the CiliumNodes of one Kubernetes cluster.

Built by ``service.bootstrap.open_cluster_clients`` (one per ipledger cluster) and used by the
sync worker (``service.sync``) and ``ipledger adopt``. Why lightkube: docs/kubernetes-client.md.

It also reads v1 Nodes (ownerReferences, ``ipledger watch-nodes``) and pods (the leak check of
``ipledger check``), and writes a Node's ``spec.podCIDRs`` with a merge patch that carries the
Node's UID (so it can neither create a Node nor write one that replaced it): each of those needs
an optional ClusterRole (compose/kubernetes/rbac-optional.yaml).

Writes are server-side applies under the field manager ``ipledger`` with ``force=True``: ipledger
runs the cluster's IPAM, so the fields it applies are its own even when Cilium's operator (or a
hand edit) owned them before. Each apply names exactly ipledger's fields, so everything else on
the object (what the Cilium agent writes: addresses, health, encryption, ownerReferences) is
left to its owners. Status goes through the status subresource, the only way it is stored.

Bodies are typed at the edge: requests are built from ``ports`` values and responses decoded
into the msgspec structs below, then into ``ports.ObservedNode``. lightkube and httpx2 exceptions
are translated here into ``errors.ClusterApiError`` subclasses (with the HTTP status and the
server's ``Retry-After``) and go no further. This module does not retry or rate-limit: the sync
worker does both, and a client that retried on its own would hide 429s from its rate limiter.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.generic_resource import create_global_resource
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from service import errors, ports

FIELD_MANAGER = "ipledger"
# The ownerReference is applied under a manager of its own: were it in ipledger's spec applies,
# every later apply without it would remove it (SSA drops what a manager stops applying).
OWNER_FIELD_MANAGER = "ipledger-owner"
# The server ends each watch request after this long and lightkube opens the next one from the
# last version seen, so a connection that died silently is noticed within this time.
WATCH_TIMEOUT_S = 240
_WATCHED = frozenset({"ADDED", "MODIFIED", "DELETED"})
_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
API_VERSION = "cilium.io/v2"
KIND = "CiliumNode"
CiliumNode = create_global_resource("cilium.io", "v2", KIND, "ciliumnodes")
LIST_CHUNK = 500
# The apiserver reports a value of the wrong type in an apply as a bare 500 with this message
# (kubernetes/kubernetes#139253): the request is wrong, so retrying it would never succeed.
_TYPED_PATCH_FAILURE = "failed to create typed patch object"
# Kubernetes answers with these when it may succeed later; other 4xx mean the request is wrong.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425})


# --- the wire: the parts of a CiliumNode ipledger reads (unknown fields are ignored) ----------


class _OperatorStatus(msgspec.Struct, frozen=True):
    error: str | None = None


class _StatusIpam(msgspec.Struct, frozen=True):
    operator_status: _OperatorStatus | None = msgspec.field(default=None, name="operator-status")


class _Status(msgspec.Struct, frozen=True):
    ipam: _StatusIpam | None = None


class _AllocationIP(msgspec.Struct, frozen=True):
    owner: str | None = None


class _SpecIpam(msgspec.Struct, frozen=True):
    pod_cidrs: list[str] | None = msgspec.field(default=None, name="podCIDRs")
    pool: dict[str, _AllocationIP] | None = None
    ipv6_pool: dict[str, _AllocationIP] | None = msgspec.field(default=None, name="ipv6-pool")


class _NodeAddress(msgspec.Struct, frozen=True):
    ip: str | None = None


class _Spec(msgspec.Struct, frozen=True):
    ipam: _SpecIpam | None = None
    addresses: list[_NodeAddress] | None = None


class _ManagedFieldsEntry(msgspec.Struct, frozen=True):
    manager: str | None = None
    subresource: str | None = None
    fields_v1: dict[str, Any] | None = msgspec.field(default=None, name="fieldsV1")


class _OwnerReference(msgspec.Struct, frozen=True):
    kind: str = ""
    uid: str = ""
    api_version: str = msgspec.field(default="", name="apiVersion")


class _Metadata(msgspec.Struct, frozen=True):
    name: str
    resource_version: str = msgspec.field(default="", name="resourceVersion")
    owner_references: list[_OwnerReference] | None = msgspec.field(
        default=None, name="ownerReferences"
    )
    managed_fields: list[_ManagedFieldsEntry] | None = msgspec.field(
        default=None, name="managedFields"
    )


class _CiliumNode(msgspec.Struct, frozen=True):
    metadata: _Metadata
    spec: _Spec | None = None
    status: _Status | None = None


class KubernetesClusterClient:
    """``ports.ClusterClient`` over lightkube's ``AsyncClient`` (one Kubernetes cluster)."""

    def __init__(self, client: AsyncClient, *, description: str = "Kubernetes") -> None:
        self._client = client
        self.description = description

    @classmethod
    def connect(
        cls,
        kubeconfig: Path | None = None,
        context: str | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> KubernetesClusterClient:
        """A client for ``context`` of ``kubeconfig``; defaults as ``kubectl`` (see below).

        Without a kubeconfig: the in-cluster service account when running in a pod, else
        ``$KUBECONFIG`` or ``~/.kube/config``. Without a context: the file's current context.
        Opens no connection yet (the first request does).
        """
        try:
            config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
            single = config.get(context_name=context)
            if single is None:
                raise ConfigError("no context")
        except (ConfigError, OSError, ValueError, KeyError) as exc:
            where = str(kubeconfig) if kubeconfig else "the environment"
            raise errors.ConfigurationError(
                f"no Kubernetes configuration from {where}"
                f"{f' (context {context})' if context else ''}: {exc}"
            ) from exc
        description = f"{single.cluster.server} (context {single.context_name})"
        client = AsyncClient(
            config=single,
            field_manager=FIELD_MANAGER,
            timeout=httpx2.Timeout(timeout_s),
        )
        return cls(client, description=description)

    async def apply_pod_cidrs(
        self,
        name: str,
        pod_cidrs: Sequence[ports.Network],
        *,
        pod_ips: Mapping[ports.Address, str] | None = None,
    ) -> ports.ObservedNode:
        body = spec_body(name, pod_cidrs, pod_ips)
        with _translate(f"applying spec.ipam of CiliumNode {name}"):
            applied = await self._client.patch(
                CiliumNode, name, body, patch_type=PatchType.APPLY, force=True
            )
        return _observed(applied)

    async def apply_status_error(self, name: str, error: str) -> ports.ObservedNode:
        body = status_body(name, error)
        with _translate(f"applying the status of CiliumNode {name}"):
            applied = await self._client.patch(
                CiliumNode.Status, name, body, patch_type=PatchType.APPLY, force=True
            )
        return _observed(applied)

    async def get_node(self, name: str) -> ports.ObservedNode | None:
        try:
            with _translate(f"reading CiliumNode {name}"):
                found = await self._client.get(CiliumNode, name)
        except errors.ClusterApiNotFoundError:
            return None
        return _observed(found)

    async def list_nodes(self) -> list[ports.ObservedNode]:
        return list((await self.list_nodes_at()).items)

    async def list_nodes_at(self) -> ports.Listing[ports.ObservedNode]:
        nodes: list[ports.ObservedNode] = []
        with _translate("listing CiliumNodes"):
            listing = self._client.list(CiliumNode, chunk_size=LIST_CHUNK)
            async for item in listing:
                nodes.append(_observed(item, with_managers=True))
            version = _listed_version(listing)
        return ports.Listing(tuple(nodes), version)

    async def watch_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.ObservedNode]]:
        with _translate(f"watching CiliumNodes from {resource_version}"):
            async for kind, item in self._client.watch(
                CiliumNode, resource_version=resource_version, server_timeout=WATCH_TIMEOUT_S
            ):
                if kind in _WATCHED:
                    yield ports.Change(kind, _observed(item, with_managers=True))  # type: ignore[arg-type]

    async def apply_owner(self, name: str, owner: ports.KubeNode) -> ports.ObservedNode:
        body = owner_body(name, owner)
        try:
            with _translate(f"applying the ownerReference of CiliumNode {name}"):
                applied = await self._client.patch(
                    CiliumNode,
                    name,
                    body,
                    patch_type=PatchType.APPLY,
                    field_manager=OWNER_FIELD_MANAGER,
                    force=True,
                )
        except errors.ClusterApiRejectedError:
            # An apply creates what is missing; Cilium's schema requires spec, which this one
            # lacks, so a deleted CiliumNode is refused (422) rather than created: say so.
            if await self.get_node(name) is None:
                raise errors.ClusterApiNotFoundError(
                    f"applying the ownerReference of CiliumNode {name}: not found", status=404
                ) from None
            raise
        return _observed(applied)

    async def get_kube_node(self, name: str) -> ports.KubeNode | None:
        try:
            with _translate(f"reading Node {name}"):
                found = await self._client.get(Node, name)
        except errors.ClusterApiNotFoundError:
            return None
        return _kube_node(found)

    async def list_kube_nodes(self) -> ports.Listing[ports.KubeNode]:
        nodes: list[ports.KubeNode] = []
        with _translate("listing Nodes"):
            listing = self._client.list(Node, chunk_size=LIST_CHUNK)
            async for item in listing:
                nodes.append(_kube_node(item))
            version = _listed_version(listing)
        return ports.Listing(tuple(nodes), version)

    async def watch_kube_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.KubeNode]]:
        with _translate(f"watching Nodes from {resource_version}"):
            async for kind, item in self._client.watch(
                Node, resource_version=resource_version, server_timeout=WATCH_TIMEOUT_S
            ):
                if kind in _WATCHED:
                    yield ports.Change(kind, _kube_node(item))  # type: ignore[arg-type]

    async def set_kube_node_pod_cidrs(
        self, name: str, uid: str, pod_cidrs: Sequence[str]
    ) -> ports.KubeNode:
        # A merge patch, not an apply: it answers 404 for a missing Node instead of creating
        # one, and the UID in it makes the server refuse to write a Node that replaced this one.
        body = {
            "metadata": {"uid": uid},
            "spec": {"podCIDR": pod_cidrs[0] if pod_cidrs else None, "podCIDRs": list(pod_cidrs)},
        }
        with _translate(f"patching spec.podCIDRs of Node {name}"):
            patched = await self._client.patch(Node, name, body, patch_type=PatchType.MERGE)
        return _kube_node(patched)

    async def list_pods(self) -> frozenset[str]:
        pods: set[str] = set()
        with _translate("listing pods"):
            async for pod in self._client.list(Pod, namespace="*", chunk_size=LIST_CHUNK):
                meta = pod.metadata
                if meta is not None and meta.name:
                    pods.add(f"{meta.namespace}/{meta.name}")
        return frozenset(pods)

    async def delete_node(self, name: str) -> bool:
        try:
            with _translate(f"deleting CiliumNode {name}"):
                await self._client.delete(CiliumNode, name)
        except errors.ClusterApiNotFoundError:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()


def spec_body(
    name: str,
    pod_cidrs: Sequence[ports.Network],
    pod_ips: Mapping[ports.Address, str] | None,
) -> dict[str, Any]:
    """The apply body for ipledger's spec fields, and nothing else of the object.

    ``spec.ipam.pool`` holds IPv4 addresses and ``spec.ipam.ipv6-pool`` IPv6 ones (Cilium's CRD
    says so), each ``{address: {"owner": owner}}``. A family without addresses is left out, not
    sent as ``{}``: SSA would store the map emptied of the keys ipledger owned as null, which
    the schema rejects (422, the same upstream issue as for the status error); left out, the
    field ipledger owned alone is removed.
    """
    ipam: dict[str, Any] = {"podCIDRs": [str(cidr) for cidr in pod_cidrs]}
    if pod_ips is not None:
        pool: dict[str, Any] = {}
        ipv6_pool: dict[str, Any] = {}
        for address, owner in sorted(pod_ips.items(), key=lambda item: _address_key(item[0])):
            (pool if address.version == 4 else ipv6_pool)[str(address)] = {"owner": owner}
        if pool:
            ipam["pool"] = pool
        if ipv6_pool:
            ipam["ipv6-pool"] = ipv6_pool
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"ipam": ipam},
    }


def status_body(name: str, error: str) -> dict[str, Any]:
    """The apply body for ``status.ipam.operator-status.error``.

    "" clears it: leaving the field out instead would make SSA store an emptied parent as null,
    which Cilium's schema rejects (kubernetes/kubernetes#117447; docs/kubernetes-client.md).
    """
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "status": {"ipam": {"operator-status": {"error": error}}},
    }


def owner_body(name: str, owner: ports.KubeNode) -> dict[str, Any]:
    """The apply body for the ownerReference, exactly as Cilium's agent writes it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": owner.name, "uid": owner.uid}
            ],
        },
    }


def _listed_version(listing: object) -> str:
    version = getattr(listing, "resourceVersion", "")
    return version if isinstance(version, str) else ""


def _kube_node(node: Node) -> ports.KubeNode:
    meta, spec, status = node.metadata, node.spec, node.status
    if meta is None or not meta.name:
        raise errors.ClusterApiError("a Node without a name")
    by_type: dict[str, list[str]] = {kind: [] for kind in _NODE_ADDRESS_TYPES}
    for address in (status.addresses if status is not None else None) or ():
        if address.type in by_type and address.address not in by_type[address.type]:
            by_type[address.type].append(address.address)
    return ports.KubeNode(
        name=meta.name,
        uid=meta.uid or "",
        resource_version=meta.resourceVersion or "",
        addresses=tuple(a for kind in _NODE_ADDRESS_TYPES for a in by_type[kind]),
        pod_cidrs=tuple((spec.podCIDRs if spec is not None else None) or ()),
    )


def _address_key(address: ports.Address) -> tuple[int, int]:
    return address.version, int(address)


def _observed(obj: Mapping[str, Any], *, with_managers: bool = False) -> ports.ObservedNode:
    try:
        node = msgspec.convert(dict(obj), _CiliumNode)
    except msgspec.ValidationError as exc:
        raise errors.ClusterApiError(f"a CiliumNode in an unexpected shape: {exc}") from exc
    spec_ipam = node.spec.ipam if node.spec is not None else None
    status_ipam = node.status.ipam if node.status is not None else None
    operator = status_ipam.operator_status if status_ipam is not None else None
    addresses = node.spec.addresses if node.spec is not None else None
    return ports.ObservedNode(
        name=node.metadata.name,
        pod_cidrs=tuple(spec_ipam.pod_cidrs or ()) if spec_ipam is not None else (),
        error=operator.error if operator is not None else None,
        pool=_owners(spec_ipam.pool) if spec_ipam is not None else None,
        ipv6_pool=_owners(spec_ipam.ipv6_pool) if spec_ipam is not None else None,
        addresses=tuple(a.ip for a in addresses or () if a.ip),
        pod_cidrs_managers=_pod_cidrs_managers(node.metadata) if with_managers else (),
        resource_version=node.metadata.resource_version,
        node_owner=next(
            (
                ref.uid
                for ref in node.metadata.owner_references or ()
                if ref.kind == "Node" and ref.api_version == "v1"
            ),
            None,
        ),
    )


def _owners(pool: dict[str, _AllocationIP] | None) -> dict[str, str] | None:
    if pool is None:
        return None
    return {address: entry.owner or "" for address, entry in pool.items()}


def _pod_cidrs_managers(metadata: _Metadata) -> tuple[str, ...]:
    """The field managers whose managedFields entry covers ``spec.ipam.podCIDRs``."""
    owners = []
    for entry in metadata.managed_fields or ():
        fields = entry.fields_v1 or {}
        ipam = fields.get("f:spec", {}).get("f:ipam", {})
        if "f:podCIDRs" in ipam and not entry.subresource:
            owners.append(entry.manager or "")
    return tuple(owners)


@contextlib.contextmanager
def _translate(doing: str) -> Iterator[None]:
    """Translate lightkube and httpx2 exceptions into ``errors.ClusterApiError`` subclasses."""
    try:
        yield
    except ApiError as exc:
        # A watch's ERROR event (410 Gone) becomes an ApiError without a response.
        status, response = exc.status, exc.response
        code = status.code if status.code is not None else response.status_code if response else 0
        raise _status_error(doing, code, status.message or "", response) from exc
    except httpx2.HTTPStatusError as exc:
        response = exc.response
        raise _status_error(doing, response.status_code, _body(response), response) from exc
    except httpx2.TimeoutException as exc:
        raise errors.ClusterApiUnavailableError(
            f"{doing}: timed out ({type(exc).__name__})", status=None
        ) from exc
    except httpx2.TransportError as exc:
        raise errors.ClusterApiUnavailableError(f"{doing}: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:
        # lightkube builds its ApiError from the response body; a body that is not JSON (a
        # proxy's 429 or 503 page) fails that with a ValueError raised while handling the
        # HTTP status error, which is the one to report.
        cause = exc.__context__
        if isinstance(cause, httpx2.HTTPStatusError):
            response = cause.response
            raise _status_error(doing, response.status_code, _body(response), response) from exc
        raise


def _body(response: httpx2.Response) -> str:
    """The start of an error response's body; "" for a watch's, which is streamed and unread."""
    try:
        return response.text[:200]
    except httpx2.ResponseNotRead:
        return ""


def _status_error(
    doing: str, code: int, message: str, response: httpx2.Response | None
) -> errors.ClusterApiError:
    retry_after = _retry_after(response) if response is not None else None
    text = f"{doing}: HTTP {code}: {message}".rstrip(": ")
    kind: type[errors.ClusterApiError]
    if code == 404:
        kind = errors.ClusterApiNotFoundError
    elif code == 410:
        kind = errors.ClusterApiGoneError
    elif code == 409:
        kind = errors.ClusterApiConflictError
    elif code == 429:
        kind = errors.ClusterApiThrottledError
    elif (code >= 500 and _TYPED_PATCH_FAILURE not in message) or code in _RETRYABLE_CLIENT_ERRORS:
        kind = errors.ClusterApiUnavailableError
    else:
        kind = errors.ClusterApiRejectedError
    return kind(text, status=code, retry_after=retry_after)


def _retry_after(response: httpx2.Response) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())
