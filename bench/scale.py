"""Scale scenarios: the sizes the issues name, each applied, restarted and checked against simulate.

    python -m bench --only scale            # the full sizes (7.2 M addresses; tens of minutes)
    python -m bench --only scale --quick    # the same scenarios, small

Every scenario runs the real allocator (``ipledger run``, a process of its own) on the table log
of a PostgreSQL server of the benchmark's own, and reports for it the time from the process's
start to caught up, the process's peak resident memory (``VmHWM``), and whether the projection's
digest equals the pure core's (``simulate``) over the same records:

- **restart against addresses held**: 10.0.0.0/8 by /24, 110 pods per node, at several node
  counts up to 65,536 (7.2 M addresses). The projection is written once per size with bulk COPY
  (as ``bench.allocator`` does: the setup, not measured), 1,000 events are appended, and a fresh
  ``ipledger run`` loads the projection and applies them. Issue 13's goal: caught up within 15 s
  with 7.2 M addresses held. The state is grown in memory from one size to the next.
- **IPv6 pool far larger than Cilium accepts**: fd00::/48 cut into /112s, 2^64 node CIDRs in one
  element (Cilium's cluster pool refuses an element of more than 2^16). The pool must cost
  nothing for its size: the pure core's time and memory for configuring it are measured beside
  the allocator's figures for nodes and pods in it.
- **100 clusters in one deployment**: one pool per cluster, events keyed by cluster over four
  log partitions, one allocator process for all of them.
- **a 1,024-element pool**: the contract's maximum per family, dual stack, filled until nodes
  wait, then nodes deleted so that the waiting ones are served.

For each scenario but the first the records are appended to the log first; the allocator then
applies them from offset 0 (``apply``), is stopped, and a second one restarts over the projection
with a short tail (``restart``). Process start-up alone (importing the service) is measured too:
it is part of every restart figure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

import bench
from bench import allocator as allocator_bench
from service import errors
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.domain import allocation, document, state
from tests.streams import key_of

NAME = "scale"
# --quick (a smoke run): every scenario, small. Node counts of the restart scenario; IPv6 nodes
# and pods per node; nodes and pods per node of each of the 100 clusters; pods per node and
# elements per family of the large pool.
QUICK = {
    "restart_nodes_small": 256,
    "restart_nodes_large": 512,
    "v6_nodes": 128,
    "v6_pods": 10,
    "cluster_nodes": 2,
    "cluster_pods": 3,
    "element_pods": 1,
    "elements": 128,
}
PODS = 110
TIMEOUT_S = 1800.0
POSITIONS_SQL = "SELECT partition, next_offset FROM consumer_offset"
# What ``ipledger run`` imports before it does anything: the floor under every restart figure.
IMPORTS = "import service.cli, service.bootstrap, service.processes.allocator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale-nodes",
        default="8192,16384,32768,65536",
        help="node counts (x 110 pods) of the restart-against-addresses scenario",
    )
    parser.add_argument(
        "--scale-v6-nodes", type=int, default=8192, help="nodes (x 110 pods) in fd00::/48 by /112"
    )
    parser.add_argument(
        "--scale-cluster-nodes",
        type=int,
        default=64,
        help="nodes per cluster (x 20 pods) in the 100-cluster scenario",
    )


# --- one allocator process, timed -----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One ``ipledger run`` from its start until the projection had consumed its targets."""

    seconds: float
    peak_rss: int
    log: str


