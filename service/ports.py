"""Ports: the protocols the allocator, the sync worker and the readers depend on; their contracts.

Each port's docstring states the contract its adapters keep. Every port has an in-memory adapter
in the package (``service.adapters.memory``; the Kubernetes client's in
``service.adapters.kubernetes.memory``) and one contract suite in ``tests/contract`` that every
adapter of it passes (memory, PostgreSQL, Kafka, the Kubernetes API server). Nothing here does
I/O. In order: the event log and the decision sink; the projection (the allocator's state, log
position and lease); the Kubernetes side (the sync worker's client and store); the read side.
Longer than 400 lines on purpose: it is the one list of what the core needs from the outside.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from service.domain import events, merkle
from service.domain import state as domain


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record of the append-only event log, as read back.

    ``offset`` is dense and strictly increasing within a partition: a reader that has consumed
    offset ``n`` continues at ``n + 1`` and never skips a record that was committed before it.

    A msgspec struct rather than a frozen dataclass: one is made per record read, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost ~1 µs of the allocator's
    per-event CPU. ``gc=False``: it holds only ints and bytes, so it can be in no cycle.
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
    # The record's leaf in the partition's Merkle tree (None with the tree off).
    leaf: bytes | None = None


@dataclass(frozen=True, slots=True)
class RecordedHead:
    """A tree head as the projection stores it: the head, its JSON (``body``, as published),
    its hash (the next head's ``previous``) and the tree's frontier at its size, concatenated."""

    head: merkle.TreeHead
    body: bytes
    hash: bytes
    frontier: bytes


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A node's fields a reader sees right after the event at ``offset`` changed them.

    ``fields``: ``pod_cidrs``, ``error``, ``conflict``, ``addresses``, ``pinned``, ``waiting``
    as in the node row; None when the event deleted the node. ``time`` is the event's (else the
    log's).
    """

    cluster: str
    node: str
    offset: int
    time: datetime.datetime
    fields: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A cluster's pool right after the event at ``offset`` configured it (or created the
    cluster)."""

    cluster: str
    offset: int
    time: datetime.datetime
    ipv4_cidrs: tuple[str, ...]
    ipv4_mask: int | None
    ipv6_cidrs: tuple[str, ...]
    ipv6_mask: int | None


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
    # What each event changed that a reader sees, in log order (service.allocator.history):
    # written insert-only, for the readers' ``at`` (as of a log offset).
    node_history: list[NodeSnapshot] = field(default_factory=list)
    pool_history: list[PoolSnapshot] = field(default_factory=list)
    # The tree heads the batch recorded, in size order (the last one at ``next_offset``).
    heads: list[RecordedHead] = field(default_factory=list)
    # The perfect subtrees of merkle.STORED_LEVEL or more its leaves completed (for O(log n)
    # proofs), and any the tree completed since the last batch (resumed over offsets committed
    # without the tree).
    subtrees: list[merkle.Subtree] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What an allocator starts from: the state rebuilt from the committed rows, and where to
    continue reading (the partition's committed next offset when one partition was loaded, else
    0). ``tree`` is the partition's Merkle tree as of its latest head (one partition only;
    None before the first head): its size is ``next_offset`` unless the tree was off since."""

    state: domain.State
    next_offset: int
    tree: merkle.Tree | None = None


