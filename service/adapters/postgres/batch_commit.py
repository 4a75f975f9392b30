"""A batch's commit as ONE statement: the fence, every row the batch wrote, the offset, NOTIFY.

Called by ``projection.PostgresProjection.commit`` only, for the batches ``batch_copy.by_copy``
leaves to it (below 3,000 records and 16 MiB: those of a latency-bound load; larger ones go by
COPY, which is cheaper per row once round trips do not count). The statement runs outside any
explicit transaction, so PostgreSQL makes it one implicit transaction, committed (durably,
as ``synchronous_commit`` says) when it ends: one round trip and one WAL flush per batch,
where the statements one after the other took about twenty round trips (BEGIN, the fence,
two per COPY, the upserts, the offset, two NOTIFYs, COMMIT), each a wake-up of both sides on
a loaded machine. Every row goes in through ``unnest`` of binary-encoded arrays, so nothing is
spelled out as SQL text.

The fence is the first CTE, ``UPDATE writer_lease ... RETURNING``: every other part is gated on
its row (``WHERE EXISTS (SELECT FROM fence)``, a one-time filter evaluated before the part's
first row), so a writer whose lease was lost writes nothing at all and is told so by the
statement's result (``ok`` false); the caller then raises ``FencedError``. The lease row's lock
is held to the end of the statement, as it was to the end of the transaction before.

The sub-statements of one statement all see the snapshot from before it, and their order is
otherwise PostgreSQL's to choose, so the one place where order matters is made explicit: the
current holders of the addresses the batch touched are deleted (``previous``) before the new
ones are inserted (``held`` reads ``previous`` to its end first), and a holding the batch ended
is moved into ``ip_history`` from ``previous`` (its start) and the batch's change (its end).

The in-memory replay of a batch's address changes (``_address_rows``) decides everything that
does not need the rows from before the batch: which holdings are current at its end and which
started and ended within it. Only the holdings open before the batch come from the database:
for each address whose first change in the batch gives it back, ``previous`` supplies its
start. ``ip_history`` rows keep the order of the changes that ended them (their ids grow in
log order, as before).

Must not: open connections or transactions (the caller does), or write anything the fence
did not allow.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from service import ports
from service.domain.pool import IPV4

NODES_CHANNEL = "ipledger_nodes"
DECISIONS_CHANNEL = "ipledger_decisions"

_GATE = "EXISTS (SELECT FROM fence)"

# Parameters: $1 partition, $2 token, $3 lease TTL, $4 log name, $5 next offset, $6 the
# commit's time (applied_at, rejected_at, updated_at), $7 the version of the rows the batch
# changed (its last offset), $8 whether any node changed (the nodes channel is notified).
STATEMENT = f"""
WITH fence AS (
    UPDATE writer_lease SET expires_at = clock_timestamp() + $3::interval
    WHERE partition = $1::int AND token = $2::bigint AND expires_at > clock_timestamp()
    RETURNING true
),
decisions AS (
    INSERT INTO decision (partition, "offset", cluster, event_id, type, error, body,
                          event_time, log_time, applied_at, leaf)
    SELECT $1::int, d.o, d.c, d.e, d.t, d.r, d.b, d.et, d.lt, $6::timestamptz, d.l
    FROM unnest($9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::bytea[], $15::timestamptz[], $16::timestamptz[], $17::bytea[])
         AS d(o, c, e, t, r, b, et, lt, l)
    WHERE {_GATE}
),
rejections AS (
    INSERT INTO rejection (partition, "offset", reason, key, raw, rejected_at)
    SELECT $1::int, j.o, j.r, j.k, j.w, $6::timestamptz
    FROM unnest($18::bigint[], $19::text[], $20::bytea[], $21::bytea[]) AS j(o, r, k, w)
    WHERE {_GATE}
),
heads AS (
    INSERT INTO tree_head (partition, size, hash, body, frontier)
    SELECT $1::int, h.s, h.h, h.b, h.f
    FROM unnest($22::bigint[], $23::bytea[], $24::bytea[], $25::bytea[]) AS h(s, h, b, f)
    WHERE {_GATE}
),
subtrees AS (
    -- Exactly one batch completes each subtree; DO NOTHING keeps an unexpected conflict from
    -- refusing the batch (the first row stays, and replay --verify checks it).
    INSERT INTO tree_node (partition, level, start, hash)
    SELECT $1::int, n.v, n.s, n.h
    FROM unnest($26::smallint[], $27::bigint[], $28::bytea[]) AS n(v, s, h)
    WHERE {_GATE}
    ON CONFLICT DO NOTHING
),
clusters AS (
    INSERT INTO cluster (name, partition, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask,
                         cursors, next_seq, version)
    SELECT c.n, $1::int, c.c4::text[], c.m4, c.c6::text[], c.m6, c.cur::json, c.seq,
           $7::bigint
    FROM unnest($29::text[], $30::text[], $31::int[], $32::text[], $33::int[], $34::text[],
                $35::bigint[]) AS c(n, c4, m4, c6, m6, cur, seq)
    WHERE {_GATE}
    ON CONFLICT (name) DO UPDATE SET partition = EXCLUDED.partition,
        ipv4_cidrs = EXCLUDED.ipv4_cidrs, ipv4_mask = EXCLUDED.ipv4_mask,
        ipv6_cidrs = EXCLUDED.ipv6_cidrs, ipv6_mask = EXCLUDED.ipv6_mask,
        cursors = EXCLUDED.cursors, next_seq = EXCLUDED.next_seq, version = EXCLUDED.version
),
nodes AS (
    INSERT INTO node (cluster, name, seq, pod_cidrs, error, conflict, addresses, pinned,
                      waiting, cursors, deleted, version, updated_at)
    SELECT x.c, x.n, x.s, x.pc::text[], x.e, x.cf, x.a::text[], x.p, x.w, x.cu::bigint[],
           x.d, $7::bigint, $6::timestamptz
    FROM unnest($36::text[], $37::text[], $38::bigint[], $39::text[], $40::text[],
                $41::text[], $42::text[], $43::bool[], $44::bool[], $45::text[], $46::bool[])
         AS x(c, n, s, pc, e, cf, a, p, w, cu, d)
    WHERE {_GATE}
    ON CONFLICT (cluster, name) DO UPDATE SET seq = EXCLUDED.seq,
        pod_cidrs = EXCLUDED.pod_cidrs, error = EXCLUDED.error, conflict = EXCLUDED.conflict,
        addresses = EXCLUDED.addresses, pinned = EXCLUDED.pinned, waiting = EXCLUDED.waiting,
        cursors = EXCLUDED.cursors, deleted = EXCLUDED.deleted, version = EXCLUDED.version,
        updated_at = EXCLUDED.updated_at
),
previous AS (
    DELETE FROM pod_ip AS p
    USING unnest($47::text[], $48::inet[]) AS k(c, a)
    WHERE p.cluster = k.c AND p.address = k.a AND {_GATE}
    RETURNING p.cluster, p.address, p.node, p.owner, p.partition, p.since_offset, p.since_time
),
ended AS (
    INSERT INTO ip_history (cluster, address, node, owner, partition, from_offset, from_time,
                            to_offset, to_time)
    SELECT cluster, address, node, owner, partition, from_offset, from_time, to_offset, to_time
    FROM (
        SELECT e.i, p.cluster, p.address, p.node, p.owner, p.partition,
               p.since_offset AS from_offset, p.since_time AS from_time, e.o AS to_offset,
               e.t AS to_time
        FROM unnest($49::int[], $50::text[], $51::inet[], $52::bigint[], $53::timestamptz[])
             AS e(i, c, a, o, t)
        JOIN previous AS p ON p.cluster = e.c AND p.address = e.a
        UNION ALL
        SELECT f.i, f.c, f.a, f.n, f.w, $1::int, f.fo, f.ft, f.o, f.t
        FROM unnest($54::int[], $55::text[], $56::inet[], $57::text[], $58::text[],
                    $59::bigint[], $60::timestamptz[], $61::bigint[], $62::timestamptz[])
             AS f(i, c, a, n, w, fo, ft, o, t)
        WHERE {_GATE}
    ) AS finished
    ORDER BY i
),
held AS (
    INSERT INTO pod_ip (cluster, address, node, owner, partition, since_offset, since_time)
    SELECT h.c, h.a, h.n, h.w, $1::int, h.o, h.t
    FROM unnest($63::text[], $64::inet[], $65::text[], $66::text[], $67::bigint[],
                $68::timestamptz[]) AS h(c, a, n, w, o, t)
    -- The batch's current holders go in once the ones before it are gone.
    WHERE {_GATE} AND (SELECT count(*) FROM previous) >= 0
),
node_changes AS (
    INSERT INTO node_history (cluster, name, "offset", partition, time, deleted, pod_cidrs,
                              error, conflict, addresses, pinned, waiting)
    SELECT s.c, s.n, s.o, $1::int, s.t, s.d, s.pc::text[], s.e, s.cf, s.a::text[], s.p, s.w
    FROM unnest($69::text[], $70::text[], $71::bigint[], $72::timestamptz[], $73::bool[],
                $74::text[], $75::text[], $76::text[], $77::text[], $78::bool[], $79::bool[])
         AS s(c, n, o, t, d, pc, e, cf, a, p, w)
    WHERE {_GATE}
),
pool_changes AS (
    INSERT INTO cluster_history (cluster, "offset", partition, time, ipv4_cidrs, ipv4_mask,
                                 ipv6_cidrs, ipv6_mask)
    SELECT g.c, g.o, $1::int, g.t, g.c4::text[], g.m4, g.c6::text[], g.m6
    FROM unnest($80::text[], $81::bigint[], $82::timestamptz[], $83::text[], $84::int[],
                $85::text[], $86::int[]) AS g(c, o, t, c4, m4, c6, m6)
    WHERE {_GATE}
),
consumed AS (
    INSERT INTO consumer_offset (partition, log, next_offset, updated_at)
    SELECT $1::int, $4::text, $5::bigint, $6::timestamptz
    WHERE {_GATE}
    ON CONFLICT (partition) DO UPDATE
    SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
)
-- Delivered on commit only: the sync worker and the outbox relay wake up.
SELECT f.ok,
       CASE WHEN f.ok AND $8::bool THEN pg_notify('{NODES_CHANNEL}', $1::int::text) END,
       CASE WHEN f.ok THEN pg_notify('{DECISIONS_CHANNEL}', $1::int::text) END
