"""``ipledger run``: the allocator process, one ``PartitionAllocator`` per partition of the log.

Called by ``service.cli`` (``cmd_run``) with the settings and nothing else. In order: the
embedded PostgreSQL of ``run --embedded`` (``make run``), the schema and the topics, the adapters
(``service.bootstrap``), Cilium's Helm default pool on an empty embedded log, the partition-count
check, the metrics endpoint (``IPLEDGER_METRICS_PORT``), then the worker of every partition this
process is assigned (``allocator.lead_assigned``: the processes of one deployment share the
partitions, docs/scaling.md), writer or standing by for its lease, until SIGINT or SIGTERM;
each finishes the batch it has in flight, then everything is closed in reverse order.
"""

from __future__ import annotations

import logging

import anyio

from service import allocator, bootstrap, errors, metrics, ports
from service.domain import state
from service.processes import signals
from service.settings import Settings

log = logging.getLogger("ipledger")
# Reads of IPLEDGER_BATCH_MAX_RECORDS records that group commit may join into one transaction.
GROUP_READS = 8
# Cilium's Helm defaults for cluster-pool IPAM, configured by `make run` on an empty log.
HELM_DEFAULT_POOL = (
    b'{"type":"pool.configured","id":"ipledger-helm-default-pool",'
    b'"clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],"clusterPoolIPv4MaskSize":24,'
    b'"clusterPoolIPv6PodCIDRList":["fd00::/104"],"clusterPoolIPv6MaskSize":120}'
)


async def run(settings: Settings, *, embedded: bool = False) -> None:
    """Run the allocator of every partition until SIGINT or SIGTERM.

    With ``embedded``, first start the PostgreSQL server kept under ``settings.data_dir`` (and
    stop it at the end). A changed partition count, or a worker's refusal to lead, raises
    ``ConfigurationError``.
    """
    server = bootstrap.Embedded.for_settings(settings) if embedded else None
    if server is not None:
        # Up before anything reads the database URL (its port is kept in the data dir). Started
        # on this thread, blocking, while nothing else runs yet: an interrupt during the start
        # (Ctrl-C, or SIGTERM made one by ``cli``) is raised inside it, and it stops what it
        # had started; in a worker thread the server would go on starting while we stop it.
        server.start()
    try:
        await _allocate(settings, embedded=server.where if server is not None else None)
    finally:
        if server is not None:
            server.stop()


async def _allocate(settings: Settings, *, embedded: str | None) -> None:
    """The allocator; ``embedded`` is where the embedded server's data lives (None: not one)."""
    await bootstrap.migrate_database(settings)
    # Like the schema, the topics are made sure of before anything reads them: an events topic
    # that would not keep every event (finite retention, compaction) is refused here.
    await bootstrap.ensure_topics(settings)
    event_log = await bootstrap.open_log(settings)
    projection = bootstrap.open_projection(settings)
    sink: ports.DecisionSink | None = None
    stop = anyio.Event()
    counters = allocator.Metrics()
    try:
        sink = await bootstrap.open_sink(settings)
        if embedded is not None and all(
            [await event_log.end_offset(p) == 0 for p in await event_log.partitions()]
        ):
            await event_log.append([(b"default", HELM_DEFAULT_POOL)])
            log.info(
                "empty log: configured Cilium's Helm default pool (10.0.0.0/8 /24, fd00::/104 /120)"
            )
        if embedded is not None:
            print(
                f"ipledger is running on the embedded PostgreSQL (data in {embedded}). "
                "In another shell:\n"
                "  .venv/bin/ipledger append examples/events.jsonl     # feed it events\n"
                "  .venv/bin/ipledger state --wait-caught-up           # see the state\n"
                "Ctrl-C stops it; running it again continues where it left off.",
                flush=True,
            )
        loop = allocator.LoopSettings(
            batch_max_records=settings.batch_max_records,
            # Group commit joins up to eight reads into one transaction, so the setting keeps
            # bounding a transaction (a small one in tests and for operators who ask for it).
            batch_group_max_records=min(100_000, GROUP_READS * settings.batch_max_records),
            batch_max_wait_s=settings.batch_max_wait_ms / 1000,
            # Renewed three times per lease at least: with a renewal every 2 s a lease of 1 s
            # (allowed, and used by the crash tests) expired between two renewals of an idle
            # writer, which then found it "lost" and took a new token (seen in the soak).
            renew_every_s=min(2.0, settings.lease_ttl_s / 3),
            tree=bootstrap.tree_settings(settings),
        )
        # Each worker checks it too; checked here first so that a changed partition count is
        # refused before any partition is led.
        await allocator.check_partition_count(event_log, projection)
        workers: list[allocator.PartitionAllocator] = []

        def states() -> list[state.State]:
            # The pool gauges: the state of every partition this process writes right now.
            return [s for worker in list(workers) if (s := worker.state) is not None]

        # The endpoint outlives the workers: it goes only once they are done.
        async with metrics.serving(
            # The forecast over the same window as the query API's, so that they agree.
            metrics.allocator_registry(
                counters, states, forecast_window_s=settings.api_forecast_window_s
            ),
            settings.metrics_port,
            settings.metrics_host,
        ):
            try:
                partitions = await event_log.partitions()
                workers.extend(
                    allocator.PartitionAllocator(
                        event_log,
                        projection,
                        partition,
                        settings=loop,
                        sink=sink,
                        metrics=counters,
                    )
                    for partition in partitions
                )
                # N processes share the partitions: each leads those its membership (Kafka's
                # group, or member rows for the table log) assigns it; the lease still fences.
                membership = bootstrap.open_membership(settings, projection.holder, partitions)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(signals.stop_on_signal, stop)
                    tasks.start_soon(allocator.lead_assigned, workers, membership, stop)
                    await stop.wait()
                    log.info("stopping: finishing the batch in flight")
            except* errors.ConfigurationError as refused:
                # A worker refused to lead (a cluster found off its home partition): report
                # that as such, not as a task group's traceback.
                raise _first_leaf(refused) from None
    finally:
        if sink is not None:
            await sink.close()
        await projection.close()
        await event_log.close()
    log.info(
        "stopped: %d records applied, %d rejected",
        counters.records_applied,
        counters.records_rejected,
    )


def _first_leaf(group: ExceptionGroup[errors.ConfigurationError]) -> errors.ConfigurationError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, ExceptionGroup) else first
