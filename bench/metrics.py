"""The metrics benchmark: what a scrape of ``ipledger run``'s /metrics costs, and where.

The pool gauges (``service.ipam_metrics``) are computed at scrape time by walking the writers'
in-memory states, so their cost is paid per scrape, not per event. Measured here on a state built
by the core: a dual-stack cluster of N nodes (default 65,536: 10.0.0.0/8 cut into /24s and
fd00::/104 into /120s, every node holding one CIDR of each family) with a few pods per node, which
is the case that walks the most (two pod ranges per node). Pods themselves cost nothing to a
scrape (a range's use is one counter), so the 110 pods a node of the issue's 7.2 M address
cluster holds are not applied. Figures: the median time of one whole scrape (the text the
endpoint answers, every family) and of the pool walk alone, over several scrapes, on one core.

What the metrics add to the hot path is the loop's counting after each commit (events by type
and reason class, two histogram observations): measured on the batches of the allocator
benchmark's workload, CPU time, beside the counting the loop did before issue 9 (reproduced
here as ``_counting_before``) and beside applying the same records, all in one run.
"""

from __future__ import annotations

import argparse
import time

import anyio

import bench
from bench import allocator as allocator_bench
from service import allocator, metrics, ports
from service.adapters import memory
from service.domain import allocation, state
from service.ipam_metrics import cluster_use

NAME = "metrics"
# --quick (a smoke run): dual-stack nodes scraped, records of the counting cost; repetitions.
QUICK = {"nodes": 1024, "records": 10_000}
QUICK_REPEAT = 2
POOL = (
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
    b'"clusterPoolIPv4MaskSize":24,"clusterPoolIPv6PodCIDRList":["fd00::/104"],'
    b'"clusterPoolIPv6MaskSize":120}'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-nodes", type=int, default=65_536, help="nodes of the scraped cluster"
    )


def built(nodes: int) -> state.State:
    current = state.State()
    allocation.apply_record(current, POOL)
    for i in range(nodes):
        allocation.apply_record(current, b'{"type":"node.added","id":"n%d","node":"n%d"}' % (i, i))
        if i % 16 == 0:
            for family in (b"ipv4", b"ipv6"):
                allocation.apply_record(
                    current,
                    b'{"type":"ip.requested","id":"r%d%s","node":"n%d","owner":"ns/p%d",'
                    b'"family":"%s"}' % (i, family, i, i, family),
                )
    return current


def _counting_before(counters: allocator.Metrics, batch: ports.Batch, seconds: float) -> None:
    """The loop's ``_after_commit`` counting as it was before issue 9 (the baseline)."""
    counters.batches_committed += 1
    counters.commit_seconds += seconds
    counters.records_applied += len(batch.applied)
    for applied in batch.applied:
        if applied.rejected:
            counters.records_rejected += 1
            if applied.wrong_partition:
                counters.records_wrong_partition += 1
        elif applied.decision.error is not None:
            counters.decisions_with_error += 1
    counters.next_offset[batch.partition] = batch.next_offset


def counting(events: int, repeat: int) -> list[bench.Result]:
    """CPU seconds per record: applying, the old counting, the new counting (medians)."""
    values = allocator_bench.workload(events)
    records = [ports.Record(0, i, b"default", v, 1_795_000_000_000) for i, v in enumerate(values)]

    async def measure() -> tuple[float, float, float]:
        current = state.State(track_changes=True)
        started = time.process_time()
        batches = [
            allocator.apply_records(current, records[i : i + 5000], 0, 1, partitions=1)
            for i in range(0, len(records), 5000)
        ]
        applied = time.process_time() - started
        before = allocator.Metrics()
        started = time.process_time()
        for batch in batches:
            _counting_before(before, batch, 0.01)
        old = time.process_time() - started
        worker = allocator.PartitionAllocator(
            memory.MemoryEventLog(),
            memory.MemoryProjection(memory.MemoryProjectionTables(), holder="bench"),
            0,
        )
        started = time.process_time()
        for batch in batches:
            worker._after_commit(batch, 0.01)
        new = time.process_time() - started
        return applied, old, new

    runs = [anyio.run(measure) for _ in range(repeat)]
    per = [tuple(value / len(records) * 1e6 for value in run) for run in runs]
    applied, old, new = (bench.median([p[i] for p in per]) for i in range(3))
    detail = (
        f"{len(records):,} records of the allocator workload in batches of 5,000, {repeat} runs"
    )
    return [
        bench.Result(NAME, "apply per record (CPU)", applied, "us", detail=detail),
        bench.Result(NAME, "commit counting per record, before issue 9", old, "us"),
        bench.Result(NAME, "commit counting per record, with the metrics", new, "us"),
        bench.Result(NAME, "counting added / applying", (new - old) / applied, "ratio"),
    ]


def run(args: argparse.Namespace) -> list[bench.Result]:
    nodes = QUICK["nodes"] if args.quick else args.metrics_nodes
    repeat = args.repeat or (QUICK_REPEAT if args.quick else 7)
    core = bench.pin_to_one_core()
    current = built(nodes)
    counters = allocator.Metrics(next_offset={0: nodes}, leader={0: True}, log_end={0: nodes})
    registry = metrics.allocator_registry(counters, lambda: [current])
    scrapes: list[float] = []
    walks: list[float] = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(metrics.render(registry))
        scrapes.append(time.perf_counter() - started)
        started = time.perf_counter()
        cluster_use(current.clusters["default"])
        walks.append(time.perf_counter() - started)
    detail = f"{nodes:,} dual-stack nodes, {repeat} scrapes, core {core}, {size:,} bytes answered"
    return [
        *counting(QUICK["records"] if args.quick else 100_000, repeat),
        bench.Result(
            NAME, "scrape of /metrics, median", bench.median(scrapes) * 1000, "ms", detail=detail
        ),
        bench.Result(NAME, "pool walk alone, median", bench.median(walks) * 1000, "ms"),
        bench.Result(
            NAME,
            "pool walk per node",
            bench.median(walks) / nodes * 1e6,
            "us",
        ),
    ]