class Projection(Protocol):
    """The allocator's durable state, its log position and its single-writer lease, per partition.

    Written by ``service.allocator`` only, one ``commit`` per batch; read when a writer starts
    (``load``) and by the decisions outbox relay. The contract every adapter keeps:

    - **One writer per partition: the lease.** ``try_acquire`` takes the partition's lease when
      it is free (never taken, released, or expired) or already held by this projection's own
      holder, and returns a fencing token greater than every token handed out for that
      partition before; otherwise None. Taking it again as the same holder also gives a new
      token, which fences the old one. A lease lasts the projection's TTL from its last
      extension, measured on the store's clock (PostgreSQL: the database's
      ``clock_timestamp()``, so writers on different hosts need no clock agreement).
      ``renew`` extends it; so do ``commit`` and ``advance_outbox``. ``release`` ends it at once,
      so that a standby need not wait out the TTL; with a token that is no longer current it
      does nothing, and it never raises ``FencedError``.
    - **Fencing.** ``renew``, ``commit`` and ``advance_outbox`` check, inside the same
      transaction as their writes, that the token is the partition's current one and unexpired.
      If not they raise ``errors.FencedError`` and write nothing: a writer paused past its lease
      (SIGSTOP, a long GC, a network partition) can never write after another one took over.
      ``FencedError`` means "you are not the writer any more": drop the in-memory state and
      stand by (``try_acquire`` again); retrying with the same token cannot succeed.
    - **A batch and its offset are written together.** ``commit(batch)`` writes everything the
      batch did (a decision for each of its offsets, the rejections, the changed cluster and
      node rows with the batch's last offset as their version, a deleted node as a tombstone,
      the held pod addresses and every holding that ended, the tree heads with their frontiers,
      the completed subtrees' roots, stored once: a second store of one keeps the first)
      and ``batch.next_offset`` as the partition's next offset, in one transaction: all of it
      or nothing. The stored offset
      therefore always matches the stored state, and restarting from it applies nothing twice.
    - **Load.** ``load(partitions)`` rebuilds the state of the clusters on ``partitions`` (all
      when None) as of the last committed offset, through ``service.domain.restore``; with
      exactly one partition, ``Loaded.next_offset`` is its committed next offset. The order the
      store returns rows in does not matter: nodes are restored in arrival order from their
      stored arrival numbers, so the rebuilt state (its digest, its dict orders, its next
      decisions) is the one that wrote the rows.
    - **Offsets.** ``next_offset`` is the partition's committed next offset, 0 before its first
      commit; it (and ``load`` of that one partition) raises ``errors.ConfigurationError`` when
      the partition was fed by another log than this projection's (``log_name``).
      ``consumed_offsets`` maps every partition that has a commit to its next offset.
    - **Outbox.** ``decisions_after(partition, start, limit)`` returns committed decisions as
      ``(offset, event id, decision JSON)`` with ``offset >= start``, in offset order, at most
      ``limit``: the transactional outbox the relay publishes to the decisions topic from;
      ``heads_between(partition, after, upto)`` the committed tree heads with ``after < size <=
      upto``, in size order, which the relay publishes once the decisions they cover are.
      ``outbox_offset`` is the next offset to publish (0 at first); ``advance_outbox`` moves it,
      fenced like a commit.
    - **Failures.** ``errors.ProjectionDataError`` from ``commit``: the store refused the batch's
      values (a text it cannot hold, a constraint); the same batch fails the same way again,
      and the error's ``reason`` (storable text) says why; nothing was written. Any other
      ``errors.ProjectionError``: the store could not be reached or gave up; retrying may pass,
      and a ``commit`` that raised it may or may not have landed, so the caller reloads the
      committed state before going on. No driver exception escapes.

    Adapters: ``service.adapters.postgres.projection.PostgresProjection`` and, in memory,
    ``service.adapters.memory.MemoryProjection``; contract suite:
    ``tests/contract/test_projection_contract.py``.
    """

    async def try_acquire(self, partition: int) -> int | None:
        """Take the partition's lease if it is free, expired or this holder's: the new token."""
        ...

    async def renew(self, partition: int, token: int) -> None:
        """Extend the lease by its TTL; raise ``FencedError`` if ``token`` lost it."""
        ...

    async def release(self, partition: int, token: int) -> None:
        """End the lease now if ``token`` still holds it (clean shutdown); else nothing."""
        ...

    async def next_offset(self, partition: int) -> int:
        """The partition's committed next offset (0 before any commit)."""
        ...

    async def load(self, partitions: Sequence[int] | None = None) -> Loaded:
        """The state of the clusters on ``partitions`` (all when None) as last committed."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Write the batch and its next offset in one transaction, fenced by ``batch.token``."""
        ...

    async def decisions_after(
        self, partition: int, start: int, limit: int
    ) -> list[tuple[int, str | None, bytes]]:
        """``(offset, event id, decision JSON)`` of committed decisions from ``start`` on."""
        ...

    async def heads_between(self, partition: int, after: int, upto: int) -> list[RecordedHead]:
        """The committed tree heads of ``partition`` with ``after < size <= upto``, by size."""
        ...

    async def outbox_offset(self, partition: int) -> int:
        """The next offset the outbox relay publishes (0 before it published anything)."""
        ...

    async def advance_outbox(self, partition: int, token: int, next_offset: int) -> None:
        """Record that decisions below ``next_offset`` were published; fenced like a commit."""
        ...

    async def consumed_offsets(self) -> dict[int, int]:
        """Every partition with a commit, and its committed next offset."""
        ...

    async def close(self) -> None:
        """Release connections; the projection is unusable afterwards."""
        ...


@runtime_checkable
class ReportsConsumerPosition(Protocol):
    """An ``EventLog`` that can also record the consumed position for lag monitoring.

    Kafka's consumer groups: the allocator commits the group offset after each batch, for the
    tools that watch group lag. It is never read back: the projection's offset is the truth.
    """

    async def commit_consumer_offset(self, partition: int, offset: int) -> None:
        """Record ``offset`` as the next one to consume on ``partition``; best effort."""
        ...


