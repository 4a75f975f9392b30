"""The single-writer allocator loop of one log partition: lead (or stand by), read, apply, commit.

Run by ``ipledger run``, one ``PartitionAllocator`` per log partition, so different partitions
(and the clusters on them) can be spread over processes. Each one is either the writer of its
partition or a hot standby waiting for the writer's lease (``ports.Projection``: the lease, the
fencing, a batch committed with its offset), in the leader loop of ``service.leadership``.

As the writer it loads the state from the projection, then repeats: read up to N records (waiting
at most T for the first), apply them in log order with the pure core (``batch.apply_records``),
and commit every change, decision, rejection and the next offset in ONE transaction. Because the
offset moves only with the state it produced, a crash at any point (``kill -9``) loses nothing and
applies nothing twice: the next writer loads the last committed state and continues after its
offset. Any failure of the log or the database drops the in-memory state, backs off and starts
again from what is committed, except a commit the database refused for its data: that batch is
committed in parts until the records it cannot store are found and rejected (``_isolate``). The
loop never raises on input: every record gets a decision.

Over 400 lines on purpose: leading, the pipelined commits, the isolation of refused records and
the outbox relay share one writer's token, lease renewal and counters; what needs none of them
is in ``batch``.
"""

from __future__ import annotations

import collections
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import msgspec

from service import backoff, errors, leadership, ports
from service.allocator import batch as batches
from service.allocator import reasons
from service.allocator.settings import LoopSettings, Metrics
from service.domain import merkle, state

log = logging.getLogger("ipledger.allocator")
# Rejected records logged one by one per batch at most; the rest in one line (a producer gone
# wrong must not flood the log: the metrics and the rejections table count them all).
LOGGED_REJECTIONS_PER_BATCH = 20
# While a commit runs, the next batch waits this long at most for more records at a time: the
# log's client fetches on meanwhile, and the commit's end is noticed within this delay.
GROUP_POLL_S = 0.002
# And goes on grouping for this long at most (the applying time a grouped batch may add).
GROUP_MAX_S = 1.0
# Records applied between two turns of the event loop while a commit is in flight (~5 ms of
# applying). The commit is a chain of round trips and COPY writes paused by the socket's flow
# control, each resumed only when the loop gets a turn: applying a whole read (5,000 records,
# 40-90 ms) at once held every step of the commit up that long, and PostgreSQL waited.
APPLY_SLICE_RECORDS = 500
# A full collection of the cyclic GC at most once per this many collections of the middle
# generation (CPython's default is 10). The objects of a batch live for its commit, so they
# are promoted before they die (by reference count: nothing of a batch is in a cycle), and every
# full collection rescans them with the state built since the load: at the default, 18 full
# collections of ~22 ms in a 200,000-event run, 8 % of the allocator's CPU; at 100, 2. Cyclic
# garbage is still collected, by the young collections or a later full one.
GC_FULL_AFTER = 100


