"""Core benchmark: the pure allocation core (``service.domain``) in memory, no I/O.

Run by ``python -m bench`` (``--only core``). Three scenarios, each against a target of the issue:

- **mixed stream**: node adds and deletes, pod address requests and releases, each a raw JSON
  record through ``allocation.apply_record`` (decode + decide), events per second, median of
  several repetitions, with and without the change journal the allocator service drains per batch;
- **IPv4 fill + churn**: 10.0.0.0/8 cut into /24s, one node per /24 (65,536) with 110 pods each
  (7.2 M addresses held): peak resident memory and bytes per held address; then the pool is
  brought to 99.9 % of its node CIDRs, 1,000 nodes' ranges are filled to 253 of 254 addresses,
  and single decisions of a churn mix (node delete + add, pod release + request) are timed;
- **IPv6 fill**: fd00::/48 cut into /112s, 100,000 nodes with 110 pods each, time and memory per
  node set against the IPv4 fill of the same run.

Every scenario runs in a fresh subprocess (``python -m bench.core worker ...``) pinned to one
core, so resident memory is that scenario's alone and the parent process is left unpinned for the
benchmarks that follow. Streams are generated from a seeded ``random.Random``: the same sizes
give the same records, hence the same decisions and digests, on every run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import bench
from service.domain import allocation, document, state

BENCHMARK = "core"
SEED = 20_250_601
JOURNAL_BATCH = 1_000  # records per allocator batch: the journal is drained this often
PODS_PER_NODE = 110  # Kubernetes' default max pods per node
THROUGHPUT_TARGET = 200_000  # events/s
MEMORY_TARGET = 2 * 1024**3  # bytes of resident memory for the IPv4 fill
LATENCY_TARGET_US = 100.0  # p99 of one decision at 99.9 % pool use
POOL_USE = 0.999


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is; ``FULL`` is what the targets are about."""

    mixed_nodes: int  # nodes present when the timed mixed stream starts
    mixed_pods: int  # pods on each of them
    mixed_events: int  # events in the timed stream
    repeat: int  # timed repetitions of the mixed stream (median reported)
    v4_pool: str  # IPv4 pool element; /24 node CIDRs, one node per CIDR
    v6_nodes: int  # nodes in fd00::/48 with /112 node CIDRs
    hot_nodes: int  # nodes whose pod ranges are filled to all but one address
    churn: int  # individually timed decisions at 99.9 % pool use


FULL = Sizes(
    mixed_nodes=1_000,
    mixed_pods=50,
    mixed_events=200_000,
    repeat=5,
    v4_pool="10.0.0.0/8",
    v6_nodes=100_000,
    hot_nodes=1_000,
    churn=20_000,
)
QUICK = Sizes(
    mixed_nodes=200,
    mixed_pods=50,
    mixed_events=30_000,
    repeat=3,
    v4_pool="10.0.0.0/14",
    v6_nodes=1_600,
    hot_nodes=50,
    churn=4_000,
)
V4_MASK = 24
V6_POOL = "fd00::/48"
V6_MASK = 112


# --- records ---------------------------------------------------------------------------------


class Records:
    """Builds wire records as bytes, the way a producer would send them: id, time, fields.

    Formatting templates rather than ``json.dumps`` keeps generation quick enough for the
    7 M-record fills; every value put in a template is plain ASCII without quotes.
    """

    TIME = b"2025-06-01T12:00:00.000000Z"

    def __init__(self) -> None:
        self.seq = 0

    def _next_id(self) -> int:
        self.seq += 1
        return self.seq

    def pool(self, v4: tuple[str, int] | None, v6: tuple[str, int] | None) -> bytes:
        body: dict[str, Any] = {"type": "pool.configured", "id": f"evt-{self._next_id():010d}"}
        if v4 is not None:
            body["clusterPoolIPv4PodCIDRList"] = [v4[0]]
            body["clusterPoolIPv4MaskSize"] = v4[1]
        if v6 is not None:
            body["clusterPoolIPv6PodCIDRList"] = [v6[0]]
            body["clusterPoolIPv6MaskSize"] = v6[1]
        return json.dumps(body).encode()

    def node_added(self, node: bytes, address: bytes) -> bytes:
        return (
            b'{"type":"node.added","id":"evt-%010d","time":"%s","node":"%s","addresses":["%s"]}'
            % (self._next_id(), self.TIME, node, address)
        )

    def node_deleted(self, node: bytes) -> bytes:
        return b'{"type":"node.deleted","id":"evt-%010d","time":"%s","node":"%s"}' % (
            self._next_id(),
            self.TIME,
            node,
        )

    def ip_requested(self, node: bytes, owner: bytes) -> bytes:
        return b'{"type":"ip.requested","id":"evt-%010d","time":"%s","node":"%s","owner":"%s"}' % (
            self._next_id(),
            self.TIME,
            node,
            owner,
        )

    def ip_released(self, node: bytes, owner: bytes) -> bytes:
        return b'{"type":"ip.released","id":"evt-%010d","time":"%s","node":"%s","owner":"%s"}' % (
            self._next_id(),
            self.TIME,
            node,
            owner,
        )