class PartitionMembership(Protocol):
    """This process's place among the ``ipledger run`` processes that share the log's partitions.

    It says which partitions this process should lead, so that N processes lead about P/N
    partitions each and a dead one's partitions move to the others (docs/scaling.md). It only
    spreads the work: the writer lease (``Projection.try_acquire``) stays the single-writer
    guarantee, so two processes that briefly both want a partition (a rebalance under way)
    still cannot both write it. Kafka: the consumer group protocol; the table log: member rows
    and fair shares in PostgreSQL.
    """

    async def run(self, assigned: Callable[[frozenset[int]], None]) -> None:
        """Join, and stay a member until cancelled; then leave (best effort, shielded).

        ``assigned`` is called with this process's partitions once joined and again each time
        they change. A failure to reach the group is retried inside (the last assignment
        stands meanwhile: the leases fence); only a configuration error is raised.
        """
        ...


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
    managers that own ``spec.ipam.podCIDRs``, filled by listings and watches (to say who edited
    a field); ``node_owner`` is the UID its ownerReference to a v1 Node names, None without one.
    """

    name: str
    pod_cidrs: tuple[str, ...] = ()
    error: str | None = None
    pool: Mapping[str, str] | None = None
    ipv6_pool: Mapping[str, str] | None = None
    addresses: tuple[str, ...] = ()
    pod_cidrs_managers: tuple[str, ...] = ()
    resource_version: str = ""
    node_owner: str | None = None


@dataclass(frozen=True, slots=True)
class KubeNode:
    """The parts of one v1 Node ipledger reads (``ipledger watch-nodes``, ownerReferences).

    ``addresses`` are ``status.addresses`` of type InternalIP, then ExternalIP, as listed;
    ``pod_cidrs`` is ``spec.podCIDRs`` (empty until someone sets it, after which Kubernetes
    refuses to change it).
    """

    name: str
    uid: str
    resource_version: str = ""
    addresses: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()


_Item = TypeVar("_Item")
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Listing(Generic[_Item]):
    """Every object of a kind, and the resource version a watch continues from."""

    items: tuple[_Item, ...]
    resource_version: str


@dataclass(frozen=True, slots=True)
class Change(Generic[_Item]):
    """One event of a watch: the object after the change (as it was last, when DELETED)."""

    type: ChangeType
    item: _Item


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

    async def list_nodes_at(self) -> Listing[ObservedNode]:
        """Every CiliumNode (with their ``pod_cidrs_managers``) and the listing's version."""
        ...

    def watch_nodes(self, resource_version: str) -> AsyncIterator[Change[ObservedNode]]:
        """CiliumNode changes after ``resource_version`` (with ``pod_cidrs_managers``), forever.

        Raises ``ClusterApiGoneError`` when the version is too old: list again and watch from
        the new listing. Other failures raise as for any request.
        """
        ...

    async def apply_owner(self, name: str, owner: KubeNode) -> ObservedNode:
        """Point the CiliumNode's ownerReference at its v1 Node (apiVersion v1, kind Node, name,
        uid: what Cilium's agent sets), under a field manager of its own, so that no spec apply
        removes it. Raises ``ClusterApiNotFoundError`` when the CiliumNode does not exist."""
        ...

    # --- v1 Nodes and pods: each needs an optional ClusterRole (docs/operations.md, RBAC) ---

    async def get_kube_node(self, name: str) -> KubeNode | None:
        """The v1 Node, or None when it does not exist (RBAC: get nodes)."""
        ...

    async def list_kube_nodes(self) -> Listing[KubeNode]:
        """Every v1 Node and the listing's version (RBAC: list nodes)."""
        ...

    def watch_kube_nodes(self, resource_version: str) -> AsyncIterator[Change[KubeNode]]:
        """v1 Node changes after ``resource_version``, as ``watch_nodes`` (RBAC: watch nodes)."""
        ...

    async def set_kube_node_pod_cidrs(
        self, name: str, uid: str, pod_cidrs: Sequence[str]
    ) -> KubeNode:
        """Set the v1 Node's ``spec.podCIDRs`` (and ``spec.podCIDR``, the first) if it is still
        the Node ``uid``: ``ClusterApiNotFoundError`` when it is gone, ``ClusterApiConflictError``
        when it is another Node of that name, ``ClusterApiRejectedError`` when refused (the
        field is immutable once set). Never creates a Node (RBAC: patch nodes)."""
        ...

    async def list_pods(self) -> frozenset[str]:
        """``namespace/name`` of every pod of the cluster (RBAC: list pods)."""
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


