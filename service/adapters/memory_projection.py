"""In-memory ``ports.Projection``: the projection's rows, kept and written as PostgreSQL does.

``MemoryProjectionTables`` is one "database": the rows of the projection's tables (cluster,
node, pod address, address history, decision, rejection, consumed offset, outbox offset and
writer lease), shaped like the PostgreSQL tables of ``postgres.schema`` (``memory_rows``) and
written by the same rules. ``MemoryProjection`` is one allocator process's connection to it:
several projections over the same tables are several processes sharing a database, and the
lease decides which one writes. ``load`` rebuilds the state from the rows through
``service.domain.restore`` as ``PostgresProjection.load`` does, so a unit test of the allocator
loop goes through the same round trip (state -> rows -> state) as production.
``service.adapters.memory_reader`` reads the same rows for the read side.

Faithful wherever the allocator could tell the difference: a commit writes all or nothing and
is fenced by its lease token inside its own "transaction"; the lease expires on the tables'
clock, which a test may replace to move time instead of sleeping; texts PostgreSQL cannot hold
(NUL, lone surrogates), integers beyond a column's range and a second decision for one offset
are refused with ``ProjectionDataError``, as are rows failing a check a test adds
(``add_check``: PostgreSQL's CHECK constraint). ``fail_next`` injects what a lost connection
does, before the commit landed or after. Rows come back in no particular order (nodes in the
order they were first written, not by arrival): ``restore`` must not depend on it, and here it
is seen not to.

Everything lives in the process: no I/O, no threads, and no method awaits anything, so each one
is atomic within its event loop. Used by ``tests/unit`` and ``tests/contract``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import errors, ports
from service.adapters import memory_rows
from service.domain import merkle, restore, state

UTC = datetime.UTC
# writer_lease.expires_at of a lease never taken or released: PostgreSQL's '-infinity'.
NEVER = datetime.datetime.min.replace(tzinfo=UTC)
# What fail_next can make fail.
OPERATIONS = (
    "try_acquire",
    "renew",
    "release",
    "next_offset",
    "load",
    "commit",
    "decisions_after",
    "heads_between",
    "outbox_offset",
    "advance_outbox",
    "consumed_offsets",
)


def _wall_clock() -> datetime.datetime:
    return datetime.datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Failure:
    operation: str
    landed: bool


class MemoryProjectionTables:
    """The rows of one in-memory projection "database", shared by the projections over it.

    The attributes are the tables, for readers (``MemoryProjectionReader``) and tests to read;
    only ``MemoryProjection`` writes them. ``clock`` is the database clock: lease expiry and the
    rows' write times (the wall clock unless a test passes its own).
    """

    def __init__(self, *, clock: Callable[[], datetime.datetime] = _wall_clock) -> None:
        self.clock = clock
        self.clusters: dict[str, memory_rows.ClusterRow] = {}
        self.nodes: dict[str, dict[str, memory_rows.NodeRow]] = {}
        self.pod_ips: dict[str, dict[tuple[int, int], memory_rows.PodIpRow]] = {}
        self.history: dict[str, list[memory_rows.HistoryRow]] = {}
        # Per cluster, in log order (insert-only, as in PostgreSQL).
        self.node_history: dict[str, list[memory_rows.NodeHistoryRow]] = {}
        self.cluster_history: dict[str, list[memory_rows.ClusterHistoryRow]] = {}
        # Per partition, in offset order.
        self.decisions: dict[int, list[memory_rows.DecisionRow]] = {}
        self.rejections: dict[int, list[memory_rows.RejectionRow]] = {}
        self.offsets: dict[int, memory_rows.OffsetRow] = {}
        self.outbox: dict[int, int] = {}
        # Per partition, the tree heads in size order.
        self.heads: dict[int, list[ports.RecordedHead]] = {}
        # Per partition, the stored perfect subtree roots by (level, start).
        self.subtrees: dict[int, dict[tuple[int, int], bytes]] = {}
        self.leases: dict[int, memory_rows.LeaseRow] = {}
        self._checks: dict[str, tuple[str, Callable[[Any], bool]]] = {}
        self._failures: collections.deque[_Failure] = collections.deque()

    def add_check(self, table: str, name: str, check: Callable[[Any], bool]) -> None:
        """Refuse every row of ``table`` for which ``check`` is False, as a CHECK constraint.

        ``check`` gets the row (``PodIpRow`` for ``"pod_ip"``, ...). A commit writing such a row
        raises ``ProjectionDataError`` with PostgreSQL's wording and writes nothing.
        """
        if table not in memory_rows.TABLES:
            raise ValueError(f"no table {table!r}: one of {', '.join(memory_rows.TABLES)}")
        self._checks[name] = (table, check)

    def drop_check(self, name: str) -> None:
        """Remove the check ``name`` (``ALTER TABLE ... DROP CONSTRAINT``)."""
        del self._checks[name]

    def fail_next(self, operation: str = "commit", count: int = 1, *, landed: bool = False) -> None:
        """Make the next ``count`` calls of ``operation`` raise ``ProjectionError``.

        As a connection lost in the middle: the call writes nothing, or, with ``landed`` (for
        ``commit`` and ``advance_outbox``), everything, and raises only afterwards, as when the
        connection broke after PostgreSQL committed but before the client heard of it. Failures
        queue up behind earlier ones, per operation.
        """
        if operation not in OPERATIONS or count < 0:
            raise ValueError(f"cannot fail {count} calls of {operation!r}")
        if landed and operation not in ("commit", "advance_outbox"):
            raise ValueError(f"{operation} writes nothing that could land")
        self._failures.extend([_Failure(operation, landed)] * count)

    def _take_failure(self, operation: str, *, landed: bool) -> bool:
        """Whether the next injected failure of ``operation`` is one of this kind (taken if so)."""
        for failure in self._failures:
            if failure.operation == operation:
                if failure.landed != landed:
                    return False
                self._failures.remove(failure)
                return True
        return False


class MemoryProjection:
    """``ports.Projection`` over ``MemoryProjectionTables``: one writer process's connection.

    ``holder`` names the process in the lease (two projections with one holder are one process
    to the lease, as in PostgreSQL); ``log_name`` guards against feeding a partition from two
    logs. Without ``tables`` the projection gets tables of its own.
    """

    def __init__(
        self,
        tables: MemoryProjectionTables | None = None,
        *,
        holder: str,
        log_name: str = "memory",
        lease_ttl_s: float = 6.0,
    ) -> None:
        self.tables = tables if tables is not None else MemoryProjectionTables()
        self.holder = holder
        self.log_name = log_name
        self.lease_ttl_s = lease_ttl_s
        self._closed = False

    # --- the lease ------------------------------------------------------------------------------

    async def try_acquire(self, partition: int) -> int | None:
        """Take the partition's lease if it is free, expired or this holder's; the new token."""
        self._enter("try_acquire")
        tables = self.tables
        now = tables.clock()
        lease = tables.leases.get(partition) or memory_rows.LeaseRow(partition, "", 0, NEVER)
        if lease.expires_at < now or lease.holder == self.holder:
            lease = memory_rows.LeaseRow(partition, self.holder, lease.token + 1, now + self._ttl())
            tables.leases[partition] = lease
            return lease.token
        tables.leases[partition] = lease
        return None

    async def renew(self, partition: int, token: int) -> None:
        """Extend the lease; raise ``FencedError`` if ``token`` lost it."""
        self._enter("renew")
        self.tables.leases[partition] = self._fence(partition, token, self.tables.clock())

    async def release(self, partition: int, token: int) -> None:
        """End the lease now if ``token`` holds it, so a standby need not wait for expiry."""
        self._enter("release")
        lease = self.tables.leases.get(partition)
        if lease is not None and lease.token == token:
            self.tables.leases[partition] = dataclasses.replace(lease, expires_at=NEVER)

    def _fence(self, partition: int, token: int, now: datetime.datetime) -> memory_rows.LeaseRow:
        """The lease extended from ``now``, if ``token`` still holds it (not stored yet)."""
        lease = self.tables.leases.get(partition)
        if lease is None or lease.token != token or not lease.expires_at > now:
            raise errors.FencedError(
                f"partition {partition}: writer lease {token} lost; another allocator took over"
            )
        return dataclasses.replace(lease, expires_at=now + self._ttl())

    def _ttl(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.lease_ttl_s)

    # --- loading --------------------------------------------------------------------------------

    async def next_offset(self, partition: int) -> int:
        """The partition's committed next offset (0 before any commit)."""
        self._enter("next_offset")
        return self._next_offset(partition)

    def _next_offset(self, partition: int) -> int:
        row = self.tables.offsets.get(partition)
        if row is None:
            return 0
        if row.log != self.log_name:
            raise errors.ConfigurationError(
                f"partition {partition} of this database was fed by log {row.log!r}, "
                f"not {self.log_name!r}"
            )
        return row.next_offset

    async def load(self, partitions: Sequence[int] | None = None) -> ports.Loaded:
        """Rebuild the state of the clusters on ``partitions`` (all when None) from the rows.

        With one partition, also returns where to continue reading it.
        """
        self._enter("load")
        current = state.State(track_changes=True)
        next_offset, tree = 0, None
        if partitions and len(partitions) == 1:
            next_offset = self._next_offset(partitions[0])
            heads = self.tables.heads.get(partitions[0])
            if heads:
                last = heads[-1]
                tree = merkle.Tree.resume(last.head.size, last.frontier, last.hash)
        restore_clusters(self.tables, current, partitions)
        return ports.Loaded(state=current, next_offset=next_offset, tree=tree)

    # --- committing a batch ---------------------------------------------------------------------

    async def commit(self, batch: ports.Batch) -> None:
        """Write everything one batch did, and its offset, at once (or nothing)."""
        self._enter("commit")
        tables = self.tables
        now = tables.clock()
        lease = self._fence(batch.partition, batch.token, now)
        writes = memory_rows.Writes.of(tables, batch, self.log_name, now)
        writes.check(tables)
        writes.apply(tables)
        tables.leases[batch.partition] = lease
        self._landed("commit")

    # --- the outbox -----------------------------------------------------------------------------

    async def decisions_after(
        self, partition: int, start: int, limit: int
    ) -> list[tuple[int, str | None, bytes]]:
        """``(offset, event id, decision JSON)`` of committed decisions from ``start`` on."""
        self._enter("decisions_after")
        rows = self.tables.decisions.get(partition, [])
        at = bisect.bisect_left(rows, start, key=memory_rows.offset_of)
        return [(row.offset, row.event_id, row.body) for row in rows[at : at + max(limit, 0)]]

    async def heads_between(
        self, partition: int, after: int, upto: int
    ) -> list[ports.RecordedHead]:
        """The committed tree heads of ``partition`` with ``after < size <= upto``, by size."""
        self._enter("heads_between")
        return [h for h in self.tables.heads.get(partition, []) if after < h.head.size <= upto]

    async def outbox_offset(self, partition: int) -> int:
        """The next offset the outbox relay publishes (0 before it published anything)."""
        self._enter("outbox_offset")
        return self.tables.outbox.get(partition, 0)

    async def advance_outbox(self, partition: int, token: int, next_offset: int) -> None:
        """Record that decisions below ``next_offset`` were published; fenced like a commit."""
        self._enter("advance_outbox")
        now = self.tables.clock()
        lease = self._fence(partition, token, now)
        memory_rows.check_int(next_offset, memory_rows.INT8, "outbox_offset.next_offset")
        self.tables.outbox[partition] = next_offset
        self.tables.leases[partition] = lease
        self._landed("advance_outbox")

    async def consumed_offsets(self) -> dict[int, int]:
        """Every partition with a commit, and its committed next offset."""
        self._enter("consumed_offsets")
        return {p: row.next_offset for p, row in self.tables.offsets.items()}

    async def close(self) -> None:
        """Refuse further use; the tables stay for other projections and readers."""
        self._closed = True

    def _enter(self, operation: str) -> None:
        if self._closed:
            raise errors.ProjectionError("the in-memory projection is closed")
        if self.tables._take_failure(operation, landed=False):
            raise errors.ProjectionError(f"{operation}: injected failure: the connection was lost")

    def _landed(self, operation: str) -> None:
        """Raise the injected failure of an ``operation`` whose writes just landed, if any."""
        if self.tables._take_failure(operation, landed=True):
            raise errors.ProjectionError(
                f"{operation}: injected failure: the connection was lost after it landed"
            )