def node_name(index: int) -> bytes:
    """A node name of realistic length (30 characters), as cloud providers name them."""
    return b"ip-%06d.eu-west-1.internal" % index


def node_address(index: int) -> bytes:
    """The node's own address: outside every pool, so it reserves nothing."""
    return b"172.%d.%d.%d" % (16 + (index >> 16) % 16, (index >> 8) & 255, index & 255)


class Owners:
    """Pod owners as Cilium names them, ``namespace/pod``, about 30 characters each."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self) -> bytes:
        bits = self.rng.getrandbits(60)
        return b"team-%02d/web-%010x-%05x" % (bits % 40, bits >> 20, bits & 0xFFFFF)


# --- mixed stream ----------------------------------------------------------------------------


def mixed_stream(sizes: Sizes, dual_stack: bool) -> tuple[list[bytes], list[bytes]]:
    """A steady-state cluster (setup, untimed) and the mixed stream applied to it (timed).

    Mix: 45 % ip.requested, 45 % ip.released, 5 % node.added, 5 % node.deleted, every event
    valid for the state it meets (the generator keeps a model of who holds what), so the
    figure is the cost of real decisions, not of rejections.
    """
    rng = random.Random(SEED)
    owners = Owners(rng)
    records = Records()
    setup = [records.pool((FULL.v4_pool, V4_MASK), (V6_POOL, V6_MASK) if dual_stack else None)]
    held: dict[bytes, list[bytes]] = {}
    names: list[bytes] = []
    next_node = 0

    def add_node() -> bytes:
        nonlocal next_node
        name = node_name(next_node)
        record = records.node_added(name, node_address(next_node))
        next_node += 1
        held[name] = []
        names.append(name)
        return record

    for _ in range(sizes.mixed_nodes):
        setup.append(add_node())
    for _ in range(sizes.mixed_pods):
        for name in names:
            owner = owners()
            held[name].append(owner)
            setup.append(records.ip_requested(name, owner))

    stream: list[bytes] = []
    while len(stream) < sizes.mixed_events:
        roll = rng.random()
        if roll < 0.05:
            stream.append(add_node())
        elif roll < 0.10 and len(names) > 1:
            i = rng.randrange(len(names))
            name = names[i]
            names[i] = names[-1]
            names.pop()
            del held[name]
            stream.append(records.node_deleted(name))
        else:
            name = names[rng.randrange(len(names))]
            pods = held[name]
            if roll < 0.55 or not pods:
                owner = owners()
                pods.append(owner)
                stream.append(records.ip_requested(name, owner))
            else:
                i = rng.randrange(len(pods))
                owner = pods[i]
                pods[i] = pods[-1]
                pods.pop()
                stream.append(records.ip_released(name, owner))
    return setup, stream


def apply_all(current: state.State, records: list[bytes], journal: bool) -> None:
    """Apply records in order; with the journal on, drain it once per batch as the service does."""
    apply_record = allocation.apply_record
    if not journal:
        for record in records:
            apply_record(current, record)
        return
    clusters = current.clusters
    for start in range(0, len(records), JOURNAL_BATCH):
        for record in records[start : start + JOURNAL_BATCH]:
            apply_record(current, record)
        for cluster in clusters.values():
            cluster.take_changes()


def worker_throughput(options: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if options.quick else FULL
    setup, stream = mixed_stream(sizes, options.dual_stack)
    rates: list[float] = []
    digests: set[str] = set()
    for _ in range(options.repeat or sizes.repeat):
        current = state.State(track_changes=options.journal)
        apply_all(current, setup, options.journal)
        gc.collect()
        began = time.perf_counter()
        apply_all(current, stream, options.journal)
        elapsed = time.perf_counter() - began
        rates.append(len(stream) / elapsed)
        digests.add(document.digest(current))
    # Untimed check that the stream is what it claims: every decision a success.
    current = state.State(track_changes=False)
    errors = 0
    for record in setup + stream:
        decision, _ = allocation.apply_record(current, record)
        errors += decision.error is not None
    return {
        "events": len(stream),
        "rates": rates,
        "errors": errors,
        "deterministic": len(digests) == 1,
        "digest": digests.pop(),
    }


# --- fills: memory, time per node, latency at 99.9 % -----------------------------------------


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_chunks(current: state.State, chunks: Iterator[list[bytes]]) -> float:
    """Apply generated chunks of records, timing only ``apply_record`` (journal drained)."""
    elapsed = 0.0
    for chunk in chunks:
        began = time.perf_counter()
        apply_all(current, chunk, journal=True)
        elapsed += time.perf_counter() - began
    return elapsed


def worker_fill(options: argparse.Namespace) -> dict[str, Any]:
    """Fill a single-family pool with nodes and pods; then, for IPv4, time churn decisions."""
    sizes = QUICK if options.quick else FULL
    rng = random.Random(SEED)
    owners = Owners(rng)
    records = Records()
    if options.family == "ipv4":
        nodes = 1 << (V4_MASK - int(sizes.v4_pool.split("/")[1]))
        pool = records.pool((sizes.v4_pool, V4_MASK), None)
    else:
        nodes = sizes.v6_nodes
        pool = records.pool(None, (V6_POOL, V6_MASK))
    pods = options.pods
    current = state.State(track_changes=True)
    apply_all(current, [pool], journal=True)
    gc.collect()
    baseline = resident_bytes()

    names = [node_name(i) for i in range(nodes)]

    def node_chunks() -> Iterator[list[bytes]]:
        step = 65_536
        for start in range(0, nodes, step):
            yield [
                records.node_added(names[i], node_address(i))
                for i in range(start, min(nodes, start + step))
            ]

    nodes_seconds = timed_chunks(current, node_chunks())
    after_nodes = resident_bytes()

    # Pods arrive round-robin over the nodes, as a scheduler spreads them.
    held: list[list[bytes]] = [[] for _ in range(nodes)]

    def pod_chunks() -> Iterator[list[bytes]]:
        for _ in range(pods):
            chunk = []
            for i, name in enumerate(names):
                owner = owners()
                held[i].append(owner)
                chunk.append(records.ip_requested(name, owner))
            yield chunk

    pods_seconds = timed_chunks(current, pod_chunks())
    gc.collect()
    after_pods = resident_bytes()
    peak = peak_resident_bytes()
    cluster = current.clusters["default"]
    addresses = sum(r.slots.used for n in cluster.nodes.values() for r in n.ranges.values())
    placed = sum(1 for n in cluster.nodes.values() if n.ranges and n.error is None)
    result: dict[str, Any] = {
        "family": options.family,
        "nodes": nodes,
        "nodes_placed": placed,
        "pods_per_node": pods,
        "addresses": addresses,
        "nodes_seconds": nodes_seconds,
        "pods_seconds": pods_seconds,
        "baseline_rss": baseline,
        "after_nodes_rss": after_nodes,
        "after_pods_rss": after_pods,
        "peak_rss": peak,
    }
    if options.family == "ipv4":
        # The held-owner model would otherwise count against nothing: it is bench state, and
        # the figures above were taken before the churn phase adds to it.
        result.update(churn_at_full_pool(current, sizes, nodes, names, held, records, owners))
    return result


def churn_at_full_pool(
    current: state.State,
    sizes: Sizes,
    capacity: int,
    names: list[bytes],
    held: list[list[bytes]],
    records: Records,
    owners: Callable[[], bytes],
) -> dict[str, Any]:
    """Bring the pool to 99.9 % of its node CIDRs and time single decisions of a churn mix."""
    rng = random.Random(SEED + 1)
    cluster = current.clusters["default"]
    keep = math.ceil(capacity * POOL_USE)
    order = list(range(capacity))
    rng.shuffle(order)
    gone = order[: capacity - keep]
    hot = order[capacity - keep : capacity - keep + sizes.hot_nodes]
    cold = order[capacity - keep + sizes.hot_nodes :]
    setup = [records.node_deleted(names[i]) for i in gone]
    for i in gone:
        held[i] = []
    # Nearly full node ranges: a /24 has 254 pod addresses; leave one free.
    range_size = (1 << (32 - V4_MASK)) - 2
    for i in hot:
        while len(held[i]) < range_size - 1:
            owner = owners()
            held[i].append(owner)
            setup.append(records.ip_requested(names[i], owner))
    apply_all(current, setup, journal=True)
    used_cidrs = sum(1 for n in cluster.nodes.values() if n.ranges)

    # The churn, generated against a model of the state and timed one decision at a time.
    churn: list[tuple[str, bytes]] = []
    next_node = capacity
    while len(churn) < sizes.churn:
        if rng.random() < 0.05:
            # A node is replaced: the new one gets the CIDR just freed (the pool is at 99.9 %).
            j = rng.randrange(len(cold))
            i = cold[j]
            name, address = node_name(next_node), node_address(next_node)
            names.append(name)
            held.append([])
            cold[j] = next_node
            next_node += 1
            churn.append(("node.deleted", records.node_deleted(names[i])))
            churn.append(("node.added", records.node_added(name, address)))
            held[i] = []
        else:
            i = hot[rng.randrange(len(hot))]
            pods = held[i]
            if len(pods) >= range_size or (len(pods) == range_size - 1 and rng.random() < 0.5):
                owner = pods.pop(rng.randrange(len(pods)))
                churn.append(("ip.released", records.ip_released(names[i], owner)))
            else:
                owner = owners()
                pods.append(owner)
                churn.append(("ip.requested", records.ip_requested(names[i], owner)))

    apply_record = allocation.apply_record
    perf_counter_ns = time.perf_counter_ns
    samples: dict[str, list[int]] = {}
    errors = 0
    for n, (kind, record) in enumerate(churn, start=1):
        began = perf_counter_ns()
        decision, _ = apply_record(current, record)
        took = perf_counter_ns() - began
        samples.setdefault(kind, []).append(took)
        errors += decision.error is not None
        if n % JOURNAL_BATCH == 0:
            cluster.take_changes()
    return {
        "pool_use": used_cidrs / capacity,
        "hot_nodes": len(hot),
        "hot_range_use": (range_size - 1) / range_size,
        "churn_errors": errors,
        "churn_ns": samples,
    }


# --- parent side -----------------------------------------------------------------------------


def run_worker(*arguments: str) -> dict[str, Any]:
    """Run one scenario in a fresh, pinned interpreter and return what it measured."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.core", "worker", *arguments],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    out: dict[str, Any] = json.loads(completed.stdout)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--core-skip-fill",
        action="store_true",
        help="core: only the mixed stream, not the 7 M-address fills (minutes, GBs of memory)",
    )