class SyncStore(Protocol):
    """What the sync worker reads and writes beside the projection: changed nodes, progress, a lock.

    One store serves every cluster one process mirrors. It reads the nodes the allocator commits
    (each at its version, which only grows; a deleted node stays as a tombstone) and writes only
    the worker's progress (``node_sync``): per node, the version last mirrored onto its
    CiliumNode and the error recorded with it. It never writes the projection.

    - **One instance per cluster at a time.** The lock of a cluster belongs to one store's
      *session* (in PostgreSQL: a session-level advisory lock on one dedicated connection). While
      one store holds it, every other store's ``try_lock`` answers False, in this process or
      another. ``unlock`` and ``close`` hand it over at once; the end of the session (a lost
      connection, a killed process) frees it too, so a waiting instance takes over.
    - **The session carries the progress.** ``record_synced`` writes through the session that
      holds the lock and only while it does: once the lock is gone (unlocked, or its session
      ended) the write raises ``errors.FencedError`` and writes nothing, so a worker that lost
      its lock never records behind the back of the one that took over. ``check_lock`` raises
      the same as soon as the lock is known to be gone. A fenced store may ``try_lock`` again
      (on a new session).
    - **Progress is durable and never goes back.** Once ``record_synced`` returns, what it wrote
      is seen by every store of the same database, also after this one closed or died. A node's
      recorded version only grows: an outcome older than the one recorded is ignored, one at the
      same version replaces the recorded error. A node is *not mirrored* while it has no record
      or one older than its version (whatever the recorded error); ``changed_nodes`` returns
      exactly those, so a restarted worker redoes at most what was in flight or not recorded.
    - **Changes wake the feed.** ``change_count`` / ``wait_for_change`` deliver the allocator's
      commit notifications to a store whose session is open (one that holds a lock); waits may
      also end early without a change (after a new session, when notifications may have been
      lost), so callers always re-read, and the timeout is the fallback poll.
    - Reads (``changed_nodes``, ``all_nodes``) need no lock. Names sort bytewise (PostgreSQL:
      the database's C collation). Failures to reach the database raise ``errors.ProjectionError``
      subclasses; no driver exception escapes.

    Adapters: ``service.adapters.postgres.sync_store.PostgresSyncStore`` and, in memory,
    ``service.adapters.memory.MemorySyncStore``; contract suite:
    ``tests/contract/test_sync_store_contract.py``.
    """

    async def try_lock(self, cluster: str) -> bool:
        """Become ``cluster``'s one sync worker unless another store is; True if this one is.

        True again when this store holds it already (and its session is alive).
        """
        ...

    async def unlock(self, cluster: str) -> None:
        """Give ``cluster``'s lock up at once, so a waiting instance need not wait.

        Does nothing when this store does not hold it; never raises.
        """
        ...

    async def check_lock(self, cluster: str) -> None:
        """Return if this store still holds ``cluster``'s lock, else raise ``FencedError``."""
        ...

    def change_count(self) -> int:
        """How many change notifications arrived so far; pass it to :meth:`wait_for_change`."""
        ...

    async def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once a notification arrived after ``seen`` was read, or after ``timeout``.

        Returns at once when one arrived already; never raises on the timeout.
        """
        ...

    async def record_synced(
        self, cluster: str, outcomes: Sequence[tuple[str, int, str | None]]
    ) -> None:
        """Record ``(node, mirrored version, error or None)`` outcomes; fenced by the lock.

        Within one call the last outcome of each node's highest version wins; against what was
        recorded before, a lower version is ignored and the same version replaces the error.
        Nothing is written when this raises.
        """
        ...

    async def changed_nodes(
        self, cluster: str, after: tuple[int, str], limit: int, *, with_pod_ips: bool
    ) -> list[NodeIntent]:
        """``cluster``'s nodes not mirrored at their version, after ``(version, name)``.

        In ``(version, name)`` order, at most ``limit``, tombstones included, so a caller pages
        with the last one's ``(version, name)`` and reads only what changed since its last call.
        ``pod_ips`` is filled (possibly empty) only ``with_pod_ips``, and never on a tombstone.
        """
        ...

    async def all_nodes(
        self, cluster: str, *, with_pod_ips: bool
    ) -> list[tuple[NodeIntent, int | None, str | None]]:
        """Every node of ``cluster`` (tombstones too) by name, with its recorded version and error.

        ``(None, None)`` for a node without a record; ``pod_ips`` as in :meth:`changed_nodes`.
        """
        ...

    async def close(self) -> None:
        """End the session, which gives up every lock of this store at once."""
        ...


# --- The read side: what `ipledger state`, the query API, status and dashboards read ------------


@dataclass(frozen=True, slots=True)
class PoolElementUse:
    """One element of a cluster's pool and how full it is, in node CIDRs of the pool's mask.

    ``total`` node CIDRs of ``/mask`` fit in ``cidr``; ``used`` of them are held by nodes, and
    ``pod_ips`` pod addresses are held inside those node CIDRs.
    """

    cidr: Network
    mask: int
    total: int
    used: int
    pod_ips: int = 0

    @property
    def free(self) -> int:
        """Node CIDRs of the element no node holds."""
        return self.total - self.used

    @property
    def pod_ip_capacity(self) -> int:
        """Pod addresses the element's held node CIDRs can hand out: each one's addresses but
        the first and the last (``domain.state.PodRange``), node addresses inside it included."""
        return self.used * max((1 << (self.cidr.max_prefixlen - self.mask)) - 2, 0)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """A cluster as the projection holds it: its pool, the use of each element, its nodes.

    ``elements`` are IPv4 first, each family in list order (``clusterPoolIPv{4,6}PodCIDRList``);
    ``version`` is the log offset of the last batch that changed anything of the cluster.
    """

    name: str
    partition: int
    version: int
    ipv4_mask: int | None
    ipv6_mask: int | None
    elements: tuple[PoolElementUse, ...]
    nodes: int


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the projection holds it.

    ``pod_cidrs`` IPv4 first; ``waiting``: not pinned and lacking a CIDR of an enabled family;
    ``ipv4_pod_ips``/``ipv6_pod_ips``: pod addresses held on it; ``version`` is the log offset of
    the last batch that changed it and ``updated_at`` when that batch was committed.
    """

    cluster: str
    name: str
    pod_cidrs: tuple[Network, ...]
    error: str | None
    conflict: str | None
    addresses: tuple[Address, ...]
    waiting: bool
    pinned: bool
    ipv4_pod_ips: int
    ipv6_pod_ips: int
    version: int
    updated_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class Holding:
    """One holding of a pod address: who held it, from which record on, until which one.

    ``from_*`` name the record (partition, offset, event id) that handed it out and its time;
    ``to_*`` the one that took it back, all None while it is held. Times are the events' own
    (``time``), else the log's.
    """

    cluster: str
    address: Address
    node: str
    owner: str
    partition: int
    from_offset: int
    from_time: datetime.datetime
    from_event_id: str | None
    to_offset: int | None
    to_time: datetime.datetime | None
    to_event_id: str | None


