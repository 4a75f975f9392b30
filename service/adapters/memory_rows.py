"""The rows of the in-memory projection's tables, and how a commit computes, checks, writes them.

Used by ``memory_projection`` (whose ``commit`` builds a ``Writes`` from a batch, checks it and
applies it to the tables) and read by ``memory_reader``. Each row type mirrors a table of
``postgres.schema``; ``Writes`` computes every row a batch writes exactly as
``postgres.projection.commit`` does (the cluster and node rows with the batch's last offset as
their version, a deleted node as a tombstone, the pod addresses replayed over the holdings open
before the batch, every holding that ended into the insert-only history), then refuses, as
PostgreSQL would, a text it cannot hold (NUL, lone surrogates), an integer beyond its column, a
second decision or rejection for one offset, or a row failing a check a test added. Pure: no
I/O. Somewhat over 400 lines: a row type per table, kept beside the computation that fills them.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import errors, ports
from service.domain import merkle, state

if TYPE_CHECKING:
    from service.adapters.memory_projection import MemoryProjectionTables

# The ranges of PostgreSQL's integer and bigint columns.
INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)
TABLES = (
    "cluster",
    "node",
    "pod_ip",
    "ip_history",
    "decision",
    "rejection",
    "node_history",
    "cluster_history",
)


@dataclass(frozen=True, slots=True)
class ClusterRow:
    """A row of ``cluster``: the pool in force and the allocator's own state of one cluster."""

    name: str
    partition: int
    ipv4_cidrs: tuple[str, ...]
    ipv4_mask: int | None
    ipv6_cidrs: tuple[str, ...]
    ipv6_mask: int | None
    cursors: str  # JSON, as the column holds it
    next_seq: int
    version: int


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A row of ``node``; a deleted node is a tombstone (``deleted``, seq -1, nothing else)."""

    cluster: str
    name: str
    seq: int
    pod_cidrs: tuple[str, ...]
    error: str | None
    conflict: str | None
    addresses: tuple[str, ...]
    pinned: bool
    waiting: bool
    cursors: tuple[int, ...]
    deleted: bool
    version: int
    updated_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class PodIpRow:
    """A row of ``pod_ip``: an address held now (``address`` as an integer of ``family``)."""

    cluster: str
    family: int
    address: int
    node: str
    owner: str
    partition: int
    since_offset: int
    since_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """A row of ``ip_history``: a holding that ended."""

    cluster: str
    family: int
    address: int
    node: str
    owner: str
    partition: int
    from_offset: int
    from_time: datetime.datetime
    to_offset: int
    to_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class NodeHistoryRow:
    """A row of ``node_history``: a node's visible fields after the event at ``offset``."""

    cluster: str
    name: str
    offset: int
    partition: int
    time: datetime.datetime
    deleted: bool
    pod_cidrs: tuple[str, ...]
    error: str | None
    conflict: str | None
    addresses: tuple[str, ...]
    pinned: bool
    waiting: bool


@dataclass(frozen=True, slots=True)
class ClusterHistoryRow:
    """A row of ``cluster_history``: the pool a cluster had from the event at ``offset`` on."""

    cluster: str
    offset: int
    partition: int
    time: datetime.datetime
    ipv4_cidrs: tuple[str, ...]
    ipv4_mask: int | None
    ipv6_cidrs: tuple[str, ...]
    ipv6_mask: int | None


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """A row of ``decision``: what the record at one offset decided (``body``: the JSON)."""

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
    leaf: bytes | None = None  # the record's Merkle leaf; None with the tree off