def run(args: argparse.Namespace) -> list[bench.Result]:
    quick = ["--quick"] if args.quick else []
    repeat = ["--repeat", str(args.repeat)] if args.repeat else []
    results: list[bench.Result] = []

    def say(text: str) -> None:
        print(f"core: {text}", file=sys.stderr, flush=True)

    for label, extra in (
        ("mixed stream, IPv4, journal on", ["--journal"]),
        ("mixed stream, IPv4, journal off", []),
        ("mixed stream, dual stack, journal on", ["--journal", "--dual-stack"]),
    ):
        say(label)
        out = run_worker("throughput", *quick, *repeat, *extra)
        rate = bench.median(out["rates"])
        ok = out["errors"] == 0 and out["deterministic"]
        results.append(
            bench.Result(
                BENCHMARK,
                label,
                rate,
                "events/s",
                target=f">= {THROUGHPUT_TARGET:,}" if "IPv4" in label else "",
                met=(rate >= THROUGHPUT_TARGET and ok) if "IPv4" in label else None,
                detail=(
                    f"{out['events']:,} events, {len(out['rates'])} runs: "
                    + ", ".join(f"{r:,.0f}" for r in out["rates"])
                    + f"; rejected {out['errors']}; same digest every run: {out['deterministic']}"
                ),
            )
        )
    if args.core_skip_fill:
        return results

    say("IPv4 fill and churn (fresh process)")
    v4 = run_worker("fill", "--family", "ipv4", *quick)
    say("IPv6 fill (fresh process)")
    v6 = run_worker("fill", "--family", "ipv6", *quick)
    results.extend(fill_results(v4, v6, quick=bool(quick)))
    return results