class PartitionAllocator:
    """Writer (or standby) for one log partition."""

    def __init__(
        self,
        log_: ports.EventLog,
        projection: ports.Projection,
        partition: int,
        *,
        settings: LoopSettings | None = None,
        sink: ports.DecisionSink | None = None,
        metrics: Metrics | None = None,
        on_commit: Callable[[ports.Batch], None] | None = None,
    ) -> None:
        self.log = log_
        self.projection = projection
        self.partition = partition
        self.settings = settings or LoopSettings()
        self.sink = sink
        self.metrics = metrics or Metrics()
        self.metrics.leader.setdefault(partition, False)
        self.on_commit = on_commit
        # The state while leading, for the pool gauges read at scrape time (service.metrics);
        # None while standing by or reloading, so that a dropped state is really freed.
        self.state: state.State | None = None
        self._committed = anyio.Event()
        self._last_renew = time.monotonic()
        # The log's partition count, checked against the projection each time it leads.
        self._partitions = 0
        # The partition's Merkle tree, loaded and dropped with the state (None: the tree off).
        self._tree: merkle.Tree | None = None
        # The consumer group position (lag monitoring, ``_report_positions``): the latest
        # committed next offset, the last one reported, and a commit landed since.
        self._position_wanted = 0
        self._position_reported = 0
        self._position_changed = anyio.Event()

    async def run(self, stop: anyio.Event) -> None:
        """Lead or stand by until ``stop`` is set; never returns early on bad input.

        The leader loop (``service.leadership``) over the partition's writer lease: a log or
        database failure backs off and starts again from the committed state; a lost lease
        stands by again at once.
        """
        settings = self.settings
        await leadership.hold(
            _WriterLease(self),
            stop,
            leadership.Pacing(
                poll_s=settings.lease_poll_s,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
            ),
            retry_on=(errors.LogError, errors.ProjectionError),
        )

    async def _lead(self, token: int, stop: anyio.Event) -> None:
        try:
            # A ConfigurationError from these checks ends run(): retrying cannot fix it.
            self._partitions = await batches.check_partition_count(self.log, self.projection)
            current, next_offset = await self._load(token)
            batches.check_homes(current, self.partition, self._partitions)
            log.info(
                "partition %d: state loaded, continuing at offset %d", self.partition, next_offset
            )
            while True:
                failed = await self._lead_batches(
                    token, stop, current, next_offset, time.monotonic()
                )
                if failed is None:
                    return
                # The state is ahead of the database by the batch that failed (and maybe the
                # one applied after it): drop it before reloading, or two full states would
                # be held at once.
                del current
                self.state = None
                found = await self._isolate(token, stop, failed)
                if found is None:
                    return
                current, next_offset = found
        except ExceptionGroup as group:
            # Helpers run beside the loop in task groups; surface their one failure as is.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self.state = None

    async def _load(self, token: int) -> tuple[state.State, int]:
        """The committed state and the offset after it, with the lease kept alive meanwhile."""
        self.state = None
        async with anyio.create_task_group() as tasks:
            # Loading millions of addresses can outlast the lease: keep it alive meanwhile,
            # or the first commit would find it expired and the writer would reload forever.
            tasks.start_soon(self._renew_forever, token)
            loaded = await self.projection.load([self.partition])
            # Millions of long-lived objects: keep the cyclic GC from rescanning them on
            # the hot path (a full collection over a 7 M address state pauses for ~1 s). A
            # state dropped later is still freed: it holds no cycles, so its reference counts
            # free it, frozen or not.
            gc.collect()
            gc.freeze()
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, GC_FULL_AFTER)
            tasks.cancel_scope.cancel()
        self._tree = None
        if self.settings.tree is not None:
            self._tree = await self._resume_tree(loaded.tree, loaded.next_offset)
        await self.projection.renew(self.partition, token)
        self._last_renew = time.monotonic()
        self.metrics.next_offset[self.partition] = loaded.next_offset
        self.state = loaded.state
        return loaded.state, loaded.next_offset

    async def _resume_tree(self, tree: merkle.Tree | None, next_offset: int) -> merkle.Tree:
        """The tree at ``next_offset`` leaves: the latest head's, extended over any offsets
        committed without the tree (before it existed, or while it was off).

        Those leaves are computed from the committed decisions and the log's records, exactly
        as the allocator would have, so the roots are the same as if the tree had always been on.
        """
        tree = tree.copy() if tree is not None else merkle.Tree()
        if tree.size > next_offset:
            raise errors.ProjectionError(
                f"partition {self.partition}: a tree head at {tree.size} records, beyond the "
                f"committed offset {next_offset}"
            )
        if tree.size == next_offset:
            return tree
        log.info(
            "partition %d: computing the Merkle tree's leaves %d-%d from the decisions and the log",
            self.partition,
            tree.size,
            next_offset - 1,
        )
        while tree.size < next_offset:
            want = min(self.settings.batch_max_records, next_offset - tree.size)
            rows = await self.projection.decisions_after(self.partition, tree.size, want)
            # Kafka has fetched nothing yet when first asked: a wait of its own.
            records = await self.log.read(self.partition, tree.size, len(rows), 5.0)
            for (offset, _, body), record in zip(rows, records, strict=False):
                if offset != tree.size or record.offset != offset:
                    raise errors.ProjectionError(
                        f"partition {self.partition}: no decision or record at offset "
                        f"{tree.size} to compute the Merkle tree from"
                    )
                tree.append(merkle.leaf_hash(body, record.value))
            if not rows or not records:
                raise errors.ProjectionError(
                    f"partition {self.partition}: no decision or record at offset {tree.size} "
                    "to compute the Merkle tree from"
                )
        return tree

    async def _renew_forever(self, token: int) -> None:
        while True:
            await anyio.sleep(self.settings.renew_every_s)
            await self.projection.renew(self.partition, token)

    async def _lead_batches(
        self,
        token: int,
        stop: anyio.Event,
        current: state.State,
        next_offset: int,
        last_renew: float,
    ) -> _FailedBatch | None:
        """Read, apply and commit, with one commit in flight while the next batch is applied.

        Applying is CPU in this process, committing is mostly waiting for PostgreSQL: doing
        them side by side nearly halves the time per event. Commits still land strictly in
        order, one at a time, and a failed commit fails the loop before anything after it is
        committed (the in-memory state, now ahead of the database, is then reloaded). A commit
        the database refused for its data is returned instead, to be taken apart.
        """
        self._last_renew = last_renew
        inflight: _InFlight | None = None
        async with anyio.create_task_group() as tasks:
            if self.sink is not None:
                tasks.start_soon(self._relay, token)
            tasks.start_soon(self._watch_log_end)
            tasks.start_soon(self._report_positions)
            try:
                while not stop.is_set():
                    records = await self.log.read(
                        self.partition,
                        next_offset,
                        self.settings.batch_max_records,
                        self.settings.batch_max_wait_s,
                    )
                    if not records:
                        # Nothing at next_offset: the log ends there (the lag is zero).
                        self.metrics.log_end[self.partition] = next_offset
                        if inflight is not None:
                            if (reason := await inflight.refused()) is not None:
                                return _FailedBatch(inflight.records, reason)
                            inflight = None
                        if time.monotonic() - self._last_renew >= self.settings.renew_every_s:
                            await self.projection.renew(self.partition, token)
                            self._last_renew = time.monotonic()
                        continue
                    if records[0].offset != next_offset:
                        raise errors.LogError(
                            f"partition {self.partition}: expected offset {next_offset}, "
                            f"the log returned {records[0].offset}"
                        )
                    # The batch's latest snapshot of each node, for all its parts.
                    snapshots: dict[tuple[str, str], dict[str, object] | None] = {}
                    batch = await self._apply(current, token, records, snapshots, rows=True)
                    if inflight is not None:
                        records = await self._group(
                            current, token, batch, records, inflight, snapshots
                        )
                    if inflight is not None and (reason := await inflight.refused()) is not None:
                        return _FailedBatch(inflight.records, reason)
                    inflight = _InFlight(records)
                    tasks.start_soon(self._commit, batch, inflight)
                    next_offset = batch.next_offset
                if inflight is not None and (reason := await inflight.refused()) is not None:
                    return _FailedBatch(inflight.records, reason)
            finally:
                tasks.cancel_scope.cancel()
        return None

    async def _group(
        self,
        current: state.State,
        token: int,
        batch: ports.Batch,
        records: Sequence[ports.Record],
        inflight: _InFlight,
        snapshots: dict[tuple[str, str], dict[str, object] | None],
    ) -> Sequence[ports.Record]:
        """While the commit before ``batch`` is still running, apply into ``batch`` what the log
        already holds after it (group commit); the records ``batch`` now covers.

        The time would otherwise be spent waiting for that commit, and the next commit costs
        less per event the more it groups (each node it changed is written once, addresses
        held and given back within it are never stored as current). Under a light load the
        commit is done first and nothing changes: a batch is committed as soon as it can be.
        Reads here wait for the log ``GROUP_POLL_S`` at most, so that a commit that is done is
        seen at once; they stop at ``batch_group_max_records``.
        """
        limit = self.settings.batch_group_max_records
        grouped: list[ports.Record] | None = None
        size = len(records)
        # Let the commit run first: one that is already done has nothing to wait for.
        await anyio.lowlevel.checkpoint()
        # Bounded in time as well: a commit's duration grows with its batch, and the lease is
        # extended only when a commit starts. On a starved machine (a tenth of a CPU) a group of
        # 40,000 records could take longer to commit than the lease lasts.
        until = time.monotonic() + GROUP_MAX_S
        while not inflight.done.is_set() and size < limit and time.monotonic() < until:
            more = await self.log.read(
                self.partition,
                batch.next_offset,
                min(self.settings.batch_max_records, limit - size),
                GROUP_POLL_S,
            )
            if not more:
                continue
            if more[0].offset != batch.next_offset:
                raise errors.LogError(
                    f"partition {self.partition}: expected offset {batch.next_offset}, "
                    f"the log returned {more[0].offset}"
                )
            batches.extend(batch, await self._apply(current, token, more, snapshots, rows=False))
            if grouped is None:
                grouped = list(records)
            grouped.extend(more)
            size = len(grouped)
        if grouped is None:
            return records
        # The parts were applied without rows: one snapshot of what the whole group changed.
        batches.take_rows(batch, current)
        return grouped

    async def _apply(
        self,
        current: state.State,
        token: int,
        records: Sequence[ports.Record],
        snapshots: dict[tuple[str, str], dict[str, object] | None],
        *,
        rows: bool,
    ) -> ports.Batch:
        """``batches.apply_records`` over ``records``, in slices of ``APPLY_SLICE_RECORDS`` with a
        turn of the event loop after each, so that a commit in flight goes on meanwhile.

        The batch is the one applying them at once gives: the same decisions, changes and
        heads (only the last slice records the boundary head) and node history (``snapshots``,
        the batch's latest snapshot of each node, shared by every part of it); with ``rows``
        the rows are taken once, after the last slice.
        """
        step = APPLY_SLICE_RECORDS
        batch: ports.Batch | None = None
        for start in range(0, len(records), step):
            last = start + step >= len(records)
            part = batches.apply_records(
                current,
                records[start : start + step],
                self.partition,
                token,
                partitions=self._partitions,
                tree=self._tree,
                evidence=self.settings.tree,
                rows=False,
                head=last,
                snapshots=snapshots,
            )
            if batch is None:
                batch = part
            else:
                batches.extend(batch, part)
            if not last:
                await anyio.lowlevel.checkpoint()
        assert batch is not None
        if rows:
            batches.take_rows(batch, current)
        return batch

    async def _commit(self, batch: ports.Batch, handle: _InFlight) -> None:
        try:
            started = time.perf_counter()
            # A commit is never abandoned half way: either it lands with its offset, or it
            # fails and the state is reloaded.
            with anyio.CancelScope(shield=True):
                await self.projection.commit(batch)
            self._after_commit(batch, time.perf_counter() - started)
            self._last_renew = time.monotonic()
        except Exception as exc:  # handed to the loop, which decides
            handle.error = exc
            return
        finally:
            handle.done.set()
        # Reported by ``_report_positions``: the next commit need not wait for the broker.
        self._position_wanted = max(self._position_wanted, batch.next_offset)
        self._position_changed.set()

    async def _report_positions(self) -> None:
        """Publish the committed position as the consumer group's, for lag monitoring only.

        A task of its own beside the leading loop: a report is a broker round trip, which once
        stood in front of every next commit. One report at a time, always of the latest
        committed offset, and at most one per ``position_every_s``: commits landing meanwhile
        are reported together, next. While no partition is led (standing by, reloading, taking
        a refused batch apart) nothing is reported; the next lead reports where it is.
        """
        if not isinstance(self.log, ports.ReportsConsumerPosition):
            return
        while True:
            await self._position_changed.wait()
            self._position_changed = anyio.Event()
            offset = self._position_wanted
            if offset > self._position_reported:
                # aiokafka retries a group commit for as long as the broker is away.
                with anyio.move_on_after(self.settings.renew_every_s):
                    try:
                        await self.log.commit_consumer_offset(self.partition, offset)
                    except errors.LogError as exc:
                        log.debug("consumer group offset not committed: %s", exc)
                self._position_reported = offset
            await anyio.sleep(self.settings.position_every_s)

    def _after_commit(self, batch: ports.Batch, seconds: float) -> None:
        metrics = self.metrics
        metrics.batches_committed += 1
        metrics.commit_seconds += seconds
        metrics.commit_latency.observe(seconds)
        metrics.batch_records.observe(len(batch.applied))
        metrics.records_applied += len(batch.applied)
        by_class = metrics.events_applied
        rejected: list[ports.AppliedRecord] = []
        for applied in batch.applied:
            decision = applied.decision
            if applied.rejected:
                rejected.append(applied)
                continue
            kind = decision.type or reasons.UNKNOWN_TYPE  # always set on an applied event
            if decision.error is None:
                key = (kind, reasons.NONE)
            else:
                metrics.decisions_with_error += 1
                key = (kind, reasons.decision_class(kind, decision.error))
            by_class[key] = by_class.get(key, 0) + 1
        if rejected:
            self._count_rejected(rejected)
        metrics.next_offset[self.partition] = batch.next_offset
        self._committed.set()
        self._committed = anyio.Event()
        if self.on_commit is not None:
            self.on_commit(batch)

    def _count_rejected(self, rejected: Sequence[ports.AppliedRecord]) -> None:
        """Count the batch's rejected records by class, and log the first ones."""
        metrics = self.metrics
        by_class = metrics.events_rejected
        for number, applied in enumerate(rejected):
            decision = applied.decision
            metrics.records_rejected += 1
            if applied.wrong_partition:
                metrics.records_wrong_partition += 1
            kind = reasons.rejection_class(decision.error, wrong_partition=applied.wrong_partition)
            key = (reasons.type_label(decision.type), kind)
            by_class[key] = by_class.get(key, 0) + 1
            if number < LOGGED_REJECTIONS_PER_BATCH:
                log.warning(
                    "partition %d: offset %d rejected (%s): %s",
                    self.partition,
                    applied.record.offset,
                    kind,
                    decision.error,
                    extra=event_fields(self.partition, applied),
                )
        if len(rejected) > LOGGED_REJECTIONS_PER_BATCH:
            log.warning(
                "partition %d: %d more records rejected up to offset %d (counted in "
                "ipledger_events_rejected_total, kept in the rejections table)",
                self.partition,
                len(rejected) - LOGGED_REJECTIONS_PER_BATCH,
                rejected[-1].record.offset,
                extra={"partition": self.partition},
            )

    async def _watch_log_end(self) -> None:
        """Keep ``Metrics.log_end`` fresh while leading: the lag metric, monitoring only.

        Never fails the loop: a log that cannot say where it ends now is asked again later
        (the loop's own reads find out soon enough if the log is really gone).
        """
        while True:
            with anyio.move_on_after(self.settings.lag_poll_s):
                try:
                    end = await self.log.end_offset(self.partition)
                except errors.LogError as exc:
                    log.debug("partition %d: end offset not read: %s", self.partition, exc)
                else:
                    log_end = self.metrics.log_end
                    log_end[self.partition] = max(end, log_end.get(self.partition, 0))
            await anyio.sleep(self.settings.lag_poll_s)

    async def _isolate(
        self, token: int, stop: anyio.Event, failed: _FailedBatch
    ) -> tuple[state.State, int] | None:
        """Commit a batch the database refused part by part, rejecting the records it cannot store.

        Retrying the batch would fail the same way forever and stop every cluster of the
        partition. Instead, from the committed state, the batch is split into parts committed
        in log order: a part that lands is done, a part that fails is split again, and a single
        record that fails is committed as a rejection that applies nothing (as a record that
        does not decode). Commits here run one at a time and renew the lease as usual; the
        reloads keep it alive as the first load does. Returns the state and next offset to
        continue from, or None when ``stop`` was set meanwhile (the rest of the batch is
        then taken apart again by the next writer: what was committed stays committed).
        """
        log.warning(
            "partition %d: the projection refused the batch at offsets %d-%d (%s); "
            "committing it in parts to find the records it cannot store",
            self.partition,
            failed.records[0].offset,
            failed.records[-1].offset,
            failed.reason,
        )
        # Each part with the database's reason when it has already failed.
        pending: collections.deque[tuple[Sequence[ports.Record], str | None]] = collections.deque(
            [(failed.records, failed.reason)]
        )
        current: state.State | None = None
        committed = self.metrics.batches_committed
        commit_s = self.metrics.commit_seconds / committed if committed else 0.0
        while pending:
            if stop.is_set():
                return None
            part, reason = pending.popleft()
            if reason is None:
                assert current is not None
                started = time.perf_counter()
                reason = await self._commit_now(
                    batches.apply_records(
                        current,
                        part,
                        self.partition,
                        token,
                        partitions=self._partitions,
                        tree=self._tree,
                        evidence=self.settings.tree,
                    )
                )
                commit_s = time.perf_counter() - started
                if reason is None:
                    continue
            # Ahead of the database by the part that failed: dropped before reloading, so
            # that two full states are never held at once.
            current = None
            started = time.perf_counter()
            current, next_offset = await self._load(token)
            reload_s = time.perf_counter() - started
            if next_offset != part[0].offset:
                raise errors.ProjectionError(
                    f"partition {self.partition}: the projection is at offset {next_offset}, "
                    f"expected {part[0].offset}"
                )
            if len(part) == 1:
                await self._commit_unstorable(current, token, part[0], reason)
                continue
            parts = batches.split(part, batches.ways(len(part), reload_s, commit_s))
            pending.extendleft((piece, None) for piece in reversed(parts))
        assert current is not None
        return current, failed.records[-1].offset + 1

    async def _commit_now(self, batch: ports.Batch) -> str | None:
        """Commit without pipelining: None once it landed, the reason if the data was refused."""
        handle = _InFlight([applied.record for applied in batch.applied])
        await self._commit(batch, handle)
        return await handle.refused()

    async def _commit_unstorable(
        self, current: state.State, token: int, record: ports.Record, reason: str
    ) -> None:
        fields = {"partition": self.partition, "offset": record.offset}
        log.error(
            "partition %d: offset %d cannot be stored by the projection (%s); rejected",
            self.partition,
            record.offset,
            reason,
            extra=fields,
        )
        # The rejection's leaf goes into a copy: a refused rejection leaves the tree as it was.
        before = self._tree.copy() if self._tree is not None else None
        refused = await self._commit_now(
            batches.rejection_batch(
                current,
                token,
                record,
                batches.unstorable_record(record, reason),
                tree=self._tree,
                evidence=self.settings.tree,
            )
        )
        if refused is not None:
            # Should not happen: nothing of the record's own is in that rejection but its key
            # and bytes (bytea, which holds any bytes), the database's reason (escaped) and a
            # printable ASCII cluster name. Try once more with the offset, the raw bytes and a
            # fixed reason only. If even that is refused, the database refuses a row made of
            # constants: the fault is the database's (a constraint or trigger added to the
            # decision or rejection table), not the record's, and it is handled as a database
            # outage: the loop backs off and retries from the committed state until it is
            # fixed. Skipping the record instead would leave an offset without a decision and
            # make the projection disagree with every replay of the log.
            log.error(
                "partition %d: offset %d: the projection refused its rejection too (%s); "
                "storing the raw record with a fixed reason",
                self.partition,
                record.offset,
                refused,
                extra=fields,
            )
            bare = msgspec.structs.replace(record, key=None)
            self._tree = before
            refused = await self._commit_now(
                batches.rejection_batch(
                    current,
                    token,
                    bare,
                    batches.unstorable_record(bare, None),
                    tree=self._tree,
                    evidence=self.settings.tree,
                )
            )
            if refused is not None:
                raise errors.ProjectionError(
                    f"partition {self.partition}: offset {record.offset} cannot be stored even "
                    f"as a bare rejection ({refused}); the database refuses constant rows"
                )
        self.metrics.records_unstorable += 1

    async def _relay(self, token: int) -> None:
        """Publish committed decisions in offset order (transactional outbox, at least once)."""
        assert self.sink is not None
        position = await self.projection.outbox_offset(self.partition)
        failures = 0
        while True:
            try:
                rows = await self.projection.decisions_after(
                    self.partition, position, self.settings.relay_batch
                )
                if rows:
                    upto = rows[-1][0] + 1
                    # Each head after the decisions it covers.
                    heads = await self.projection.heads_between(self.partition, position, upto)
                    await self.sink.publish(
                        [_published(self.partition, row) for row in rows]
                        + [_published_head(head) for head in heads]
                    )
                    position = upto
                    await self.projection.advance_outbox(self.partition, token, position)
                    self.metrics.decisions_published += len(rows)
                    failures = 0
                    continue
            except errors.FencedError:
                return  # the loop finds out at its next commit
            except (errors.LogError, errors.ProjectionError) as exc:
                failures += 1
                log.warning("partition %d: decisions not published yet: %s", self.partition, exc)
                # The relay's own schedule: 0.4 s after the first failure, doubling.
                await anyio.sleep(
                    backoff.delay(failures, initial_s=0.4, max_s=self.settings.backoff_max_s)
                )
                continue
            with anyio.move_on_after(1.0):
                await self._committed.wait()


