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
- **worst cases per decision** (``--core-only worst`` runs only these): single decisions timed
  in states built to be the worst for them, each case's p99 held against 100 µs: pool repeats
  and growth at the contract's 1,024 elements per family, canonical and spelt otherwise;
  ``node.deleted`` with 10,000 nodes waiting behind a full pool (IPv4, and dual stack with
  IPv6 full); ``node.adopted`` into a crowded pool, and refused; every kind of decision in a
  65,536-node cluster with 110 pods per node. The time is ``allocation.apply`` on the decoded
  event, the decode of the same record beside it, and the loaded state is frozen
  (``gc.freeze()``) as the allocator does after loading. ``--core-profile`` runs them under
  cProfile instead and prints where each case's time goes.

Every scenario runs in a fresh subprocess (``python -m bench.core worker ...``) pinned to one
core, so resident memory is that scenario's alone and the parent process is left unpinned for the
benchmarks that follow. Times are wall clock and, beside them, CPU time, which a shared machine
disturbs less. Streams are generated from a seeded ``random.Random``: the same sizes give the
same records, hence the same decisions and digests, on every run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import json
import math
import os
import pstats
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench
from service.domain import addresses, allocation, document, events, state

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
    mixed_nodes=100,
    mixed_pods=50,
    mixed_events=10_000,
    repeat=2,
    v4_pool="10.0.0.0/16",
    v6_nodes=400,
    hot_nodes=20,
    churn=1_000,
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

    def pool_lists(
        self,
        v4: tuple[list[str], int] | None,
        v6: tuple[list[str], int] | None,
        cluster: str | None = None,
    ) -> bytes:
        """``pool.configured`` with whole element lists (``pool`` has one element each)."""
        body: dict[str, Any] = {"type": "pool.configured", "id": f"evt-{self._next_id():010d}"}
        if cluster is not None:
            body["cluster"] = cluster
        if v4 is not None:
            body["clusterPoolIPv4PodCIDRList"] = v4[0]
            body["clusterPoolIPv4MaskSize"] = v4[1]
        if v6 is not None:
            body["clusterPoolIPv6PodCIDRList"] = v6[0]
            body["clusterPoolIPv6MaskSize"] = v6[1]
        return json.dumps(body, separators=(",", ":")).encode()

    def node_adopted(self, node: bytes, cidrs: list[str], address: bytes) -> bytes:
        quoted = b",".join(b'"%s"' % cidr.encode() for cidr in cidrs)
        return (
            b'{"type":"node.adopted","id":"evt-%010d","time":"%s","node":"%s","podCIDRs":[%s],'
            b'"addresses":["%s"]}' % (self._next_id(), self.TIME, node, quoted, address)
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

    memory_curve: list[tuple[int, int]] = []

    def pod_chunks() -> Iterator[list[bytes]]:
        # Pods arrive round-robin over the nodes, as a scheduler spreads them. Resident memory
        # is read between chunks (outside the timed apply) for the report's memory plot.
        for pod in range(pods):
            memory_curve.append((pod * nodes, resident_bytes()))
            yield [records.ip_requested(names[i], pod_owner(i, pod)) for i in range(nodes)]

    pods_seconds, pods_cpu = timed_chunks(current, pod_chunks())
    gc.collect()
    after_pods = resident_bytes()
    filled_peak = peak_resident_bytes()
    memory_curve.append((pods * nodes, after_pods))
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
        "memory_curve": memory_curve,
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


# --- worst cases per decision ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorstSizes:
    """How big the worst cases are; ``WORST_FULL`` is what the issue's figures are about."""

    elements: int  # pool elements per family (the contract allows at most 1,024)
    waiting: int  # nodes waiting while the pool is full
    cluster_pool: str  # the large cluster's IPv4 pool: /24 node CIDRs, one node per CIDR
    repeat: int  # timed decisions per case
    costly_repeat: int  # the same for a case that costs milliseconds
    growth: int  # pool growths per family, each in a cluster of its own (2.2 MB, 70 ms to set up)


WORST_FULL = WorstSizes(
    elements=1_024,
    waiting=10_000,
    cluster_pool="10.0.0.0/8",
    repeat=1_000,
    costly_repeat=300,
    growth=200,
)
WORST_QUICK = WorstSizes(
    elements=32, waiting=200, cluster_pool="10.0.0.0/16", repeat=50, costly_repeat=10, growth=10
)
WORST_V6_PREFIX = 110  # IPv6 elements of the crowded pool: 4 node CIDRs of /112 each


def v4_element(index: int) -> ipaddress.IPv4Network:
    """Element ``index`` of the worst cases' IPv4 lists: 10.0.0.0/24, 10.0.1.0/24, ..."""
    return ipaddress.IPv4Network((10 << 24 | index << 8, 24))


def v6_element(index: int, prefix: int) -> ipaddress.IPv6Network:
    """Element ``index`` of an IPv6 list of consecutive fd00::/``prefix`` blocks."""
    return ipaddress.IPv6Network((0xFD00 << 112 | index << (128 - prefix), prefix))


def spelt(networks: list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network]) -> list[str]:
    """The networks' canonical text, as decisions and the state spell them."""
    return [addresses.format_network(n) for n in networks]


