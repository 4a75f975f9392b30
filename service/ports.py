"""Ports: the protocols the allocator, sync worker and API depend on.

Every port has an in-memory adapter in ``service.adapters.memory`` and one contract test suite in
``tests/contract`` that each adapter (memory, PostgreSQL, Kafka) must pass. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.domain import events
from service.domain import state as domain


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the append-only event log, as read back.

    ``offset`` is dense and strictly increasing within a partition: a reader that has consumed
    offset ``n`` continues at ``n + 1`` and never skips a record that was committed before it.
    """

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None


class EventLog(Protocol):
    """The append-only log of events, the source of truth.

    Records with the same key (the event's cluster) go to the same partition, so each cluster's
    events have one total order.
    """

    async def partitions(self) -> Sequence[int]:
        """The partition numbers of the log."""
        ...

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[Record]:
        """Durably append ``(key, value)`` pairs in order; return them with their positions."""
        ...

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[Record]:
        """Records of ``partition`` with offset >= ``start``, in order, at most ``max_records``.

        Waits up to ``max_wait_s`` for the first record when none is available yet, then
        returns what it has (possibly nothing).
        """
        ...

    async def end_offset(self, partition: int) -> int:
        """The offset the next appended record of ``partition`` will get."""
        ...

    async def close(self) -> None:
        """Release connections; the log object is unusable afterwards."""
        ...


class DecisionSink(Protocol):
    """Where committed decisions are published (the decisions topic), in order, at least once.

    Each item is ``(key, value)``: key = the event id, value = the decision JSON carrying its log
    partition and offset, so consumers can de-duplicate redeliveries.
    """

    async def publish(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Durably publish the items in order; raise ``LogError`` if that cannot be done."""
        ...

    async def close(self) -> None:
        """Flush and release connections."""
        ...


@dataclass(slots=True)
class AppliedRecord:
    """One log record and what applying it decided.

    ``body`` is the decision as published (JSON); ``rejected`` is set when the record was not
    applied at all (it is then kept raw with the reason in the rejections table);
    ``wrong_partition`` when that was because it sits on another partition than its cluster's
    home partition.
    """

    record: Record
    decision: events.Decision
    body: bytes
    event_time: datetime.datetime | None
    log_time: datetime.datetime | None
    rejected: bool
    wrong_partition: bool = False


@dataclass(slots=True)
class Batch:
    """Everything one allocator batch did to one partition, committed as one transaction.

    ``changes`` are the clusters' change journals for the batch; ``ip_times`` gives, for each
    entry of a cluster's ``changes.ips``, the log offset and time of the event that caused it.
    ``cluster_rows`` and ``node_rows`` are snapshots taken when the batch was applied (None for
    a deleted node), so the batch can be committed while the next one is already applied.
    """

    partition: int
    token: int
    next_offset: int
    state: domain.State
    applied: list[AppliedRecord] = field(default_factory=list)
    changes: dict[str, domain.Changes] = field(default_factory=dict)
    ip_times: dict[str, list[tuple[int, datetime.datetime]]] = field(default_factory=dict)
    cluster_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_rows: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)


class Projection(Protocol):
    """The allocator's durable state, its log position and its single-writer lease."""

    async def try_acquire(self, partition: int) -> int | None: ...

    async def renew(self, partition: int, token: int) -> None: ...

    async def release(self, partition: int, token: int) -> None: ...

    async def next_offset(self, partition: int) -> int: ...

    async def commit(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...


# --- The Kubernetes side: what the sync worker (service.sync) reads and writes -----------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class NodeIntent:
    """What one node's CiliumNode must hold according to the projection, at one node version.

    ``version`` is the node's version in the projection (the log offset of the batch that last
    changed it; it only grows). ``pod_cidrs`` are IPv4 first, then IPv6, as Cilium's operator
    writes them; ``error`` is None when the node has none. ``pod_ips`` (address -> owner) is
    filled only when the worker mirrors pod addresses, else None. A ``deleted`` node is a
    tombstone: its other fields mean nothing.
    """

    name: str
    version: int
    deleted: bool = False
    pod_cidrs: tuple[Network, ...] = ()
    error: str | None = None
    pod_ips: Mapping[Address, str] | None = None


@dataclass(frozen=True, slots=True)
class ObservedNode:
    """The parts of one CiliumNode that ipledger owns or reads, as the API server holds them.

    Values are the stored text, not parsed: anyone with access may have written these fields.
    ``error`` (``status.ipam.operator-status.error``), ``pool`` (``spec.ipam.pool``, IPv4 address
    -> owner) and ``ipv6_pool`` (``spec.ipam.ipv6-pool``) are None when absent. ``addresses`` are
    the node's own addresses (``spec.addresses[].ip``); ``pod_cidrs_managers`` are the field
    managers that own ``spec.ipam.podCIDRs``, filled by listings (to say who edited a field).
    """

    name: str
    pod_cidrs: tuple[str, ...] = ()
    error: str | None = None
    pool: Mapping[str, str] | None = None
    ipv6_pool: Mapping[str, str] | None = None
    addresses: tuple[str, ...] = ()
    pod_cidrs_managers: tuple[str, ...] = ()
    resource_version: str = ""


class ClusterClient(Protocol):
    """The CiliumNode objects (cilium.io/v2, cluster-scoped) of one Kubernetes cluster.

    Writes are server-side applies under ipledger's own field manager that take ownership of
    exactly the fields named (forcing conflicts: they are ipledger's fields once it runs the
    cluster's IPAM), and return the object as stored afterwards. Failures raise
    ``errors.ClusterApiError`` subclasses: ``ClusterApiUnavailableError`` (and
    ``ClusterApiThrottledError``) when retrying later may help, with the server's
    ``retry_after`` when it sent one; ``ClusterApiRejectedError`` when it cannot;
    ``ClusterApiNotFoundError`` for a missing object.
    In-memory adapter: ``service.adapters.kubernetes.memory.MemoryClusterClient``.
    """

    async def apply_pod_cidrs(
        self,
        name: str,
        pod_cidrs: Sequence[Network],
        *,
        pod_ips: Mapping[Address, str] | None = None,
    ) -> ObservedNode:
        """Apply ``spec.ipam.podCIDRs`` (and, given ``pod_ips``, ``spec.ipam.pool`` and
        ``spec.ipam.ipv6-pool``); creates the CiliumNode when it does not exist."""
        ...

    async def apply_status_error(self, name: str, error: str) -> ObservedNode:
        """Apply ``status.ipam.operator-status.error`` through the status subresource ("" = none).

        Raises ``ClusterApiNotFoundError`` when the CiliumNode does not exist.
        """
        ...

    async def get_node(self, name: str) -> ObservedNode | None:
        """The CiliumNode, or None when it does not exist."""
        ...

    async def list_nodes(self) -> Sequence[ObservedNode]:
        """Every CiliumNode of the cluster."""
        ...

    async def delete_node(self, name: str) -> bool:
        """Delete the CiliumNode; False when it did not exist."""
        ...

    async def close(self) -> None:
        """Release connections; the client is unusable afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterPool:
    """A cluster's configured pool as the projection holds it (for ``ipledger adopt``)."""

    ipv4_cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    ipv4_mask: int | None = None
    ipv6_cidrs: tuple[ipaddress.IPv6Network, ...] = ()
    ipv6_mask: int | None = None
