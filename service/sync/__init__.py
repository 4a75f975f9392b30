"""The Kubernetes sync worker (``ipledger sync``): makes every CiliumNode agree with the projection.

Its own process, beside the allocator and never in its path: it reads what the allocator
committed to PostgreSQL and writes Kubernetes, and the allocator waits for neither. Started by
``service.processes.sync`` with adapters from ``service.bootstrap``; one ``ClusterSync`` per
ipledger cluster, each bound to the Kubernetes cluster that cluster maps to. docs/sync.md says
what it does; the modules, each importing only those listed after it (``.importlinter``):

- ``worker``: ``ClusterSync`` (leadership: one instance per cluster at a time through the
  store's lock; the feed, the progress flusher, the lock guard and the resync) and
  ``run_clusters``;
- ``mirror``: ``Mirror``, the writers of one cluster and the last-seen CiliumNodes, so that
  what is already true costs no request;
- ``queue``: ``NodeQueue``, one pending write per node, the latest state winning, never two
  writes of one node at once;
- ``pacing``: ``TokenBucket`` (QPS and burst shared by every request) and ``backoff_delay``
  (429, 5xx, timeouts; ``Retry-After`` honoured);
- ``settings``: ``SyncSettings`` and ``SyncMetrics``, which all of the above take;
- ``adoption``, apart from the rest: ``plan_adoption`` for ``ipledger adopt --from-kubernetes``,
  turning existing CiliumNodes into ``node.adopted`` events. It never writes the projection or
  the log itself.

Deleted nodes are left to Kubernetes' garbage collection (the agent's ownerReference to the v1
Node) unless ``delete_orphans``. A missing CiliumNode is created by the apply unless
``create_missing`` is off; then the node is recorded as waiting in ``node_sync.error`` and
written once the object appears (found by the resync, which runs every ``waiting_recheck_s``
while any node waits).

Callers import the package and qualify (``from service import sync`` then ``sync.ClusterSync``):
the names below are the public ones.
"""

from __future__ import annotations

from service.sync.adoption import AdoptionPlan, plan_adoption
from service.sync.mirror import WAITING_FOR_CILIUMNODE, Mirror, error_matches, spec_matches
from service.sync.pacing import TokenBucket, backoff_delay
from service.sync.queue import NodeQueue
from service.sync.settings import SyncMetrics, SyncSettings
from service.sync.worker import ClusterSync, run_clusters

__all__ = [
    "WAITING_FOR_CILIUMNODE",
    "AdoptionPlan",
    "ClusterSync",
    "Mirror",
    "NodeQueue",
    "SyncMetrics",
    "SyncSettings",
    "TokenBucket",
    "backoff_delay",
    "error_matches",
    "plan_adoption",
    "run_clusters",
    "spec_matches",
]
