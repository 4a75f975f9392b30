"""The Kubernetes sync worker (``ipledger sync``): makes every CiliumNode agree with the projection.

Its own process, beside the allocator and never in its path: it reads what the allocator
committed to PostgreSQL and writes Kubernetes, and the allocator waits for neither. Started by
``service.cli`` (``cmd_sync``) with adapters from ``service.bootstrap``; one ``ClusterSync`` per
ipledger cluster, each bound to the Kubernetes cluster that cluster maps to.

A ``ClusterSync`` first waits for its cluster's lock (one instance at a time; a second one waits
and takes over when the first stops or loses its database session), then leads:

- the **feed** reads the nodes whose version is newer than the one recorded in ``node_sync``
  (or that have no record), woken by ``LISTEN ipledger_nodes`` with a fallback poll, and offers
  them to the mirror;
- the **mirror** keeps one pending write per node, the latest state winning (``NodeQueue``), and
  never two writes of one node at once; its writers apply ``spec.ipam.podCIDRs`` (and with
  ``mirror_pod_ips`` the pod addresses) and ``status.ipam.operator-status.error`` through a
  ``ports.ClusterClient``, at a QPS and burst shared by every request (``TokenBucket``), and
  back off exponentially on 429, 5xx and timeouts, honouring ``Retry-After``;
- the **flusher** records each mirrored version in ``node_sync``, so a restart redoes at most
  the writes that were in flight or not yet recorded (applies are idempotent);
- the **resync** lists the CiliumNodes at start and every ``resync_interval_s`` and compares them
  with every node: a hand edit of ipledger's fields is put back and logged at WARNING.

Writes skip what is already true: the mirror keeps what it last saw of each CiliumNode (from the
listing and from every apply's answer), so a node change that does not change its CiliumNode
costs no request, and an error that is absent on the object is not written as "". That view is
at most one resync old for objects someone else changed.

Deleted nodes are left to Kubernetes' garbage collection (the agent's ownerReference to the v1
Node) unless ``delete_orphans``. A missing CiliumNode is created by the apply unless
``create_missing`` is off; then the node is recorded as waiting in ``node_sync.error`` and
written once the object appears (found by the resync, which runs every ``waiting_recheck_s``
while any node waits).

This module also plans ``ipledger adopt --from-kubernetes`` (``plan_adoption``): it turns
existing CiliumNodes into ``node.adopted`` events and reports those it cannot adopt. It never
writes the projection or the log itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
import anyio.abc

from service import errors, ports
from service.domain import events

log = logging.getLogger("ipledger.sync")

WAITING_FOR_CILIUMNODE = "waiting: no CiliumNode yet and creating it is turned off"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """How one cluster's worker paces, batches and retries (``Settings`` fills the public ones)."""

    qps: float = 20.0  # requests per second to the API server; 0: no limit
    burst: int = 40
    concurrency: int = 8  # writes in flight at once
    resync_interval_s: float = 300.0
    waiting_recheck_s: float = 10.0  # resync interval while any node waits for its CiliumNode
    poll_interval_s: float = 5.0  # fallback when a notification is lost
    create_missing: bool = True
    delete_orphans: bool = False
    mirror_pod_ips: bool = False
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0  # a larger Retry-After is taken as this
    lock_poll_s: float = 1.0
    lock_check_s: float = 2.0
    fetch_limit: int = 2000
    max_queued: int = 20_000  # the feed stops reading while this many writes are pending
    flush_interval_s: float = 0.1


@dataclass(slots=True)
class SyncMetrics:
    """Counters of one cluster's worker."""

    leader: bool = False
    requests: int = 0
    applies: int = 0
    status_applies: int = 0
    deletes: int = 0
    gets: int = 0
    nodes_mirrored: int = 0  # outcomes recorded without error
    unchanged: int = 0  # node changes that needed no request
    coalesced: int = 0  # pending writes replaced by a newer state before being sent
    retries: int = 0
    throttled: int = 0
    rejected: int = 0
    waiting: int = 0  # nodes currently waiting for their CiliumNode
    drift_repairs: int = 0
    resyncs: int = 0
    takeovers: int = 0
    lock_waits: int = 0  # lock attempts that found another instance holding it
    fenced: int = 0
    request_seconds: float = 0.0


