"""In-memory adapters of the ports: event log, decision sink, sync store, projection, read side.

``MemoryEventLog``, ``MemoryDecisionSink`` and ``MemoryProjection`` are what unit tests of the
allocator loop (and any other test that needs a log but not its durability) wire in place of
PostgreSQL and Kafka; ``MemorySyncStore`` is what the sync worker's unit tests wire in place of
PostgreSQL; ``MemoryProjectionReader`` reads what the memory projection and sync store wrote.
They pass the same contract suites as the real adapters (``tests/contract``), so code tested
against them behaves the same against the real ones, within the differences those suites
document. The projection and its reader live in modules of their own
(``memory_projection``, ``memory_reader``) and are re-exported here under their names.

Everything lives in the process and dies with it: no I/O, no threads, only anyio primitives, so
they run on any anyio backend. A waiting ``read`` sleeps on a condition that ``append`` and
``close`` notify; nothing polls.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import anyio

from service import errors, ports
from service.adapters.memory_projection import MemoryProjection, MemoryProjectionTables
from service.adapters.memory_reader import MemoryProjectionReader
from service.domain import partitioning

__all__ = [
    "MemoryDecisionSink",
    "MemoryEventLog",
    "MemoryProjection",
    "MemoryProjectionReader",
    "MemoryProjectionTables",
    "MemorySyncStore",
    "MemorySyncTables",
]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryEventLog:
    """``ports.EventLog`` held in lists, one per partition, for one event loop.

    Keys choose partitions as in Kafka and the table log (``partitioning.partition_for``). An
    append is atomic: every pair is checked before any is stored. ``clock_ms`` gives the records'
    timestamps (milliseconds since the epoch; the wall clock unless a test fixes it).
    """

    def __init__(
        self, partitions: int = 1, *, clock_ms: Callable[[], int] = _wall_clock_ms
    ) -> None:
        if partitions < 1:
            raise errors.ConfigurationError(f"the log needs at least 1 partition, not {partitions}")
        self._records: tuple[list[ports.Record], ...] = tuple([] for _ in range(partitions))
        self._clock_ms = clock_ms
        # One condition for all partitions: a woken reader of another partition re-checks its
        # own list and waits again, which costs less than the bookkeeping of one per partition.
        self._appended = anyio.Condition()
        self._closed = False

    async def partitions(self) -> Sequence[int]:
        """The partition numbers, ``0`` to ``partitions - 1``."""
        self._check_open()
        return range(len(self._records))

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[ports.Record]:
        """Append ``(key, value)`` pairs in order; return them with their positions.

        Raises ``errors.MemoryLogError`` (and appends nothing) if a key is neither bytes nor None
        or a value is not bytes.
        """
        self._check_open()
        for key, value in items:
            if not (key is None or isinstance(key, bytes)) or not isinstance(value, bytes):
                raise errors.MemoryLogError(
                    f"keys must be bytes or None and values bytes, not {type(key).__name__} "
                    f"and {type(value).__name__}"
                )
        if not items:
            return []
        async with self._appended:
            self._check_open()
            timestamp_ms = self._clock_ms()
            appended: list[ports.Record] = []
            for key, value in items:
                partition = partitioning.partition_for(key, len(self._records))
                records = self._records[partition]
                record = ports.Record(
                    partition=partition,
                    offset=len(records),
                    key=key,
                    value=value,
                    timestamp_ms=timestamp_ms,
                )
                records.append(record)
                appended.append(record)
            self._appended.notify_all()
        return appended

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[ports.Record]:
        """Records of ``partition`` from offset ``start`` on, in order, at most ``max_records``.

        When there are none yet (also when ``start`` is beyond the end), waits up to
        ``max_wait_s`` for an append, then returns what there is, possibly nothing. A reader
        waiting when the log is closed gets ``errors.MemoryLogError``.
        """
        self._check_open()
        records = self._partition(partition)
        if start < 0 or max_records < 1 or max_wait_s < 0:
            raise errors.MemoryLogError(
                f"cannot read {max_records} records from offset {start} waiting {max_wait_s} s"
            )
        deadline = anyio.current_time() + max_wait_s
        async with self._appended:
            while True:
                if self._closed:
                    raise errors.MemoryLogError("the in-memory event log was closed while reading")
                found = records[start : start + max_records]
                remaining = deadline - anyio.current_time()
                if found or remaining <= 0:
                    return found
                with anyio.move_on_after(remaining):
                    await self._appended.wait()

    async def end_offset(self, partition: int) -> int:
        """The offset the next record appended to ``partition`` will get."""
        self._check_open()
        return len(self._partition(partition))

    async def close(self) -> None:
        """Refuse further use and wake waiting readers (they raise); safe to call twice."""
        async with self._appended:
            self._closed = True
            self._appended.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.MemoryLogError("the in-memory event log is closed")

    def _partition(self, partition: int) -> list[ports.Record]:
        if not 0 <= partition < len(self._records):
            raise errors.MemoryLogError(
                f"no partition {partition}: the in-memory log has {len(self._records)} partition(s)"
            )
        return self._records[partition]


class MemoryDecisionSink:
    """``ports.DecisionSink`` that keeps what it publishes in a list, with injectable failures.

    ``published`` is everything published so far, in order; a test of the allocator loop waits
    for it with ``wait_for_published``. ``fail_next`` makes the next publishes fail the way a
    Kafka producer can: after delivering a prefix of the batch (none by default), so that tests
    can check that the caller republishes, and that the consumers' de-duplication is needed.
    """

    def __init__(self) -> None:
        self._published: list[tuple[bytes, bytes]] = []
        self._failures: list[tuple[int, errors.LogError | None]] = []
        self._changed = anyio.Condition()
        self._closed = False

    @property
    def published(self) -> Sequence[tuple[bytes, bytes]]:
        """Every ``(key, value)`` published so far, in order (a copy)."""
        return tuple(self._published)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def fail_next(
        self, count: int = 1, *, delivered: int = 0, error: errors.LogError | None = None
    ) -> None:
        """Make the next ``count`` calls of ``publish`` raise ``error`` (a ``MemorySinkError``).

        Each failing call first publishes the first ``delivered`` items of its batch, as a
        producer does when a later batch fails. Failures queue up behind earlier ones.
        """
        if count < 0 or delivered < 0:
            raise ValueError(f"cannot fail {count} publishes after {delivered} items")
        self._failures.extend([(delivered, error)] * count)

    async def publish(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish the items in order, or raise ``LogError`` if a failure was injected or closed."""
        if self._closed:
            raise errors.MemorySinkError("the in-memory decision sink is closed")
        async with self._changed:
            if self._failures:
                delivered, error = self._failures.pop(0)
                self._published.extend(items[:delivered])
                self._changed.notify_all()
                raise error or errors.MemorySinkError(
                    f"injected failure publishing {len(items)} items, {delivered} delivered"
                )
            self._published.extend(items)
            self._changed.notify_all()

    async def wait_for_published(self, count: int) -> Sequence[tuple[bytes, bytes]]:
        """Wait until at least ``count`` items were published; return them all.

        Waits without a limit: wrap it in ``anyio.fail_after`` to give it a deadline.
        """
        async with self._changed:
            while len(self._published) < count:
                await self._changed.wait()
            return tuple(self._published)

    async def close(self) -> None:
        """Refuse further publishes; the published items stay readable. Safe to call twice."""
        self._closed = True


