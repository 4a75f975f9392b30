"""The audit benchmark: replay with verification, and what the Merkle tree costs the allocator.

Figures, measured in one run on this machine (real PostgreSQL, real Kafka; docs/benchmarks.md):
- ``replay --verify`` of the table log (default 1 M events, one partition): events/s, in
  process, from the log's first record to the last row compared;
- the same replay from a Kafka topic, beside a bare aiokafka read of the same topic in the same
  run (the ratio travels);
- two partitions (two clusters, one on each) replayed by ``ipledger replay``'s process per
  partition, against the same two replayed one after the other in one process: the speed-up;
- the live allocator (table log -> committed projection) with the tree on and off, alternated
  in the same run: the tree's cost.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import anyio

import bench
from bench.allocator import Services, bare_consumer_rate, fill_topic, workload
from service import allocator
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import table_log
from service.audit import replay
from service.domain import partitioning
from service.processes import replay as replay_process
from service.settings import Settings

NAME = "replay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replay-events", type=int, default=1_000_000, help="events in the replayed table log"
    )
    parser.add_argument(
        "--replay-tree-events",
        type=int,
        default=100_000,
        help="events per allocator run in the tree on/off comparison",
    )


def _clustered(records: Sequence[bytes], cluster: str) -> list[bytes]:
    prefix = b'{"cluster":"%s",' % cluster.encode()
    return [prefix + r[1:] for r in records]


def _cluster_on(partition: int, partitions: int) -> str:
    for i in range(1000):
        name = f"c{i}"
        if partitioning.home_partition(name, partitions) == partition:
            return name
    raise AssertionError("no cluster name found")


async def _fill_table_log(
    dsn: str, per_partition: dict[int, Sequence[tuple[bytes, bytes]]], partitions: int
) -> None:
    event_log = table_log.PostgresTableLog.from_dsn(dsn, partitions=partitions)
    try:
        for items in per_partition.values():
            for start in range(0, len(items), 10_000):
                await event_log.append(list(items[start : start + 10_000]))
    finally:
        await event_log.close()


async def _allocate(
    event_log: table_log.PostgresTableLog | kafka_log.KafkaEventLog,
    dsn: str,
    ends: dict[int, int],
    *,
    tree: bool,
    log_name: str = "table",
) -> float:
    """Run the allocator of every partition until ``ends``; events/s."""
    # A long lease: on a loaded machine a stalled loop would lose it and reload mid-run.
    projection = pg_projection.PostgresProjection.from_dsn(
        dsn, log_name=log_name, holder="bench", lease_ttl_s=60.0
    )
    settings = allocator.LoopSettings(tree=allocator.TreeSettings() if tree else None)
    workers = [
        allocator.PartitionAllocator(event_log, projection, p, settings=settings) for p in ends
    ]
    stop = anyio.Event()
    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for worker in workers:
                tasks.start_soon(worker.run, stop)
            while any(
                w.metrics.next_offset.get(w.partition, -1) < ends[w.partition] for w in workers
            ):
                await anyio.sleep(0.01)
            elapsed = time.perf_counter() - started
            stop.set()
        return sum(ends.values()) / elapsed
    finally:
        await projection.close()


async def _replay_rate(
    event_log: table_log.PostgresTableLog | kafka_log.KafkaEventLog,
    dsn: str,
    partitions: Sequence[int],
    count: int,
) -> float:
    """Replay and verify ``partitions`` one after the other in this process; events/s."""
    live = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        started = time.perf_counter()
        for partition in partitions:
            report = await replay.replay_partition(event_log, live, partition, len(partitions))
            assert report.divergence is None, report.divergence.describe()
        return count / (time.perf_counter() - started)
    finally:
        await live.close()


def run(args: argparse.Namespace) -> list[bench.Result]:
    with Services() as services:
        return anyio.run(_run, args, services)


async def _run(args: argparse.Namespace, services: Services) -> list[bench.Result]:
    quick = bool(args.quick)
    repeat = args.repeat or (1 if quick else 3)
    count = 50_000 if quick else args.replay_events
    results: list[bench.Result] = []

    # --- replay --verify of the table log, one partition
    dsn = await services.fresh_database()
    records = workload(count)
    await _fill_table_log(dsn, {0: [(b"default", r) for r in records]}, 1)
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    try:
        built = await _allocate(event_log, dsn, {0: count}, tree=True)
        rates = [await _replay_rate(event_log, dsn, [0], count) for _ in range(repeat)]
    finally:
        await event_log.close()
    results += [
        bench.Result(
            NAME,
            "replay --verify, table log, 1 partition",
            bench.median(rates),
            "events/s",
            ">= 150,000",
            bench.median(rates) >= 150_000,
            f"{count:,} events; runs: {', '.join(f'{v:,.0f}' for v in rates)}; "
            f"the allocator built it at {built:,.0f} events/s",
        )
    ]

    # --- the tree's cost to the live allocator, on and off alternated
    tree_count = 20_000 if quick else args.replay_tree_events
    tree_records = [(b"default", r) for r in workload(tree_count, seed=2)]
    on: list[float] = []
    off: list[float] = []
    # At least three pairs: the one figure here with a target, and the runs are short.
    for _ in range(max(repeat, 1 if quick else 3)):
        for tree, into in ((True, on), (False, off)):
            tree_dsn = await services.fresh_database()
            await _fill_table_log(tree_dsn, {0: tree_records}, 1)
            tree_log = table_log.PostgresTableLog.from_dsn(tree_dsn)
            try:
                into.append(await _allocate(tree_log, tree_dsn, {0: tree_count}, tree=tree))
            finally:
                await tree_log.close()
    cost = 1 - bench.median(on) / bench.median(off)
    results += [
        bench.Result(NAME, "allocator, table log, tree off", bench.median(off), "events/s"),
        bench.Result(
            NAME,
            "allocator, table log, tree on",
            bench.median(on),
            "events/s",
            detail=f"runs on: {', '.join(f'{v:,.0f}' for v in on)}; "
            f"off: {', '.join(f'{v:,.0f}' for v in off)}",
        ),
        bench.Result(NAME, "tree cost (1 - on/off)", cost * 100, "%", "< 10", cost < 0.10),
    ]

    # --- two partitions: a process each, against one after the other
    half = count // 2
    per_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for p in (0, 1):
        cluster = _cluster_on(p, 2)
        per_partition[p] = [
            (cluster.encode(), r) for r in _clustered(workload(half, seed=3 + p), cluster)
        ]
    two_dsn = await services.fresh_database()
    await _fill_table_log(two_dsn, per_partition, 2)
    two_log = table_log.PostgresTableLog.from_dsn(two_dsn, partitions=2)
    try:
        await _allocate(two_log, two_dsn, {0: half, 1: half}, tree=True)
        sequential = await _replay_rate(two_log, two_dsn, [0, 1], 2 * half)
    finally:
        await two_log.close()
    settings = Settings(database_url=two_dsn, log="table", partitions=2)
    started = time.perf_counter()
    outcome = await anyio.to_thread.run_sync(
        lambda: replay_process.run(settings, replay_process.Job(), show_progress=False)
    )
    parallel = 2 * half / (time.perf_counter() - started)
    assert outcome is not None and all(r.divergence is None for r in outcome.reports)
    results += [
        bench.Result(NAME, "2 partitions, one after the other", sequential, "events/s"),
        bench.Result(
            NAME,
            "2 partitions, a process each (ipledger replay)",
            parallel,
            "events/s",
            detail=f"speed-up {parallel / sequential:.2f} on {os.cpu_count()} cores",
        ),
    ]

    # --- Kafka: the replay beside a bare aiokafka read of the same topic
    kafka_count = 20_000 if quick else min(count, 200_000)
    bootstrap = services.kafka.bootstrap
    topic = "bench.replay"
    await kafka_log.ensure_topics(bootstrap, topic, 1)
    kafka_records = workload(kafka_count, seed=4)
    await fill_topic(bootstrap, topic, kafka_records)
    kafka_dsn = await services.fresh_database()
    klog = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    try:
        await _allocate(klog, kafka_dsn, {0: kafka_count}, tree=True, log_name=f"kafka:{topic}")
        ours = []
        bare = []
        for _ in range(repeat):
            bare.append(await bare_consumer_rate(bootstrap, topic, kafka_count))
            ours.append(await _replay_rate(klog, kafka_dsn, [0], kafka_count))
    finally:
        await klog.close()
    results += [
        bench.Result(NAME, "replay --verify, Kafka", bench.median(ours), "events/s"),
        bench.Result(NAME, "bare aiokafka read, same topic", bench.median(bare), "events/s"),
        bench.Result(
            NAME,
            "replay / bare read (Kafka)",
            bench.median(ours) / bench.median(bare),
            "ratio",
            detail=f"{kafka_count:,} events",
        ),
    ]
    return results
