"""The audit benchmark: replay with verification, and what the Merkle tree costs the allocator.

Figures, measured in one run on this machine (real PostgreSQL, real Kafka; docs/benchmarks.md):
- ``replay --verify`` of the table log (default 1 M events, one partition): events/s, in
  process, from the log's first record to the last row compared;
- the same replay from a Kafka topic, beside a bare aiokafka read of the same topic in the same
  run (the ratio travels);
- two partitions (two clusters, one on each) replayed by ``ipledger replay``'s process per
  partition, against the same two replayed one after the other in one process: the speed-up;
- the live allocator (table log -> committed projection) with the tree on and off, alternated
  in the same run: the tree's cost;
- ``audit proof`` / ``audit consistency`` at the replayed size, and (``bench.proofs``) at
  ``--replay-proof-sizes`` built directly, from the stored subtree roots beside from every leaf.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence

import anyio
import asyncpg

import bench
from bench import ledgers
from bench.allocator import Services, bare_consumer_rate, fill_topic, workload
from bench.proofs import proof_figures
from service import allocator
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import table_log
from service.audit import replay
from service.domain import allocation, partitioning, state
from service.processes import audit as audit_process
from service.processes import replay as replay_process
from service.settings import Settings

NAME = "replay"
# --quick (a smoke run): every path, small. Records of the table-log replay, of the tree on/off
# runs, of the two-partition log and of the Kafka topic; repetitions.
QUICK = {"events": 20_000, "tree_events": 10_000, "two_events": 20_000, "kafka_events": 10_000}
QUICK_REPEAT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replay-events", type=int, default=1_000_000, help="events in the replayed table log"
    )
    parser.add_argument(
        "--replay-two-events",
        type=int,
        default=None,
        help="events in the two-partition log (both together; default: --replay-events)",
    )
    parser.add_argument(
        "--replay-kafka-events",
        type=int,
        default=200_000,
        help="events in the Kafka topic replayed beside a bare read",
    )
    parser.add_argument(
        "--replay-tree-events",
        type=int,
        default=100_000,
        help="events per allocator run in the tree on/off comparison",
    )
    parser.add_argument(
        "--replay-proof-sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[200_000, 1_000_000],
        help="tree sizes (comma-separated) of the proof figures, built directly (bench/proofs.py)",
    )
    parser.add_argument(
        "--replay-rebuild",
        action="store_true",
        help="build the replayed ledgers again, cached or not (bench/ledgers.py)",
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
    dsn: str, per_partition: Mapping[int, Sequence[tuple[bytes, bytes]]], partitions: int
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


async def _bare_table_read(dsn: str, count: int) -> float:
    """Every record of partition 0 read by asyncpg alone, in the table log's own chunks and
    query (``table_log._SELECT``): the floor a replay of the table log cannot go under."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        offset = 0
        while offset < count:
            rows = await connection.fetch(table_log._SELECT, 0, offset, replay.CHUNK)
            if not rows:
                break
            offset = rows[-1][0] + 1
        return offset / (time.perf_counter() - started)
    finally:
        await connection.close()


