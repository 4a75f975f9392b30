"""The single-writer allocator loop: read a batch from the log, apply it, commit it with its offset.

Run by ``ipledger run`` (wired in ``service.bootstrap``), one ``PartitionAllocator`` per log
partition, so different partitions (and the clusters on them) can be spread over processes. Each
one is either the writer of its partition or a hot standby waiting for the writer's lease.

As the writer it loads the state from the projection, then repeats: read up to N records (waiting
at most T for the first), apply them in log order with the pure core, and commit every change,
decision, rejection and the next offset in ONE PostgreSQL transaction. Because the offset moves
only with the state it produced, a crash at any point (``kill -9``) loses nothing and applies
nothing twice: the next writer loads the last committed state and continues after its offset.
Any failure of the log or the database drops the in-memory state, backs off and starts again
from what is committed. The loop never raises on input: every record gets a decision.
"""

from __future__ import annotations

import datetime
import gc
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio

from service import errors, ports
from service.domain import allocation, events, restore, state

log = logging.getLogger("ipledger.allocator")
UTC = datetime.UTC


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop batches, leases and retries."""

    batch_max_records: int = 5000
    batch_max_wait_s: float = 0.05
    lease_poll_s: float = 1.0
    renew_every_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    relay_batch: int = 2000


@dataclass(slots=True)
class Metrics:
    """Counters of one allocator process (exported by the metrics endpoint)."""

    records_applied: int = 0
    records_rejected: int = 0
    decisions_with_error: int = 0
    batches_committed: int = 0
    commit_seconds: float = 0.0
    takeovers: int = 0
    fenced: int = 0
    failures: int = 0
    decisions_published: int = 0
    next_offset: dict[int, int] = field(default_factory=dict)
    leader: dict[int, bool] = field(default_factory=dict)


@runtime_checkable
class ReportsConsumerPosition(Protocol):
    """A log that can also record the consumed position for lag monitoring (Kafka groups)."""

    async def commit_consumer_offset(self, partition: int, offset: int) -> None: ...


class LoadableProjection(ports.Projection, Protocol):
    async def load(self, partitions: Sequence[int] | None = None) -> _Loaded: ...

    async def decisions_after(
        self, partition: int, start: int, limit: int
    ) -> list[tuple[int, str | None, bytes]]: ...

    async def outbox_offset(self, partition: int) -> int: ...

    async def advance_outbox(self, partition: int, token: int, next_offset: int) -> None: ...


class _Loaded(Protocol):
    @property
    def state(self) -> state.State: ...

    @property
    def next_offset(self) -> int: ...


def apply_records(
    current: state.State, records: Sequence[ports.Record], partition: int, token: int
) -> ports.Batch:
    """Apply ``records`` in order to ``current`` and collect what the projection must write.

    A record whose key is not the event's cluster is refused without being applied: keys place
    a cluster's events on one partition, so a mismatch means the producer broke the ordering
    contract.
    """
    batch = ports.Batch(
        partition=partition, token=token, next_offset=records[-1].offset + 1, state=current
    )
    seen_ips: dict[str, int] = {
        name: len(c.changes.ips) for name, c in current.clusters.items() if c.changes is not None
    }
    fallback_time = datetime.datetime.now(UTC)
    last_ms: int | None = None
    log_time: datetime.datetime | None = None
    for record in records:
        # Records appended together share a timestamp: convert each distinct one once.
        if record.timestamp_ms != last_ms:
            last_ms = record.timestamp_ms
            log_time = (
                None if last_ms is None else datetime.datetime.fromtimestamp(last_ms / 1000, UTC)
            )
        event = events.decode(record.value)
        rejected = False
        if isinstance(event, events.DecodeFailure):
            decision = events.Decision(
                id=event.id, type=event.type, cluster=event.cluster, error=event.reason
            )
            rejected = True
            event_time = None
        elif record.key != event.cluster.encode():
            shown = record.key.decode("utf-8", "replace")[:64] if record.key is not None else None
            decision = events.Decision(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=f"record key {shown!r} does not match the event's cluster {event.cluster!r}",
            )
            rejected = True
            event_time = event.time
        else:
            decision = allocation.apply(current, event)
            event_time = event.time
            cluster = current.clusters.get(event.cluster)
            if cluster is not None and cluster.changes is not None:
                held = len(cluster.changes.ips)
                before = seen_ips.get(cluster.name, 0)
                if held > before:
                    when = event_time or log_time or fallback_time
                    batch.ip_times.setdefault(cluster.name, []).extend(
                        [(record.offset, when)] * (held - before)
                    )
                    seen_ips[cluster.name] = held
        batch.applied.append(
            ports.AppliedRecord(
                record=record,
                decision=decision,
                body=events.encode_decision(decision),
                event_time=event_time,
                log_time=log_time,
                rejected=rejected,
            )
        )
    for name, cluster in current.clusters.items():
        changes = cluster.changes
        if changes is not None and (changes.nodes or changes.pool or changes.ips):
            batch.changes[name] = cluster.take_changes()
            batch.ip_times.setdefault(name, [])
            batch.cluster_rows[name] = restore.cluster_row(cluster)
            batch.node_rows[name] = {
                node: restore.node_row(cluster.nodes[node]) if node in cluster.nodes else None
                for node in sorted(changes.nodes)
            }
    return batch


class PartitionAllocator:
    """Writer (or standby) for one log partition."""

    def __init__(
        self,
        log_: ports.EventLog,
        projection: LoadableProjection,
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
        self.on_commit = on_commit
        self._committed = anyio.Event()
        self._last_renew = time.monotonic()

    async def run(self, stop: anyio.Event) -> None:
        """Lead or stand by until ``stop`` is set; never returns early on bad input."""
        failures = 0
        while not stop.is_set():
            token = None
            committed = self.metrics.next_offset.get(self.partition)
            try:
                token = await self._acquire(stop)
                if token is None:
                    return
                self.metrics.takeovers += 1
                self.metrics.leader[self.partition] = True
                log.info("partition %d: leading with lease token %d", self.partition, token)
                await self._lead(token, stop)
                failures = 0
            except errors.FencedError as exc:
                self.metrics.fenced += 1
                log.warning("partition %d: %s; standing by", self.partition, exc)
            except (errors.LogError, errors.ProjectionError) as exc:
                if self.metrics.next_offset.get(self.partition) != committed:
                    # It committed since the last failure: a new fault, not the same one lasting,
                    # so the backoff starts short again instead of staying at its maximum.
                    failures = 0
                failures += 1
                self.metrics.failures += 1
                delay = min(
                    self.settings.backoff_max_s,
                    self.settings.backoff_initial_s * math.pow(2, failures - 1),
                ) * random.uniform(0.5, 1.0)
                log.warning(
                    "partition %d: %s; retrying from the committed state in %.1fs",
                    self.partition,
                    exc,
                    delay,
                )
                with anyio.move_on_after(delay):
                    await stop.wait()
            finally:
                self.metrics.leader[self.partition] = False
            if stop.is_set() and token is not None:
                await self._release(token)

    async def _acquire(self, stop: anyio.Event) -> int | None:
        announced = False
        while not stop.is_set():
            token = await self.projection.try_acquire(self.partition)
            if token is not None:
                return token
            if not announced:
                log.info("partition %d: another allocator leads; standing by", self.partition)
                announced = True
            with anyio.move_on_after(self.settings.lease_poll_s):
                await stop.wait()
        return None

    async def _release(self, token: int) -> None:
        try:
            await self.projection.release(self.partition, token)
        except errors.IpledgerError as exc:
            log.warning("partition %d: could not release the lease: %s", self.partition, exc)

    async def _lead(self, token: int, stop: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                # Loading millions of addresses can outlast the lease: keep it alive meanwhile,
                # or the first commit would find it expired and the writer would reload forever.
                tasks.start_soon(self._renew_forever, token)
                loaded = await self.projection.load([self.partition])
                current, next_offset = loaded.state, loaded.next_offset
                # Millions of long-lived objects: keep the cyclic GC from rescanning them on
                # the hot path (a full collection over a 7 M address state pauses for ~1 s).
                gc.collect()
                gc.freeze()
                tasks.cancel_scope.cancel()
            await self.projection.renew(self.partition, token)
            self.metrics.next_offset[self.partition] = next_offset
            log.info(
                "partition %d: state loaded, continuing at offset %d", self.partition, next_offset
            )
            await self._lead_batches(token, stop, current, next_offset, time.monotonic())
        except ExceptionGroup as group:
            # Helpers run beside the loop in task groups; surface their one failure as is.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

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
    ) -> None:
        """Read, apply and commit, with one commit in flight while the next batch is applied.

        Applying is CPU in this process, committing is mostly waiting for PostgreSQL: doing
        them side by side nearly halves the time per event. Commits still land strictly in
        order, one at a time, and a failed commit fails the loop before anything after it is
        committed (the in-memory state, now ahead of the database, is then reloaded).
        """
        self._last_renew = last_renew
        inflight: _InFlight | None = None
        async with anyio.create_task_group() as tasks:
            if self.sink is not None:
                tasks.start_soon(self._relay, token)
            try:
                while not stop.is_set():
                    records = await self.log.read(
                        self.partition,
                        next_offset,
                        self.settings.batch_max_records,
                        self.settings.batch_max_wait_s,
                    )
                    if not records:
                        if inflight is not None:
                            await inflight.result()
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
                    batch = apply_records(current, records, self.partition, token)
                    if inflight is not None:
                        await inflight.result()
                    inflight = _InFlight()
                    tasks.start_soon(self._commit, batch, inflight)
                    next_offset = batch.next_offset
                if inflight is not None:
                    await inflight.result()
            finally:
                tasks.cancel_scope.cancel()

    async def _commit(self, batch: ports.Batch, handle: _InFlight) -> None:
        try:
            started = time.perf_counter()
            # A commit is never abandoned half way: either it lands with its offset, or it
            # fails and the state is reloaded.
            with anyio.CancelScope(shield=True):
                await self.projection.commit(batch)
            self._after_commit(batch, time.perf_counter() - started)
            self._last_renew = time.monotonic()
            if isinstance(self.log, ReportsConsumerPosition):
                # Lag monitoring only, so it may not hold the loop (and the lease renewed by
                # commits) up: aiokafka retries a group commit for as long as the broker is away.
                with anyio.move_on_after(self.settings.renew_every_s):
                    try:
                        await self.log.commit_consumer_offset(self.partition, batch.next_offset)
                    except errors.LogError as exc:
                        log.debug("consumer group offset not committed: %s", exc)
        except Exception as exc:  # handed to the loop, which decides
            handle.error = exc
        finally:
            handle.done.set()

    def _after_commit(self, batch: ports.Batch, seconds: float) -> None:
        metrics = self.metrics
        metrics.batches_committed += 1
        metrics.commit_seconds += seconds
        metrics.records_applied += len(batch.applied)
        for applied in batch.applied:
            if applied.rejected:
                metrics.records_rejected += 1
            elif applied.decision.error is not None:
                metrics.decisions_with_error += 1
        metrics.next_offset[self.partition] = batch.next_offset
        self._committed.set()
        self._committed = anyio.Event()
        if self.on_commit is not None:
            self.on_commit(batch)

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
                    await self.sink.publish([_published(self.partition, row) for row in rows])
                    position = rows[-1][0] + 1
                    await self.projection.advance_outbox(self.partition, token, position)
                    self.metrics.decisions_published += len(rows)
                    failures = 0
                    continue
            except errors.FencedError:
                return  # the loop finds out at its next commit
            except (errors.LogError, errors.ProjectionError) as exc:
                failures += 1
                log.warning("partition %d: decisions not published yet: %s", self.partition, exc)
                await anyio.sleep(min(self.settings.backoff_max_s, 0.2 * 2**failures))
                continue
            with anyio.move_on_after(1.0):
                await self._committed.wait()


class _InFlight:
    """The outcome of the one commit running beside the loop."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def result(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


def _published(partition: int, row: tuple[int, str | None, bytes]) -> tuple[bytes, bytes]:
    """Key = event id; value = the decision with its log position, for de-duplication."""
    offset, event_id, body = row
    value = b'{"partition":%d,"offset":%d,' % (partition, offset) + body[1:]
    return (event_id or "").encode(), value