def fill_results(v4: dict[str, Any], v6: dict[str, Any], quick: bool) -> list[bench.Result]:
    results: list[bench.Result] = []

    def fill_detail(out: dict[str, Any]) -> str:
        return (
            f"{out['nodes']:,} nodes ({out['nodes_placed']:,} placed) x {out['pods_per_node']} "
            f"pods = {out['addresses']:,} addresses; RSS baseline "
            f"{out['baseline_rss'] / 2**20:,.0f} MiB, after nodes "
            f"{out['after_nodes_rss'] / 2**20:,.0f} MiB, after pods "
            f"{out['after_pods_rss'] / 2**20:,.0f} MiB; node adds {out['nodes_seconds']:.1f} s, "
            f"pod requests {out['pods_seconds']:.1f} s"
        )

    per_node: dict[str, tuple[float, float]] = {}
    for out, label in ((v4, "IPv4 /8 by /24"), (v6, "IPv6 /48 by /112")):
        nodes = out["nodes"]
        memory = out["after_pods_rss"] - out["baseline_rss"]
        seconds = out["nodes_seconds"] + out["pods_seconds"]
        per_node[out["family"]] = (seconds / nodes, memory / nodes)
        complete = out["nodes_placed"] == nodes and out["addresses"] == nodes * out["pods_per_node"]
        # The memory target is about the full-size IPv4 fill only.
        judged = out["family"] == "ipv4" and not quick
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}: peak RSS, {out['addresses'] / 1e6:.1f} M addresses",
                out["peak_rss"],
                "B",
                target=f"<= {MEMORY_TARGET:,}" if judged else "",
                met=(out["peak_rss"] <= MEMORY_TARGET and complete) if judged else None,
                detail=fill_detail(out),
            )
        )
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}: bytes per held address",
                (out["after_pods_rss"] - out["after_nodes_rss"]) / out["addresses"],
                "B",
            )
        )
        results.append(
            bench.Result(BENCHMARK, f"{label}: memory per node (+110 pods)", memory / nodes, "B")
        )
        results.append(
            bench.Result(
                BENCHMARK, f"{label}: time per node (+110 pods)", seconds / nodes * 1e6, "µs"
            )
        )
    time_ratio = per_node["ipv6"][0] / per_node["ipv4"][0]
    memory_ratio = per_node["ipv6"][1] / per_node["ipv4"][1]
    results.append(
        bench.Result(
            BENCHMARK, "IPv6/IPv4 time per node", time_ratio, "ratio", "<= 1", time_ratio <= 1
        )
    )
    results.append(
        bench.Result(
            BENCHMARK,
            "IPv6/IPv4 memory per node",
            memory_ratio,
            "ratio",
            "<= 1",
            memory_ratio <= 1,
        )
    )

    samples: dict[str, list[int]] = v4["churn_ns"]
    everything = sorted(x for values in samples.values() for x in values)
    context = (
        f"node CIDRs {v4['pool_use']:.2%} used, {v4['hot_nodes']:,} node ranges at "
        f"{v4['hot_range_use']:.1%}; {len(everything):,} decisions, rejected "
        f"{v4['churn_errors']}; p99 by type: "
        + ", ".join(
            f"{kind} {bench.percentile(sorted(values), 0.99) / 1000:.1f} µs (n={len(values):,})"
            for kind, values in sorted(samples.items())
        )
    )
    for name, fraction in (("p50", 0.50), ("p99", 0.99)):
        value = bench.percentile(everything, fraction) / 1000
        is_p99 = name == "p99"
        results.append(
            bench.Result(
                BENCHMARK,
                f"one decision at 99.9 % use, {name}",
                value,
                "µs",
                target=f"<= {LATENCY_TARGET_US:.0f}" if is_p99 else "",
                met=value <= LATENCY_TARGET_US and v4["churn_errors"] == 0 if is_p99 else None,
                detail=context if is_p99 else "",
            )
        )
    results.append(
        bench.Result(BENCHMARK, "one decision at 99.9 % use, max", everything[-1] / 1000, "µs")
    )
    return results


# --- worker side -----------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core worker")
    parser.add_argument("scenario", choices=("throughput", "fill"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--journal", action="store_true")
    parser.add_argument("--dual-stack", action="store_true")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4")
    parser.add_argument("--pods", type=int, default=PODS_PER_NODE)
    options = parser.parse_args(argv)
    core = bench.pin_to_one_core()
    out = worker_throughput(options) if options.scenario == "throughput" else worker_fill(options)
    out["pinned_core"] = core
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench.core worker ... (or run everything: python -m bench)")
    sys.exit(worker_main(sys.argv[2:]))