def uncompressed(network: ipaddress.IPv6Network) -> str:
    """``network`` with all eight groups spelt (``fd00:0:0:0:0:0:14:0/110``): valid, not ours."""
    value = int(network.network_address)
    groups = ":".join(f"{value >> shift & 0xFFFF:x}" for shift in range(112, -1, -16))
    return f"{groups}/{network.prefixlen}"


def half_compressed(network: ipaddress.IPv6Network) -> str:
    """``network`` with one zero group spelt before the "::" (``fd00:0::14:0/110``)."""
    return addresses.format_network(network).replace("::", ":0::", 1)


def pod_cidrs(decision: events.Decision) -> tuple[str, ...]:
    """A decision's ``podCIDRs``; () for one that has none."""
    cidrs = decision.pod_cidrs
    return cidrs if isinstance(cidrs, tuple) else ()


class WorstCases:
    """Single records timed in a loaded state, per case: the decode and the decision apart.

    Measured as the allocator runs: journal on (drained untimed every ``JOURNAL_BATCH``
    decisions), and before the timed records the loaded state is collected and frozen out of
    the collector's sight exactly as ``Allocator._load`` does it (``gc.unfreeze()``,
    ``gc.collect()``, ``gc.freeze()``); the collector stays on for everything after.
    """

    def __init__(self, current: state.State, context: str, profile: bool = False) -> None:
        self.current = current
        self.context = context
        self.records = Records()
        self.cases: dict[str, dict[str, Any]] = {}
        # --profile: each case's decisions under a cProfile of their own (times inflated).
        self.profilers: dict[str, cProfile.Profile] | None = {} if profile else None
        self._last = ""
        self._timed = 0

    def loaded(self) -> None:
        for cluster in self.current.clusters.values():
            cluster.take_changes()
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def timed(self, case: str, record: bytes) -> events.Decision:
        """Decode ``record``, then apply it, each timed alone (``perf_counter_ns``).

        The decision's time is ``allocation.apply`` on the decoded event: what the allocator
        spends on a record once it has been read. Its CPU time (this thread's, so time spent
        preempted by the machine's other work is left out) is taken around the wall-clock
        reads, and includes about half a microsecond of reading that clock.
        """
        entry = self.cases.setdefault(
            case,
            {
                "decide_ns": [],
                "decide_cpu_ns": [],
                "decode_ns": [],
                "record_bytes": [],
                "unintended": 0,
            },
        )
        perf_counter_ns = time.perf_counter_ns
        thread_time_ns = time.thread_time_ns
        began = perf_counter_ns()
        event = events.decode(record)
        if isinstance(event, events.DecodeFailure):  # part of decoding, as in apply_record
            raise RuntimeError(f"bench: {case}: a generated record does not decode: {event}")
        decoded = perf_counter_ns()
        if self.profilers is not None:
            profiler = self.profilers.setdefault(case, cProfile.Profile())
            cpu_began = thread_time_ns()
            deciding = perf_counter_ns()
            decision = profiler.runcall(allocation.apply, self.current, event)
        else:
            cpu_began = thread_time_ns()
            deciding = perf_counter_ns()
            decision = allocation.apply(self.current, event)
        decided = perf_counter_ns()
        cpu = thread_time_ns() - cpu_began
        entry["decode_ns"].append(decoded - began)
        entry["decide_ns"].append(decided - deciding)
        entry["decide_cpu_ns"].append(cpu)
        entry["record_bytes"].append(len(record))
        self._last = case
        self._timed += 1
        if self._timed % JOURNAL_BATCH == 0:
            for cluster in self.current.clusters.values():
                cluster.take_changes()
        return decision

    def intended(self, ok: bool, decision: events.Decision) -> None:
        """Whether the last timed decision did what its case is about (else it measured
        something else): counted, and the first miss kept for the report."""
        if not ok:
            entry = self.cases[self._last]
            entry["unintended"] += 1
            entry.setdefault("first_unintended", repr(decision))

    def out(self) -> dict[str, Any]:
        if self.profilers is not None:
            for case, profiler in self.profilers.items():
                self.cases[case]["profile"] = profile_rows(
                    profiler, len(self.cases[case]["decide_ns"])
                )
        return {"context": self.context, "cases": self.cases, "profiled": bool(self.profilers)}


