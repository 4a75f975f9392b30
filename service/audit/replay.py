"""Replay for audits: the log applied again, and everything the allocator committed checked.

``replay_partition`` reads one partition of the log from offset 0 and applies it with the
core the allocator runs into a fresh projection: in memory (``--verify``, ``--until``), by the
replay's own loop (``replay_apply``: ``apply_records`` less what only a commit needs, and with
turns for the read ahead), or into a database of the caller's (``--into``) with the allocator's
own batch code (``service.allocator.batch.apply_records``), committed batch by batch exactly as
the allocator commits. The next chunk of the log and its committed decisions' digest are read
while this one is applied. Batches end at every committed tree head, where the replayed
tree's root, the state digest (on the heads that carry one), the chain and the signature are
checked against the head. Every decision is compared with the committed one (its bytes, and its
stored leaf, which binds the record the allocator read): a chunk's by a digest the server
computes, one by one only where that differs or a head disagrees; at the end the projection's
rows are compared (in C first, row by row only for a difference). The first difference is
returned as a ``Divergence``: partition, offset, event id, what was expected and what was found.

``--until`` stops after a number of records or at a time, for the state document as it was then.
No I/O of its own but through the ports it is handed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import operator
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from service import errors, ports
from service.adapters import memory_rows
from service.adapters.memory_audit import MemoryAuditReader
from service.adapters.memory_projection import MemoryProjection, MemoryProjectionTables
from service.allocator import batch as batches
from service.allocator.settings import TreeSettings
from service.audit import address_digest, replay_apply, signing
from service.domain import document, events, merkle, restore, state

# Records read at once (and the longest replayed batch): heads cut batches shorter. The first
# read is shorter: nothing is applied while it is under way.
CHUNK = 10_000
FIRST_CHUNK = 1_000
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
    "node_history": (
        "partition",
        "time",
        "deleted",
        "pod_cidrs",
        "error",
        "conflict",
        "addresses",
        "pinned",
        "waiting",
    ),
    "cluster_history": (
        "partition",
        "time",
        "ipv4_cidrs",
        "ipv4_mask",
        "ipv6_cidrs",
        "ipv6_mask",
    ),
    "tree_node": ("hash",),
}


class _ReplayProjection(MemoryProjection):
    """The memory projection without the checks that make it refuse what PostgreSQL would,
    and with the cluster and node rows written once, at the end.

    Nothing but the replay writes its tables, and what the allocator committed was already
    accepted by PostgreSQL; the checks (every text and integer of every row) were 40 % of a
    replay's time. The rows are computed by the same ``memory_rows.Writes`` as ever, but for
    the pod address rows (``replay_apply.Addresses``, kept over the whole log). A node's row
    is its state after the last batch that touched it, so the batches make no node rows (every
    node an ip event touches was a snapshot per batch, a tenth of the time) and ``finish``
    writes each touched node's and cluster's row from the final state.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The nodes each cluster's batches touched (their journals' node sets), for ``finish``.
        self.touched: dict[str, set[str]] = {}
        # The pod address rows, kept over the whole log (``replay_apply.apply_batch`` writes
        # them as it applies the records).
        self.addresses = replay_apply.Addresses()

    async def commit(self, batch: ports.Batch) -> None:
        # Decisions are compared per chunk (``_compare_decisions``), not kept: a million
        # rows kept in offset order (an insort each) were a tenth of a replay's time. Only the
        # rejected records' go through, for their rows in ``rejection``; the address changes
        # are in ``addresses`` already.
        tables = self.tables
        lean = dataclasses.replace(batch, applied=batch.applied, changes={})
        writes = memory_rows.Writes.of(tables, lean, self.log_name, tables.clock())
        writes.decisions = []
        touched = self.touched
        for name, changes in batch.changes.items():
            touched.setdefault(name, set()).update(changes.nodes)
        writes.apply(tables)

    async def finish(self, current: state.State, partition: int, token: int, end: int) -> None:
        """The rows of every cluster and node the batches touched, as ``current`` has them."""
        touched = self.touched
        final = ports.Batch(partition=partition, token=token, next_offset=end, state=current)
        for name, nodes in touched.items():
            cluster = current.clusters[name]
            final.changes[name] = state.Changes(nodes=set(nodes))
            final.ip_times[name] = []
            final.cluster_rows[name] = restore.cluster_row(cluster)
            final.node_rows[name] = {
                node: restore.node_row(cluster, cluster.nodes[node])
                if node in cluster.nodes
                else None
                for node in sorted(nodes)
            }
        tables = self.tables
        memory_rows.Writes.of(tables, final, self.log_name, tables.clock()).apply(tables)


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
class _Digests:
    """The committed address tables' digests, read by a task of their own."""

    done: anyio.Event = field(default_factory=anyio.Event)
    found: dict[str, address_digest.Digest] | None = None
    error: errors.ProjectionError | None = None

    async def read(self, reader: address_digest.DigestingReader, partition: int) -> None:
        try:
            self.found = await reader.address_digests(partition)
        except errors.ProjectionError as exc:
            # Raised where they are wanted (``wait``): not out of the task group, as an
            # ExceptionGroup, when the replay stops at a divergence before it needs them.
            self.error = exc
        finally:
            self.done.set()

    async def wait(self) -> dict[str, address_digest.Digest]:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.found is not None
        return self.found


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
    committed_addresses: _Digests = field(default_factory=_Digests)
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
    # The collector is off for the replay: the replayed state only grows and holds no garbage
    # cycles, yet every full collection walked all of it again (up to half of a long replay's
    # time), and with the state frozen per chunk the collections within a chunk and of the final
    # comparison's rows were still a tenth. What the replay leaves in cycles (a few objects per
    # chunk) is collected once it is back on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        consumed = (await live.partitions()).get(partition, 0) if until is None else 0
        end = await event_log.end_offset(partition)
        if until is not None and until.records is not None:
            end = min(end, until.records)
        async with _errors_unwrapped(), anyio.create_task_group() as tasks:
            if until is None and isinstance(live, address_digest.DigestingReader):
                # The server digests its address tables while the log is applied, on a core
                # of its own: the final comparison then finds them ready (_same_addresses).
                tasks.start_soon(run.committed_addresses.read, live, partition)
            report.divergence = await _apply_log(run, end, until)
            if isinstance(projection, _ReplayProjection):
                await projection.finish(run.current, partition, token, run.tree.size)
            if until is not None:
                report.document = document.state_document(run.current)
            elif report.divergence is None:
                report.divergence = await _compare_end(run, consumed, rows_reader)
            tasks.cancel_scope.cancel()
    finally:
        if collecting:
            # The replayed state is moved out of the collector's generations first, or turning
            # it back on would walk all of it at the next collection (freed by its reference
            # counts when the caller lets go of it, as ever).
            gc.freeze()
            gc.enable()
        await projection.release(partition, token)
    report.records = run.tree.size
    report.stopped_at = run.tree.size
    report.seconds = time.perf_counter() - started
    return report