@dataclass(frozen=True, slots=True)
class CommittedDecision:
    """The decision for one log record, as committed (``body``: the published JSON)."""

    partition: int
    offset: int
    cluster: str | None
    event_id: str | None
    type: str | None
    error: str | None
    body: bytes
    event_time: datetime.datetime | None
    log_time: datetime.datetime | None
    applied_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not applied, kept as it was read (``key``, ``raw``) with the reason."""

    partition: int
    offset: int
    reason: str
    key: bytes | None
    raw: bytes
    rejected_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    """How far one partition has been applied, and its decisions published.

    ``next_offset`` is the next record the allocator reads (everything below is applied);
    ``published`` the next decision the outbox relay publishes (None before it published any,
    as with the table log, which has no decisions topic).
    """

    partition: int
    log: str
    next_offset: int
    updated_at: datetime.datetime
    published: int | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A partition's writer lease; ``expired`` on the store's clock (a standby may take it)."""

    partition: int
    holder: str
    token: int
    expires_at: datetime.datetime
    expired: bool


@dataclass(frozen=True, slots=True)
class NodeSync:
    """How far the sync worker mirrored one node: the version on its CiliumNode, and the error.

    ``synced_version`` and ``error`` are None until the worker recorded the node.
    """

    name: str
    version: int
    deleted: bool
    synced_version: int | None
    error: str | None

    @property
    def mirrored(self) -> bool:
        """Whether the CiliumNode holds the node's current version."""
        return self.synced_version is not None and self.synced_version >= self.version


@dataclass(frozen=True, slots=True)
class NodeAt:
    """One node as it stood right after the record at a log offset (from the node history).

    The fields as in ``NodeView``; ``changed_*`` name the last event at or before that offset
    that changed the node's fields (pod address events do not), its time and event id.
    """

    cluster: str
    name: str
    pod_cidrs: tuple[Network, ...]
    error: str | None
    conflict: str | None
    addresses: tuple[Address, ...]
    waiting: bool
    pinned: bool
    ipv4_pod_ips: int
    ipv6_pod_ips: int
    changed_offset: int
    changed_time: datetime.datetime
    changed_event_id: str | None