FROM (SELECT {_GATE} AS ok) AS f
"""


def arguments(
    batch: ports.Batch,
    *,
    lease_ttl: datetime.timedelta,
    log_name: str,
    now: datetime.datetime,
) -> list[Any]:
    """The statement's parameters for ``batch``, in order ($1 ...)."""
    args: list[Any] = [
        batch.partition,
        batch.token,
        lease_ttl,
        log_name,
        batch.next_offset,
        now,
        batch.next_offset - 1,
        any(changes.nodes for changes in batch.changes.values()),
    ]
    args += _decisions(batch)
    args += _columns([(h.head.size, h.hash, h.body, h.frontier) for h in batch.heads], 4)
    args += _columns([(s.level, s.start, s.hash) for s in batch.subtrees], 3)
    args += _clusters(batch)
    args += _nodes(batch)
    args += _addresses(batch)
    args += _node_history(batch)
    args += _columns(
        [
            (
                snap.cluster,
                snap.offset,
                snap.time,
                text_array(snap.ipv4_cidrs),
                snap.ipv4_mask,
                text_array(snap.ipv6_cidrs),
                snap.ipv6_mask,
            )
            for snap in batch.pool_history
        ],
        7,
    )
    return args


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists (the arrays ``unnest`` takes apart again)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def text_array(values: Sequence[str]) -> str:
    """``values`` as a PostgreSQL array literal, cast to ``text[]`` by the statement.

    A node's CIDRs or addresses are an array within a row, and arrays of arrays must be
    rectangular: each row's array travels as its literal instead. Every element is quoted, so
    only a backslash and a double quote need escaping.
    """
    if not values:
        return "{}"
    joined = '","'.join(values)
    if "\\" in joined or '"' in joined:
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}'


