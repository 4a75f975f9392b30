"""An in-memory ``ports.ClusterClient``: the CiliumNodes of one imaginary Kubernetes cluster.

Used by the sync worker's unit tests and by anyone who wants to run ``service.sync`` without a
cluster. It keeps only what ipledger reads and writes, and approximates server-side apply as far
as ipledger relies on it: an apply creates a missing object, replaces exactly the applied fields
and makes ``ipledger`` their only manager (ipledger applies with ``force=True``).

What the real API server does that this cannot: validate against Cilium's CRD schema, answer
429 or 5xx on its own, drop connections. For the failure paths, tests queue
``errors.ClusterApiError`` instances in ``faults`` (raised by the next writes, in order) and can
hold writes at a gate to observe what is in flight. It does no I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio

from service import errors, ports

FIELD_MANAGER = "ipledger"


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the client saw it: when (``clock``), what and on which object."""

    at: float
    verb: str
    name: str


class MemoryClusterClient:
    """``ports.ClusterClient`` over a dict; faults and a write gate for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.nodes: dict[str, ports.ObservedNode] = {}
        self.requests: list[Request] = []
        # Raised by the next writes (apply, status, delete), first in, first out.
        self.faults: deque[errors.ClusterApiError] = deque()
        # While not None and not set, writes wait here (after being recorded in ``requests``).
        self.write_gate: anyio.Event | None = None
        self.closed = False
        self._version = 0

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
        return self.nodes.pop(name, None) is not None

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

    def writes(self) -> list[Request]:
        """The write requests so far (apply, status, delete), in order."""
        return [r for r in self.requests if r.verb in ("apply", "status", "delete")]

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
        self.nodes[node.name] = stored
        return stored