def _peak_rss(pid: int) -> int:
    """``VmHWM`` of a live process, in bytes (0 where /proc does not say)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def _positions(db: asyncpg.Connection) -> dict[int, int]:
    return {row["partition"]: row["next_offset"] for row in await db.fetch(POSITIONS_SQL)}


async def run_allocator(env: dict[str, str], targets: dict[int, int], workdir: Path) -> Run:
    """Start ``ipledger run``; seconds until each partition has consumed its target offset.

    The process is stopped (SIGTERM, as an operator would) once caught up, after its peak
    resident memory has been read.
    """
    log_path = workdir / f"allocator-{time.monotonic_ns()}.log"
    db = await asyncpg.connect(env["IPLEDGER_DATABASE_URL"])
    try:
        with log_path.open("wb") as log_file:
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "run"],
                env={**os.environ, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                at = await _positions(db)
                if all(at.get(p, 0) >= target for p, target in targets.items()):
                    seconds = time.perf_counter() - started
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise errors.IpledgerError(
                        f"allocator did not catch up (at {at}, targets {targets}):\n"
                        + log_path.read_text(errors="replace")[-3000:]
                    )
                await anyio.sleep(0.02)
            peak = _peak_rss(process.pid)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await anyio.to_thread.run_sync(lambda: process.wait(timeout=60))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
    finally:
        await db.close()
    return Run(seconds, peak, log_path.read_text(errors="replace"))


def import_floor(repeat: int) -> list[float]:
    """Seconds a fresh interpreter takes to import what ``ipledger run`` imports."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        out.append(time.perf_counter() - started)
    return out


async def append(dsn: str, records: Sequence[bytes], partitions: int) -> dict[int, int]:
    """Append keyed by cluster, as a well-behaved producer does; each partition's end offset."""
    event_log = table_log.PostgresTableLog.from_dsn(dsn, partitions=partitions)
    try:
        for start in range(0, len(records), 5000):
            chunk = records[start : start + 5000]
            await event_log.append([(key_of(r), r) for r in chunk])
        return {p: await event_log.end_offset(p) for p in range(partitions)}
    finally:
        await event_log.close()


async def projection_digest(dsn: str) -> str:
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        return document.digest(await reader.state())
    finally:
        await reader.close()


def held_addresses(current: state.State) -> int:
    return sum(
        len(pod_range.owner_of)
        for cluster in current.clusters.values()
        for node in cluster.nodes.values()
        for pod_range in node.ranges.values()
    )


# --- scenario 1: restart against addresses held ------------------------------------------------


def pool_v4() -> bytes:
    return (
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
        b'"clusterPoolIPv4MaskSize":24}'
    )


def grow(current: state.State, first: int, last: int) -> None:
    """Nodes ``first``..``last - 1`` with 110 pods each, as ``bench.restart_db.events_state``."""
    for n in range(first, last):
        allocation.apply_record(current, b'{"type":"node.added","id":"n","node":"node-%d"}' % n)
        for p in range(PODS):
            allocation.apply_record(
                current,
                b'{"type":"ip.requested","id":"i","node":"node-%d","owner":"ns/pod-%d-%d"}'
                % (n, n, p),
            )