@dataclass(frozen=True, slots=True)
class ClusterAt:
    """A cluster as it stood right after the record at ``offset`` of its partition.

    ``elements`` with the node CIDRs and pod addresses held then; the node counts: live nodes,
    those holding at least one CIDR, waiting, with an error, in conflict. ``pool_offset`` is the
    event that gave the cluster that pool (or created it).
    """

    name: str
    partition: int
    offset: int
    pool_offset: int
    ipv4_mask: int | None
    ipv6_mask: int | None
    elements: tuple[PoolElementUse, ...]
    nodes: int
    nodes_with_cidrs: int
    nodes_waiting: int
    nodes_in_error: int
    nodes_in_conflict: int


#: What an answer is asked to reflect: now (None), a log offset of the cluster's partition, or
#: the last record at or before a time (the query API's ``as_of``).
Wanted = int | datetime.datetime | None


@dataclass(frozen=True, slots=True)
class Based(Generic[_Item]):
    """An answer read together with the offset it reflects, in one consistent read.

    ``applied``: the partition's last applied offset (None: nothing applied yet). ``basis``: the
    offset the answer reflects: ``applied`` for now; for an offset, the smaller of it and
    ``applied``; for a time, the last record at or before it (the latest by time, the highest
    offset among equal times), at most ``applied``; None when there is none. ``value`` is
    empty (or None) when ``basis`` is None.
    """

    applied: int | None
    basis: int | None
    value: _Item


