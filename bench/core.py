"""Core benchmark: the pure allocation core (``service.domain``) in memory, no I/O.

Run by ``python -m bench`` (``--only core``); docs/benchmarks.md, section Core, has the figures.
The scenarios, each against a target of the issue:

- **mixed stream**: node adds and deletes, pod address requests and releases, each a raw JSON
  record through ``allocation.apply_record`` (decode + decide); events per second, median of
  several repetitions, with and without the change journal the allocator drains per batch;
- **IPv4 fill**: 10.0.0.0/8 cut into /24s, one node per /24 (65,536) with 110 pods each (7.2 M
  addresses held), then rounds of pod churn: peak resident memory, bytes per held address, time
  and memory per node; then the pool is brought to 99.9 % of its node CIDRs, 1,000 nodes' ranges
  are filled to 253 of 254 addresses, and single decisions of a churn mix (node delete + add, pod
  release + request) are timed, before and after ``gc.freeze()``;
- **IPv6 fill**: fd00::/48 cut into /112s, 100,000 nodes with 110 pods each and the same churn,
  time and memory per node set against the IPv4 fill of the same run;
- **long churn**: a few nodes whose pods are replaced until the next-fit cursor has gone round
  the whole node CIDR, IPv4 /24 against IPv6 /112 (memory per node in the long run).

Every scenario runs in a fresh subprocess (``python -m bench.core worker ...``) pinned to one
core, so resident memory is that scenario's alone and the parent process is left unpinned for the
benchmarks that follow. Times are wall clock and, beside them, CPU time, which a shared machine
disturbs less. Streams are generated from a seeded ``random.Random``: the same sizes give the
same records, hence the same decisions and digests, on every run.
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
# Rolling replacements of every node's oldest pod after a fill. Enough for the steady state:
# a dict of 110 pods that keeps losing and gaining keys doubles its table once, after ~60.
CHURN_ROUNDS = 80


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
    cpu_rates: list[float] = []
    digests: set[str] = set()
    for _ in range(options.repeat or sizes.repeat):
        current = state.State(track_changes=options.journal)
        apply_all(current, setup, options.journal)
        gc.collect()
        began, began_cpu = time.perf_counter(), time.process_time()
        apply_all(current, stream, options.journal)
        elapsed, elapsed_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        rates.append(len(stream) / elapsed)
        cpu_rates.append(len(stream) / elapsed_cpu)
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
        "cpu_rates": cpu_rates,
        "errors": errors,
        "deterministic": len(digests) == 1,
        "digest": digests.pop(),
    }


# --- fills: memory, time per node, latency at 99.9 % -----------------------------------------


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries that over ``execve`` from the process that
    forked us, so a fresh interpreter would report at least its parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_chunks(current: state.State, chunks: Iterator[list[bytes]]) -> tuple[float, float]:
    """Apply generated chunks of records, timing only ``apply_record`` (journal drained).

    Wall-clock and CPU seconds: on a shared machine the CPU time is the steadier measure of
    what the work costs, so the IPv6/IPv4 comparison uses it.
    """
    elapsed = elapsed_cpu = 0.0
    for chunk in chunks:
        began, began_cpu = time.perf_counter(), time.process_time()
        apply_all(current, chunk, journal=True)
        elapsed += time.perf_counter() - began
        elapsed_cpu += time.process_time() - began_cpu
    return elapsed, elapsed_cpu


def pod_owner(node: int, pod: int) -> bytes:
    """The owner of the ``pod``-th pod ever placed on node ``node``: computed, never stored.

    The fills must not keep a model of 7 M owners beside the state they measure, so owners are
    a function of (node, pod), and who holds what is read back from the state when needed.
    """
    bits = ((node + 1) * 0x9E3779B97F4A7C15 ^ (pod + 1) * 0xC2B2AE3D27D4EB4F) >> 4
    bits &= (1 << 60) - 1
    return b"team-%02d/web-%010x-%05x" % (bits % 40, bits >> 20, bits & 0xFFFFF)


def worker_fill(options: argparse.Namespace) -> dict[str, Any]:
    """Fill a single-family pool with nodes and pods, churn pods, then (IPv4) time decisions."""
    sizes = QUICK if options.quick else FULL
    records = Records()
    if options.family == "ipv4":
        family = 4
        nodes = 1 << (V4_MASK - int(sizes.v4_pool.split("/")[1]))
        pool = records.pool((sizes.v4_pool, V4_MASK), None)
    else:
        family = 6
        nodes = sizes.v6_nodes
        pool = records.pool(None, (V6_POOL, V6_MASK))
    pods = options.pods
    current = state.State(track_changes=True)
    apply_all(current, [pool], journal=True)
    cluster = current.clusters["default"]
    names = [node_name(i) for i in range(nodes)]
    gc.collect()
    baseline = resident_bytes()

    def node_chunks() -> Iterator[list[bytes]]:
        step = 65_536
        for start in range(0, nodes, step):
            yield [
                records.node_added(names[i], node_address(i))
                for i in range(start, min(nodes, start + step))
            ]

    nodes_seconds, nodes_cpu = timed_chunks(current, node_chunks())
    gc.collect()
    after_nodes = resident_bytes()

    def pod_chunks() -> Iterator[list[bytes]]:
        # Pods arrive round-robin over the nodes, as a scheduler spreads them.
        for pod in range(pods):
            yield [records.ip_requested(names[i], pod_owner(i, pod)) for i in range(nodes)]

    pods_seconds, pods_cpu = timed_chunks(current, pod_chunks())
    gc.collect()
    after_pods = resident_bytes()
    filled_peak = peak_resident_bytes()
    addresses = sum(r.slots.used for n in cluster.nodes.values() for r in n.ranges.values())
    placed = sum(1 for n in cluster.nodes.values() if n.ranges and n.error is None)

    def churn_chunks() -> Iterator[list[bytes]]:
        # Each round replaces every node's oldest pod: a rolling update across the cluster. The
        # next-fit cursor moves on at every request, so released addresses accumulate behind it.
        for round_ in range(options.churn_rounds):
            chunk = []
            for i, name in enumerate(names):
                oldest = next(iter(cluster.nodes[name.decode()].ranges[family].by_owner))
                chunk.append(records.ip_released(name, oldest.encode()))
                chunk.append(records.ip_requested(name, pod_owner(i, pods + round_)))
            yield chunk

    churn_seconds, churn_cpu = timed_chunks(current, churn_chunks())
    gc.collect()
    after_churn = resident_bytes()
    churned = sum(r.slots.used for n in cluster.nodes.values() for r in n.ranges.values())
    result: dict[str, Any] = {
        "family": options.family,
        "nodes": nodes,
        "nodes_placed": placed,
        "pods_per_node": pods,
        "addresses": addresses,
        "nodes_seconds": nodes_seconds,
        "pods_seconds": pods_seconds,
        "nodes_cpu_seconds": nodes_cpu,
        "pods_cpu_seconds": pods_cpu,
        "churn_rounds": options.churn_rounds,
        "churn_events": 2 * options.churn_rounds * nodes,
        "churn_seconds": churn_seconds,
        "churn_cpu_seconds": churn_cpu,
        "addresses_after_churn": churned,
        "baseline_rss": baseline,
        "after_nodes_rss": after_nodes,
        "after_pods_rss": after_pods,
        "after_churn_rss": after_churn,
        "filled_peak_rss": filled_peak,
        "peak_rss": peak_resident_bytes(),  # fill and churn
    }
    if options.family == "ipv4":
        result.update(churn_at_full_pool(current, sizes, names, records))
    return result


def churn_at_full_pool(
    current: state.State, sizes: Sizes, names: list[bytes], records: Records
) -> dict[str, Any]:
    """Bring the pool to 99.9 % of its node CIDRs and time single decisions of a churn mix.

    Records are made just before they are applied (the choice of what to release reads the
    state), and only ``apply_record`` is inside the timer.
    """
    rng = random.Random(SEED + 1)
    cluster = current.clusters["default"]
    capacity = len(names)
    keep = math.ceil(capacity * POOL_USE)
    order = list(range(capacity))
    rng.shuffle(order)
    gone = order[: capacity - keep]
    hot = order[capacity - keep : capacity - keep + sizes.hot_nodes]
    cold = order[capacity - keep + sizes.hot_nodes :]
    setup = [records.node_deleted(names[i]) for i in gone]
    # Nearly full node ranges: a /24 has 254 pod addresses; leave one free.
    range_size = (1 << (32 - V4_MASK)) - 2
    for i in hot:
        held = len(cluster.nodes[names[i].decode()].ranges[4].by_owner)
        setup.extend(
            records.ip_requested(names[i], pod_owner(i, 10_000 + k))
            for k in range(range_size - 1 - held)
        )
    apply_all(current, setup, journal=True)
    used_cidrs = sum(1 for n in cluster.nodes.values() if n.ranges)
    hot_use = [len(cluster.nodes[names[i].decode()].ranges[4].by_owner) for i in hot]

    apply_record = allocation.apply_record
    perf_counter_ns = time.perf_counter_ns
    fresh = 20_000

    def churn(count: int) -> tuple[dict[str, list[int]], int]:
        nonlocal fresh
        samples: dict[str, list[int]] = {}
        errors = 0

        def timed(kind: str, record: bytes) -> None:
            nonlocal errors
            began = perf_counter_ns()
            decision, _ = apply_record(current, record)
            took = perf_counter_ns() - began
            samples.setdefault(kind, []).append(took)
            errors += decision.error is not None

        done = 0
        drain_at = JOURNAL_BATCH
        while done < count:
            if rng.random() < 0.05:
                # A node is replaced: the new one gets the CIDR just freed (pool at 99.9 %).
                j = rng.randrange(len(cold))
                timed("node.deleted", records.node_deleted(names[cold[j]]))
                cold[j] = len(names)
                names.append(node_name(len(names)))
                timed("node.added", records.node_added(names[cold[j]], node_address(cold[j])))
                done += 2
            else:
                i = hot[rng.randrange(len(hot))]
                by_owner = cluster.nodes[names[i].decode()].ranges[4].by_owner
                if len(by_owner) >= range_size or (
                    len(by_owner) == range_size - 1 and rng.random() < 0.5
                ):
                    owner = next(iter(by_owner)).encode()
                    timed("ip.released", records.ip_released(names[i], owner))
                else:
                    fresh += 1
                    timed("ip.requested", records.ip_requested(names[i], pod_owner(i, fresh)))
                done += 1
            if done >= drain_at:
                cluster.take_changes()  # between decisions, untimed, as the allocator's batches do
                drain_at += JOURNAL_BATCH
        return samples, errors

    samples, errors = churn(sizes.churn)
    # The same again once the loaded state is moved out of the collector's sight: what a
    # long-running allocator can do after its initial load (the collector otherwise walks
    # every node now and then, inside some decision).
    gc.freeze()
    frozen, frozen_errors = churn(sizes.churn)
    gc.unfreeze()
    return {
        "pool_use": used_cidrs / capacity,
        "hot_nodes": len(hot),
        "hot_range_use": sum(hot_use) / (len(hot_use) * range_size),
        "churn_errors": errors,
        "churn_ns": samples,
        "frozen_errors": frozen_errors,
        "frozen_ns": frozen,
    }


def worker_long_churn(options: argparse.Namespace) -> dict[str, Any]:
    """A few nodes whose pods are replaced until the next-fit cursor has gone round once.

    The fills churn for a few rounds only; this shows what a node costs after months of pod
    churn, when every address of its CIDR has been handed out at least once (254 requests for
    a /24, 65,534 for a /112). Memory is traced allocations (tracemalloc), not RSS: the
    difference is per node and small next to a whole interpreter.
    """
    import tracemalloc  # noqa: PLC0415 - only here: tracing slows everything else down

    family = 4 if options.family == "ipv4" else 6
    nodes = 4
    records = Records()
    current = state.State(track_changes=True)
    pool = (
        records.pool((FULL.v4_pool, V4_MASK), None)
        if family == 4
        else records.pool(None, (V6_POOL, V6_MASK))
    )
    apply_all(current, [pool], journal=True)
    cluster = current.clusters["default"]
    names = [node_name(i) for i in range(nodes)]
    # The shared offset objects are a fixed cost per process, not per node: made before tracing.
    state.shared_offset(state.CACHED_INT_MAX + 1)
    tracemalloc.start()
    apply_all(current, [records.node_added(n, node_address(i)) for i, n in enumerate(names)], True)
    for pod in range(options.pods):
        apply_all(
            current, [records.ip_requested(n, pod_owner(i, pod)) for i, n in enumerate(names)], True
        )
    gc.collect()
    filled, _ = tracemalloc.get_traced_memory()
    ranges = [cluster.nodes[n.decode()].ranges[family] for n in names]
    wrap = ranges[0].slots.capacity
    rounds = 0
    cpu = 0.0
    # --quick stops early: far enough to show a trend, not the whole 65,534 requests.
    limit = 2_000 if options.quick else wrap
    while rounds < limit and (ranges[0].slots.cursor < wrap - 1 or rounds < wrap - options.pods):
        chunk = []
        for i, name in enumerate(names):
            oldest = next(iter(ranges[i].by_owner))
            chunk.append(records.ip_released(name, oldest.encode()))
            chunk.append(records.ip_requested(name, pod_owner(i, options.pods + rounds)))
        began = time.process_time()
        apply_all(current, chunk, journal=True)
        cpu += time.process_time() - began
        rounds += 1
    gc.collect()
    churned, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "family": options.family,
        "nodes": nodes,
        "rounds": rounds,
        "events": 2 * rounds * nodes,
        "cpu_seconds": cpu,
        "filled_bytes": filled,
        "churned_bytes": churned,
        "held": sum(len(r.by_owner) for r in ranges),
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
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}, by CPU time",
                bench.median(out["cpu_rates"]),
                "events/s",
                detail=", ".join(f"{r:,.0f}" for r in out["cpu_rates"]),
            )
        )
    if args.core_skip_fill:
        return results

    say("a node's pods churned until its cursor wraps, IPv4 and IPv6 (fresh processes)")
    results.extend(
        long_churn_results(
            run_worker("long-churn", "--family", "ipv4", *quick),
            run_worker("long-churn", "--family", "ipv6", *quick),
        )
    )

    say("IPv4 fill and churn (fresh process)")
    v4 = run_worker("fill", "--family", "ipv4", *quick)
    say("IPv6 fill (fresh process)")
    v6 = run_worker("fill", "--family", "ipv6", *quick)
    results.extend(fill_results(v4, v6, quick=bool(quick)))
    return results


def long_churn_results(v4: dict[str, Any], v6: dict[str, Any]) -> list[bench.Result]:
    results: list[bench.Result] = []
    growth: dict[str, float] = {}
    for out, label in ((v4, "IPv4 /24"), (v6, "IPv6 /112")):
        growth[out["family"]] = (out["churned_bytes"] - out["filled_bytes"]) / out["nodes"]
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}: memory growth per node, cursor gone round once",
                growth[out["family"]],
                "B",
                detail=(
                    f"{out['nodes']} nodes x 110 pods, oldest pod replaced {out['rounds']:,} "
                    f"times ({out['events']:,} events, "
                    f"{out['cpu_seconds'] / out['events'] * 1e6:.2f} µs CPU each); traced "
                    f"{out['filled_bytes'] / out['nodes']:,.0f} B per node before, "
                    f"{out['churned_bytes'] / out['nodes']:,.0f} B after"
                ),
            )
        )
    return results


def fill_results(v4: dict[str, Any], v6: dict[str, Any], quick: bool) -> list[bench.Result]:
    results: list[bench.Result] = []

    def fill_detail(out: dict[str, Any]) -> str:
        return (
            f"{out['nodes']:,} nodes ({out['nodes_placed']:,} placed) x {out['pods_per_node']} "
            f"pods = {out['addresses']:,} addresses; RSS baseline "
            f"{out['baseline_rss'] / 2**20:,.0f} MiB, after nodes "
            f"{out['after_nodes_rss'] / 2**20:,.0f} MiB, after pods "
            f"{out['after_pods_rss'] / 2**20:,.0f} MiB (peak so far "
            f"{out['filled_peak_rss'] / 2**20:,.0f} MiB), after {out['churn_rounds']} churn "
            f"rounds {out['after_churn_rss'] / 2**20:,.0f} MiB; "
            f"node adds {out['nodes_seconds']:.1f} s "
            f"({out['nodes_cpu_seconds']:.1f} s CPU), pod requests {out['pods_seconds']:.1f} s "
            f"({out['pods_cpu_seconds']:.1f} s CPU)"
        )

    per_node: dict[str, tuple[float, float]] = {}
    for out, label in ((v4, "IPv4 /8 by /24"), (v6, "IPv6 /48 by /112")):
        nodes = out["nodes"]
        memory = out["after_pods_rss"] - out["baseline_rss"]
        seconds = out["nodes_seconds"] + out["pods_seconds"]
        cpu_seconds = out["nodes_cpu_seconds"] + out["pods_cpu_seconds"]
        per_node[out["family"]] = (cpu_seconds / nodes, memory / nodes)
        complete = out["nodes_placed"] == nodes and out["addresses"] == nodes * out["pods_per_node"]
        # The memory target is about the full-size IPv4 fill only.
        judged = out["family"] == "ipv4" and not quick
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}: peak RSS, {out['addresses'] / 1e6:.1f} M addresses, fill + churn",
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
                BENCHMARK,
                f"{label}: CPU time per node (+110 pods)",
                cpu_seconds / nodes * 1e6,
                "µs",
                detail=f"wall clock {seconds / nodes * 1e6:,.0f} µs per node",
            )
        )
    churn: dict[str, tuple[float, float]] = {}
    for out, label in ((v4, "IPv4 /8 by /24"), (v6, "IPv6 /48 by /112")):
        nodes = out["nodes"]
        memory = out["after_churn_rss"] - out["baseline_rss"]
        per_event = out["churn_cpu_seconds"] / out["churn_events"]
        churn[out["family"]] = (per_event, memory / nodes)
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}: memory per node after {out['churn_rounds']} pod churn rounds",
                memory / nodes,
                "B",
                detail=(
                    f"every node's oldest pod replaced {out['churn_rounds']} times "
                    f"({out['churn_events']:,} events, {per_event * 1e6:.2f} µs CPU each, "
                    f"{out['churn_seconds']:.1f} s wall); RSS after "
                    f"{out['after_churn_rss'] / 2**20:,.0f} MiB; addresses held "
                    f"{out['addresses_after_churn']:,}"
                ),
            )
        )
    time_ratio = per_node["ipv6"][0] / per_node["ipv4"][0]
    memory_ratio = per_node["ipv6"][1] / per_node["ipv4"][1]
    results.append(
        bench.Result(
            BENCHMARK, "IPv6/IPv4 CPU time per node", time_ratio, "ratio", "<= 1", time_ratio <= 1
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

    churn_memory_ratio = churn["ipv6"][1] / churn["ipv4"][1]
    results.append(
        bench.Result(
            BENCHMARK,
            "IPv6/IPv4 memory per node after pod churn",
            churn_memory_ratio,
            "ratio",
            "<= 1",
            churn_memory_ratio <= 1,
        )
    )
    churn_time_ratio = churn["ipv6"][0] / churn["ipv4"][0]
    results.append(
        bench.Result(
            BENCHMARK,
            "IPv6/IPv4 CPU time per pod churn event",
            churn_time_ratio,
            "ratio",
            "<= 1",
            churn_time_ratio <= 1,
        )
    )

    samples: dict[str, list[int]] = v4["churn_ns"]
    everything = sorted(x for values in samples.values() for x in values)
    context = (
        f"node CIDRs {v4['pool_use']:.2%} used, {v4['hot_nodes']:,} node ranges at "
        f"{v4['hot_range_use']:.1%}; {len(everything):,} decisions, rejected "
        f"{v4['churn_errors']}; p50/p99 by type: "
        + ", ".join(
            f"{kind} {bench.percentile(sorted(values), 0.50) / 1000:.1f}/"
            f"{bench.percentile(sorted(values), 0.99) / 1000:.1f} µs (n={len(values):,})"
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
    frozen = sorted(x for values in v4["frozen_ns"].values() for x in values)
    results.append(
        bench.Result(
            BENCHMARK,
            "the same after gc.freeze(), p99",
            bench.percentile(frozen, 0.99) / 1000,
            "µs",
            detail=(
                f"{len(frozen):,} more decisions of the same mix, rejected "
                f"{v4['frozen_errors']}, with the loaded state frozen out of the collector"
            ),
        )
    )
    results.append(
        bench.Result(BENCHMARK, "the same after gc.freeze(), max", frozen[-1] / 1000, "µs")
    )
    return results


# --- worker side -----------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core worker")
    parser.add_argument("scenario", choices=sorted(WORKERS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--journal", action="store_true")
    parser.add_argument("--dual-stack", action="store_true")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4")
    parser.add_argument("--pods", type=int, default=PODS_PER_NODE)
    parser.add_argument("--churn-rounds", type=int, default=CHURN_ROUNDS)
    options = parser.parse_args(argv)
    core = bench.pin_to_one_core()
    out = WORKERS[options.scenario](options)
    out["pinned_core"] = core
    json.dump(out, sys.stdout)
    return 0


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "throughput": worker_throughput,
    "fill": worker_fill,
    "long-churn": worker_long_churn,
}


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench.core worker ... (or run everything: python -m bench)")
    sys.exit(worker_main(sys.argv[2:]))
