"""What one cluster's sync worker is told (``SyncSettings``) and what it counts (``SyncMetrics``).

The bottom of ``service.sync``: pacing, the mirror and the worker all take these two types, so
they live apart from all three (in any of them, the others would import each other in a circle).
``service.bootstrap.sync_settings`` fills ``SyncSettings`` from ``service.settings.Settings``;
``service.metrics`` exports the counters, and ``ipledger sync`` logs them when it stops. Plain
data: no I/O, no imports of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Give the CiliumNodes ipledger creates an ownerReference to their v1 Node (reads Nodes).
    owner_references: bool = False
    # Watch CiliumNodes between resyncs, so a hand edit is put back within seconds.
    watch: bool = True
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
    owner_applies: int = 0
    gets: int = 0
    nodes_mirrored: int = 0  # outcomes recorded without error
    unchanged: int = 0  # node changes that needed no request
    coalesced: int = 0  # pending writes replaced by a newer state before being sent
    retries: int = 0
    throttled: int = 0
    rejected: int = 0
    waiting: int = 0  # nodes currently waiting for their CiliumNode
    drift_repairs: int = 0
    owner_references: int = 0  # ownerReferences to a v1 Node applied
    watch_events: int = 0  # CiliumNode changes seen by the watch
    watch_restarts: int = 0  # watches started again (failure or 410 Gone)
    queue_depth: int = 0  # writes pending (not yet taken by a writer)
    in_flight: int = 0  # writes being sent
    # Failed requests to the API server by HTTP status ("none": no answer came).
    request_errors: dict[str, int] = field(default_factory=dict)
    resyncs: int = 0
    takeovers: int = 0
    lock_waits: int = 0  # lock attempts that found another instance holding it
    fenced: int = 0
    request_seconds: float = 0.0