def profile_rows(profiler: cProfile.Profile, decisions: int, top: int = 12) -> list[str]:
    """The functions with the most own time, per decision: calls, own and cumulative µs."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = []
    for (path, line, function), (_, calls, own, cumulative, _) in rows:
        where = f"{Path(path).name}:{line}" if line else path
        lines.append(
            f"{own / decisions * 1e6:9.2f} µs own {cumulative / decisions * 1e6:9.2f} µs cum "
            f"{calls / decisions:8.2f} calls  {function} ({where})"
        )
    return lines


def worker_worst_pool(options: argparse.Namespace) -> dict[str, Any]:
    """Pool repeats and adoptions in a crowded dual-stack pool of the contract's size.

    1,024 elements per family, each cut into 4 node CIDRs, every one full but the last, which
    has 2 CIDRs free per family.
    """
    sizes = WORST_QUICK if options.quick else WORST_FULL
    k = sizes.elements
    v4_networks = [v4_element(i) for i in range(k)]
    v6_networks = [v6_element(i, WORST_V6_PREFIX) for i in range(k)]
    v4 = (spelt(v4_networks), 26)
    v6 = (spelt(v6_networks), 112)
    # Two spellings of the IPv6 list that are not ours (IPv4 has none the contract accepts).
    spellings = ([uncompressed(n) for n in v6_networks], [half_compressed(n) for n in v6_networks])
    for texts in spellings:
        assert [addresses.parse_network(t) for t in texts] == v6_networks
    current = state.State(track_changes=True)
    used = 4 * k - 2
    worst = WorstCases(
        current,
        profile=options.profile,
        context=(
            f"dual stack, {k:,} IPv4 elements /24 by /26 and {k:,} IPv6 /{WORST_V6_PREFIX} by "
            f"/112, {used:,} nodes: every element full but the last, which has 2 of its 4 free"
        ),
    )
    records = worst.records
    apply_all(current, [records.pool_lists(v4, v6)], journal=True)
    apply_all(
        current,
        [records.node_added(node_name(i), node_address(i)) for i in range(used)],
        journal=True,
    )
    cluster = current.clusters["default"]
    last = {f: cluster.pools[f].elements[-1] for f in (4, 6)}
    for family, pool in cluster.pools.items():
        assert len(pool.elements) == k and last[family].slots.used == 2
        assert all(e.slots.full for e in pool.elements[:-1])
    worst.loaded()

    def pool_kept(decision: events.Decision) -> bool:
        return decision.error is None and all(len(p.elements) == k for p in cluster.pools.values())

    case = "pool repeat, canonical text"
    for _ in range(sizes.repeat):
        decision = worst.timed(case, records.pool_lists(v4, v6))
        worst.intended(pool_kept(decision), decision)
    case = "pool repeat, IPv6 spelt unlike the record before (2 spellings in turn)"
    for i in range(sizes.costly_repeat):
        decision = worst.timed(case, records.pool_lists(v4, (spellings[i % 2], 112)))
        worst.intended(pool_kept(decision), decision)
    # The last one was spelt half-compressed or uncompressed; repeat it as spelt.
    case = "pool repeat, IPv6 spelt as the record before (not canonical)"
    for _ in range(sizes.repeat):
        texts = spellings[(sizes.costly_repeat - 1) % 2]
        decision = worst.timed(case, records.pool_lists(v4, (texts, 112)))
        worst.intended(pool_kept(decision), decision)

    free = [str(last[4].cidr_at(2)), str(last[6].cidr_at(2))]
    refusals = (
        (
            "node.adopted refused: CIDR already allocated (node pinned)",
            str(cluster.pools[4].elements[0].cidr_at(0)),
            "requested CIDR (",
        ),
        (
            "node.adopted refused: CIDR just past the pool",
            f"10.{k >> 8}.{k & 255}.0/26",
            "allocator not configured",
        ),
        (
            "node.adopted refused: CIDR of the wrong size",
            f"{last[4].text.split('/')[0]}/25",
            "allocator not configured",
        ),
    )
    index = used
    for _ in range(sizes.repeat):
        for case, cidrs in (
            ("node.adopted into the last element, IPv4 + IPv6", free),
            ("node.adopted into the last element, IPv4 only (IPv6 by next-fit)", free[:1]),
        ):
            name = node_name(index)
            decision = worst.timed(case, records.node_adopted(name, cidrs, node_address(index)))
            got = pod_cidrs(decision)
            worst.intended(decision.error is None and got[: len(cidrs)] == tuple(cidrs), decision)
            decision = worst.timed(
                "node.deleted of that node (frees into the last element)",
                records.node_deleted(name),
            )
            worst.intended(decision.error is None and decision.pod_cidrs == got, decision)
            index += 1
        for case, cidr, error in refusals:
            name = node_name(index)
            decision = worst.timed(case, records.node_adopted(name, [cidr], node_address(index)))
            pinned = cluster.nodes[name.decode()].pinned
            worst.intended((decision.error or "").startswith(error) and pinned, decision)
            decision = worst.timed(
                "node.deleted of a pinned node (frees nothing)", records.node_deleted(name)
            )
            worst.intended(decision.error is None and decision.pod_cidrs == (), decision)
            index += 1
    return worst.out()


def worker_worst_growth(options: argparse.Namespace) -> dict[str, Any]:
    """Pool growth by one element to the contract's 1,024, and a cluster's first configuration.

    The contract allows at most 1,024 elements per family (a longer list does not decode), so
    the largest growth by one goes from 1,023 to 1,024, and a cluster can grow so only once:
    one cluster per timed growth, all configured first (each first configuration, 1,023
    elements in one family and 1,024 in the other, timed with what came before it frozen),
    then loaded and frozen as the allocator does, then each grown once. No nodes: what the
    growth itself costs (serving waiting nodes is measured with the deletions).
    """
    sizes = WORST_QUICK if options.quick else WORST_FULL
    k = sizes.elements
    lists = {
        4: spelt([v4_element(i) for i in range(k)]),
        6: spelt([v6_element(i, WORST_V6_PREFIX) for i in range(k)]),
    }
    current = state.State(track_changes=True)
    worst = WorstCases(
        current,
        profile=options.profile,
        context=(
            f"dual stack (IPv4 /24 elements by /26, IPv6 /{WORST_V6_PREFIX} by /112), no "
            f"nodes, {2 * sizes.growth:,} clusters"
        ),
    )
    records = worst.records
    grown = [
        (family, f"grow-ipv{family}-{i:04d}") for i in range(sizes.growth) for family in (4, 6)
    ]
    for family, name in grown:
        before = {f: lists[f][: k - 1] if f == family else lists[f] for f in (4, 6)}
        # What is there already is frozen, as a loaded allocator's state would be: otherwise
        # the collector's full passes over hundreds of clusters land in these decisions.
        gc.freeze()
        decision = worst.timed(
            f"first pool.configured of a cluster, {k - 1:,} + {k:,} elements",
            records.pool_lists((before[4], 26), (before[6], 112), cluster=name),
        )
        worst.intended(decision.error is None, decision)
    worst.loaded()
    for family, name in grown:
        decision = worst.timed(
            f"IPv{family} grows from {k - 1:,} to {k:,} elements",
            records.pool_lists((lists[4], 26), (lists[6], 112), cluster=name),
        )
        pools = current.clusters[name].pools
        worst.intended(
            decision.error is None and all(len(p.elements) == k for p in pools.values()),
            decision,
        )
    return worst.out()


def worker_worst_waiting(options: argparse.Namespace) -> dict[str, Any]:
    """``node.deleted`` with 10,000 nodes waiting behind a full pool of 1,024 elements.

    IPv4 only: 1,024 elements of one /24 each, all held. Dual stack: IPv4 has room (1,024 /24s
    by /26) and IPv6 is full (1,024 /112s by /112); the waiting nodes need both families, and
    256 of them hold an adopted IPv4 CIDR and wait for an IPv6 one. Each timed deletion is
    followed by the arrival that brings the queue back to 10,000 (timed as well).
    """
    sizes = WORST_QUICK if options.quick else WORST_FULL
    k = sizes.elements
    dual = options.dual_stack
    rng = random.Random(SEED + 2)
    current = state.State(track_changes=True)
    holders_wanted = k // 4 if dual else 0
    if dual:
        context = (
            f"dual stack, {k:,} IPv4 /24 elements by /26 (room), {k:,} IPv6 /112 elements by "
            f"/112, all {k:,} IPv6 CIDRs held; {sizes.waiting:,} nodes waiting, "
            f"{holders_wanted:,} of them holding an IPv4 CIDR"
        )
    else:
        context = (
            f"IPv4 only, {k:,} elements /24 by /24 (one CIDR each), all held; "
            f"{sizes.waiting:,} nodes waiting"
        )
    worst = WorstCases(current, context, profile=options.profile)
    records = worst.records
    v4 = (spelt([v4_element(i) for i in range(k)]), 26 if dual else 24)
    v6 = (spelt([v6_element(i, 112) for i in range(k)]), 112) if dual else None
    cluster_records = [records.pool_lists(v4, v6)]
    next_index = 0

    def arrival() -> tuple[str, bytes]:
        nonlocal next_index
        name = node_name(next_index)
        record = records.node_added(name, node_address(next_index))
        next_index += 1
        return name.decode(), record

    placed: list[str] = []
    waiting: list[str] = []
    for _ in range(k):
        name, record = arrival()
        placed.append(name)
        cluster_records.append(record)
    for _ in range(sizes.waiting - holders_wanted):
        name, record = arrival()
        waiting.append(name)
        cluster_records.append(record)
    apply_all(current, cluster_records, journal=True)
    cluster = current.clusters["default"]
    # IPv4-only holders: adopted into free IPv4 CIDRs past those the placed nodes hold.
    holders: list[str] = []
    v4_elements = cluster.pools[4].elements
    for h in range(holders_wanted):
        element = v4_elements[k // 4 + h // 4]
        name = node_name(next_index).decode()
        apply_all(
            current,
            [
                records.node_adopted(
                    name.encode(),
                    [str(element.cidr_at(h % 4))],
                    node_address(next_index),
                )
            ],
            journal=True,
        )
        next_index += 1
        holders.append(name)
    assert len(cluster.waiting) == sizes.waiting
    assert all(e.slots.full for e in cluster.pools[6 if dual else 4].elements)
    worst.loaded()
    added = f"node.added, pool full (joins the {sizes.waiting:,} waiting)"

    def arrive() -> None:
        name, record = arrival()
        decision = worst.timed(added, record)
        worst.intended(decision.error == allocation.ALLOCATOR_FULL, decision)
        waiting.append(name)

    def pick(names: list[str]) -> str:
        i = rng.randrange(len(names))
        names[i], names[-1] = names[-1], names[i]
        return names.pop()

    for _ in range(sizes.repeat):
        before = len(cluster.waiting)
        decision = worst.timed(
            "node.deleted of a waiting node (frees nothing)",
            records.node_deleted(pick(waiting).encode()),
        )
        worst.intended(decision.pod_cidrs == () and len(cluster.waiting) == before - 1, decision)
        arrive()

        first = cluster.waiting.first()
        assert first is not None
        decision = worst.timed(
            "node.deleted that frees a CIDR and serves the first waiting node",
            records.node_deleted(pick(placed).encode()),
        )
        served = first not in cluster.waiting and not cluster.missing(cluster.nodes[first])
        worst.intended(
            bool(decision.pod_cidrs) and served and len(cluster.waiting) == before - 1,
            decision,
        )
        (holders if first in holders else waiting).remove(first)
        placed.append(first)
        arrive()

        if dual:
            decision = worst.timed(
                "node.deleted of an IPv4-only node (frees IPv4, serves nobody)",
                records.node_deleted(pick(holders).encode()),
            )
            freed = pod_cidrs(decision)
            worst.intended(len(freed) == 1 and len(cluster.waiting) == before - 1, decision)
            holder = node_name(next_index)
            decision = worst.timed(
                "node.adopted IPv4 only (waits for IPv6)",
                records.node_adopted(holder, list(freed), node_address(next_index)),
            )
            next_index += 1
            worst.intended(
                decision.error == allocation.ALLOCATOR_FULL and decision.pod_cidrs == freed,
                decision,
            )
            holders.append(holder.decode())
    return worst.out()


def worker_worst_cluster(options: argparse.Namespace) -> dict[str, Any]:
    """Every kind of decision in a cluster of 65,536 nodes with 110 pods each, pool full.

    10.0.0.0/8 by /24: one node per CIDR, so an arrival waits unless a deletion just made room.
    Each round: a pod replaced on a random node, a node deleted and one added into its CIDR, an
    arrival that waits and is deleted, a node deleted and one adopted into its CIDR, an
    adoption of a held CIDR (refused, pinned) and its deletion, a node re-added with new
    addresses, a pool repeat.
    """
    sizes = WORST_QUICK if options.quick else WORST_FULL
    rng = random.Random(SEED + 3)
    nodes = 1 << (V4_MASK - int(sizes.cluster_pool.split("/")[1]))
    pods = options.pods
    current = state.State(track_changes=True)
    worst = WorstCases(
        current,
        profile=options.profile,
        context=f"IPv4 only, {sizes.cluster_pool} by /{V4_MASK}: {nodes:,} nodes x {pods} pods, "
        "every node CIDR held",
    )
    records = worst.records
    names = [node_name(i) for i in range(nodes)]
    apply_all(current, [records.pool((sizes.cluster_pool, V4_MASK), None)], journal=True)
    step = 65_536
    for start in range(0, nodes, step):
        chunk = range(start, min(nodes, start + step))
        apply_all(current, [records.node_added(names[i], node_address(i)) for i in chunk], True)
    for pod in range(pods):
        apply_all(
            current, [records.ip_requested(n, pod_owner(i, pod)) for i, n in enumerate(names)], True
        )
    cluster = current.clusters["default"]
    assert cluster.pools[4].elements[0].slots.full and not cluster.waiting
    worst.loaded()

    intact = list(range(nodes))  # nodes that still hold their CIDR and pods
    rng.shuffle(intact)
    fresh = 20_000  # pod numbers past every pod of the fill
    index = nodes  # the next new node

    def new_name() -> bytes:
        nonlocal index
        name = node_name(index)
        index += 1
        return name

    def delete_intact() -> tuple[str, ...]:
        decision = worst.timed(
            f"node.deleted, a node with {pods} pods (nobody waiting)",
            records.node_deleted(names[intact.pop()]),
        )
        freed = pod_cidrs(decision)
        worst.intended(decision.error is None and len(freed) == 1, decision)
        return freed

    for round_ in range(sizes.repeat):
        i = intact[rng.randrange(len(intact))]
        pod_range = cluster.nodes[names[i].decode()].ranges[4]
        oldest = next(iter(pod_range.by_owner)).encode()
        decision = worst.timed("ip.released", records.ip_released(names[i], oldest))
        worst.intended(decision.error is None, decision)
        fresh += 1
        decision = worst.timed("ip.requested", records.ip_requested(names[i], pod_owner(i, fresh)))
        worst.intended(decision.error is None, decision)

        freed = delete_intact()
        name = new_name()
        decision = worst.timed(
            "node.added with room (the CIDR just freed)",
            records.node_added(name, node_address(index)),
        )
        worst.intended(decision.error is None and decision.pod_cidrs == freed, decision)
        name = new_name()
        decision = worst.timed(
            "node.added, pool full (waits)", records.node_added(name, node_address(index))
        )
        worst.intended(decision.error == allocation.ALLOCATOR_FULL, decision)
        decision = worst.timed(
            "node.deleted of a waiting node (frees nothing)", records.node_deleted(name)
        )
        worst.intended(decision.error is None and decision.pod_cidrs == (), decision)

        freed = delete_intact()
        name = new_name()
        decision = worst.timed(
            "node.adopted into a free CIDR",
            records.node_adopted(name, list(freed), node_address(index)),
        )
        worst.intended(decision.error is None and decision.pod_cidrs == freed, decision)
        held = cluster.nodes[names[intact[rng.randrange(len(intact))]].decode()].pod_cidr_texts()
        name = new_name()
        decision = worst.timed(
            "node.adopted refused: CIDR already allocated (node pinned)",
            records.node_adopted(name, list(held), node_address(index)),
        )
        worst.intended((decision.error or "").startswith("requested CIDR ("), decision)
        decision = worst.timed(
            "node.deleted of a pinned node (frees nothing)", records.node_deleted(name)
        )
        worst.intended(decision.error is None and decision.pod_cidrs == (), decision)

        # New addresses for a node already there: one outside the pool, or (every other round)
        # one inside its own pod CIDR, which it reserves and is flagged for.
        i = intact[rng.randrange(len(intact))]
        node = cluster.nodes[names[i].decode()]
        if round_ % 2:
            address = node.ranges[4].address_text(254).encode()
        else:
            address = b"192.168.%d.%d" % (round_ >> 8 & 255, round_ & 255)
        decision = worst.timed(
            "node.added again with a new address (outside the pool or in its own CIDR)",
            records.node_added(names[i], address),
        )
        worst.intended(
            decision.error is None and node.addresses == (ipaddress.ip_address(address.decode()),),
            decision,
        )
        decision = worst.timed("pool repeat", records.pool((sizes.cluster_pool, V4_MASK), None))
        worst.intended(decision.error is None, decision)
    return worst.out()


# --- parent side -----------------------------------------------------------------------------

SECTIONS = ("mixed", "fills", "worst")  # what --core-only selects, in the order they run
# The worst cases: (label in the report, worker, its arguments), one fresh process each.
WORST_SCENARIOS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("crowded pool", "worst-pool", ()),
    ("growing pools", "worst-growth", ()),
    ("waiting queue, IPv4", "worst-waiting", ()),
    ("waiting queue, dual stack", "worst-waiting", ("--dual-stack",)),
    ("large cluster", "worst-cluster", ()),
)


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
    parser.add_argument(
        "--core-only",
        action="append",
        choices=SECTIONS,
        help="core: run only this section (repeatable): the mixed stream, the fills (long "
        "churn, IPv4 and IPv6 fills, 99.9 %% use) or the worst cases per decision; default: all",
    )
    parser.add_argument(
        "--core-profile",
        action="store_true",
        help="core: run the worst cases' decisions under cProfile and print where each case's "
        "time goes (their times are then inflated and judged against nothing)",
    )


def run(args: argparse.Namespace) -> list[bench.Result]:
    quick = ["--quick"] if args.quick else []
    repeat = ["--repeat", str(args.repeat)] if args.repeat else []
    results: list[bench.Result] = []

    def say(text: str) -> None:
        print(f"core: {text}", file=sys.stderr, flush=True)

    sections = set(args.core_only or SECTIONS)
    if args.core_skip_fill:
        sections &= {"mixed"}
    if "mixed" in sections:
        results.extend(mixed_results(quick, repeat, say))
    if "fills" in sections:
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
    if "worst" in sections:
        profile = ("--profile",) if args.core_profile else ()
        outputs = []
        for label, scenario, extra in WORST_SCENARIOS:
            say(f"worst cases: {label} (fresh process)")
            out = run_worker(scenario, *quick, *extra, *profile)
            outputs.append((label, out))
            if profile:
                for case, entry in out["cases"].items():
                    say(
                        f"profile of {label}: {case}, per decision "
                        f"({len(entry['decide_ns']):,} under cProfile):\n  "
                        + "\n  ".join(entry["profile"])
                    )
        results.extend(worst_results(outputs))
    return results


def mixed_results(
    quick: list[str], repeat: list[str], say: Callable[[str], None]
) -> list[bench.Result]:
    results: list[bench.Result] = []
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
                samples=tuple(out["rates"]),
            )
        )
        results.append(
            bench.Result(
                BENCHMARK,
                f"{label}, by CPU time",
                bench.median(out["cpu_rates"]),
                "events/s",
                detail=", ".join(f"{r:,.0f}" for r in out["cpu_rates"]),
                samples=tuple(out["cpu_rates"]),
            )
        )
    return results


def worst_results(outputs: list[tuple[str, dict[str, Any]]]) -> list[bench.Result]:
    """One row per case: the decision's p99 against the target; p50, max and the decode of
    the same records in its detail."""
    results: list[bench.Result] = []

    def spread(values: list[int]) -> str:
        ordered = sorted(values)
        return "/".join(
            f"{x / 1000:,.1f}"
            for x in (
                bench.percentile(ordered, 0.50),
                bench.percentile(ordered, 0.99),
                ordered[-1],
            )
        )

    for label, out in outputs:
        for n, (case, entry) in enumerate(out["cases"].items()):
            decide = sorted(entry["decide_ns"])
            p99 = bench.percentile(decide, 0.99) / 1000
            missed = entry["unintended"]
            detail = (
                f"{len(decide):,} decisions, p50/p99/max {spread(decide)} µs (CPU time "
                f"{spread(entry['decide_cpu_ns'])}); decode of the same records "
                f"{spread(entry['decode_ns'])} µs ({bench.median(entry['record_bytes']):,.0f} B "
                "each)" + ("" if n else f"; {out['context']}")
            )
            if missed:
                detail += f"; {missed} NOT AS INTENDED, first: {entry['first_unintended']}"
            judged = not out["profiled"]
            results.append(
                bench.Result(
                    BENCHMARK,
                    f"worst, {label}: {case}, p99" + ("" if judged else " under cProfile"),
                    p99,
                    "µs",
                    target=f"<= {LATENCY_TARGET_US:.0f}" if judged else "",
                    met=p99 <= LATENCY_TARGET_US and not missed if judged else None,
                    detail=detail,
                )
            )
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


def memory_series(out: dict[str, Any], label: str) -> tuple[bench.Series, ...]:
    """Resident memory against addresses held during the fill (the report's plot)."""
    curve = out.get("memory_curve") or []
    if not curve:
        return ()
    return (
        bench.Series.of(
            "core-memory-vs-addresses",
            f"{label}, {out['nodes']:,} nodes",
            [held / 1e6 for held, _ in curve],
            [rss / 2**20 for _, rss in curve],
            title="Resident memory of the allocation core against addresses held",
            x_label="million addresses held",
            y_label="resident memory, MiB",
        ),
    )


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
                series=memory_series(out, label),
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
    parser.add_argument("--profile", action="store_true")
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
    "worst-pool": worker_worst_pool,
    "worst-growth": worker_worst_growth,
    "worst-waiting": worker_worst_waiting,
    "worst-cluster": worker_worst_cluster,
}


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench.core worker ... (or run everything: python -m bench)")
    sys.exit(worker_main(sys.argv[2:]))