class SyncStore(Protocol):
    """What the worker needs from PostgreSQL (``adapters.postgres.sync_store`` implements it)."""

    async def try_lock(self, cluster: str) -> bool: ...

    async def unlock(self, cluster: str) -> None: ...

    async def check_lock(self, cluster: str) -> None: ...

    def change_count(self) -> int: ...

    async def wait_for_change(self, seen: int, timeout: float) -> None: ...

    async def record_synced(
        self, cluster: str, outcomes: Sequence[tuple[str, int, str | None]]
    ) -> None: ...

    async def changed_nodes(
        self, cluster: str, after: tuple[int, str], limit: int, *, with_pod_ips: bool
    ) -> list[ports.NodeIntent]: ...

    async def all_nodes(
        self, cluster: str, *, with_pod_ips: bool
    ) -> list[tuple[ports.NodeIntent, int | None, str | None]]: ...


# --- pacing ------------------------------------------------------------------------------------


class TokenBucket:
    """Requests per second with a burst, shared by every request of one API server.

    ``reserve`` hands out slots in call order: the tokens may go negative, each caller then waits
    its turn, so concurrent writers are served fairly without polling. ``pause_until`` (after a
    429 or a failure) stops everyone until then and empties the bucket, so the server that asked
    for a pause does not get a burst the moment it ends. ``rate`` 0 means no limit (pauses still
    apply).
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0 or burst < 1:
            raise errors.ConfigurationError("the rate must be >= 0 and the burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = -math.inf

    def reserve(self) -> float:
        """Take a slot; the seconds to wait before using it (0: now)."""
        now = self._clock()
        pause = max(0.0, self._paused_until - now)
        if self.rate == 0:
            return pause
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        self._tokens -= 1
        deficit = max(0.0, -self._tokens) / self.rate
        return max(0.0, self._stamp - now) + deficit

    def pause_until(self, moment: float) -> None:
        """Hand out nothing before ``moment`` (a clock reading) and restart with no tokens."""
        if moment <= self._paused_until:
            return
        self._paused_until = moment
        if self.rate:
            now = self._clock()
            if now > self._stamp:
                refilled = self._tokens + (now - self._stamp) * self.rate
                self._tokens = min(float(self.burst), refilled)
            # Reservations already handed out stay owed; no new token accrues before ``moment``.
            self._tokens = min(self._tokens, 0.0)
            self._stamp = max(self._stamp, moment)

    async def take(self) -> None:
        """Wait for a slot, and for any pause that began while waiting."""
        wait = self.reserve()
        if wait > 0:
            await anyio.sleep(wait)
        while (left := self._paused_until - self._clock()) > 0:
            await anyio.sleep(left)


def backoff_delay(
    failures: int,
    retry_after: float | None,
    settings: SyncSettings,
    jitter: float = 1.0,
) -> float:
    """Seconds to pause after ``failures`` failures in a row (1 = the first).

    Exponential from ``backoff_initial_s`` up to ``backoff_max_s``, scaled by ``jitter`` (callers
    pass a random factor in [0.5, 1] so that many workers do not retry in step), and never less
    than the server's ``Retry-After`` (itself capped at ``retry_after_max_s``).
    """
    exponential = min(
        settings.backoff_max_s, settings.backoff_initial_s * math.pow(2, max(0, failures - 1))
    )
    asked = min(retry_after, settings.retry_after_max_s) if retry_after is not None else 0.0
    return max(exponential * jitter, asked)


# --- coalescing ---------------------------------------------------------------------------------


class NodeQueue:
    """Pending CiliumNode writes: one per node, the latest state winning, one in flight per node.

    ``offer`` stores a node's intent (replacing an older pending one: that is the coalescing);
    ``take`` hands the oldest ready node to a writer and marks it in flight; ``done`` or
    ``retry`` end the flight. A node offered while in flight is held back until the flight
    ends, so two writes of one node never race. Versions only grow, so an offer older than what
    was last written (or is pending, or in flight) is stale and dropped. Not thread-safe; no I/O.
    """

    def __init__(self) -> None:
        self._pending: dict[str, ports.NodeIntent] = {}
        self._ready: deque[str] = deque()
        self._in_flight: dict[str, ports.NodeIntent] = {}
        self._written: dict[str, int] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def offer(self, intent: ports.NodeIntent, *, repair: bool = False) -> bool:
        """Queue ``intent``; False when it was dropped as stale or redundant.

        A ``repair`` (from a resync) may rewrite the version already written, but is dropped
        when a write of the node is pending or in flight anyway.
        """
        name = intent.name
        written = self._written.get(name, -1)
        if intent.version < written or (intent.version == written and not repair):
            return False
        flying = self._in_flight.get(name)
        if repair and (flying is not None or name in self._pending):
            return False
        # The version in flight is being written already: the same one again would be a
        # second write of the same state (the feed and the first resync both offer new nodes).
        if flying is not None and intent.version <= flying.version:
            return False
        current = self._pending.get(name)
        if current is not None:
            if intent.version < current.version:
                return False
            self._pending[name] = intent
            self.coalesced += 1
            return True
        self._pending[name] = intent
        if flying is None:
            self._ready.append(name)
        return True

    def take(self) -> ports.NodeIntent | None:
        """The next node to write (now in flight), or None when none is ready."""
        while self._ready:
            name = self._ready.popleft()
            intent = self._pending.pop(name, None)
            if intent is not None and name not in self._in_flight:
                self._in_flight[name] = intent
                return intent
        return None

    def done(self, intent: ports.NodeIntent) -> None:
        """The flight of ``intent`` ended with its state made true (or recorded as failed)."""
        name = intent.name
        self._in_flight.pop(name, None)
        self._written[name] = max(self._written.get(name, -1), intent.version)
        if name in self._pending:
            self._ready.append(name)

    def retry(self, intent: ports.NodeIntent) -> None:
        """The flight of ``intent`` failed and must be tried again (first in line)."""
        name = intent.name
        self._in_flight.pop(name, None)
        if name not in self._pending:
            self._pending[name] = intent
        self._ready.appendleft(name)


def spec_matches(intent: ports.NodeIntent, observed: ports.ObservedNode, mirror_pods: bool) -> bool:
    """Whether the CiliumNode's spec already holds what ipledger would apply."""
    if observed.pod_cidrs != tuple(str(c) for c in intent.pod_cidrs):
        return False
    if not mirror_pods:
        return True
    wanted = intent.pod_ips or {}
    pool = {str(a): o for a, o in wanted.items() if a.version == 4}
    ipv6_pool = {str(a): o for a, o in wanted.items() if a.version == 6}
    # An empty map and an absent one say the same: no addresses.
    return dict(observed.pool or {}) == pool and dict(observed.ipv6_pool or {}) == ipv6_pool