class _WriterLease:
    """The partition's writer lease as the leader loop takes, leads and gives it up."""

    def __init__(self, allocator: PartitionAllocator) -> None:
        # Made by each run(): the allocator's partition and counters do not change meanwhile.
        self._allocator = allocator
        self._partition = allocator.partition
        self._metrics = allocator.metrics

    async def try_acquire(self) -> int | None:
        return await self._allocator.projection.try_acquire(self._partition)

    def standing_by(self, first: bool) -> None:
        if first:
            log.info("partition %d: another allocator leads; standing by", self._partition)

    async def lead(self, token: int, stop: anyio.Event) -> None:
        self._metrics.takeovers += 1
        self._metrics.leader[self._partition] = True
        log.info("partition %d: leading with lease token %d", self._partition, token)
        await self._allocator._lead(token, stop)

    def fenced(self, exc: errors.FencedError) -> None:
        self._metrics.fenced += 1
        log.warning("partition %d: %s; standing by", self._partition, exc)

    def failed(self, exc: Exception, delay: float) -> None:
        self._metrics.failures += 1
        log.warning(
            "partition %d: %s; retrying from the committed state in %.1fs",
            self._partition,
            exc,
            delay,
        )

    def stepped_down(self) -> None:
        self._metrics.leader[self._partition] = False

    def progress(self) -> object:
        # Committed since the last failure: a new fault, not the same one lasting.
        return self._metrics.next_offset.get(self._partition)

    async def release(self, token: int) -> None:
        try:
            await self._allocator.projection.release(self._partition, token)
        except errors.IpledgerError as exc:
            log.warning("partition %d: could not release the lease: %s", self._partition, exc)


