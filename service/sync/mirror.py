"""The writes of one cluster: makes CiliumNodes hold what the projection says, with few requests.

``Mirror`` is what ``service.sync.worker.ClusterSync`` builds for each lead: the queue of pending
writes (``service.sync.queue``), ``concurrency`` writers that apply ``spec.ipam.podCIDRs`` (and
with ``mirror_pod_ips`` the pod addresses) and ``status.ipam.operator-status.error`` through a
``ports.ClusterClient``, paced by the cluster's ``TokenBucket`` and backing off on 429, 5xx and
timeouts (``service.sync.pacing``), and the last-seen state of every CiliumNode, so that what is
already true costs no request. ``spec_matches`` / ``error_matches`` are the comparisons the
writers and the worker's resync share.

It reports each outcome through a callback and never touches PostgreSQL: recording progress,
the lock and the resync are the worker's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TypeVar

import anyio

from service import errors, ports
from service.sync import pacing, queue
from service.sync import settings as sync_settings

log = logging.getLogger("ipledger.sync")

WAITING_FOR_CILIUMNODE = "waiting: no CiliumNode yet and creating it is turned off"
_T = TypeVar("_T")


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


def _older(version: str, than: str) -> bool:
    """Whether resource version ``version`` is older than ``than``.

    Resource versions are opaque to clients, but every API server backed by etcd gives integers
    that grow; a watch may deliver a change older than an apply's answer already seen, which
    must not overwrite it. When either is not an integer nothing is taken to be older.
    """
    try:
        return int(version) < int(than)
    except ValueError:
        return False


def _error_code(status: int | None) -> str:
    """A failed request's label: its HTTP status, or ``none`` when no answer came (timeout,
    connection refused); any other number the server sent is ``other`` (bounded labels)."""
    if status is None:
        return "none"
    return str(status) if 100 <= status <= 599 else "other"


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
        settings: sync_settings.SyncSettings,
        *,
        bucket: pacing.TokenBucket | None = None,
        metrics: sync_settings.SyncMetrics | None = None,
        on_outcome: Callable[[str, int, str | None], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.settings = settings
        self.bucket = bucket or pacing.TokenBucket(settings.qps, settings.burst)
        self.metrics = metrics or sync_settings.SyncMetrics()
        self.on_outcome = on_outcome
        self.queue = queue.NodeQueue()
        self.observed: dict[str, ports.ObservedNode] = {}
        self.waiting: set[str] = set()
        self._touched: set[str] = set()  # names written since the current listing began
        self._work = anyio.Event()
        self._room = anyio.Event()
        self._failures = 0
        self._owner_refused = False  # reading Nodes was forbidden: said once per lead

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
            self._count_queue()
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
        creating = observed is None
        if observed is None or not spec_matches(intent, observed, mirror_pods):
            observed = await self._request(
                "apply",
                client.apply_pod_cidrs(
                    name, intent.pod_cidrs, pod_ips=intent.pod_ips if mirror_pods else None
                ),
            )
            self._saw(observed)
            requests += 1
        if creating and self.settings.owner_references and observed.node_owner is None:
            observed = await self._own(observed)
        if not error_matches(intent, observed):
            observed = await self._request(
                "status", client.apply_status_error(name, intent.error or "")
            )
            self._saw(observed)
            requests += 1
        if not requests:
            self.metrics.unchanged += 1
        return None

    async def _own(self, observed: ports.ObservedNode) -> ports.ObservedNode:
        """Give a CiliumNode ipledger created the ownerReference Cilium's agent would give it,
        so that garbage collection deletes it with its v1 Node. Without a Node, none."""
        try:
            owner = await self._request("get", self.client.get_kube_node(observed.name))
        except errors.ClusterApiRejectedError as exc:
            # The spec was written: a missing optional permission must not fail the node.
            if not self._owner_refused:
                log.error(
                    "cluster %s: no ownerReferences: %s (--owner-references needs get on nodes: "
                    "the ClusterRole ipledger-sync-owner-references, "
                    "compose/kubernetes/rbac-optional.yaml)",
                    self.cluster,
                    exc,
                )
            self._owner_refused = True
            return observed
        if owner is None:
            log.info(
                "cluster %s: CiliumNode %s created without an ownerReference: no v1 Node %s",
                self.cluster,
                observed.name,
                observed.name,
            )
            return observed
        owned = await self._request("owner", self.client.apply_owner(observed.name, owner))
        self._saw(owned)
        self.metrics.owner_references += 1
        return owned

    def saw_change(self, observed: ports.ObservedNode) -> bool:
        """A watched change of a CiliumNode; False when it is older than what was last seen."""
        last = self.observed.get(observed.name)
        if last is not None and _older(observed.resource_version, last.resource_version):
            return False
        self._saw(observed)
        return True

    def saw_deletion(self, observed: ports.ObservedNode) -> None:
        last = self.observed.get(observed.name)
        if last is None or not _older(observed.resource_version, last.resource_version):
            self.observed.pop(observed.name, None)
            self._touched.add(observed.name)

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
        except errors.ClusterApiError as exc:
            code = _error_code(exc.status)
            self.metrics.request_errors[code] = self.metrics.request_errors.get(code, 0) + 1
            raise
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
            elif verb == "owner":
                metrics.owner_applies += 1
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
        delay = pacing.backoff_delay(
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
        self._count_queue()

    def _count_queue(self) -> None:
        metrics = self.metrics
        metrics.queue_depth = len(self.queue)
        metrics.in_flight = self.queue.in_flight