def error_matches(intent: ports.NodeIntent, observed: ports.ObservedNode) -> bool:
    """Whether the status error already says what the node's error says ("" = none = absent)."""
    return (observed.error or "") == (intent.error or "")


# --- the mirror: writes of one cluster -----------------------------------------------------------


class Mirror:
    """The queue, the writers and the last-seen CiliumNodes of one cluster, for one lead.

    ``run_writers`` starts ``concurrency`` writers; each takes the next ready node, makes its
    CiliumNode true with as few requests as the last-seen object allows, and reports the
    outcome to ``on_outcome`` ``(name, version, error or None)``. Retryable failures pause
    every request of the cluster (the bucket) and put the node back first in line.
    """

    def __init__(
        self,
        cluster: str,
        client: ports.ClusterClient,
        settings: SyncSettings,
        *,
        bucket: TokenBucket | None = None,
        metrics: SyncMetrics | None = None,
        on_outcome: Callable[[str, int, str | None], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.settings = settings
        self.bucket = bucket or TokenBucket(settings.qps, settings.burst)
        self.metrics = metrics or SyncMetrics()
        self.on_outcome = on_outcome
        self.queue = NodeQueue()
        self.observed: dict[str, ports.ObservedNode] = {}
        self.waiting: set[str] = set()
        self._touched: set[str] = set()  # names written since the current listing began
        self._work = anyio.Event()
        self._room = anyio.Event()
        self._failures = 0

    # --- feeding it ---------------------------------------------------------------------------

    def offer(self, intent: ports.NodeIntent, *, repair: bool = False) -> bool:
        accepted = self.queue.offer(intent, repair=repair)
        self.metrics.coalesced = self.queue.coalesced
        if accepted:
            self._wake()
        return accepted

    async def wait_for_room(self) -> None:
        """Return once fewer than ``max_queued`` writes are pending."""
        while len(self.queue) >= self.settings.max_queued:
            await self._room.wait()

    def begin_listing(self) -> None:
        """A listing starts: objects written from now on are newer than what it will return."""
        self._touched = set()

    def replace_observed(self, listed: Sequence[ports.ObservedNode]) -> None:
        """Take a listing as the last-seen state, except for objects written since it began."""
        fresh = {node.name: node for node in listed}
        for name in self._touched:
            if name in self.observed:
                fresh[name] = self.observed[name]
            else:
                fresh.pop(name, None)
        self.observed = fresh

    def idle(self) -> bool:
        """Nothing pending and nothing in flight."""
        return not len(self.queue) and not self.queue.in_flight

    # --- writing ------------------------------------------------------------------------------

    async def run_writers(self) -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(self.settings.concurrency):
                tasks.start_soon(self._writer)

    async def _writer(self) -> None:
        while True:
            work = self._work
            intent = self.queue.take()
            if intent is None:
                await work.wait()
                continue
            if len(self.queue) < self.settings.max_queued:
                self._room.set()
                self._room = anyio.Event()
            try:
                outcome = await self._write(intent)
            except errors.ClusterApiNotFoundError as exc:
                # Deleted between two requests: what was seen of it is wrong; start over.
                self.observed.pop(intent.name, None)
                self._retry(intent, exc)
                continue
            except errors.ClusterApiUnavailableError as exc:
                self._retry(intent, exc)
                continue
            except errors.ClusterApiError as exc:
                self.metrics.rejected += 1
                log.error(
                    "cluster %s: CiliumNode %s not written, and retrying would not help: %s",
                    self.cluster,
                    intent.name,
                    exc,
                )
                outcome = f"rejected: {exc}"
            self._succeeded()
            self.queue.done(intent)
            if outcome == WAITING_FOR_CILIUMNODE:
                self.waiting.add(intent.name)
            else:
                self.waiting.discard(intent.name)
            self.metrics.waiting = len(self.waiting)
            if outcome is None:
                self.metrics.nodes_mirrored += 1
            if self.on_outcome is not None:
                self.on_outcome(intent.name, intent.version, outcome)
            self._wake()

    async def _write(self, intent: ports.NodeIntent) -> str | None:
        """Make one CiliumNode true; the ``node_sync.error`` to record (None: mirrored)."""
        name = intent.name
        client = self.client
        if intent.deleted:
            # Only objects seen since the last listing: one that appeared later is not an
            # orphan of this deletion, and the next resync sees it anyway.
            if self.settings.delete_orphans and name in self.observed:
                deleted = await self._request("delete", client.delete_node(name))
                self.observed.pop(name, None)
                self._touched.add(name)
                if deleted:
                    log.info("cluster %s: deleted orphan CiliumNode %s", self.cluster, name)
            else:
                self.metrics.unchanged += 1
            return None
        observed = self.observed.get(name)
        if observed is None and not self.settings.create_missing:
            # The listing may be old: look before reporting the node as waiting.
            observed = await self._request("get", client.get_node(name))
            if observed is None:
                return WAITING_FOR_CILIUMNODE
            self._saw(observed)
        requests = 0
        mirror_pods = self.settings.mirror_pod_ips
        if observed is None or not spec_matches(intent, observed, mirror_pods):
            observed = await self._request(
                "apply",
                client.apply_pod_cidrs(
                    name, intent.pod_cidrs, pod_ips=intent.pod_ips if mirror_pods else None
                ),
            )
            self._saw(observed)
            requests += 1
        if not error_matches(intent, observed):
            observed = await self._request(
                "status", client.apply_status_error(name, intent.error or "")
            )
            self._saw(observed)
            requests += 1
        if not requests:
            self.metrics.unchanged += 1
        return None

    async def _request(self, verb: str, call: Coroutine[object, None, _T]) -> _T:
        """One API request: waits for its slot first; counts it."""
        try:
            await self.bucket.take()
        except BaseException:
            call.close()
            raise
        started = time.perf_counter()
        try:
            return await call
        finally:
            metrics = self.metrics
            metrics.request_seconds += time.perf_counter() - started
            metrics.requests += 1
            if verb == "apply":
                metrics.applies += 1
            elif verb == "status":
                metrics.status_applies += 1
            elif verb == "delete":
                metrics.deletes += 1
            else:
                metrics.gets += 1

    def _saw(self, observed: ports.ObservedNode) -> None:
        self.observed[observed.name] = observed
        self._touched.add(observed.name)

    def _retry(self, intent: ports.NodeIntent, exc: errors.ClusterApiError) -> None:
        self._failures += 1
        self.metrics.retries += 1
        if isinstance(exc, errors.ClusterApiThrottledError):
            self.metrics.throttled += 1
        delay = backoff_delay(
            self._failures, exc.retry_after, self.settings, jitter=random.uniform(0.5, 1.0)
        )
        self.bucket.pause_until(time.monotonic() + delay)
        self.queue.retry(intent)
        self._wake()
        # One line when trouble starts and one every 20 failures, not one per request.
        if self._failures == 1 or self._failures % 20 == 0:
            log.warning(
                "cluster %s: %s (failure %d in a row); pausing every request for %.1fs",
                self.cluster,
                exc,
                self._failures,
                delay,
            )

    def _succeeded(self) -> None:
        if self._failures:
            log.info(
                "cluster %s: the API server answers again after %d failures",
                self.cluster,
                self._failures,
            )
            self._failures = 0

    def _wake(self) -> None:
        # Set and replace: every writer that saw the old event before finding no work wakes.
        self._work.set()
        self._work = anyio.Event()


# --- one cluster: lock, feed, resync, progress -----------------------------------------------


class ClusterSync:
    """The sync worker of one ipledger cluster and the Kubernetes cluster it maps to."""

    def __init__(
        self,
        cluster: str,
        client: ports.ClusterClient,
        store: SyncStore,
        settings: SyncSettings | None = None,
        *,
        metrics: SyncMetrics | None = None,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.store = store
        self.settings = settings or SyncSettings()
        self.metrics = metrics or SyncMetrics()
        self.mirror: Mirror | None = None
        self._outcomes: list[tuple[str, int, str | None]] = []
        self._outcome_added = anyio.Event()
        self._resync_requested = anyio.Event()
        self._resynced = anyio.Event()

    def request_resync(self) -> None:
        """Run the next full resync now rather than at the end of the interval."""
        self._resync_requested.set()

    async def resynced(self) -> None:
        """Wait for the end of the next full resync (tests and ``ipledger sync --once``)."""
        await self._resynced.wait()

    async def run(self, stop: anyio.Event) -> None:
        """Lead, or wait for the lock, until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            try:
                if not await self._acquire(stop):
                    return
                self.metrics.takeovers += 1
                self.metrics.leader = True
                log.info(
                    "cluster %s: syncing CiliumNodes (this instance has the lock)", self.cluster
                )
                await self._lead(stop)
                failures = 0
            except errors.FencedError as exc:
                self.metrics.fenced += 1
                log.warning("cluster %s: %s; waiting for the lock again", self.cluster, exc)
            except errors.ProjectionError as exc:
                failures += 1
                delay = backoff_delay(
                    failures, None, self.settings, jitter=random.uniform(0.5, 1.0)
                )
                log.warning(
                    "cluster %s: %s; starting over from node_sync in %.1fs",
                    self.cluster,
                    exc,
                    delay,
                )
                with anyio.move_on_after(delay):
                    await stop.wait()
            finally:
                self.metrics.leader = False
                self.mirror = None
            if stop.is_set():
                with anyio.CancelScope(shield=True), contextlib.suppress(errors.IpledgerError):
                    await self.store.unlock(self.cluster)

    async def _acquire(self, stop: anyio.Event) -> bool:
        announced = False
        while not stop.is_set():
            if await self.store.try_lock(self.cluster):
                return True
            self.metrics.lock_waits += 1
            if not announced:
                log.info("cluster %s: another sync worker holds the lock; waiting", self.cluster)
                announced = True
            with anyio.move_on_after(self.settings.lock_poll_s):
                await stop.wait()
        return False

    async def _lead(self, stop: anyio.Event) -> None:
        self._outcomes = []
        mirror = self.mirror = Mirror(
            self.cluster,
            self.client,
            self.settings,
            metrics=self.metrics,
            on_outcome=self._record,
        )
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._feed, mirror)
                tasks.start_soon(self._flush_loop)
                tasks.start_soon(self._guard_lock)
                tasks.start_soon(self._resync_loop, mirror, tasks)
                await stop.wait()
                tasks.cancel_scope.cancel()
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            # What was written is recorded even on the way out, so a successor skips it; if
            # that fails, the successor finds those objects true and records them itself.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self._flush_once()
                except errors.IpledgerError as exc:
                    log.info("cluster %s: last progress not recorded: %s", self.cluster, exc)

    # --- the feed ---------------------------------------------------------------------------

    async def _feed(self, mirror: Mirror) -> None:
        cursor = (-1, "")
        settings = self.settings
        while True:
            seen = self.store.change_count()
            while True:
                await mirror.wait_for_room()
                rows = await self.store.changed_nodes(
                    self.cluster, cursor, settings.fetch_limit, with_pod_ips=settings.mirror_pod_ips
                )
                for intent in rows:
                    mirror.offer(intent)
                if rows:
                    cursor = (rows[-1].version, rows[-1].name)
                if len(rows) < settings.fetch_limit:
                    break
            await self.store.wait_for_change(seen, settings.poll_interval_s)

    # --- progress -----------------------------------------------------------------------------

    def _record(self, name: str, version: int, error: str | None) -> None:
        self._outcomes.append((name, version, error))
        self._outcome_added.set()
        self._outcome_added = anyio.Event()

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            added = self._outcome_added
            if not self._outcomes:
                await added.wait()
            try:
                await self._flush_once()
                failures = 0
            except errors.FencedError:
                raise
            except errors.ProjectionError as exc:
                failures += 1
                if failures >= 5:
                    raise
                log.warning("cluster %s: progress not recorded yet: %s", self.cluster, exc)
                await anyio.sleep(backoff_delay(failures, None, self.settings))
                continue
            # Batches the records: under load, one round trip per interval, not per write.
            await anyio.sleep(self.settings.flush_interval_s)

    async def _flush_once(self) -> None:
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return
        try:
            await self.store.record_synced(self.cluster, batch)
        except BaseException:
            self._outcomes[:0] = batch
            raise

    async def _guard_lock(self) -> None:
        while True:
            await anyio.sleep(self.settings.lock_check_s)
            await self.store.check_lock(self.cluster)

    # --- the resync ---------------------------------------------------------------------------

    async def _resync_loop(self, mirror: Mirror, tasks: anyio.abc.TaskGroup) -> None:
        writers_started = False
        failures = 0
        while True:
            self._resync_requested = anyio.Event()
            try:
                await self._resync(mirror)
            except errors.ClusterApiError as exc:
                failures += 1
                delay = backoff_delay(
                    failures, exc.retry_after, self.settings, jitter=random.uniform(0.5, 1.0)
                )
                log.warning(
                    "cluster %s: resync failed: %s; again in %.1fs", self.cluster, exc, delay
                )
                with anyio.move_on_after(delay):
                    await self._resync_requested.wait()
                continue
            failures = 0
            if not writers_started:
                # Only now: the writers rely on the listing to skip what is already true.
                tasks.start_soon(mirror.run_writers)
                writers_started = True
            resynced, self._resynced = self._resynced, anyio.Event()
            resynced.set()
            await self._until_next_resync(mirror)

    async def _until_next_resync(self, mirror: Mirror) -> None:
        """Wait for a request, the interval, or (while nodes wait) the shorter recheck."""
        settings = self.settings
        last = time.monotonic()
        # Nodes may start waiting at any time: look at the set again every recheck interval.
        step = min(settings.resync_interval_s, settings.waiting_recheck_s)
        while True:
            with anyio.move_on_after(step):
                await self._resync_requested.wait()
                return
            since = time.monotonic() - last
            if since >= settings.resync_interval_s or (
                mirror.waiting and since >= settings.waiting_recheck_s
            ):
                return

    async def _resync(self, mirror: Mirror) -> None:
        """List the CiliumNodes, compare them with every node, offer what differs."""
        settings = self.settings
        mirror.begin_listing()
        await mirror.bucket.take()
        listed = await self.client.list_nodes()
        mirror.replace_observed(listed)
        rows = await self.store.all_nodes(self.cluster, with_pod_ips=settings.mirror_pod_ips)
        self.metrics.resyncs += 1
        offered = 0
        for intent, synced_version, sync_error in rows:
            observed = mirror.observed.get(intent.name)
            if intent.deleted:
                if settings.delete_orphans and observed is not None:
                    offered += mirror.offer(intent, repair=True)
                continue
            if observed is not None and (
                spec_matches(intent, observed, settings.mirror_pod_ips)
                and error_matches(intent, observed)
            ):
                continue
            mirrored = (
                synced_version is not None and synced_version >= intent.version and not sync_error
            )
            if mirrored and observed is not None and mirror.offer(intent, repair=True):
                offered += 1
                self.metrics.drift_repairs += 1
                self._warn_drift(intent, observed)
            elif not mirrored or observed is None:
                offered += mirror.offer(intent, repair=True)
        log.info(
            "cluster %s: resync: %d CiliumNodes, %d nodes, %d writes queued",
            self.cluster,
            len(listed),
            len(rows),
            offered,
        )

    def _warn_drift(self, intent: ports.NodeIntent, observed: ports.ObservedNode) -> None:
        wanted = [str(c) for c in intent.pod_cidrs]
        if list(observed.pod_cidrs) != wanted:
            log.warning(
                "cluster %s: CiliumNode %s spec.ipam.podCIDRs was changed to %s (field manager "
                "%s), the projection says %s: putting it back",
                self.cluster,
                intent.name,
                list(observed.pod_cidrs),
                ", ".join(observed.pod_cidrs_managers) or "unknown",
                wanted,
            )
        else:
            log.warning(
                "cluster %s: CiliumNode %s differs from the projection (status error %r, "
                "expected %r, or pod addresses): putting it back",
                self.cluster,
                intent.name,
                observed.error,
                intent.error or "",
            )


async def run_clusters(syncs: Sequence[ClusterSync], stop: anyio.Event) -> None:
    """Run every cluster's worker until ``stop`` is set (``ipledger sync``)."""
    async with anyio.create_task_group() as tasks:
        for sync in syncs:
            tasks.start_soon(sync.run, stop)


# --- adoption (ipledger adopt --from-kubernetes) ----------------------------------------------


@dataclass(slots=True)
class AdoptionPlan:
    """What ``ipledger adopt`` found in one Kubernetes cluster.

    ``events`` are the ``node.adopted`` events to append; ``refused`` the CiliumNodes whose
    CIDRs cannot be adopted, with the reason (outside the pool, invalid, already allocated
    differently); ``already`` the nodes ipledger holds with exactly these CIDRs; ``empty`` the
    CiliumNodes without podCIDRs (they get CIDRs when their ``node.added`` arrives).
    """

    cluster: str
    events: list[events.NodeAdopted] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def plan_adoption(
    cluster: str,
    listed: Sequence[ports.ObservedNode],
    pool: ports.ClusterPool,
    known: Mapping[str, Sequence[str]],
) -> AdoptionPlan:
    """Turn CiliumNodes into ``node.adopted`` events for ``cluster``; pure.

    A node is adopted only if each of its CIDRs is valid, has the pool's mask size for its
    family and lies inside one of the pool's CIDRs: the allocator would otherwise pin it with an
    error, and the operator must decide first. ``known`` maps the nodes ipledger already holds
    to their CIDRs.
    """
    plan = AdoptionPlan(cluster=cluster)
    for node in sorted(listed, key=lambda n: n.name):
        if not node.pod_cidrs:
            plan.empty.append(node.name)
            continue
        networks, reason = _adoptable(node.pod_cidrs, pool)
        if reason is not None:
            plan.refused.append((node.name, reason))
            continue
        texts = tuple(str(n) for n in networks)
        held = known.get(node.name)
        if held is not None:
            if tuple(held) == texts:
                plan.already.append(node.name)
            else:
                plan.refused.append(
                    (node.name, f"ipledger already allocated it {list(held)}, not {list(texts)}")
                )
            continue
        digest = hashlib.sha256(f"{cluster}/{node.name}/{','.join(texts)}".encode()).hexdigest()
        event = events.NodeAdopted(
            id=f"adopt-{digest[:32]}",
            cluster=cluster,
            node=node.name,
            pod_cidrs=texts,
            addresses=tuple(node.addresses[:64]),
        )
        checked = events.decode(events.encode_event(event))
        if isinstance(checked, events.DecodeFailure):
            plan.refused.append((node.name, checked.reason))
            continue
        plan.events.append(event)
    return plan


def _adoptable(
    texts: Sequence[str], pool: ports.ClusterPool
) -> tuple[list[ports.Network], str | None]:
    by_family: dict[int, ports.Network] = {}
    for text in texts:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            return [], f"invalid CIDR {text!r}: {exc}"
        if network.version in by_family:
            return [], f"more than one IPv{network.version} CIDR"
        by_family[network.version] = network
        elements: Sequence[ports.Network] = (
            pool.ipv4_cidrs if network.version == 4 else pool.ipv6_cidrs
        )
        mask = pool.ipv4_mask if network.version == 4 else pool.ipv6_mask
        if not elements:
            return [], f"{network} is IPv{network.version}, which the pool does not enable"
        if not any(_inside(network, element) for element in elements):
            shown = ", ".join(str(e) for e in elements)
            return [], f"{network} is outside the pool ({shown})"
        if mask is not None and network.prefixlen != mask:
            return [], f"{network} is a /{network.prefixlen}; the pool hands out /{mask}"
    return [by_family[f] for f in sorted(by_family)], None


def _inside(network: ports.Network, element: ports.Network) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(element, ipaddress.IPv4Network):
        return network.subnet_of(element)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(element, ipaddress.IPv6Network):
        return network.subnet_of(element)
    return False
