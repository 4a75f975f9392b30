"""A large batch's commit: one COPY per table, in the caller's transaction.

Called by ``projection.PostgresProjection.commit`` for batches of ``COPY_FROM_RECORDS`` records
or more, which group commit makes under load, or of ``COPY_FROM_BYTES``; smaller ones go as one
statement (``batch_commit``). Both write the same rows (tests/integration/test_batch_commit.py
runs both against the in-memory projection). For a batch of thousands of records the round
trips do not count, and COPY's multi-row inserts cost PostgreSQL less per row than ``INSERT
... SELECT FROM unnest`` (5,000 records: 45-47.5 against 54-56 ms of server CPU per commit).

The caller opens the transaction and passes the fence (``fence``, which raises
``FencedError``): it runs first, so the lease row stays locked until the COMMIT. The address
history is replayed in memory: the holdings open before the batch come back from one
``DELETE ... RETURNING`` on the primary key, what is still held at the end goes back into
``pod_ip``, and every holding that ended goes into the insert-only ``ip_history``.

Must not: open connections or transactions, or commit.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from service import ports
from service.adapters.postgres import batch_commit
from service.domain import state
from service.domain.pool import IPV4, IPV6

# Records from which a batch is committed by COPY rather than as one statement. Sequential
# commits of the latency benchmark's stream, both paths alternated (load 4-6), CPU per commit
# of client and server together: 1,000 records 17.9 (statement) against 28.4 ms (COPY), 5,000
# records 81 against 73.5 ms; the lines through those points cross at about 3,300.
COPY_FROM_RECORDS = 3000
# Bytes of records (their values, which a rejection stores raw, and their decisions) from which
# a batch goes by COPY too: the statement is one protocol message, which PostgreSQL takes up to
# 1 GB only (and a bytea array no larger), while COPY streams row by row; a batch of large
# records must never be refused for its size, retried and refused again.
COPY_FROM_BYTES = 16 << 20


def by_copy(batch: ports.Batch) -> bool:
    """Whether ``batch`` is committed by COPY (``write``) rather than as one statement."""
    if len(batch.applied) >= COPY_FROM_RECORDS:
        return True
    size = 0
    for applied in batch.applied:
        size += len(applied.record.value) + len(applied.body)
    return size >= COPY_FROM_BYTES


async def write(
    db: Any,
    batch: ports.Batch,
    *,
    fence: Callable[[Any], Awaitable[None]],
    log_name: str,
    now: datetime.datetime,
) -> None:
    """Write everything ``batch`` did, and its offset, into ``db``'s open transaction."""
    await fence(db)
    await _write_decisions(db, batch, now)
    if batch.heads:
        await db.copy_records_to_table(
            "tree_head",
            records=[
                (batch.partition, h.head.size, h.hash, h.body, h.frontier) for h in batch.heads
            ],
            columns=["partition", "size", "hash", "body", "frontier"],
        )
    if batch.subtrees:
        await _write_subtrees(db, batch)
    for cluster_name, changes in batch.changes.items():
        await _write_cluster(db, batch.cluster_rows[cluster_name], batch)
        await _write_nodes(db, cluster_name, batch.node_rows[cluster_name], batch, now)
        if changes.ips:
            await _write_ips(db, cluster_name, batch, changes, batch.ip_times[cluster_name])
    await _write_history(db, batch)
    await db.execute(
        "INSERT INTO consumer_offset (partition, log, next_offset, updated_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (partition) DO UPDATE "
        "SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at",
        batch.partition,
        log_name,
        batch.next_offset,
        now,
    )
    # Delivered on commit only: the sync worker and the outbox relay wake up.
    if any(changes.nodes for changes in batch.changes.values()):
        await db.execute(
            "SELECT pg_notify($1, $2)", batch_commit.NODES_CHANNEL, str(batch.partition)
        )
    await db.execute(
        "SELECT pg_notify($1, $2)", batch_commit.DECISIONS_CHANNEL, str(batch.partition)
    )


async def _write_subtrees(db: Any, batch: ports.Batch) -> None:
    """The batch's completed subtree roots. Exactly one batch completes each subtree, so a
    conflict is not expected; ``ON CONFLICT DO NOTHING`` keeps one from becoming a refused
    batch (whose records would be split and rejected): the first row stays, and replay
    --verify checks it."""
    await db.execute(
        "INSERT INTO tree_node (partition, level, start, hash) "
        "SELECT $1, * FROM unnest($2::smallint[], $3::bigint[], $4::bytea[]) "
        "ON CONFLICT DO NOTHING",
        batch.partition,
        [s.level for s in batch.subtrees],
        [s.start for s in batch.subtrees],
        [s.hash for s in batch.subtrees],
    )