@dataclass(frozen=True, slots=True)
class RejectionRow:
    """A row of ``rejection``: a record that was not applied, kept raw with the reason."""

    partition: int
    offset: int
    reason: str
    key: bytes | None
    raw: bytes
    rejected_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class OffsetRow:
    """A row of ``consumer_offset``: how far ``log`` has been applied to the partition."""

    partition: int
    log: str
    next_offset: int
    updated_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A row of ``writer_lease``."""

    partition: int
    holder: str
    token: int
    expires_at: datetime.datetime


def offset_of(row: DecisionRow | RejectionRow) -> int:
    return row.offset


@dataclass(slots=True)
class Writes:
    """Every row one commit writes, computed before anything is written (all or nothing)."""

    partition: int
    decisions: list[DecisionRow]
    rejections: list[RejectionRow]
    clusters: list[ClusterRow]
    nodes: list[NodeRow]
    # Per cluster: the addresses the batch touched, and what is held of them at its end.
    touched: dict[str, set[tuple[int, int]]]
    held: dict[str, list[PodIpRow]]
    finished: list[HistoryRow]
    offset: OffsetRow
    node_history: list[NodeHistoryRow] = dataclasses.field(default_factory=list)
    cluster_history: list[ClusterHistoryRow] = dataclasses.field(default_factory=list)
    heads: list[ports.RecordedHead] = dataclasses.field(default_factory=list)
    subtrees: list[merkle.Subtree] = dataclasses.field(default_factory=list)

    @classmethod
    def of(
        cls,
        tables: MemoryProjectionTables,
        batch: ports.Batch,
        log_name: str,
        now: datetime.datetime,
    ) -> Writes:
        partition = batch.partition
        version = batch.next_offset - 1
        writes = cls(
            partition=partition,
            decisions=[],
            rejections=[],
            clusters=[],
            nodes=[],
            touched={},
            held={},
            finished=[],
            offset=OffsetRow(partition, log_name, batch.next_offset, now),
            heads=list(batch.heads),
            subtrees=list(batch.subtrees),
        )
        for applied in batch.applied:
            record, decision = applied.record, applied.decision
            writes.decisions.append(
                DecisionRow(
                    partition=partition,
                    offset=record.offset,
                    cluster=decision.cluster,
                    event_id=decision.id,
                    type=decision.type,
                    error=decision.error,
                    body=applied.body,
                    event_time=applied.event_time,
                    log_time=applied.log_time,
                    applied_at=now,
                    leaf=applied.leaf,
                )
            )
            if applied.rejected:
                writes.rejections.append(
                    RejectionRow(
                        partition,
                        record.offset,
                        decision.error or "",
                        record.key,
                        record.value,
                        now,
                    )
                )
        for name, changes in batch.changes.items():
            row = batch.cluster_rows[name]
            writes.clusters.append(
                ClusterRow(
                    name=row["name"],
                    partition=partition,
                    ipv4_cidrs=tuple(row["ipv4_cidrs"]),
                    ipv4_mask=row["ipv4_mask"],
                    ipv6_cidrs=tuple(row["ipv6_cidrs"]),
                    ipv6_mask=row["ipv6_mask"],
                    cursors=json.dumps(row["cursors"]),
                    next_seq=row["next_seq"],
                    version=version,
                )
            )
            for node_name, node in batch.node_rows[name].items():
                writes.nodes.append(_node_row(name, node_name, node, version, now))
            if changes.ips:
                writes._ips(tables, name, changes.ips, batch.ip_times[name])
        writes.node_history = [_node_history_row(snap, partition) for snap in batch.node_history]
        writes.cluster_history = [
            ClusterHistoryRow(
                snap.cluster,
                snap.offset,
                partition,
                snap.time,
                snap.ipv4_cidrs,
                snap.ipv4_mask,
                snap.ipv6_cidrs,
                snap.ipv6_mask,
            )
            for snap in batch.pool_history
        ]
        return writes

    def _ips(
        self,
        tables: MemoryProjectionTables,
        cluster: str,
        changes: Sequence[state.IpChange],
        times: Sequence[tuple[int, datetime.datetime]],
    ) -> None:
        """Replay the batch's address changes over the holdings open before it, in log order.

        As the PostgreSQL adapter does: what is held at the end replaces the touched addresses'
        rows, every holding that ended goes to the insert-only history.
        """
        keys = [(change.family, change.address) for change in changes]
        before = tables.pod_ips.get(cluster, {})
        holding: dict[tuple[int, int], PodIpRow | None] = {
            key: before[key] for key in keys if key in before
        }
        for change, key, (offset, moment) in zip(changes, keys, times, strict=True):
            if change.held:
                holding[key] = PodIpRow(
                    cluster,
                    key[0],
                    key[1],
                    change.node,
                    change.owner,
                    self.partition,
                    offset,
                    moment,
                )
                continue
            held = holding.get(key)
            if held is not None:
                self.finished.append(
                    HistoryRow(
                        cluster=cluster,
                        family=held.family,
                        address=held.address,
                        node=held.node,
                        owner=held.owner,
                        partition=held.partition,
                        from_offset=held.since_offset,
                        from_time=held.since_time,
                        to_offset=offset,
                        to_time=moment,
                    )
                )
            holding[key] = None
        self.touched[cluster] = set(keys)
        self.held[cluster] = [row for row in holding.values() if row is not None]

    def check(self, tables: MemoryProjectionTables) -> None:
        """Raise ``ProjectionDataError`` for the first row PostgreSQL would refuse."""
        decided = tables.decisions.get(self.partition, [])
        offsets: set[int] = set()
        for decision in self.decisions:
            if decision.offset in offsets or has_offset(decided, decision.offset):
                _refuse(
                    "UniqueViolationError: duplicate key value violates unique constraint "
                    '"pk_decision"'
                )
            offsets.add(decision.offset)
        rejected = tables.rejections.get(self.partition, [])
        for rejection in self.rejections:
            if has_offset(rejected, rejection.offset):
                _refuse(
                    "UniqueViolationError: duplicate key value violates unique constraint "
                    '"pk_rejection"'
                )
        recorded = {head.head.size for head in tables.heads.get(self.partition, [])}
        if any(head.head.size in recorded for head in self.heads):
            _refuse(
                "UniqueViolationError: duplicate key value violates unique constraint "
                '"pk_tree_head"'
            )
        rows: list[tuple[str, Any]] = [
            *(("decision", row) for row in self.decisions),
            *(("rejection", row) for row in self.rejections),
            *(("cluster", row) for row in self.clusters),
            *(("node", row) for row in self.nodes),
            *(("pod_ip", row) for rows in self.held.values() for row in rows),
            *(("ip_history", row) for row in self.finished),
            *(("node_history", row) for row in self.node_history),
            *(("cluster_history", row) for row in self.cluster_history),
        ]
        rows.append(("consumer_offset", self.offset))
        for table, row in rows:
            _check_row(table, row)
        for name, (table, check) in tables._checks.items():
            for row_table, row in rows:
                if row_table == table and not check(row):
                    _refuse(
                        f'CheckViolationError: new row for relation "{table}" violates check '
                        f'constraint "{name}"'
                    )

    def apply(self, tables: MemoryProjectionTables) -> None:
        decided = tables.decisions.setdefault(self.partition, [])
        for decision in self.decisions:
            bisect.insort(decided, decision, key=offset_of)
        rejected = tables.rejections.setdefault(self.partition, [])
        for rejection in self.rejections:
            bisect.insort(rejected, rejection, key=offset_of)
        for cluster in self.clusters:
            tables.clusters[cluster.name] = cluster
        for node in self.nodes:
            tables.nodes.setdefault(node.cluster, {})[node.name] = node
        for cluster_name, keys in self.touched.items():
            current = tables.pod_ips.setdefault(cluster_name, {})
            for key in keys:
                current.pop(key, None)
            for held in self.held[cluster_name]:
                current[(held.family, held.address)] = held
        for finished in self.finished:
            tables.history.setdefault(finished.cluster, []).append(finished)
        for changed in self.node_history:
            tables.node_history.setdefault(changed.cluster, []).append(changed)
        for pool in self.cluster_history:
            tables.cluster_history.setdefault(pool.cluster, []).append(pool)
        tables.offsets[self.partition] = self.offset
        tables.heads.setdefault(self.partition, []).extend(self.heads)
        stored = tables.subtrees.setdefault(self.partition, {})
        for subtree in self.subtrees:
            # As PostgreSQL's ON CONFLICT DO NOTHING: a subtree is stored once.
            stored.setdefault((subtree.level, subtree.start), subtree.hash)


def _node_row(
    cluster: str,
    name: str,
    row: dict[str, Any] | None,
    version: int,
    now: datetime.datetime,
) -> NodeRow:
    if row is None:
        return NodeRow(cluster, name, -1, (), None, None, (), False, False, (), True, version, now)
    return NodeRow(
        cluster=cluster,
        name=name,
        seq=row["seq"],
        pod_cidrs=tuple(row["pod_cidrs"]),
        error=row["error"],
        conflict=row["conflict"],
        addresses=tuple(row["addresses"]),
        pinned=row["pinned"],
        waiting=row["waiting"],
        cursors=tuple(row["cursors"]),
        deleted=False,
        version=version,
        updated_at=now,
    )


def _node_history_row(snap: ports.NodeSnapshot, partition: int) -> NodeHistoryRow:
    fields = snap.fields
    if fields is None:
        return NodeHistoryRow(
            cluster=snap.cluster,
            name=snap.node,
            offset=snap.offset,
            partition=partition,
            time=snap.time,
            deleted=True,
            pod_cidrs=(),
            error=None,
            conflict=None,
            addresses=(),
            pinned=False,
            waiting=False,
        )
    return NodeHistoryRow(
        cluster=snap.cluster,
        name=snap.node,
        offset=snap.offset,
        partition=partition,
        time=snap.time,
        deleted=False,
        pod_cidrs=tuple(fields["pod_cidrs"]),
        error=fields["error"],
        conflict=fields["conflict"],
        addresses=tuple(fields["addresses"]),
        pinned=fields["pinned"],
        waiting=fields["waiting"],
    )


def has_offset(rows: Sequence[DecisionRow] | Sequence[RejectionRow], offset: int) -> bool:
    at = bisect.bisect_left(rows, offset, key=offset_of)
    return at < len(rows) and rows[at].offset == offset


# Per table: the integer columns and their ranges (the rest of the ints are booleans or JSON).
_INT_COLUMNS: dict[str, dict[str, tuple[int, int]]] = {
    "decision": {"partition": INT4, "offset": INT8},
    "rejection": {"partition": INT4, "offset": INT8},
    "cluster": {
        "partition": INT4,
        "ipv4_mask": INT4,
        "ipv6_mask": INT4,
        "next_seq": INT8,
        "version": INT8,
    },
    "node": {"seq": INT8, "version": INT8},
    "pod_ip": {"partition": INT4, "since_offset": INT8},
    "ip_history": {"partition": INT4, "from_offset": INT8, "to_offset": INT8},
    "node_history": {"offset": INT8, "partition": INT4},
    "cluster_history": {
        "offset": INT8,
        "partition": INT4,
        "ipv4_mask": INT4,
        "ipv6_mask": INT4,
    },
    "consumer_offset": {"partition": INT4, "next_offset": INT8},
}
_ARRAY_INT_COLUMNS = {"node": ("cursors",)}


def _check_row(table: str, row: Any) -> None:
    """Refuse a text PostgreSQL cannot hold or an integer beyond its column."""
    for column in (field.name for field in dataclasses.fields(row)):
        value = getattr(row, column)
        where = f"{table}.{column}"
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, str):
                    _check_text(item, where)
                elif column in _ARRAY_INT_COLUMNS.get(table, ()):
                    check_int(item, INT8, where)
        elif column in _INT_COLUMNS.get(table, {}) and value is not None:
            check_int(value, _INT_COLUMNS[table][column], where)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        _refuse(f'CharacterNotInRepertoireError: {where}: invalid byte sequence for "UTF8": 0x00')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        _refuse(f"UnicodeEncodeError: {where}: {exc.reason} at position {exc.start}")


def check_int(value: int, bounds: tuple[int, int], where: str) -> None:
    if not bounds[0] <= value <= bounds[1]:
        _refuse(f"NumericValueOutOfRangeError: {where}: {value} is out of range")


def _refuse(reason: str) -> None:
    raise errors.ProjectionDataError(f"committing a batch: {reason}", reason=reason)