class MemorySyncTables:
    """What the stores of one in-memory "database" share: nodes, sync progress, the locks.

    ``put`` does what the allocator's commit does for the sync worker: it stores a node at its
    version (a deleted one as a tombstone) and notifies. ``progress`` and ``holder`` let a test
    read ``node_sync`` and the lock table back.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, ports.NodeIntent]] = {}
        self._progress: dict[str, dict[str, tuple[int, str | None]]] = {}
        self._holders: dict[str, MemorySyncStore] = {}
        self._changes = 0
        self._changed = anyio.Event()

    def put(self, cluster: str, node: ports.NodeIntent) -> None:
        """Store ``node`` of ``cluster`` as committed (replacing its older version) and notify."""
        self._nodes.setdefault(cluster, {})[node.name] = node
        self._changes += 1
        # Set and replace: every waiter that saw the old event wakes, later ones wait anew.
        self._changed.set()
        self._changed = anyio.Event()

    def progress(self, cluster: str) -> dict[str, tuple[int, str | None]]:
        """``cluster``'s recorded progress: node -> (mirrored version, error); a copy."""
        return dict(self._progress.get(cluster, {}))

    def holder(self, cluster: str) -> MemorySyncStore | None:
        """The store holding ``cluster``'s lock, if any."""
        return self._holders.get(cluster)