async def restart_scenario(
    services: bench.ScratchPostgres, sizes: Sequence[int], workdir: Path
) -> list[bench.Result]:
    current = state.State()
    allocation.apply_record(current, pool_v4())
    grown = 0
    rows: list[tuple[int, Run, bool]] = []
    for size in sizes:
        await anyio.to_thread.run_sync(grow, current, grown, size)
        grown = size
        dsn = await services.fresh_database()
        await allocator_bench.write_projection(dsn, current)
        tail = [
            b'{"type":"ip.requested","id":"t%d","node":"node-%d","owner":"ns/tail-%d-%d"}'
            % (i, i % size, size, i)
            for i in range(1000)
        ]
        await append(dsn, tail, 1)
        for record in tail:
            allocation.apply_record(current, record)
        run = await run_allocator(
            {"IPLEDGER_DATABASE_URL": dsn, "IPLEDGER_LOG": "table"}, {0: len(tail)}, workdir
        )
        equal = await projection_digest(dsn) == document.digest(current)
        rows.append((held_addresses(current), run, equal))
        await _drop(services, dsn)
        print(
            f"scale: restart at {rows[-1][0]:,} addresses: {run.seconds:.1f} s, "
            f"{run.peak_rss / 2**20:,.0f} MiB, digest equal {equal}",
            file=sys.stderr,
            flush=True,
        )
    load = os.getloadavg()[0]
    results = []
    for held, run, equal in rows:
        largest = held >= 7_000_000
        results += [
            bench.Result(
                NAME,
                f"restart -> caught up, {held / 1e6:.1f} M addresses",
                run.seconds,
                "s",
                "<= 15" if largest else "",
                run.seconds <= 15 if largest else None,
                f"{held:,} addresses, a fresh ipledger run loading the projection and applying "
                f"1,000 tail events; load average {load:.1f}",
                issue="13" if largest else "",
            ),
            bench.Result(
                NAME,
                f"allocator peak RSS, {held / 1e6:.1f} M addresses",
                run.peak_rss / 2**20,
                "MiB",
                detail=f"{run.peak_rss / held:.0f} B per held address (the process's VmHWM)",
            ),
            _digest_row(f"restart at {held / 1e6:.1f} M addresses", equal),
        ]
    helds = [held / 1e6 for held, _, _ in rows]
    series = (
        bench.Series.of(
            "allocator-restart-vs-addresses",
            "ipledger run process (bench.scale)",
            helds,
            [run.seconds for _, run, _ in rows],
            kind="line",
            title="Allocator restart time against addresses held",
            x_label="million addresses held",
            y_label="seconds from start to caught up",
        ),
        bench.Series.of(
            "allocator-memory-vs-addresses",
            "ipledger run peak RSS (bench.scale)",
            helds,
            [run.peak_rss / 2**20 for _, run, _ in rows],
            kind="line",
            title="Allocator process memory against addresses held",
            x_label="million addresses held",
            y_label="peak resident memory, MiB",
        ),
    )
    first = results[0]
    results[0] = bench.Result(
        first.benchmark,
        first.name,
        first.value,
        first.unit,
        first.target,
        first.met,
        first.detail,
        issue=first.issue,
        series=series,
    )
    return results


# --- the other scenarios: records appended, applied, restarted ------------------------------------


@dataclass(frozen=True)
class Scenario:
    label: str
    records: list[bytes]
    tail: list[bytes]
    partitions: int = 1
    note: str = ""


async def through_allocator(
    services: bench.ScratchPostgres, scenario: Scenario, workdir: Path
) -> list[bench.Result]:
    dsn = await services.fresh_database()
    env = {
        "IPLEDGER_DATABASE_URL": dsn,
        "IPLEDGER_LOG": "table",
        "IPLEDGER_PARTITIONS": str(scenario.partitions),
    }
    ends = await append(dsn, scenario.records, scenario.partitions)
    applied = await run_allocator(env, ends, workdir)
    ends = await append(dsn, scenario.tail, scenario.partitions)
    restarted = await run_allocator(env, ends, workdir)
    oracle = state.State()
    for record in [*scenario.records, *scenario.tail]:
        allocation.apply_record(oracle, record)
    equal = await projection_digest(dsn) == document.digest(oracle)
    held = held_addresses(oracle)
    await _drop(services, dsn)
    count = len(scenario.records)
    print(
        f"scale: {scenario.label}: apply {applied.seconds:.1f} s, restart "
        f"{restarted.seconds:.1f} s, digest equal {equal}",
        file=sys.stderr,
        flush=True,
    )
    where = (
        f"{count:,} records, {len(oracle.clusters)} cluster(s), {held:,} addresses held, "
        f"{scenario.partitions} partition(s)"
    )
    return [
        bench.Result(
            NAME,
            f"{scenario.label}: apply from offset 0",
            applied.seconds,
            "s",
            detail=f"{where}; {count / applied.seconds:,.0f} records/s including start-up"
            + (f"; {scenario.note}" if scenario.note else ""),
        ),
        bench.Result(
            NAME,
            f"{scenario.label}: allocator peak RSS",
            applied.peak_rss / 2**20,
            "MiB",
        ),
        bench.Result(
            NAME,
            f"{scenario.label}: restart -> caught up",
            restarted.seconds,
            "s",
            detail=f"{len(scenario.tail)} tail events; "
            f"peak RSS {restarted.peak_rss / 2**20:.0f} MiB",
        ),
        _digest_row(scenario.label, equal),
    ]