def restore_clusters(
    tables: MemoryProjectionTables, current: state.State, partitions: Sequence[int] | None
) -> None:
    """Rebuild into ``current`` the clusters on ``partitions`` (all when None) from the rows.

    The same calls of ``service.domain.restore`` as ``postgres.projection.restore_clusters``
    makes; the rows come in the tables' own order. Shared by ``load`` and the memory reader.
    """
    wanted = None if not partitions else set(partitions)
    for row in sorted(tables.clusters.values(), key=lambda row: row.name):
        if wanted is not None and row.partition not in wanted:
            continue
        cluster = restore.restore_cluster(
            current,
            row.name,
            ipv4_cidrs=list(row.ipv4_cidrs),
            ipv4_mask=row.ipv4_mask,
            ipv6_cidrs=list(row.ipv6_cidrs),
            ipv6_mask=row.ipv6_mask,
            cursors=json.loads(row.cursors),
            next_seq=row.next_seq,
        )
        for node in tables.nodes.get(row.name, {}).values():
            if node.deleted:
                continue
            restore.restore_node(
                cluster,
                node.name,
                seq=node.seq,
                pod_cidrs=list(node.pod_cidrs),
                error=node.error,
                conflict=node.conflict,
                addresses=list(node.addresses),
                pinned=node.pinned,
                cursors=list(node.cursors),
            )
        for ip in tables.pod_ips.get(row.name, {}).values():
            restore.restore_pod_ip(cluster, ip.node, ip.family, ip.address, ip.owner)
        restore.finish(cluster)


if TYPE_CHECKING:
    # mypy checks here that the adapter implements its port.
    _port: type[ports.Projection] = MemoryProjection
