"""An in-memory ``ports.ClusterClient``: the CiliumNodes of one imaginary Kubernetes cluster.

Used by the sync worker's unit tests and by anyone who wants to run ``service.sync`` without a
cluster. It keeps only what ipledger reads and writes, and approximates server-side apply as far
as ipledger relies on it: an apply creates a missing object, replaces exactly the applied fields
and makes ``ipledger`` their only manager (ipledger applies with ``force=True``). It also holds
v1 Nodes and pods (``add_kube_node``, ``pods``), and serves watches of both kinds from one
resource version counter, keeping the last ``history`` changes: a watch from an older version
raises ``ClusterApiGoneError`` as the API server answers 410.

What the real API server does that this cannot: validate against Cilium's CRD schema, answer
429 or 5xx on its own, drop connections. For the failure paths, tests queue
``errors.ClusterApiError`` instances in ``faults`` (raised by the next writes, in order) and can
hold writes at a gate to observe what is in flight. It does no I/O.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio

from service import errors, ports

FIELD_MANAGER = "ipledger"
_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the client saw it: when (``clock``), what and on which object."""

    at: float
    verb: str
    name: str


class MemoryClusterClient:
    """``ports.ClusterClient`` over a dict; faults and a write gate for tests."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, history: int = 10_000
    ) -> None:
        self._clock = clock
        self.nodes: dict[str, ports.ObservedNode] = {}
        self.kube_nodes: dict[str, ports.KubeNode] = {}
        self.pods: set[str] = set()
        self.requests: list[Request] = []
        # Raised by the next writes (apply, status, delete), first in, first out.
        self.faults: deque[errors.ClusterApiError] = deque()
        # While not None and not set, writes wait here (after being recorded in ``requests``).
        self.write_gate: anyio.Event | None = None
        self.closed = False
        self._version = 0
        self._history = history
        # (version, change) of CiliumNodes and of v1 Nodes, oldest first; a watch from a
        # version before the first one kept is answered as 410 Gone.
        self._changes: deque[tuple[int, ports.Change[ports.ObservedNode]]] = deque()
        self._kube_changes: deque[tuple[int, ports.Change[ports.KubeNode]]] = deque()
        self._forgotten = 0  # the newest version no longer in the histories
        self._expiries = 0  # forget_history calls: each ends the watches running
        self._changed = anyio.Event()

    # --- the port ---------------------------------------------------------------------------

    async def apply_pod_cidrs(
        self,
        name: str,
        pod_cidrs: Sequence[ports.Network],
        *,
        pod_ips: Mapping[ports.Address, str] | None = None,
    ) -> ports.ObservedNode:
        await self._write("apply", name)
        current = self.nodes.get(name) or ports.ObservedNode(name=name)
        pool, ipv6_pool = current.pool, current.ipv6_pool
        if pod_ips is not None:
            # As the real adapter: a family without addresses is left out, so the field goes.
            pool = {str(a): o for a, o in pod_ips.items() if a.version == 4} or None
            ipv6_pool = {str(a): o for a, o in pod_ips.items() if a.version == 6} or None
        return self._store(
            dataclasses.replace(
                current,
                pod_cidrs=tuple(str(cidr) for cidr in pod_cidrs),
                pod_cidrs_managers=(FIELD_MANAGER,),
                pool=pool,
                ipv6_pool=ipv6_pool,
            )
        )

    async def apply_status_error(self, name: str, error: str) -> ports.ObservedNode:
        await self._write("status", name)
        current = self.nodes.get(name)
        if current is None:
            raise errors.ClusterApiNotFoundError(f"CiliumNode {name} not found", status=404)
        return self._store(dataclasses.replace(current, error=error))

    async def get_node(self, name: str) -> ports.ObservedNode | None:
        self._record("get", name)
        return self.nodes.get(name)

    async def list_nodes(self) -> list[ports.ObservedNode]:
        self._record("list", "")
        return list(self.nodes.values())

    async def delete_node(self, name: str) -> bool:
        await self._write("delete", name)
        return self.remove(name)

    async def list_nodes_at(self) -> ports.Listing[ports.ObservedNode]:
        self._record("list", "")
        return ports.Listing(tuple(self.nodes.values()), str(self._version))

    async def watch_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.ObservedNode]]:
        self._record("watch", "")
        async for change in self._watch(self._changes, resource_version):
            yield change

    async def apply_owner(self, name: str, owner: ports.KubeNode) -> ports.ObservedNode:
        await self._write("owner", name)
        current = self.nodes.get(name)
        if current is None:
            raise errors.ClusterApiNotFoundError(f"CiliumNode {name} not found", status=404)
        return self._store(dataclasses.replace(current, node_owner=owner.uid))

    async def get_kube_node(self, name: str) -> ports.KubeNode | None:
        self._record("get-node", name)
        return self.kube_nodes.get(name)

    async def list_kube_nodes(self) -> ports.Listing[ports.KubeNode]:
        self._record("list-nodes", "")
        return ports.Listing(tuple(self.kube_nodes.values()), str(self._version))

    async def watch_kube_nodes(
        self, resource_version: str
    ) -> AsyncIterator[ports.Change[ports.KubeNode]]:
        self._record("watch-nodes", "")
        async for change in self._watch(self._kube_changes, resource_version):
            yield change

    async def set_kube_node_pod_cidrs(
        self, name: str, uid: str, pod_cidrs: Sequence[str]
    ) -> ports.KubeNode:
        await self._write("patch-node", name)
        current = self.kube_nodes.get(name)
        if current is None:
            raise errors.ClusterApiNotFoundError(f"Node {name} not found", status=404)
        if current.uid != uid:
            raise errors.ClusterApiConflictError(
                f"Node {name}: the UID in the precondition ({uid}) does not match {current.uid}",
                status=409,
            )
        wanted = tuple(pod_cidrs)
        if current.pod_cidrs and current.pod_cidrs != wanted:
            # As the API server's validation: podCIDRs may only go from unset to set.
            raise errors.ClusterApiRejectedError(
                f"Node {name}: spec.podCIDRs: Forbidden: node updates may not change podCIDR "
                'except from "" to valid',
                status=422,
            )
        return self._store_kube(dataclasses.replace(current, pod_cidrs=wanted))

    async def list_pods(self) -> frozenset[str]:
        self._record("list-pods", "")
        return frozenset(self.pods)

    async def close(self) -> None:
        self.closed = True

    # --- what tests do to it ----------------------------------------------------------------

    def edit(
        self,
        name: str,
        *,
        pod_cidrs: Sequence[str] | None = None,
        error: str | None = None,
        addresses: Sequence[str] | None = None,
        manager: str = "kubectl",
    ) -> ports.ObservedNode:
        """Another writer (a person, Cilium's agent or operator) changes or creates the object."""
        node = self.nodes.get(name) or ports.ObservedNode(name=name)
        if pod_cidrs is not None:
            node = dataclasses.replace(
                node, pod_cidrs=tuple(pod_cidrs), pod_cidrs_managers=(manager,)
            )
        if error is not None:
            node = dataclasses.replace(node, error=error)
        if addresses is not None:
            node = dataclasses.replace(node, addresses=tuple(addresses))
        return self._store(node)

    def remove(self, name: str) -> bool:
        """Another writer (GC, a person) deletes the CiliumNode; False when there was none."""
        node = self.nodes.pop(name, None)
        if node is None:
            return False
        self._version += 1
        gone = dataclasses.replace(node, resource_version=str(self._version))
        self._remember(self._changes, ports.Change("DELETED", gone))
        return True

    def add_kube_node(
        self, name: str, addresses: Sequence[str] = (), *, uid: str | None = None
    ) -> ports.KubeNode:
        """The kubelet registers a v1 Node (or it changes its addresses)."""
        current = self.kube_nodes.get(name)
        node = ports.KubeNode(
            name=name,
            uid=uid or (current.uid if current else str(uuid.uuid4())),
            addresses=tuple(addresses),
            pod_cidrs=current.pod_cidrs if current else (),
        )
        return self._store_kube(node)

    def remove_kube_node(self, name: str) -> bool:
        """A v1 Node is deleted; False when there was none."""
        node = self.kube_nodes.pop(name, None)
        if node is None:
            return False
        self._version += 1
        gone = dataclasses.replace(node, resource_version=str(self._version))
        self._remember(self._kube_changes, ports.Change("DELETED", gone))
        return True

    def forget_history(self) -> None:
        """Compact: the running watches end with 410 Gone, as does any new one from an older
        version (what a client sees when its watch's version was compacted meanwhile)."""
        self._changes.clear()
        self._kube_changes.clear()
        self._forgotten = self._version
        self._expiries += 1
        self._changed.set()
        self._changed = anyio.Event()

    def writes(self) -> list[Request]:
        """The write requests so far (apply, status, owner, delete), in order."""
        return [r for r in self.requests if r.verb in ("apply", "status", "owner", "delete")]

    # --- internals --------------------------------------------------------------------------

    def _record(self, verb: str, name: str) -> None:
        if self.closed:
            raise errors.ClusterApiError("the client is closed")
        self.requests.append(Request(at=self._clock(), verb=verb, name=name))

    async def _write(self, verb: str, name: str) -> None:
        self._record(verb, name)
        if self.write_gate is not None:
            await self.write_gate.wait()
        if self.faults:
            raise self.faults.popleft()

    def _store(self, node: ports.ObservedNode) -> ports.ObservedNode:
        self._version += 1
        stored = dataclasses.replace(node, resource_version=str(self._version))
        kind: ports.ChangeType = "MODIFIED" if node.name in self.nodes else "ADDED"
        self.nodes[node.name] = stored
        self._remember(self._changes, ports.Change(kind, stored))
        return stored

    def _store_kube(self, node: ports.KubeNode) -> ports.KubeNode:
        self._version += 1
        stored = dataclasses.replace(node, resource_version=str(self._version))
        kind: ports.ChangeType = "MODIFIED" if node.name in self.kube_nodes else "ADDED"
        self.kube_nodes[node.name] = stored
        self._remember(self._kube_changes, ports.Change(kind, stored))
        return stored

    def _remember(self, changes: deque[tuple[int, _C]], change: _C) -> None:
        changes.append((self._version, change))
        while len(changes) > self._history:
            self._forgotten = max(self._forgotten, changes.popleft()[0])
        self._changed.set()
        self._changed = anyio.Event()

    async def _watch(
        self, changes: deque[tuple[int, _C]], resource_version: str
    ) -> AsyncIterator[_C]:
        cursor = int(resource_version or "0")
        expiries = self._expiries
        while True:
            if self.closed:
                raise errors.ClusterApiError("the client is closed")
            if cursor < self._forgotten or expiries != self._expiries:
                raise errors.ClusterApiGoneError(
                    f"watching from {resource_version}: too old resource version", status=410
                )
            changed = self._changed
            pending = [entry for entry in changes if entry[0] > cursor]
            for version, change in pending:
                cursor = version
                yield change
            if not pending:
                await changed.wait()