class MemorySyncStore:
    """``ports.SyncStore`` over ``MemorySyncTables``; one store is one session, as in PostgreSQL.

    Stores over the same tables behave as processes sharing one database: one at a time holds a
    cluster's lock and each reads what the others recorded. Without ``tables`` a store gets
    tables of its own. ``drop_session`` does what a lost PostgreSQL connection does: this
    store's locks are gone at once (another store may take them) and its next progress write is
    fenced. Notifications reach every store, holding a lock or not; nothing else differs from
    the PostgreSQL adapter.
    """

    def __init__(self, tables: MemorySyncTables | None = None) -> None:
        self.tables = tables if tables is not None else MemorySyncTables()
        self._locked: set[str] = set()

    async def try_lock(self, cluster: str) -> bool:
        """Become ``cluster``'s one sync worker unless another store is; True if this one is."""
        holders = self.tables._holders
        holder = holders.setdefault(cluster, self)
        if holder is not self:
            return False
        self._locked.add(cluster)
        return True

    async def unlock(self, cluster: str) -> None:
        """Give ``cluster``'s lock up at once; nothing when this store does not hold it."""
        if cluster in self._locked:
            self._locked.discard(cluster)
            del self.tables._holders[cluster]

    async def check_lock(self, cluster: str) -> None:
        """Raise ``errors.FencedError`` unless this store holds ``cluster``'s lock."""
        self._fence(cluster)

    def change_count(self) -> int:
        """How many nodes were put so far; pass it to :meth:`wait_for_change`."""
        return self.tables._changes

    async def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once a node was put after ``seen`` was read, or after ``timeout``."""
        if self.tables._changes != seen:
            return
        changed = self.tables._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    async def record_synced(
        self, cluster: str, outcomes: Sequence[tuple[str, int, str | None]]
    ) -> None:
        """Record ``(node, mirrored version, error)`` outcomes; a version never goes back."""
        if not outcomes:
            return
        self._fence(cluster)
        progress = self.tables._progress.setdefault(cluster, {})
        for name, version, error in outcomes:
            recorded = progress.get(name)
            if recorded is None or recorded[0] <= version:
                progress[name] = (version, error)

    async def changed_nodes(
        self, cluster: str, after: tuple[int, str], limit: int, *, with_pod_ips: bool
    ) -> list[ports.NodeIntent]:
        """Nodes not mirrored at their version, after ``(version, name)``, in that order.

        Sorts every node of the cluster on each call: meant for tests, not for 100,000 nodes.
        """
        progress = self.tables._progress.get(cluster, {})
        changed = sorted(
            (
                node
                for node in self.tables._nodes.get(cluster, {}).values()
                if (node.version, node.name) > after
                and (node.name not in progress or progress[node.name][0] < node.version)
            ),
            key=lambda node: (node.version, node.name),
        )
        return [_as_read(node, with_pod_ips) for node in changed[:limit]]

    async def all_nodes(
        self, cluster: str, *, with_pod_ips: bool
    ) -> list[tuple[ports.NodeIntent, int | None, str | None]]:
        """Every node of ``cluster`` (tombstones too) by name, with its recorded progress."""
        progress = self.tables._progress.get(cluster, {})
        rows: list[tuple[ports.NodeIntent, int | None, str | None]] = []
        for name, node in sorted(self.tables._nodes.get(cluster, {}).items()):
            recorded = progress.get(name)
            version, error = recorded if recorded is not None else (None, None)
            rows.append((_as_read(node, with_pod_ips), version, error))
        return rows

    def drop_session(self) -> None:
        """Lose the session, as a dropped PostgreSQL connection does: every lock goes with it."""
        for cluster in self._locked:
            del self.tables._holders[cluster]
        self._locked.clear()

    async def close(self) -> None:
        """End the session, which gives up every lock of this store; safe to call twice."""
        self.drop_session()

    def _fence(self, cluster: str) -> None:
        if cluster not in self._locked:
            raise errors.FencedError(f"cluster {cluster}: this store does not hold the sync lock")


def _as_read(node: ports.NodeIntent, with_pod_ips: bool) -> ports.NodeIntent:
    """``node`` as the PostgreSQL store reads it back: pod addresses only when asked for."""
    if node.deleted:
        return ports.NodeIntent(name=node.name, version=node.version, deleted=True)
    pod_ips = dict(node.pod_ips or {}) if with_pod_ips else None
    return dataclasses.replace(node, pod_ips=pod_ips)