@contextlib.asynccontextmanager
async def _errors_unwrapped() -> AsyncIterator[None]:
    """The log's or a database's error raised by a task group as itself, not wrapped in an
    ExceptionGroup (as anyio's task groups raise every error, their host's too): callers catch
    ``LogError`` and ``ProjectionError`` (``ipledger replay`` exits 2 on them)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(e, errors.IpledgerError) for e in leaves):
            raise leaves[0] from None
        raise


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


async def _apply_log(run: _Run, end: int, until: Until | None) -> Divergence | None:
    """Read the log in chunks, apply each in batches that end at the committed heads.

    The next chunk (records, and the committed decisions to compare with) is read while this
    one is applied: the database works on its own core meanwhile.
    """
    send, receive = anyio.create_memory_object_stream[_Chunk](1)
    # Closed only once the read ahead is cancelled: it is often waiting to hand over the next
    # chunk when the applier stops at a divergence, and a send to a closed stream would raise
    # (BrokenResourceError) out of the task group instead of the divergence being returned.
    with receive:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_read_ahead, run, end, until is None, send)
            try:
                divergence = await _apply_chunks(run, end, until, receive)
            finally:
                tasks.cancel_scope.cancel()
    return divergence


@dataclass(frozen=True, slots=True)
class _Chunk:
    offset: int
    records: list[ports.Record]
    # The committed decisions at the records' offsets: how many, and their digest
    # (``ports.decision_digest``); None when nothing is compared (``until``).
    stored: tuple[int, bytes] | None


async def _read_ahead(
    run: _Run, end: int, compare: bool, send: anyio.abc.ObjectSendStream[_Chunk]
) -> None:
    async with send:
        offset = 0
        while offset < end:
            wanted = min(CHUNK if offset else FIRST_CHUNK, end - offset)
            # A wait of its own: a Kafka consumer has nothing fetched yet when first asked.
            found = list(await run.log.read(run.partition, offset, wanted, READ_WAIT_S))
            stored = None
            if compare and found:
                # Over the offsets read (a Kafka read may return fewer than asked for).
                stored = await run.live.decision_digest(run.partition, offset, found[-1].offset + 1)
            await send.send(_Chunk(offset, found, stored))
            if not found or found[-1].offset != offset + len(found) - 1:
                return  # the applier reports the gap
            offset += len(found)


async def _apply_chunks(
    run: _Run, end: int, until: Until | None, receive: anyio.abc.ObjectReceiveStream[_Chunk]
) -> Divergence | None:
    heads = run.heads
    next_head = 0
    offset = 0
    in_memory = isinstance(run.projection, _ReplayProjection)
    while offset < end:
        chunk = await receive.receive()
        records = chunk.records
        offsets = list(map(_OFFSET, records))
        if offsets != list(range(offset, offset + len(offsets))):  # in C; the gap found below
            for at, found in enumerate(offsets):
                if found != offset + at:
                    return Divergence(
                        run.partition,
                        offset + at,
                        None,
                        "log record",
                        "a record at this offset",
                        f"none: the log goes on at offset {found}",
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
        chunk_start, chunk_end = offset, offset + len(records)
        # The chunk's decisions, compared with the committed ones at its end (by digest) or,
        # when a head disagrees first, up to that head: a decision or record that differs is
        # named as such, not as the root it changed.
        made = replay_apply.Decided()
        while offset < chunk_end:
            while next_head < len(heads) and heads[next_head].head.size <= offset:
                next_head += 1
            stop = chunk_end
            if next_head < len(heads):
                stop = min(stop, heads[next_head].head.size)
            span = records[offset - chunk_start : stop - chunk_start]
            if in_memory:
                # The replay's own loop: no decision rows, no heads (replay_apply).
                assert isinstance(run.projection, _ReplayProjection)
                applied = await replay_apply.apply_batch(
                    run.current,
                    span,
                    run.partition,
                    run.token,
                    partitions=run.partitions,
                    tree=run.tree,
                    decided=made,
                    addresses=run.projection.addresses,
                )
            else:
                applied = batches.apply_records(
                    run.current,
                    span,
                    run.partition,
                    run.token,
                    partitions=run.partitions,
                    tree=run.tree,
                    evidence=_NO_HEADS,
                )
                made.extend(applied.applied)
            await run.projection.commit(applied)
            # The read ahead's turn (apply_batch gives it turns as it goes).
            await anyio.lowlevel.checkpoint()
            offset = applied.next_offset
            while next_head < len(heads) and heads[next_head].head.size == offset:
                if divergence := _check_head(run, heads, next_head):
                    return await _first_decision_divergence(run, made) or divergence
                next_head += 1
        if (
            until is None
            and chunk.stored is not None
            and (divergence := await _compare_decisions(run, made, chunk.stored))
        ):
            return divergence
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


async def _compare_decisions(
    run: _Run, made: replay_apply.Decided, stored: tuple[int, bytes]
) -> Divergence | None:
    """A chunk's decisions against the committed ones at the same offsets.

    By digest first (``ports.decision_digest``, the committed side's computed by the server):
    the bodies and leaves are read and compared one by one only when the digests differ.
    """
    count, digest = stored
    mine = made.digest()
    if count == len(made.records) and digest == mine:
        return None
    rows = await _stored_decisions(run, made)
    found = _first_difference(run, made, rows)
    if found is not None:
        return found
    # None differs one by one: either the committed decisions carry no leaf (written with the
    # tree off: each was compared by its body alone, the digest counts the missing leaf) or
    # they changed between the two reads. The digest of the rows read one by one tells which.
    if count == len(rows) and digest == ports.decision_digest(
        (d.offset, d.body, d.leaf) for d in rows
    ):
        return None
    first = made.records[0].offset if made.records else None
    return Divergence(
        run.partition,
        first,
        None,
        "decisions",
        f"{len(made.records)} decisions of digest {mine.hex()}",
        f"{count} of digest {digest.hex()} (the committed decisions changed while read)",
    )


async def _first_decision_divergence(run: _Run, made: replay_apply.Decided) -> Divergence | None:
    """The first of ``made`` (consecutive) that is not the committed decision at its offset."""
    return _first_difference(run, made, await _stored_decisions(run, made))


async def _stored_decisions(run: _Run, made: replay_apply.Decided) -> list[ports.StoredDecision]:
    """The committed decisions at the offsets of ``made``."""
    if not made.records:
        return []
    start = made.records[0].offset
    end = start + len(made.records)
    stored = await run.live.decisions(run.partition, start, len(made.records))
    return [d for d in stored if d.offset < end]


def _first_difference(
    run: _Run, made: replay_apply.Decided, stored: Sequence[ports.StoredDecision]
) -> Divergence | None:
    by_offset = {d.offset: d for d in stored}
    for record, body, leaf in zip(made.records, made.bodies, made.leaves, strict=True):
        offset = record.offset
        found = by_offset.get(offset)
        if found is None:
            return Divergence(
                run.partition, offset, _event_id(body), "decision", _text(body), "no decision"
            )
        if found.body != body:
            return Divergence(
                run.partition, offset, _event_id(body), "decision", _text(body), _text(found.body)
            )
        if found.leaf is not None and found.leaf != leaf:
            return Divergence(
                run.partition,
                offset,
                _event_id(body),
                "log record (its Merkle leaf)",
                f"the record the allocator applied (leaf {found.leaf.hex()})",
                f"a different record (leaf {(leaf or b'').hex()}): {_text(record.value)}",
            )
    return None


def _event_id(body: bytes) -> str | None:
    """The event id of a replayed decision, read back from its body (``Decision.id``)."""
    return _DECISION_ID.decode(body).id


class _DecisionId(msgspec.Struct):
    id: str | None = None


# A replayed decision's event id, read back from its body where one differs.
_DECISION_ID = msgspec.json.Decoder(_DecisionId)
_OFFSET = operator.attrgetter("offset")


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
    digests = await _address_digests(run, rows_reader)
    if digests is not None and digests[0] == digests[1]:
        # Equal digests: the two address tables are equal, and only the other rows are read.
        assert isinstance(run.live, address_digest.DigestingReader)
        committed = await run.live.rows_besides_addresses([run.partition])
        if isinstance(rows_reader, address_digest.DigestingReader):
            replayed = await rows_reader.rows_besides_addresses([run.partition])
        else:
            replayed = await rows_reader.rows([run.partition])
            replayed.pod_ips, replayed.history = {}, {}
    else:
        replayed = await rows_reader.rows([run.partition])
        if isinstance(run.projection, _ReplayProjection):
            replayed.pod_ips, replayed.history = run.projection.addresses.rows()
        committed = await run.live.rows([run.partition])
    for kind, mine, theirs in (
        ("cluster", replayed.clusters, committed.clusters),
        ("node", replayed.nodes, committed.nodes),
        ("pod_ip", replayed.pod_ips, committed.pod_ips),
        ("ip_history", replayed.history, committed.history),
        ("rejection", replayed.rejections, committed.rejections),
        (
            "node_history",
            changes_only(replayed.node_history),
            changes_only(committed.node_history),
        ),
        (
            "cluster_history",
            changes_only(replayed.cluster_history, 1),
            changes_only(committed.cluster_history, 1),
        ),
        (
            "tree_node",
            _since_stored(replayed.tree_nodes, committed.tree_nodes),
            committed.tree_nodes,
        ),
    ):
        if mine == theirs:
            continue  # in C; the row by row search below only for a difference
        divergence = _compare_rows(run.partition, kind, mine, theirs)
        if divergence is not None:
            return divergence
    if digests is not None:
        # Rows equal one by one, digests not: the table holds a row twice (a history row's
        # key, its cluster, address and from offset, is no key of the table; the rows compared
        # are keyed by it, so its repeats stand for one), or the rows changed between the reads.
        mine_count, theirs_count = digests[0]["ip_history"][0], digests[1]["ip_history"][0]
        if theirs_count > mine_count:
            return Divergence(
                run.partition,
                None,
                None,
                "ip_history rows",
                f"{mine_count} (one per finished holding)",
                f"{theirs_count}: {theirs_count - mine_count} with the cluster, address and from "
                "offset of another",
            )
    return None


async def _address_digests(
    run: _Run, rows_reader: ports.AuditReader
) -> tuple[dict[str, address_digest.Digest], dict[str, address_digest.Digest]] | None:
    """The replayed and the committed address tables' digests (``address_digest``), or None
    where either side cannot make them."""
    if not isinstance(run.live, address_digest.DigestingReader):
        return None
    projection = run.projection
    if isinstance(projection, _ReplayProjection):
        # In a thread: the event loop meanwhile reads the committed digests, if still under way.
        addresses = projection.addresses
        mine = await anyio.to_thread.run_sync(
            address_digest.of, addresses.holding, addresses.finished
        )
    elif isinstance(rows_reader, address_digest.DigestingReader):
        mine = await rows_reader.address_digests(run.partition)
    else:
        return None
    if mine is None:
        return None
    return mine, await run.committed_addresses.wait()


def _since_stored(replayed: dict[Any, Any], committed: dict[Any, Any]) -> dict[Any, Any]:
    """The replayed subtree roots the projection must have: those completed since the first
    stored one was. A tree recorded before migration 0008 stored none before it; since, the
    writer stores every one it completes (also over offsets it resumes without a head)."""
    if not committed:
        return {}
    first = min(_offset_of("tree_node", key, None) or 0 for key in committed)
    return {k: v for k, v in replayed.items() if (_offset_of("tree_node", k, None) or 0) >= first}


def changes_only(rows: dict[Any, tuple[Any, ...]], subject: int = 2) -> dict[Any, Any]:
    """A history without the rows that repeat their subject's previous row: the node history
    (``subject`` 2: a key's cluster and node name) or the pool history (1: its cluster).

    The allocator leaves out a snapshot equal to the node's previous one within a batch, not
    across batches (``history.after``): how many repeats the table holds depends on how the log
    was batched, and the replay cuts batches where the allocator did not (at every head). The
    allocator once wrote a pool snapshot at every node event that moved a next-fit cursor (now
    one per new configuration), so a ledger from before holds repeats a replay no longer makes.
    A repeat changes nothing an ``as_of`` reader sees; every row that does is compared.
    """
    kept: dict[Any, Any] = {}
    previous: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for key in sorted(rows):
        fields = rows[key][2:]  # not the partition and time: what the node looked like
        node = key[:subject]
        if previous.get(node) == fields:
            continue
        previous[node] = fields
        kept[key] = rows[key]
    return kept


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
    """The offset a row names: where a holding began or ended, a rejection's own, the event a
    history row is after."""
    if kind == "pod_ip":
        return int(row[3])
    if kind in ("ip_history", "node_history"):
        return int(key[2])
    if kind == "cluster_history":
        return int(key[1])
    if kind == "rejection":
        return int(key[1])
    if kind == "tree_node":  # (partition, level, start): the leaf that completed it
        return int(key[2]) + (1 << int(key[1])) - 1
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