class ProjectionReader(Protocol):
    """Read-only queries over what the allocator and the sync worker committed.

    One port for every reader (``ipledger state`` now; the query API, ``ipledger status`` and
    dashboards later), so none of them knows a table. The contract:

    - **Read-only.** No method writes anything, takes a lock or a lease, or waits for the
      writer (the PostgreSQL adapter can connect with a role that may only ``SELECT``).
    - **Committed data only, each answer consistent.** An answer reflects whole commits: one
      call never mixes two batches of a partition. Two calls may see different commits.
    - **The state as the allocator rebuilds it.** ``state`` rebuilds every cluster from the
      committed rows exactly as ``Projection.load`` does, so ``state_document`` equals what
      ``ipledger simulate`` prints for the same log, byte for byte once encoded.
    - **Orders.** Clusters and nodes by name (bytewise, as in PostgreSQL's C collation),
      addresses of an owner by address (IPv4 first), histories by the offset that started each
      holding, decisions and rejections by offset, positions and leases by partition.
    - **Lag is computed by the caller from two ports.** ``positions`` gives what was consumed;
      the log's end is ``EventLog.end_offset``; lag = end - ``next_offset``. The read side stays
      one read-only database connection and needs no log client (the log may be Kafka).
    - Addresses and networks are ``ipaddress`` objects; a cluster, node or owner that does not
      exist gives an empty answer (or None), not an error. Failures to reach the store raise
      ``errors.ProjectionError``; no driver exception escapes.

    Adapters: ``service.adapters.postgres.reader.PostgresProjectionReader`` and, over the rows
    of the memory projection, ``service.adapters.memory.MemoryProjectionReader``; contract
    suite: ``tests/contract/test_projection_reader_contract.py``.
    """

    async def state(self) -> domain.State:
        """Every cluster's state, rebuilt from the committed rows as ``Projection.load`` does."""
        ...

    async def state_document(self) -> dict[str, Any]:
        """The state document ``ipledger state`` prints (``document.state_document``)."""
        ...

    async def clusters(self) -> list[ClusterView]:
        """Every cluster with its pool and the use of each pool element."""
        ...

    async def nodes(
        self,
        cluster: str,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[NodeView]:
        """``cluster``'s live nodes by name, filtered, after ``after``, at most ``limit``.

        ``error``/``conflict``: with (True) or without (False) one; ``waiting``: waiting or
        not; None: either. ``prefix``: names starting with it. Page with the last name.
        """
        ...

    async def node(self, cluster: str, name: str) -> NodeView | None:
        """One live node, or None (unknown or deleted)."""
        ...

    async def holder(
        self, cluster: str, address: Address, *, at: datetime.datetime | None = None
    ) -> Holding | None:
        """Who holds ``address`` now, or held it at time ``at``; None if nobody.

        At ``at``: the holding with ``from_time <= at`` and no ``to_time`` or one after ``at``
        (the latest started, should event times overlap).
        """
        ...

    async def address_history(self, cluster: str, address: Address) -> list[Holding]:
        """Every holding of ``address``, ended and current, in the order they started."""
        ...

    async def owner_addresses(self, cluster: str, owner: str) -> list[Holding]:
        """The addresses ``owner`` holds now, by address."""
        ...

    async def owner_history(self, cluster: str, owner: str) -> list[Holding]:
        """Every holding of ``owner``, ended and current, in the order they started."""
        ...

    async def decisions(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[CommittedDecision]:
        """Committed decisions of ``partition`` from offset ``start`` on, at most ``limit``."""
        ...

    async def rejections(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[Rejection]:
        """Rejected records of ``partition`` from offset ``start`` on, at most ``limit``."""
        ...

    async def last_rejections(self, partition: int, limit: int) -> list[Rejection]:
        """The last ``limit`` rejected records of ``partition`` (the newest), by offset."""
        ...

    async def positions(self) -> list[PartitionPosition]:
        """Every partition that has a commit: consumed and published offsets."""
        ...

    async def leases(self) -> list[Lease]:
        """Every partition's writer lease ever taken."""
        ...

    async def sync_progress(self, cluster: str) -> list[NodeSync]:
        """Every node of ``cluster`` (tombstones too) by name, with what the worker mirrored."""
        ...

    # --- as of a log offset: the history tables (the query API's ``as_of``) ---------------------
    # ``at`` is an offset of the cluster's partition: the answer is the projection as it stood
    # right after the record at ``at`` was applied, exactly as ``simulate`` over the records up
    # to ``at`` would have it. Pass ``applied_offset`` for "now".

    async def cluster_partitions(self) -> dict[str, int]:
        """Every cluster's name and partition (a cluster never changes partition)."""
        ...

    async def applied_offset(
        self, partition: int, *, at_time: datetime.datetime | None = None
    ) -> int | None:
        """The last offset of ``partition`` applied (None: none yet); with ``at_time``, the last
        record at or before it by time (the event's, else the log's, else when it was applied):
        the latest such time, the highest offset among equal ones (None: none)."""
        ...

    async def cluster_at(self, cluster: str, at: int) -> ClusterAt | None:
        """``cluster`` with its pool, pool use and node counts at ``at``; None if it did not
        exist yet (or does not exist)."""
        ...

    async def nodes_at(
        self,
        cluster: str,
        at: int,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[NodeAt]:
        """``cluster``'s live nodes at ``at`` by name, filtered and paged as ``nodes`` does."""
        ...

    async def node_at(self, cluster: str, name: str, at: int) -> NodeAt | None:
        """One node at ``at``, or None (unknown, deleted, or not there yet)."""
        ...

    # --- the basis and the answer in one read (the query API's hot routes) --------------------
    # Each is ``applied_offset`` (with ``at_time`` for a time), the basis as ``Based`` says, and
    # the answer at that basis, read at once: one statement, one round trip to the store.

    async def address_history_based(
        self, cluster: str, partition: int, address: Address, wanted: Wanted
    ) -> Based[list[Holding]]:
        """The holdings of ``address`` that had begun at the basis (``from_offset <= basis``),
        in the order they started, as ``address_history`` has them."""
        ...

    async def owner_history_based(
        self, cluster: str, partition: int, owner: str, wanted: Wanted
    ) -> Based[list[Holding]]:
        """The holdings of ``owner`` that had begun at the basis, in the order they started
        (then by address), as ``owner_history`` has them."""
        ...

    async def node_based(
        self, cluster: str, partition: int, name: str, wanted: Wanted
    ) -> Based[NodeAt | None]:
        """``node_at(cluster, name, basis)``."""
        ...

    async def warm_up(self) -> None:
        """Make the hot reads ready before the first of them is asked for (the query API calls
        it before it listens): for a database, every pooled connection open and the
        ``*_based`` reads run once on each, so that the first requests pay neither a connect
        nor a statement's first preparation. Errors as any read's."""
        ...

    async def cluster_decisions(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[CommittedDecision]:
        """The decisions about ``cluster`` with ``start <= offset <= upto``, by offset."""
        ...

    async def cluster_rejections(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[Rejection]:
        """The rejected records naming ``cluster`` (their decision's cluster) with ``start <=
        offset <= upto``, by offset."""
        ...

    async def close(self) -> None:
        """Release connections; the reader is unusable afterwards."""
        ...


# --- The audit side: what `ipledger audit` and `ipledger replay` compare and prove ---------------


@dataclass(slots=True)
class ProjectionRows:
    """Every row of the projection that follows from the log, in a plain comparable form.

    Keys and values are tuples of plain values; the columns that do not follow from the log
    are left out (write times, the node and cluster versions, which are the last offset of the
    batch that wrote them and so depend on how the log was batched, history row ids).
    ``clusters``: name -> (partition, ipv4 CIDRs, ipv4 mask, ipv6 CIDRs, ipv6 mask, cursors
    JSON, next arrival); ``nodes``: (cluster, name) -> (seq, pod CIDRs, error, conflict,
    addresses, pinned, waiting, cursors, deleted); ``pod_ips``: (cluster, address) -> (node,
    owner, partition, since offset, since time); ``history``: (cluster, address, from offset)
    -> (node, owner, partition, from time, to offset, to time); ``rejections``: (partition,
    offset) -> (reason, key, raw). Addresses are their text (``ipaddress``'s).
    ``node_history``: (cluster, name, offset) -> (partition, time, deleted, pod CIDRs, error,
    conflict, addresses, pinned, waiting); ``cluster_history``: (cluster, offset) ->
    (partition, time, ipv4 CIDRs, ipv4 mask, ipv6 CIDRs, ipv6 mask); ``tree_nodes``:
    (partition, level, start) -> (hash in hex,), the stored perfect subtree roots.
    """

    clusters: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    nodes: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    pod_ips: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    history: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    rejections: dict[tuple[int, int], tuple[Any, ...]] = field(default_factory=dict)
    node_history: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    cluster_history: dict[tuple[str, int], tuple[Any, ...]] = field(default_factory=dict)
    tree_nodes: dict[tuple[int, int, int], tuple[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A committed decision as the tree covers it: its bytes and its stored leaf (or None)."""

    offset: int
    body: bytes
    leaf: bytes | None


def decision_digest(decisions: Iterable[tuple[int, bytes, bytes | None]]) -> bytes:
    """SHA-256 over (offset, body, leaf) in offset order, each field framed so that no byte
    can move from one field or decision to the next unseen: the offset in 8 bytes, the body's
    length in 4, the body, then 0x01 and the leaf or 0x00 for none (big-endian). PostgreSQL's
    ``PostgresAuditReader.decision_digest`` computes the same bytes in SQL."""
    digest = hashlib.sha256()
    pack = _DIGEST_FRAME.pack
    for offset, body, leaf in decisions:
        digest.update(pack(offset, len(body)))
        digest.update(body)
        digest.update(b"\x00" if leaf is None else b"\x01" + leaf)
    return digest.digest()


_DIGEST_FRAME = struct.Struct(">qi")


class AuditReader(Protocol):
    """Read-only access to the evidence: the tree heads, the leaves, the projection's rows.

    Read-only and consistent per call, as ``ProjectionReader``. ``heads`` are in size order;
    ``decisions`` and ``leaves`` in offset order; ``rows`` covers the clusters on
    ``partitions`` (all when None) and the rejections of those partitions.

    Adapters: ``service.adapters.postgres.audit.PostgresAuditReader`` and, over the memory
    projection's tables, ``service.adapters.memory_audit.MemoryAuditReader``.
    """

    async def heads(self, partition: int) -> list[RecordedHead]:
        """Every tree head of ``partition``, by size."""
        ...

    async def head(self, partition: int, size: int | None = None) -> RecordedHead | None:
        """The head of ``partition`` of that ``size`` (the latest when None), or None: one
        indexed read, where ``heads`` reads every one (a head per batch: as many as records
        under a light load)."""
        ...

    async def leaves(self, partition: int, end: int, start: int = 0) -> list[bytes | None]:
        """The stored leaves of offsets ``start`` to ``end - 1`` (None where none is stored)."""
        ...

    async def subtrees(
        self, partition: int, wanted: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """The stored roots of the perfect subtrees ``(start, level)`` in ``wanted`` that are
        stored (``Batch.subtrees``); those not stored are left out."""
        ...

    async def decisions(self, partition: int, start: int, limit: int) -> list[StoredDecision]:
        """Committed decisions from ``start`` on, at most ``limit``, with their leaves."""
        ...

    async def decision_digest(self, partition: int, start: int, end: int) -> tuple[int, bytes]:
        """How many committed decisions there are at offsets ``start`` to ``end - 1``, and the
        ``decision_digest`` of them: what ``replay --verify`` compares a chunk's decisions with,
        reading them one by one only when it differs."""
        ...

    async def rows(self, partitions: Sequence[int] | None = None) -> ProjectionRows:
        """The projection's rows for the clusters on ``partitions``."""
        ...

    async def node_history(self, cluster: str, name: str) -> dict[tuple[str, str, int], Any]:
        """The node history rows of one node, as ``ProjectionRows.node_history`` has them."""
        ...

    async def partitions(self) -> dict[int, int]:
        """Every partition with a commit, and its committed next offset."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