class _InFlight:
    """The outcome of the one commit running beside the loop, and the records it commits."""

    def __init__(self, records: Sequence[ports.Record]) -> None:
        self.records = records
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def refused(self) -> str | None:
        """Wait for the commit: None once it landed, the database's reason if it refused the
        batch's data; any other failure is raised."""
        await self.done.wait()
        error, self.error = self.error, None
        if isinstance(error, errors.ProjectionDataError):
            # Only the text: the exception's traceback holds the batch, and so the whole state.
            return error.reason
        if error is not None:
            raise error
        return None


@dataclass(frozen=True, slots=True)
class _FailedBatch:
    """A batch whose commit the database refused for the data in it, and the reason."""

    records: Sequence[ports.Record]
    reason: str


# The key of a tree head on the decisions topic (a decision's key is its event id).
HEAD_KEY = b"ipledger.tree-head"


def _published_head(head: ports.RecordedHead) -> tuple[bytes, bytes]:
    """Key ``HEAD_KEY``; value ``{"partition": P, "treeHead": {...}}`` (docs/audits.md)."""
    return HEAD_KEY, b'{"partition":%d,"treeHead":%s}' % (head.head.partition, head.body)


def event_fields(partition: int, applied: ports.AppliedRecord) -> dict[str, object]:
    """The ``extra`` of a log line about one record: what finds it in the log and the tables.

    The JSON log format (``service.logs``) writes each as a field of its own; the cluster and
    event id are the decision's, None when the record did not carry valid ones.
    """
    return {
        "cluster": applied.decision.cluster,
        "partition": partition,
        "offset": applied.record.offset,
        "event_id": applied.decision.id,
    }


def _published(partition: int, row: tuple[int, str | None, bytes]) -> tuple[bytes, bytes]:
    """Key = event id; value = the decision with its log position, for de-duplication."""
    offset, event_id, body = row
    value = b'{"partition":%d,"offset":%d,' % (partition, offset) + body[1:]
    return (event_id or "").encode(), value