def _digest_row(label: str, equal: bool) -> bench.Result:
    return bench.Result(
        NAME,
        f"{label}: digest == simulate",
        int(equal),
        "bool",
        "1",
        equal,
        better="higher",
    )


async def _drop(services: bench.ScratchPostgres, dsn: str) -> None:
    """Drop a scenario's database once measured: 7.2 M rows need not wait for the end."""
    name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
    db = await asyncpg.connect(services.server.dsn)
    try:
        await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await db.close()


def _event(**body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def ipv6_scenario(nodes: int, pods: int) -> Scenario:
    records = [
        _event(
            type="pool.configured",
            id="p6",
            clusterPoolIPv6PodCIDRList=["fd00::/48"],
            clusterPoolIPv6MaskSize=112,
        )
    ]
    for n in range(nodes):
        records.append(_event(type="node.added", id=f"n{n}", node=f"node-{n}"))
        records.extend(
            _event(type="ip.requested", id=f"i{n}-{p}", node=f"node-{n}", owner=f"ns/pod-{n}-{p}")
            for p in range(pods)
        )
    tail = [
        _event(type="ip.requested", id=f"t{i}", node=f"node-{i % nodes}", owner=f"ns/tail-{i}")
        for i in range(1000 if nodes else 0)
    ]
    return Scenario(
        "IPv6 fd00::/48 by /112 (2^64 node CIDRs)",
        records,
        tail,
        note=f"{nodes:,} nodes x {pods} pods",
    )


def clusters_scenario(clusters: int, nodes: int, pods: int) -> Scenario:
    records = []
    for c in range(clusters):
        records.append(
            _event(
                type="pool.configured",
                id=f"c{c}-pool",
                cluster=f"cluster-{c}",
                clusterPoolIPv4PodCIDRList=["10.0.0.0/16"],
                clusterPoolIPv4MaskSize=24,
                clusterPoolIPv6PodCIDRList=["fd00::/104"],
                clusterPoolIPv6MaskSize=120,
            )
        )
    # Interleaved across clusters, as a shared log would carry them.
    for n in range(nodes):
        for c in range(clusters):
            base = {"cluster": f"cluster-{c}", "node": f"node-{n}"}
            records.append(_event(type="node.added", id=f"c{c}-n{n}", **base))
            records.extend(
                _event(type="ip.requested", id=f"c{c}-i{n}-{p}", owner=f"ns/pod-{n}-{p}", **base)
                for p in range(pods)
            )
    tail = [
        _event(
            type="ip.requested", id=f"c{c}-t", cluster=f"cluster-{c}", node="node-0", owner="ns/t"
        )
        for c in range(clusters)
    ]
    return Scenario(
        f"{clusters} clusters in one deployment",
        records,
        tail,
        partitions=4,
        note=f"{nodes} nodes x {pods} pods per cluster, dual stack",
    )


def elements_scenario(pods: int, elements: int = 1024) -> Scenario:
    """1,024 IPv4 /24s cut into /26s (4,096 node CIDRs) and 1,024 IPv6 /64s by /112.

    ``elements``: fewer of each (--quick), the same path.
    """
    v4 = [str(ipaddress.IPv4Network((0x0A000000 + (i << 8), 24))) for i in range(elements)]
    v6 = [str(ipaddress.IPv6Network(((0xFD00 << 112) + (i << 64), 64))) for i in range(elements)]
    records = [
        _event(
            type="pool.configured",
            id="p1024",
            clusterPoolIPv4PodCIDRList=v4,
            clusterPoolIPv4MaskSize=26,
            clusterPoolIPv6PodCIDRList=v6,
            clusterPoolIPv6MaskSize=112,
        )
    ]
    capacity = 4 * len(v4)
    waiting = 256
    for n in range(capacity + waiting):
        records.append(_event(type="node.added", id=f"n{n}", node=f"node-{n}"))
    for n in range(capacity):
        records.extend(
            _event(type="ip.requested", id=f"i{n}-{p}", node=f"node-{n}", owner=f"ns/pod-{n}-{p}")
            for p in range(pods)
        )
    # Every fourth node goes: each freed /26 goes to the next waiting node.
    records.extend(
        _event(type="node.deleted", id=f"d{n}", node=f"node-{n}") for n in range(0, capacity, 16)
    )
    tail = [
        _event(type="ip.requested", id=f"t{n}", node=f"node-{n}", owner="ns/t")
        for n in range(capacity, capacity + waiting)
    ]
    return Scenario(
        f"{elements:,}-element pool (dual stack)",
        records,
        tail,
        note=f"{capacity:,} node CIDRs per family, {capacity + waiting:,} nodes asking, "
        f"{capacity // 16} deleted, {pods} pods per node",
    )


def huge_pool_in_core() -> list[bench.Result]:
    """The pure core configuring fd00::/48 by /112: its time and memory must not grow with it."""
    record = ipv6_scenario(1, 0).records[0]
    small = _event(
        type="pool.configured",
        id="p6",
        clusterPoolIPv6PodCIDRList=["fd00::/96"],
        clusterPoolIPv6MaskSize=112,
    )
    out = []
    for label, body in (("fd00::/48 by /112 (2^64)", record), ("fd00::/96 by /112 (2^16)", small)):
        tracemalloc.start()
        started = time.perf_counter()
        current = state.State()
        decision, _ = allocation.apply_record(current, body)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if decision.error:
            raise errors.IpledgerError(f"{label}: refused: {decision.error}")
        allocation.apply_record(current, b'{"type":"node.added","id":"n","node":"n-0"}')
        out.append(
            bench.Result(
                NAME,
                f"core: pool.configured {label}",
                elapsed * 1e6,
                "us",
                detail=f"peak {peak / 1024:.0f} KiB allocated while applying it (tracemalloc)",
            )
        )
    return out


# --- the benchmark ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[bench.Result]:
    with bench.ScratchPostgres("ipledger-scale-") as services:
        return anyio.run(_run, args, services)


async def _run(args: argparse.Namespace, services: bench.ScratchPostgres) -> list[bench.Result]:
    quick = bool(args.quick)
    workdir = services.root / "scale"
    workdir.mkdir()
    load_before = os.getloadavg()
    floor = await anyio.to_thread.run_sync(import_floor, 3)
    results = [
        bench.Result.of_samples(
            NAME,
            "ipledger run start-up: imports alone",
            floor,
            "s",
            detail="a fresh interpreter importing what ipledger run imports: the floor under "
            "every restart figure",
        )
    ]
    results += huge_pool_in_core()
    sizes = (
        [QUICK["restart_nodes_small"], QUICK["restart_nodes_large"]]
        if quick
        else [int(n) for n in args.scale_nodes.split(",")]
    )
    results += await restart_scenario(services, sizes, workdir)
    v6_nodes, v6_pods = (
        (QUICK["v6_nodes"], QUICK["v6_pods"]) if quick else (args.scale_v6_nodes, PODS)
    )
    results += await through_allocator(services, ipv6_scenario(v6_nodes, v6_pods), workdir)
    cluster_nodes, cluster_pods = (
        (QUICK["cluster_nodes"], QUICK["cluster_pods"]) if quick else (args.scale_cluster_nodes, 20)
    )
    results += await through_allocator(
        services, clusters_scenario(100, cluster_nodes, cluster_pods), workdir
    )
    pool = (
        elements_scenario(QUICK["element_pods"], QUICK["elements"])
        if quick
        else elements_scenario(10)
    )
    results += await through_allocator(services, pool, workdir)
    load_after = os.getloadavg()
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.append(
        bench.Result(
            NAME,
            "load average (1 min) at start / end",
            load_before[0],
            "load",
            detail=f"{load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end; "
            f"the benchmark process itself peaked at {peak_self / 2**20:,.0f} MiB",
        )
    )
    return results