def _int_array(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _decisions(batch: ports.Batch) -> list[list[Any]]:
    offsets: list[int] = []
    clusters: list[str | None] = []
    ids: list[str | None] = []
    types: list[str | None] = []
    reasons: list[str | None] = []
    bodies: list[bytes] = []
    event_times: list[datetime.datetime | None] = []
    log_times: list[datetime.datetime | None] = []
    leaves: list[bytes | None] = []
    rejected: list[tuple[int, str, bytes | None, bytes]] = []
    for applied in batch.applied:
        record, decision = applied.record, applied.decision
        offsets.append(record.offset)
        clusters.append(decision.cluster)
        ids.append(decision.id)
        types.append(decision.type)
        reasons.append(decision.error)
        bodies.append(applied.body)
        event_times.append(applied.event_time)
        log_times.append(applied.log_time)
        leaves.append(applied.leaf)
        if applied.rejected:
            rejected.append((record.offset, decision.error or "", record.key, record.value))
    return [
        offsets,
        clusters,
        ids,
        types,
        reasons,
        bodies,
        event_times,
        log_times,
        leaves,
        *_columns(rejected, 4),
    ]


def _clusters(batch: ports.Batch) -> list[list[Any]]:
    rows = []
    for name in batch.changes:
        row = batch.cluster_rows[name]
        rows.append(
            (
                row["name"],
                text_array(row["ipv4_cidrs"]),
                row["ipv4_mask"],
                text_array(row["ipv6_cidrs"]),
                row["ipv6_mask"],
                json.dumps(row["cursors"]),
                row["next_seq"],
            )
        )
    return _columns(rows, 7)


def _nodes(batch: ports.Batch) -> list[list[Any]]:
    rows: list[tuple[Any, ...]] = []
    for cluster in batch.changes:
        for name, row in batch.node_rows[cluster].items():
            if row is None:
                rows.append((cluster, name, -1, "{}", None, None, "{}", False, False, "{}", True))
                continue
            rows.append(
                (
                    cluster,
                    name,
                    row["seq"],
                    text_array(row["pod_cidrs"]),
                    row["error"],
                    row["conflict"],
                    text_array(row["addresses"]),
                    row["pinned"],
                    row["waiting"],
                    _int_array(row["cursors"]),
                    False,
                )
            )
    return _columns(rows, 11)


def inet(family: int, value: int) -> int | bytes:
    # The writer's inet codec (projection._writer_codecs) sends an int as IPv4 and 16 bytes
    # as IPv6 without parsing text.
    return value if family == IPV4 else value.to_bytes(16, "big")


def _addresses(batch: ports.Batch) -> list[list[Any]]:
    """The address changes of every cluster, replayed in log order: what to delete, which
    holdings from before the batch end (and when), which started and ended within it, and
    which are held at its end."""
    touched: list[tuple[str, int | bytes]] = []
    ends_previous: list[tuple[int, str, int | bytes, int, datetime.datetime]] = []
    finished: list[tuple[Any, ...]] = []
    current: list[tuple[Any, ...]] = []
    order = 0  # the position of each ended holding in log order, over all clusters
    for cluster_name, changes in batch.changes.items():
        if not changes.ips:
            continue
        times = batch.ip_times[cluster_name]
        # Per address: None before its first change; then (node, owner, offset, time) of a
        # holding the batch started, or False once given back (or the one from before ended).
        holding: dict[tuple[int, int], tuple[str, str, int, datetime.datetime] | bool | None]
        holding = {}
        wire: dict[tuple[int, int], int | bytes] = {}
        for change, (offset, moment) in zip(changes.ips, times, strict=True):
            key = (change.family, change.address)
            if key not in wire:
                wire[key] = inet(*key)
                touched.append((cluster_name, wire[key]))
                if not change.held:
                    # The first change gives it back: it ends the holding from before the
                    # batch, if there is one (the database knows).
                    ends_previous.append((order, cluster_name, wire[key], offset, moment))
                    order += 1
                    holding[key] = False
                    continue
            if change.held:
                holding[key] = (change.node, change.owner, offset, moment)
                continue
            held = holding.get(key)
            if isinstance(held, tuple):
                node, owner, since_offset, since_time = held
                finished.append(
                    (
                        order,
                        cluster_name,
                        wire[key],
                        node,
                        owner,
                        since_offset,
                        since_time,
                        offset,
                        moment,
                    )
                )
                order += 1
            holding[key] = False
        for key, held in holding.items():
            if isinstance(held, tuple):
                current.append((cluster_name, wire[key], *held))
    return [
        *_columns(touched, 2),
        *_columns(ends_previous, 5),
        *_columns(finished, 9),
        *_columns(current, 6),
    ]


def _node_history(batch: ports.Batch) -> list[list[Any]]:
    rows: list[tuple[Any, ...]] = []
    for snap in batch.node_history:
        fields = snap.fields
        if fields is None:
            deleted = (snap.cluster, snap.node, snap.offset, snap.time, True)
            rows.append((*deleted, "{}", None, None, "{}", False, False))
            continue
        rows.append(
            (
                snap.cluster,
                snap.node,
                snap.offset,
                snap.time,
                False,
                text_array(fields["pod_cidrs"]),
                fields["error"],
                fields["conflict"],
                text_array(fields["addresses"]),
                fields["pinned"],
                fields["waiting"],
            )
        )
    return _columns(rows, 11)
