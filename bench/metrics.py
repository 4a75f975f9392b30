"""The metrics benchmark: what a scrape of ``ipledger run``'s /metrics costs, and where.

The pool gauges (``service.ipam_metrics``) are computed at scrape time by walking the writers'
in-memory states, so their cost is paid per scrape, not per event. Measured here on a state built
by the core: a dual-stack cluster of N nodes (default 65,536: 10.0.0.0/8 cut into /24s and
fd00::/104 into /120s, every node holding one CIDR of each family) with a few pods per node, which
is the case that walks the most (two pod ranges per node). Pods themselves cost nothing to a
scrape (a range's use is one counter), so the 110 pods a node of the issue's 7.2 M address
cluster holds are not applied. Figures: the median time of one whole scrape (the text the
endpoint answers, every family) and of the pool walk alone, over several scrapes, on one core.
"""

from __future__ import annotations

import argparse
import time

import bench
from service import allocator, metrics
from service.domain import allocation, state
from service.ipam_metrics import cluster_use

NAME = "metrics"
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


def run(args: argparse.Namespace) -> list[bench.Result]:
    nodes = 4096 if args.quick else args.metrics_nodes
    repeat = args.repeat or (3 if args.quick else 7)
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
