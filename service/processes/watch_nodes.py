"""``ipledger watch-nodes``: the node-lifecycle producer process, one ``NodeProducer`` per cluster.

Called by ``service.cli`` (``cmd_watch_nodes``) with the settings. Builds a Kubernetes client per
ipledger cluster (the same mapping as ``ipledger sync``), the event log and the read side
(``service.bootstrap``), serves the producers' counters on ``metrics_port`` if given, and runs
them until SIGINT or SIGTERM; then everything opened is closed and each cluster's counters are
logged. What a producer does: ``service.producers.nodes``; how to run it: docs/operations.md.

Run **one instance per cluster** (a Deployment with one replica, restarted by its supervisor):
each start reconciles against the log, so a restart appends nothing twice, but two instances
running at once may each append the deletion of a Node the other has not logged yet, and a stale
one could delete a node re-added meanwhile.
"""

from __future__ import annotations

import logging

import anyio

from service import bootstrap, metrics, producers
from service.processes import signals
from service.settings import Settings

log = logging.getLogger("ipledger.watch_nodes")


async def run(
    settings: Settings, *, allow_deleting_all: bool = False, metrics_port: int | None = None
) -> None:
    """Append the v1 Nodes' lifecycle to the log until SIGINT or SIGTERM."""
    clients = bootstrap.open_cluster_clients(settings)
    event_log = await bootstrap.open_log(settings)
    reader = bootstrap.open_reader(settings)
    workers = [
        producers.NodeProducer(
            cluster,
            client,
            event_log,
            reader,
            settings.partitions,
            mirror_pod_cidrs=settings.mirror_node_pod_cidrs,
            allow_deleting_all=allow_deleting_all,
        )
        for cluster, client in clients.items()
    ]
    registry = metrics.watch_nodes_registry({w.cluster: w.metrics for w in workers})
    stop = anyio.Event()
    try:
        async with (
            metrics.serving(registry, metrics_port, settings.metrics_host),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(signals.stop_on_signal, stop)
            async with anyio.create_task_group() as running:
                for worker in workers:
                    running.start_soon(worker.run, stop)
            tasks.cancel_scope.cancel()
    finally:
        for client in clients.values():
            await client.close()
        await event_log.close()
        await reader.close()
    for worker in workers:
        counters = worker.metrics
        log.info(
            "cluster %s: stopped: %d node.added and %d node.deleted appended, %d Nodes skipped",
            worker.cluster,
            counters.added,
            counters.deleted,
            counters.skipped,
        )


async def find_leaks(settings: Settings) -> list[producers.LeakReport]:
    """The leak check of every mapped cluster (``ipledger check --kubernetes``); appends nothing."""
    clients = bootstrap.open_cluster_clients(settings)
    reader = bootstrap.open_reader(settings)
    try:
        return [
            await producers.find_leaks(cluster, reader, client)
            for cluster, client in clients.items()
        ]
    finally:
        for client in clients.values():
            await client.close()
        await reader.close()
