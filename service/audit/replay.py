"""Replay for audits: the log applied again, and everything the allocator committed checked.

``replay_partition`` reads one partition of the log from offset 0 and applies it with the
allocator's own batch code (``service.allocator.batch.apply_records``) into a fresh projection:
in memory (``--verify``) or a database of the caller's (``--into``), committed batch by batch
exactly as the allocator commits. Batches end at every committed tree head, where the replayed
tree's root, the state digest (on the heads that carry one), the chain and the signature are
checked against the head. Every decision is compared with the committed one as it is made (its
bytes, and its stored leaf, which binds the record the allocator read); at the end the
projection's rows are compared row by row. The first difference is returned as a
``Divergence``: partition, offset, event id, what was expected and what was found.

``--until`` stops after a number of records or at a time, for the state document as it was then.
No I/O of its own but through the ports it is handed.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from service import errors, ports
from service.adapters import memory_rows
from service.adapters.memory_audit import MemoryAuditReader
from service.adapters.memory_projection import MemoryProjection, MemoryProjectionTables
from service.allocator import batch as batches
from service.allocator.settings import TreeSettings
from service.audit import signing
from service.domain import document, events, merkle, state

# Records per replayed batch (the allocator's default batch size): heads cut batches shorter.
CHUNK = 5000
# How long a read waits for records known to be there (the log's end is above them).
READ_WAIT_S = 5.0
# The replay records no digest of its own: it checks the committed heads' digests instead.
_NO_HEADS = TreeSettings(head_every=1 << 62, digest_every=1 << 62)
# Field names of each kind of row, in the order ``ports.ProjectionRows`` keeps them.
_FIELDS = {
    "cluster": (
        "partition",
        "ipv4_cidrs",
        "ipv4_mask",
        "ipv6_cidrs",
        "ipv6_mask",
        "cursors",
        "next_seq",
    ),
    "node": (
        "seq",
        "pod_cidrs",
        "error",
        "conflict",
        "addresses",
        "pinned",
        "waiting",
        "cursors",
        "deleted",
    ),
    "pod_ip": ("node", "owner", "partition", "since_offset", "since_time"),
    "ip_history": ("node", "owner", "partition", "from_time", "to_offset", "to_time"),
    "rejection": ("reason", "key", "raw"),
}


class _ReplayProjection(MemoryProjection):
    """The memory projection without the checks that make it refuse what PostgreSQL would.

    Nothing but the replay writes its tables, and what the allocator committed was already
    accepted by PostgreSQL; the checks (every text and integer of every row) were 40 % of a
    replay's time. The rows are computed by the same ``memory_rows.Writes`` as ever.
    """

    async def commit(self, batch: ports.Batch) -> None:
        tables = self.tables
        memory_rows.Writes.of(tables, batch, self.log_name, tables.clock()).apply(tables)


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first difference between the log's replay and what was committed."""

    partition: int
    offset: int | None
    event_id: str | None
    what: str
    expected: str
    found: str

    def describe(self) -> str:
        where = f"partition {self.partition}"
        if self.offset is not None:
            where += f", offset {self.offset}"
        if self.event_id is not None:
            where += f" (event {self.event_id!r})"
        return f"{where}: {self.what}: expected {self.expected}, found {self.found}"


@dataclass(slots=True)
class PartitionReport:
    """What replaying one partition found."""

    partition: int
    records: int = 0
    heads_checked: int = 0
    digests_checked: int = 0
    seconds: float = 0.0
    divergence: Divergence | None = None
    # With ``until``: the state document of the partition's clusters at that point.
    document: dict[str, Any] | None = None
    stopped_at: int = 0


@dataclass(frozen=True, slots=True)
class Until:
    """Where a point-in-time replay stops: after ``records`` records, or before the first record
    whose log time is after ``time``."""

    records: int | None = None
    time: datetime.datetime | None = None


@dataclass(slots=True)
class _Run:
    partition: int
    partitions: int
    live: ports.AuditReader
    log: ports.EventLog
    projection: ports.Projection
    token: int
    heads: list[ports.RecordedHead]
    public_key: ed25519.Ed25519PublicKey | None
    report: PartitionReport
    progress: Callable[[int, int], None]
    tree: merkle.Tree = field(default_factory=merkle.Tree)
    current: state.State = field(default_factory=lambda: state.State(track_changes=True))