async def _write_decisions(db: Any, batch: ports.Batch, now: datetime.datetime) -> None:
    partition = batch.partition
    rows = []
    rejected = []
    for applied in batch.applied:
        record, decision = applied.record, applied.decision
        rows.append(
            (
                partition,
                record.offset,
                decision.cluster,
                decision.id,
                decision.type,
                decision.error,
                applied.body,
                applied.event_time,
                applied.log_time,
                now,
                applied.leaf,
            )
        )
        if applied.rejected:
            rejected.append(
                (partition, record.offset, decision.error or "", record.key, record.value, now)
            )
    await db.copy_records_to_table(
        "decision",
        records=rows,
        columns=[
            "partition",
            "offset",
            "cluster",
            "event_id",
            "type",
            "error",
            "body",
            "event_time",
            "log_time",
            "applied_at",
            "leaf",
        ],
    )
    if rejected:
        await db.copy_records_to_table(
            "rejection",
            records=rejected,
            columns=["partition", "offset", "reason", "key", "raw", "rejected_at"],
        )


async def _write_cluster(db: Any, row: dict[str, Any], batch: ports.Batch) -> None:
    await db.execute(
        "INSERT INTO cluster (name, partition, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask, "
        "cursors, next_seq, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (name) DO UPDATE SET partition = EXCLUDED.partition, "
        "ipv4_cidrs = EXCLUDED.ipv4_cidrs, ipv4_mask = EXCLUDED.ipv4_mask, "
        "ipv6_cidrs = EXCLUDED.ipv6_cidrs, ipv6_mask = EXCLUDED.ipv6_mask, "
        "cursors = EXCLUDED.cursors, next_seq = EXCLUDED.next_seq, version = EXCLUDED.version",
        row["name"],
        batch.partition,
        row["ipv4_cidrs"],
        row["ipv4_mask"],
        row["ipv6_cidrs"],
        row["ipv6_mask"],
        json.dumps(row["cursors"]),
        row["next_seq"],
        batch.next_offset - 1,
    )


async def _write_nodes(
    db: Any,
    cluster: str,
    node_rows: dict[str, dict[str, Any] | None],
    batch: ports.Batch,
    now: datetime.datetime,
) -> None:
    if not node_rows:
        return
    version = batch.next_offset - 1
    rows: list[tuple[Any, ...]] = []
    for name, row in node_rows.items():
        if row is None:
            rows.append(
                (cluster, name, -1, [], None, None, [], False, False, [], True, version, now)
            )
            continue
        rows.append(
            (
                cluster,
                name,
                row["seq"],
                row["pod_cidrs"],
                row["error"],
                row["conflict"],
                row["addresses"],
                row["pinned"],
                row["waiting"],
                row["cursors"],
                False,
                version,
                now,
            )
        )
    await db.executemany(
        "INSERT INTO node (cluster, name, seq, pod_cidrs, error, conflict, addresses, pinned, "
        "waiting, cursors, deleted, version, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
        "ON CONFLICT (cluster, name) DO UPDATE SET seq = EXCLUDED.seq, "
        "pod_cidrs = EXCLUDED.pod_cidrs, error = EXCLUDED.error, conflict = EXCLUDED.conflict, "
        "addresses = EXCLUDED.addresses, pinned = EXCLUDED.pinned, waiting = EXCLUDED.waiting, "
        "cursors = EXCLUDED.cursors, deleted = EXCLUDED.deleted, version = EXCLUDED.version, "
        "updated_at = EXCLUDED.updated_at",
        rows,
    )