async def _first_head(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT min(size) FROM tree_head"))
    finally:
        await connection.close()


def _core_rate(records: Sequence[bytes]) -> float:
    """The pure core over the same records in this process (decode + decide, change journal
    on as in the allocator, drained per 5,000): what the replay adds everything else to."""
    current = state.State(track_changes=True)
    started = time.perf_counter()
    for start in range(0, len(records), 5000):
        for record in records[start : start + 5000]:
            allocation.apply_record(current, record)
        for cluster in current.clusters.values():
            cluster.take_changes()
    return len(records) / (time.perf_counter() - started)


async def _replay_rate(
    event_log: table_log.PostgresTableLog | kafka_log.KafkaEventLog,
    dsn: str,
    partitions: Sequence[int],
    count: int,
    timeline: list[tuple[float, int]] | None = None,
) -> float:
    """Replay and verify ``partitions`` one after the other in this process; events/s.

    ``timeline`` gets (seconds since the start, records replayed) at each progress report.
    """
    live = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        started = time.perf_counter()
        before = 0

        def progress(done: int, total: int) -> None:
            if timeline is not None:
                timeline.append((time.perf_counter() - started, before + done))

        for partition in partitions:
            report = await replay.replay_partition(
                event_log, live, partition, len(partitions), progress=progress
            )
            if timeline is not None:
                before += await event_log.end_offset(partition)
            assert report.divergence is None, report.divergence.describe()
        return count / (time.perf_counter() - started)
    finally:
        await live.close()


def _run_delay_s() -> float:
    """Seconds this thread has spent runnable but waiting for a core (0 where unknown)."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rate_series(timeline: Sequence[tuple[float, int]], label: str) -> bench.Series:
    """Records replayed and verified per second between progress reports (every chunk)."""
    points, last_t, last_n = [], 0.0, 0
    for t, n in timeline:
        if t > last_t and n > last_n:
            points.append((t, (n - last_n) / (t - last_t)))
            last_t, last_n = t, n
    return bench.Series.of(
        "replay-rate-over-time",
        label,
        [p[0] for p in points],
        [p[1] for p in points],
        title="replay --verify: records replayed and compared per second over the run",
        x_label="seconds since the replay started",
        y_label="records/s (between progress reports)",
    )


def run(args: argparse.Namespace) -> list[bench.Result]:
    # --quick shares the servers with the other benchmarks of the run (bench.sharing).
    with bench.servers(Services, share=bool(args.quick)) as services:
        return anyio.run(_run, args, services)


async def _run(args: argparse.Namespace, services: Services) -> list[bench.Result]:
    quick = bool(args.quick)
    repeat = args.repeat or (QUICK_REPEAT if quick else 3)
    count = QUICK["events"] if quick else args.replay_events
    results: list[bench.Result] = []

    # --- replay --verify of the table log, one partition
    records = workload(count)
    items = {0: [(b"default", r) for r in records]}

    async def build_one(dsn: str) -> float:
        await _fill_table_log(dsn, items, 1)
        build_log = table_log.PostgresTableLog.from_dsn(dsn)
        try:
            return await _allocate(build_log, dsn, {0: count}, tree=True)
        finally:
            await build_log.close()

    # Built once and kept (a 1 M-event ledger takes the allocator minutes): bench/ledgers.py.
    ledger = ledgers.Ledger(items, 1, build_one, rebuild=args.replay_rebuild)
    dsn, built = await ledger.start()
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    rates: list[float] = []
    timelines: list[list[tuple[float, int]]] = []
    bare: list[float] = []
    core: list[float] = []
    cpu_rates: list[float] = []
    runnable: list[float] = []
    blocked: list[float] = []
    core_cpu: list[float] = []
    proof_s: list[float] = []
    consistency_s: list[float] = []
    try:
        # Alternated, so that each replay has its bare read and core run beside it.
        for _ in range(repeat):
            bare.append(await _bare_table_read(dsn, count))
            cpu = time.process_time()
            core.append(_core_rate(records))
            core_cpu.append(count / (time.process_time() - cpu))
            timelines.append([])
            cpu, delay, wall = time.process_time(), _run_delay_s(), time.perf_counter()
            rates.append(await _replay_rate(event_log, dsn, [0], count, timelines[-1]))
            # This process's CPU time (the server's is apart): what a loaded machine disturbs
            # least, and the ratio to the core's own.
            cpu = time.process_time() - cpu
            cpu_rates.append(count / cpu)
            # The rest of the wall time: runnable but not running (the machine's load), or
            # blocked (what the replay itself waits for: the database, the log).
            runnable.append(_run_delay_s() - delay)
            blocked.append(time.perf_counter() - wall - cpu - runnable[-1])
        # What a proof costs at this size: both read every leaf (O(n)), see docs/audits.md.
        proof_settings = Settings(database_url=dsn, log="table")
        for _ in range(repeat):
            started = time.perf_counter()
            await audit_process.proof(proof_settings, 0, count // 3, None)
            proof_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            await audit_process.consistency(proof_settings, (0, await _first_head(dsn)), (0, count))
            consistency_s.append(time.perf_counter() - started)
    finally:
        await event_log.close()
        ledger.stop()
    ratios = [r / b for r, b in zip(rates, bare, strict=True)]
    to_core = [r / c for r, c in zip(rates, core, strict=True)]
    results += [
        bench.Result.of_samples(
            NAME,
            "replay --verify, table log, 1 partition",
            rates,
            "events/s",
            target=">= 150,000",
            met=bench.median(rates) >= 150_000,
            detail=f"{count:,} events; runs: {', '.join(f'{v:,.0f}' for v in rates)}; "
            + (
                "the ledger from the cache"
                if built is None
                else f"the allocator built it at {built:,.0f} events/s"
            ),
            issue="10",
            better="higher",
            series=tuple(
                rate_series(timeline, f"table log, run {i + 1}")
                for i, timeline in enumerate(timelines)
            ),
        ),
        bench.Result.of_samples(
            NAME, "bare asyncpg read of the same table log", bare, "events/s", issue="10"
        ),
        bench.Result.of_samples(
            NAME, "replay / bare table read", ratios, "ratio", issue="10", better="higher"
        ),
        bench.Result.of_samples(
            NAME, "core alone, same records, same process", core, "events/s", issue="10"
        ),
        bench.Result.of_samples(
            NAME, "replay / core alone", to_core, "ratio", issue="10", better="higher"
        ),
        bench.Result.of_samples(
            NAME,
            "replay --verify, CPU time of the replaying process",
            cpu_rates,
            "events/s",
            detail="the database server's CPU apart",
            issue="10",
            better="higher",
        ),
        bench.Result.of_samples(
            NAME,
            "replay --verify: seconds blocked (off CPU, not runnable)",
            blocked,
            "s",
            detail="what the replay waits for (the database, the log); the wall time less this "
            "process's CPU time and its time runnable but not running (/proc/self/schedstat): "
            + ", ".join(f"{r:.2f} s runnable" for r in runnable),
            issue="10",
            better="lower",
        ),
        bench.Result.of_samples(
            NAME,
            "replay / core alone, both by CPU time",
            [r / c for r, c in zip(cpu_rates, core_cpu, strict=True)],
            "ratio",
            issue="10",
            better="higher",
        ),
        bench.Result.of_samples(
            NAME,
            "audit proof (inclusion, latest head)",
            [v * 1000 for v in proof_s],
            "ms",
            detail=f"tree of {count:,} leaves",
            issue="10",
            better="lower",
        ),
        bench.Result.of_samples(
            NAME,
            "audit consistency (first head -> latest)",
            [v * 1000 for v in consistency_s],
            "ms",
            detail=f"tree of {count:,} leaves",
            issue="10",
            better="lower",
        ),
    ]

    # --- proofs from the stored subtree roots against from every leaf, at sizes built directly
    # (bench/proofs.py: no allocator run of a million events needed)
    proof_sizes = [20_000] if quick else args.replay_proof_sizes
    results += await proof_figures(services.fresh_database, proof_sizes, repeat)

    # --- the tree's cost to the live allocator, on and off alternated
    tree_count = QUICK["tree_events"] if quick else args.replay_tree_events
    tree_records = [(b"default", r) for r in workload(tree_count, seed=2)]
    on: list[float] = []
    off: list[float] = []
    # At least three pairs: the one figure here with a target, and the runs are short.
    for _ in range(max(repeat, QUICK_REPEAT if quick else 3)):
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
        bench.Result.of_samples(
            NAME, "allocator, table log, tree off", off, "events/s", issue="10"
        ),
        bench.Result.of_samples(
            NAME,
            "allocator, table log, tree on",
            on,
            "events/s",
            detail=f"runs on: {', '.join(f'{v:,.0f}' for v in on)}; "
            f"off: {', '.join(f'{v:,.0f}' for v in off)}",
            issue="10",
        ),
        bench.Result(
            NAME,
            "tree cost (1 - on/off)",
            cost * 100,
            "%",
            "< 10",
            cost < 0.10,
            detail="per pair: "
            + ", ".join(f"{(1 - a / b) * 100:.1f}" for a, b in zip(on, off, strict=True)),
            issue="10",
            better="lower",
        ),
    ]

    # --- two partitions: a process each, against one after the other
    half = (QUICK["two_events"] if quick else (args.replay_two_events or count)) // 2
    per_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for p in (0, 1):
        cluster = _cluster_on(p, 2)
        per_partition[p] = [
            (cluster.encode(), r) for r in _clustered(workload(half, seed=3 + p), cluster)
        ]

    async def build_two(dsn: str) -> float:
        await _fill_table_log(dsn, per_partition, 2)
        build_log = table_log.PostgresTableLog.from_dsn(dsn, partitions=2)
        try:
            return await _allocate(build_log, dsn, {0: half, 1: half}, tree=True)
        finally:
            await build_log.close()

    two_ledger = ledgers.Ledger(per_partition, 2, build_two, rebuild=args.replay_rebuild)
    two_dsn, _ = await two_ledger.start()
    two_log = table_log.PostgresTableLog.from_dsn(two_dsn, partitions=2)
    settings = Settings(database_url=two_dsn, log="table", partitions=2)
    sequential: list[float] = []
    parallel: list[float] = []
    try:
        for _ in range(repeat):
            sequential.append(await _replay_rate(two_log, two_dsn, [0, 1], 2 * half))
            started = time.perf_counter()
            outcome = await anyio.to_thread.run_sync(
                lambda: replay_process.run(settings, replay_process.Job(), show_progress=False)
            )
            parallel.append(2 * half / (time.perf_counter() - started))
            assert outcome is not None and all(r.divergence is None for r in outcome.reports)
    finally:
        await two_log.close()
        two_ledger.stop()
    speedups = [p / q for p, q in zip(parallel, sequential, strict=True)]
    results += [
        bench.Result.of_samples(
            NAME, "2 partitions, one after the other", sequential, "events/s", issue="10"
        ),
        bench.Result.of_samples(
            NAME,
            "2 partitions, a process each (ipledger replay)",
            parallel,
            "events/s",
            detail=f"{2 * half:,} events on {os.cpu_count()} cores",
            issue="10",
        ),
        bench.Result.of_samples(
            NAME,
            "2 partitions: speed-up of a process each",
            speedups,
            "ratio",
            issue="10",
            better="higher",
        ),
    ]

    # --- Kafka: the replay beside a bare aiokafka read of the same topic
    kafka_count = QUICK["kafka_events"] if quick else args.replay_kafka_events
    bootstrap = services.kafka.bootstrap
    topic = "bench.replay"
    await kafka_log.ensure_topics(bootstrap, topic, 1)
    kafka_records = workload(kafka_count, seed=4)
    await fill_topic(bootstrap, topic, kafka_records)
    kafka_dsn = await services.fresh_database()
    klog = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    try:
        await _allocate(klog, kafka_dsn, {0: kafka_count}, tree=True, log_name=f"kafka:{topic}")
        ours: list[float] = []
        kafka_timelines: list[list[tuple[float, int]]] = []
        bare_kafka: list[float] = []
        for _ in range(repeat):
            bare_kafka.append(await bare_consumer_rate(bootstrap, topic, kafka_count))
            kafka_timelines.append([])
            ours.append(await _replay_rate(klog, kafka_dsn, [0], kafka_count, kafka_timelines[-1]))
    finally:
        await klog.close()
    results += [
        bench.Result.of_samples(
            NAME,
            "replay --verify, Kafka",
            ours,
            "events/s",
            issue="10",
            series=tuple(
                rate_series(timeline, f"Kafka, run {i + 1}")
                for i, timeline in enumerate(kafka_timelines)
            ),
        ),
        bench.Result.of_samples(
            NAME, "bare aiokafka read, same topic", bare_kafka, "events/s", issue="10"
        ),
        bench.Result.of_samples(
            NAME,
            "replay / bare read (Kafka)",
            [a / b for a, b in zip(ours, bare_kafka, strict=True)],
            "ratio",
            detail=f"{kafka_count:,} events",
            issue="10",
            better="higher",
        ),
    ]
    return results