async def replay_partition(
    event_log: ports.EventLog,
    live: ports.AuditReader,
    partition: int,
    partitions: int,
    *,
    into: ports.Projection | None = None,
    into_rows: ports.AuditReader | None = None,
    until: Until | None = None,
    public_key: ed25519.Ed25519PublicKey | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> PartitionReport:
    """Replay ``partition`` and compare; a report with the first divergence, if any.

    ``into``/``into_rows``: commit into that projection and compare its rows (else a memory
    projection). With ``until`` nothing is compared: the report carries the state document.
    Raises ``LogError``/``ProjectionError`` when the log or a database cannot be read.
    """
    started = time.perf_counter()
    tables = MemoryProjectionTables()
    projection: ports.Projection = into or _ReplayProjection(
        tables, holder="ipledger-replay", lease_ttl_s=10**9
    )
    rows_reader: ports.AuditReader = into_rows or MemoryAuditReader(tables)
    token = await projection.try_acquire(partition)
    if token is None:
        raise errors.ProjectionError(f"partition {partition}: the target's lease is held")
    report = PartitionReport(partition)
    run = _Run(
        partition=partition,
        partitions=partitions,
        live=live,
        log=event_log,
        projection=projection,
        token=token,
        heads=[] if until else await live.heads(partition),
        public_key=public_key,
        report=report,
        progress=progress,
    )
    try:
        consumed = (await live.partitions()).get(partition, 0) if until is None else 0
        end = await event_log.end_offset(partition)
        if until is not None and until.records is not None:
            end = min(end, until.records)
        report.divergence = await _apply_log(run, end, until)
        if until is not None:
            report.document = document.state_document(run.current)
        elif report.divergence is None:
            report.divergence = await _compare_end(run, consumed, rows_reader)
    finally:
        await projection.release(partition, token)
    report.records = run.tree.size
    report.stopped_at = run.tree.size
    report.seconds = time.perf_counter() - started
    return report


async def _apply_log(run: _Run, end: int, until: Until | None) -> Divergence | None:
    """Read the log in chunks, apply each in batches that end at the committed heads."""
    heads = run.heads
    next_head = 0
    offset = 0
    while offset < end:
        # A wait of its own: a Kafka consumer has nothing fetched yet when first asked.
        records = list(
            await run.log.read(run.partition, offset, min(CHUNK, end - offset), READ_WAIT_S)
        )
        for at, record in enumerate(records):
            if record.offset != offset + at:
                return Divergence(
                    run.partition,
                    offset + at,
                    None,
                    "log record",
                    "a record at this offset",
                    f"none: the log goes on at offset {record.offset}",
                )
        if not records:
            return Divergence(
                run.partition,
                offset,
                None,
                "log record",
                f"records up to offset {end - 1}",
                "none: the log ends here",
            )
        cut = False
        if until is not None and until.time is not None:
            kept = _before(records, until.time)
            cut = len(kept) < len(records)
            records = kept
            if not records:
                return None
        stored: dict[int, ports.StoredDecision] = {}
        if until is None:
            found = await run.live.decisions(run.partition, offset, len(records))
            stored = {d.offset: d for d in found}
        chunk_start, chunk_end = offset, offset + len(records)
        while offset < chunk_end:
            while next_head < len(heads) and heads[next_head].head.size <= offset:
                next_head += 1
            stop = chunk_end
            if next_head < len(heads):
                stop = min(stop, heads[next_head].head.size)
            applied = batches.apply_records(
                run.current,
                records[offset - chunk_start : stop - chunk_start],
                run.partition,
                run.token,
                partitions=run.partitions,
                tree=run.tree,
                evidence=_NO_HEADS,
            )
            await run.projection.commit(applied)
            if until is None and (divergence := _compare_decisions(run, applied, stored)):
                return divergence
            offset = applied.next_offset
            while next_head < len(heads) and heads[next_head].head.size == offset:
                if divergence := _check_head(run, heads, next_head):
                    return divergence
                next_head += 1
        if cut:
            return None
        run.progress(offset, end)
    return None


def _before(records: Sequence[ports.Record], moment: datetime.datetime) -> list[ports.Record]:
    limit_ms = int(moment.timestamp() * 1000)
    kept = []
    for record in records:
        if record.timestamp_ms is not None and record.timestamp_ms > limit_ms:
            break
        kept.append(record)
    return kept


def _compare_decisions(
    run: _Run, applied: ports.Batch, stored: dict[int, ports.StoredDecision]
) -> Divergence | None:
    for item in applied.applied:
        offset = item.record.offset
        found = stored.get(offset)
        event_id = item.decision.id
        if found is None:
            return Divergence(
                run.partition, offset, event_id, "decision", _text(item.body), "no decision"
            )
        if found.body != item.body:
            return Divergence(
                run.partition, offset, event_id, "decision", _text(item.body), _text(found.body)
            )
        if found.leaf is not None and found.leaf != item.leaf:
            return Divergence(
                run.partition,
                offset,
                event_id,
                "log record (its Merkle leaf)",
                f"the record the allocator applied (leaf {found.leaf.hex()})",
                f"a different record (leaf {(item.leaf or b'').hex()}): {_text(item.record.value)}",
            )
    return None


def _check_head(run: _Run, heads: Sequence[ports.RecordedHead], index: int) -> Divergence | None:
    recorded = heads[index]
    head = recorded.head
    size = head.size

    def diverged(what: str, expected: str, found: str) -> Divergence:
        return Divergence(
            run.partition, size - 1, None, f"tree head at size {size}: {what}", expected, found
        )

    run.report.heads_checked += 1
    if recorded.hash != head.hash():
        return diverged("hash", f"{head.hash().hex()} (of its body)", recorded.hash.hex())
    previous = heads[index - 1].hash.hex() if index else None
    if head.previous != previous:
        return diverged("previous head", str(previous), str(head.previous))
    root = run.tree.root().hex()
    if head.root != root:
        return diverged("root", root, head.root)
    frontier = b"".join(run.tree.frontier)
    if recorded.frontier != frontier:
        return diverged("frontier", frontier.hex(), recorded.frontier.hex())
    if head.state_digest is not None:
        run.report.digests_checked += 1
        digest = document.digest(run.current)
        if head.state_digest != digest:
            return diverged("state digest", digest, head.state_digest)
    if run.public_key is not None:
        try:
            signing.verify(head, run.public_key)
        except errors.AuditError as exc:
            return diverged("signature", "a valid signature", str(exc))
    return None


async def _compare_end(
    run: _Run, consumed: int, rows_reader: ports.AuditReader
) -> Divergence | None:
    size = run.tree.size
    if consumed != size:
        return Divergence(
            run.partition,
            None,
            None,
            "consumed offset",
            f"{size} (the log's records)",
            f"{consumed} (the projection's committed next offset)",
        )
    beyond = [h for h in run.heads if h.head.size > size]
    if beyond:
        return Divergence(
            run.partition,
            beyond[0].head.size - 1,
            None,
            f"tree head at size {beyond[0].head.size}",
            f"no head beyond the log's {size} records",
            "a head",
        )
    extra = await run.live.decisions(run.partition, size, 1)
    if extra:
        return Divergence(
            run.partition, extra[0].offset, None, "decision", "none (beyond the log)", "one"
        )
    replayed = await rows_reader.rows([run.partition])
    committed = await run.live.rows([run.partition])
    for kind, mine, theirs in (
        ("cluster", replayed.clusters, committed.clusters),
        ("node", replayed.nodes, committed.nodes),
        ("pod_ip", replayed.pod_ips, committed.pod_ips),
        ("ip_history", replayed.history, committed.history),
        ("rejection", replayed.rejections, committed.rejections),
    ):
        divergence = _compare_rows(run.partition, kind, mine, theirs)
        if divergence is not None:
            return divergence
    return None


def _compare_rows(
    partition: int, kind: str, expected: dict[Any, Any], found: dict[Any, Any]
) -> Divergence | None:
    names = _FIELDS[kind]
    for key in sorted(set(expected) | set(found), key=repr):
        want, have = expected.get(key), found.get(key)
        if want == have:
            continue
        offset = _offset_of(kind, key, want or have)
        label = f"{kind} row {_key_text(key)}"
        if want is None or have is None:
            return Divergence(
                partition,
                offset,
                None,
                label,
                "no row" if want is None else _row_text(names, want),
                "no row" if have is None else _row_text(names, have),
            )
        fields = [n for n, a, b in zip(names, want, have, strict=True) if a != b]
        return Divergence(
            partition,
            offset,
            None,
            f"{label}, {', '.join(fields)}",
            _row_text(fields, [want[names.index(n)] for n in fields]),
            _row_text(fields, [have[names.index(n)] for n in fields]),
        )
    return None


def _offset_of(kind: str, key: Any, row: Any) -> int | None:
    """The offset a row names: where a holding began or ended, a rejection's own."""
    if kind == "pod_ip":
        return int(row[3])
    if kind == "ip_history":
        return int(key[2])
    if kind == "rejection":
        return int(key[1])
    return None


def _key_text(key: Any) -> str:
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)


def _row_text(names: Sequence[str], values: Sequence[Any]) -> str:
    return "{" + ", ".join(f"{n}={_value(v)}" for n, v in zip(names, values, strict=True)) + "}"


def _value(value: Any) -> str:
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return repr(value)


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= 400 else text[:400] + "..."


def event_id_of(record: ports.Record) -> str | None:
    return events.decode(record.value).id
