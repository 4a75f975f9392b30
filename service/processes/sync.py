"""``ipledger sync``: the Kubernetes sync worker process, one ``ClusterSync`` per ipledger cluster.

Called by ``service.cli`` (``cmd_sync``) with the settings. Builds a CiliumNode client per
cluster and the sync store (``service.bootstrap``), serves the workers' counters on
``IPLEDGER_SYNC_METRICS_PORT`` if set, and runs the workers until SIGINT or SIGTERM; each
finishes its writes in flight and records its progress, then the clients and the store are
closed and each cluster's counters are logged. docs/sync.md says what the worker does.
"""

from __future__ import annotations

import logging

import anyio

from service import bootstrap, metrics, sync
from service.processes import signals
from service.settings import Settings

log = logging.getLogger("ipledger.sync")


async def run(settings: Settings) -> None:
    """Mirror the projection onto CiliumNode objects until SIGINT or SIGTERM."""
    clients = bootstrap.open_cluster_clients(settings)
    store = bootstrap.open_sync_store(settings)
    config = bootstrap.sync_settings(settings)
    workers = [
        sync.ClusterSync(cluster, client, store, config) for cluster, client in clients.items()
    ]
    registry = metrics.sync_registry({worker.cluster: worker.metrics for worker in workers})
    stop = anyio.Event()
    try:
        async with (
            metrics.serving(registry, settings.sync_metrics_port, settings.metrics_host),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(signals.stop_on_signal, stop)
            await sync.run_clusters(workers, stop)
            tasks.cancel_scope.cancel()
    finally:
        for client in clients.values():
            await client.close()
        await store.close()
    for worker in workers:
        counters = worker.metrics
        log.info(
            "cluster %s: stopped: %d nodes mirrored, %d requests, %d retries, %d drift repairs",
            worker.cluster,
            counters.nodes_mirrored,
            counters.requests,
            counters.retries,
            counters.drift_repairs,
        )