async def _write_ips(
    db: Any,
    cluster_name: str,
    batch: ports.Batch,
    changes: state.Changes,
    times: Sequence[tuple[int, datetime.datetime]],
) -> None:
    """Current holders and finished holdings for every address the batch touched.

    The holdings open before the batch come back from one ``DELETE ... RETURNING`` on the
    primary key; the changes are then replayed in log order in memory, and what is still held
    at the end goes back into ``pod_ip`` while every holding that ended goes into the
    insert-only ``ip_history``. No statement scans or updates the history.
    """
    partition = batch.partition
    # asyncpg encodes an int as IPv4 and 16 bytes as IPv6 without parsing text: at tens of
    # thousands of addresses per second, ipaddress's string parser was the largest cost.
    keys = [(c.family, c.address) for c in changes.ips]
    wire = {key: batch_commit.inet(*key) for key in keys}
    # The addresses come back as integers (IPv6 as text) computed by the server, as ``load``
    # reads them: decoding each into an ipaddress object was the commit's largest Python cost.
    previous = await db.fetch(
        "DELETE FROM pod_ip WHERE cluster = $1 AND address = ANY($2::inet[]) "
        "RETURNING CASE WHEN family(address) = 4 THEN address - '0.0.0.0'::inet END AS v4, "
        "CASE WHEN family(address) = 6 THEN host(address) END AS v6, "
        "node, owner, partition, since_offset, since_time",
        cluster_name,
        list(wire.values()),
    )
    holding: dict[tuple[int, int], tuple[str, str, int, int, datetime.datetime] | None] = {}
    for r in previous:
        v4 = r["v4"]
        key = (IPV4, v4) if v4 is not None else (IPV6, int(ipaddress.IPv6Address(r["v6"])))
        holding[key] = (r["node"], r["owner"], r["partition"], r["since_offset"], r["since_time"])
    finished: list[tuple[Any, ...]] = []
    for change, key, when in zip(changes.ips, keys, times, strict=True):
        offset, moment = when
        if change.held:
            holding[key] = (change.node, change.owner, partition, offset, moment)
            continue
        held = holding.get(key)
        if held is not None:
            node, owner, since_partition, since_offset, since_time = held
            finished.append(
                (
                    cluster_name,
                    wire[key],
                    node,
                    owner,
                    since_partition,
                    since_offset,
                    since_time,
                    offset,
                    moment,
                )
            )
        holding[key] = None
    current = [
        (cluster_name, wire[key], *held) for key, held in holding.items() if held is not None
    ]
    if current:
        await db.copy_records_to_table(
            "pod_ip",
            records=current,
            columns=[
                "cluster",
                "address",
                "node",
                "owner",
                "partition",
                "since_offset",
                "since_time",
            ],
        )
    if finished:
        await db.copy_records_to_table(
            "ip_history",
            records=finished,
            columns=[
                "cluster",
                "address",
                "node",
                "owner",
                "partition",
                "from_offset",
                "from_time",
                "to_offset",
                "to_time",
            ],
        )


async def _write_history(db: Any, batch: ports.Batch) -> None:
    """What the batch's events changed of nodes and pools, insert-only (COPY), for ``as_of``."""
    partition = batch.partition
    if batch.node_history:
        rows: list[tuple[Any, ...]] = []
        for snap in batch.node_history:
            fields = snap.fields
            if fields is None:
                deleted = (snap.cluster, snap.node, snap.offset, partition, snap.time, True)
                rows.append((*deleted, [], None, None, [], False, False))
                continue
            rows.append(
                (
                    snap.cluster,
                    snap.node,
                    snap.offset,
                    partition,
                    snap.time,
                    False,
                    fields["pod_cidrs"],
                    fields["error"],
                    fields["conflict"],
                    fields["addresses"],
                    fields["pinned"],
                    fields["waiting"],
                )
            )
        await db.copy_records_to_table("node_history", records=rows, columns=_NODE_HISTORY)
    if batch.pool_history:
        await db.copy_records_to_table(
            "cluster_history",
            records=[
                (
                    snap.cluster,
                    snap.offset,
                    partition,
                    snap.time,
                    list(snap.ipv4_cidrs),
                    snap.ipv4_mask,
                    list(snap.ipv6_cidrs),
                    snap.ipv6_mask,
                )
                for snap in batch.pool_history
            ],
            columns=_CLUSTER_HISTORY,
        )


_NODE_HISTORY = [
    "cluster",
    "name",
    "offset",
    "partition",
    "time",
    "deleted",
    "pod_cidrs",
    "error",
    "conflict",
    "addresses",
    "pinned",
    "waiting",
]
_CLUSTER_HISTORY = [
    "cluster",
    "offset",
    "partition",
    "time",
    "ipv4_cidrs",
    "ipv4_mask",
    "ipv6_cidrs",
    "ipv6_mask",
]
