"""One cluster's sync worker (``ClusterSync``) and ``run_clusters``, the ``ipledger sync`` loop.

Started by ``service.processes.sync`` with adapters from ``service.bootstrap``: one
``ClusterSync`` per ipledger cluster, each bound to the Kubernetes cluster that cluster maps to,
all sharing one ``ports.SyncStore``. A ``ClusterSync`` waits for its cluster's lock, then leads
(the leader loop of ``service.leadership``, as the allocator's writers do):

- the **feed** reads the nodes whose version is newer than the one recorded in ``node_sync``
  (or that have no record), woken by the store's change notifications with a fallback poll, and
  offers them to the lead's ``service.sync.mirror.Mirror``, which writes them;
- the **flusher** records each mirrored version through the store, batched, so a restart redoes
  at most the writes that were in flight or not yet recorded (applies are idempotent);
- the **guard** checks the lock every ``lock_check_s``; losing it (``errors.FencedError``) ends
  the lead and the worker waits for the lock again;
- the **resync** lists the CiliumNodes at start and every ``resync_interval_s`` and compares them
  with every node: a hand edit of ipledger's fields is put back and logged at WARNING. The
  writers start only after the first listing, which tells them what is already true;
- the **watch** follows every CiliumNode change from that listing on, so a hand edit is put back
  within seconds instead of at the next resync (and logged the same way, naming the field
  manager); a watch that is too old (410 Gone) asks for a resync and continues from its listing.

It reads the projection and writes only progress, through the store; it never writes the log
or the projection, and the allocator never waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Sequence

import anyio
import anyio.abc

from service import errors, leadership, ports
from service.sync import mirror as sync_mirror
from service.sync import pacing
from service.sync import settings as sync_settings

log = logging.getLogger("ipledger.sync")


class ClusterSync:
    """The sync worker of one ipledger cluster and the Kubernetes cluster it maps to."""

    def __init__(
        self,
        cluster: str,
        client: ports.ClusterClient,
        store: ports.SyncStore,
        settings: sync_settings.SyncSettings | None = None,
        *,
        metrics: sync_settings.SyncMetrics | None = None,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.store = store
        self.settings = settings or sync_settings.SyncSettings()
        self.metrics = metrics or sync_settings.SyncMetrics()
        self.mirror: sync_mirror.Mirror | None = None
        self._outcomes: list[tuple[str, int, str | None]] = []
        self._outcome_added = anyio.Event()
        self._resync_requested = anyio.Event()
        self._resynced = anyio.Event()
        self._listed_version = ""
        # The latest intent of every node seen (resync rows, the feed) and the last outcome
        # recorded or written for it, so the watch can tell a hand edit from a pending write.
        self._intents: dict[str, ports.NodeIntent] = {}
        self._synced: dict[str, tuple[int | None, str | None]] = {}

    def request_resync(self) -> None:
        """Run the next full resync now rather than at the end of the interval."""
        self._resync_requested.set()

    async def resynced(self) -> None:
        """Wait for the end of the next full resync (the sync benchmark waits for one)."""
        await self._resynced.wait()

    async def run(self, stop: anyio.Event) -> None:
        """Lead, or wait for the lock, until ``stop`` is set.

        The leader loop (``service.leadership``) over the cluster's sync lock: a store failure
        backs off and starts over from ``node_sync``; a lost lock waits for it again at once.
        """
        settings = self.settings
        await leadership.hold(
            _SyncLock(self),
            stop,
            leadership.Pacing(
                poll_s=settings.lock_poll_s,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
            ),
            retry_on=(errors.ProjectionError,),
        )

    async def _lead(self, stop: anyio.Event) -> None:
        self._outcomes = []
        self._intents, self._synced = {}, {}
        mirror = self.mirror = sync_mirror.Mirror(
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

    async def _feed(self, mirror: sync_mirror.Mirror) -> None:
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
                    self._intents[intent.name] = intent
                    mirror.offer(intent)
                if rows:
                    cursor = (rows[-1].version, rows[-1].name)
                if len(rows) < settings.fetch_limit:
                    break
            await self.store.wait_for_change(seen, settings.poll_interval_s)

    # --- progress -----------------------------------------------------------------------------

    def _record(self, name: str, version: int, error: str | None) -> None:
        self._outcomes.append((name, version, error))
        self._synced[name] = (version, error)
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
                await anyio.sleep(pacing.backoff_delay(failures, None, self.settings))
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

    async def _resync_loop(self, mirror: sync_mirror.Mirror, tasks: anyio.abc.TaskGroup) -> None:
        writers_started = False
        failures = 0
        while True:
            self._resync_requested = anyio.Event()
            try:
                await self._resync(mirror)
            except errors.ClusterApiError as exc:
                failures += 1
                delay = pacing.backoff_delay(
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
                # Only now: the writers rely on the listing to skip what is already true, and
                # the watch continues from it.
                tasks.start_soon(mirror.run_writers)
                if self.settings.watch:
                    tasks.start_soon(self._watch_loop, mirror)
                writers_started = True
            resynced, self._resynced = self._resynced, anyio.Event()
            resynced.set()
            await self._until_next_resync(mirror)

    async def _until_next_resync(self, mirror: sync_mirror.Mirror) -> None:
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

    async def _resync(self, mirror: sync_mirror.Mirror) -> None:
        """List the CiliumNodes, compare them with every node, offer what differs."""
        settings = self.settings
        mirror.begin_listing()
        await mirror.bucket.take()
        listing = await self.client.list_nodes_at()
        listed = listing.items
        self._listed_version = listing.resource_version
        mirror.replace_observed(listed)
        rows = await self.store.all_nodes(self.cluster, with_pod_ips=settings.mirror_pod_ips)
        self.metrics.resyncs += 1
        offered = 0
        for intent, synced_version, sync_error in rows:
            self._intents[intent.name] = intent
            self._synced[intent.name] = (synced_version, sync_error)
            observed = mirror.observed.get(intent.name)
            if intent.deleted:
                if settings.delete_orphans and observed is not None:
                    offered += mirror.offer(intent, repair=True)
                continue
            if observed is not None and (
                sync_mirror.spec_matches(intent, observed, settings.mirror_pod_ips)
                and sync_mirror.error_matches(intent, observed)
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

    # --- the watch --------------------------------------------------------------------------

    async def _watch_loop(self, mirror: sync_mirror.Mirror) -> None:
        """Follow CiliumNode changes from the last listing on, for as long as the lead lasts."""
        version = self._listed_version
        failures = 0
        while True:
            try:
                async for change in self.client.watch_nodes(version):
                    failures = 0
                    self.metrics.watch_events += 1
                    version = change.item.resource_version or version
                    self._watched(mirror, change)
            except errors.ClusterApiGoneError:
                # Too old to continue: a new listing compares everything, then watch from it.
                self.metrics.watch_restarts += 1
                log.info("cluster %s: CiliumNode watch expired; listing again", self.cluster)
                resynced = self._resynced
                self.request_resync()
                await resynced.wait()
                version = self._listed_version
                continue
            except errors.ClusterApiError as exc:
                failures += 1
                self.metrics.watch_restarts += 1
                delay = pacing.backoff_delay(
                    failures, exc.retry_after, self.settings, jitter=random.uniform(0.5, 1.0)
                )
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "cluster %s: CiliumNode watch failed: %s; again in %.1fs",
                        self.cluster,
                        exc,
                        delay,
                    )
                await anyio.sleep(delay)

    def _watched(
        self, mirror: sync_mirror.Mirror, change: ports.Change[ports.ObservedNode]
    ) -> None:
        observed = change.item
        if change.type == "DELETED":
            # Not recreated here: a CiliumNode deleted with its v1 Node (garbage collection)
            # must stay deleted; the resync writes a node whose object is missing.
            mirror.saw_deletion(observed)
            return
        if not mirror.saw_change(observed):
            return  # older than what a write already returned
        intent = self._intents.get(observed.name)
        if intent is None or intent.deleted:
            return
        settings = self.settings
        if sync_mirror.spec_matches(
            intent, observed, settings.mirror_pod_ips
        ) and sync_mirror.error_matches(intent, observed):
            return
        synced_version, sync_error = self._synced.get(observed.name, (None, None))
        mirrored = (
            synced_version is not None and synced_version >= intent.version and not sync_error
        )
        # Not yet mirrored: its write is pending and will make it true anyway.
        if mirrored and mirror.offer(intent, repair=True):
            self.metrics.drift_repairs += 1
            self._warn_drift(intent, observed)

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


class _SyncLock:
    """The cluster's sync lock as the leader loop takes, leads and gives it up."""

    def __init__(self, sync: ClusterSync) -> None:
        # Made by each run(): the worker's cluster and counters do not change meanwhile.
        self._sync = sync
        self._cluster = sync.cluster
        self._metrics = sync.metrics

    async def try_acquire(self) -> bool | None:
        # A lock proves itself: no token beyond "held".
        return True if await self._sync.store.try_lock(self._cluster) else None

    def standing_by(self, first: bool) -> None:
        self._metrics.lock_waits += 1
        if first:
            log.info("cluster %s: another sync worker holds the lock; waiting", self._cluster)

    async def lead(self, token: bool, stop: anyio.Event) -> None:
        self._metrics.takeovers += 1
        self._metrics.leader = True
        log.info("cluster %s: syncing CiliumNodes (this instance has the lock)", self._cluster)
        await self._sync._lead(stop)

    def fenced(self, exc: errors.FencedError) -> None:
        self._metrics.fenced += 1
        log.warning("cluster %s: %s; waiting for the lock again", self._cluster, exc)

    def failed(self, exc: Exception, delay: float) -> None:
        log.warning(
            "cluster %s: %s; starting over from node_sync in %.1fs", self._cluster, exc, delay
        )

    def stepped_down(self) -> None:
        self._metrics.leader = False
        self._sync.mirror = None

    def progress(self) -> object:
        # Each failure in a row backs off longer, however much was mirrored in between.
        return None

    async def release(self, token: bool) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(errors.IpledgerError):
            await self._sync.store.unlock(self._cluster)


async def run_clusters(syncs: Sequence[ClusterSync], stop: anyio.Event) -> None:
    """Run every cluster's worker until ``stop`` is set (``ipledger sync``)."""
    async with anyio.create_task_group() as tasks:
        for sync in syncs:
            tasks.start_soon(sync.run, stop)
