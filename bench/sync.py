"""The Kubernetes sync benchmark: 5,000 nodes allocated at once, mirrored onto CiliumNodes.

Run by ``python -m bench`` (``--only sync``). Everything is real and on loopback: PostgreSQL
(embedded, fsync on), the kube-apiserver + etcd of tests/harness/kube.py serving
Cilium's CRD, the allocator over the PostgreSQL table log, and ``service.sync.ClusterSync``
through the lightkube adapter. The servers are processes of their own; the allocator and the
sync worker share this one, as they would not in production (their CPU is told apart below).

In each run the sync worker is running and idle (its first listing done) when the 5,000
``node.added`` events are appended in one append; the allocator commits them in one batch and
the worker mirrors them. The time is from the append until the worker has applied the last
CiliumNode (the server's answer to it); a listing then checks every object against the
projection, and a run that does not match is reported as not met.

- **paced**: ``--sync-qps`` (default 200, so the run takes ~25 s; production default is 20)
  and burst 40. Target: 5,000 / QPS + 10 s.
- **no QPS limit**: ``--sync-concurrency`` writes in flight (default 16): writes per second.
- **where the time goes**: the no-limit run again under cProfile, its own-time split into
  buckets (HTTP client, TLS, JSON, lightkube, sync logic, allocator, PostgreSQL driver, event
  loop, idle), beside the CPU seconds the apiserver, etcd and PostgreSQL used meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import anyio
import httpx2
from lightkube import AsyncClient, KubeConfig

import bench
from service import allocator, sync
from service.adapters.kubernetes import client as kube_client
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import sync_store, table_log
from service.domain import addresses
from tests.harness.kube import KubeAPIServer

NAME = "sync"
# --quick (a smoke run): every run, small. Nodes of the paced, unlimited and profiled runs; the
# convergence sweep's other sizes.
QUICK = {"nodes": 200, "sweep_small": 50, "sweep_large": 100}
CLUSTER = "default"
POOL = (
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
    b'"clusterPoolIPv4MaskSize":24,"clusterPoolIPv6PodCIDRList":["fd00::/104"],'
    b'"clusterPoolIPv6MaskSize":120}'
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Own time of functions whose file (or name, for builtins) contains the key, first match wins.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("epoll", "idle: waiting for the servers"),
    ("select", "idle: waiting for the servers"),
    ("ssl", "TLS"),
    # On loopback the sending syscall does the receiver's TCP work too.
    ("_socket", "socket syscalls (kernel, loopback TCP)"),
    ("httpx2", "HTTP client (httpx2, httpcore)"),
    ("httpcore", "HTTP client (httpx2, httpcore)"),
    ("h11", "HTTP client (httpx2, httpcore)"),
    ("lightkube", "lightkube (requests, decoding)"),
    ("msgspec", "JSON (msgspec)"),
    ("json", "JSON (msgspec)"),
    ("service/sync/", "sync worker logic"),
    ("service/adapters/kubernetes", "CiliumNode adapter (bodies, typed decoding)"),
    ("service/adapters/postgres", "PostgreSQL adapters"),
    ("asyncpg", "PostgreSQL driver (asyncpg, SQLAlchemy)"),
    ("sqlalchemy", "PostgreSQL driver (asyncpg, SQLAlchemy)"),
    ("service/domain", "allocator (core and loop)"),
    ("service/allocator/", "allocator (core and loop)"),
    ("asyncio", "event loop (asyncio, anyio)"),
    ("anyio", "event loop (asyncio, anyio)"),
    ("ipaddress", "addresses parsed and formatted (ipaddress)"),
)
OTHER = "other (builtins and the rest of the standard library)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sync-nodes", type=int, default=5000, help="nodes allocated at once")
    parser.add_argument(
        "--sync-qps", type=float, default=200.0, help="QPS of the paced run (burst 40)"
    )
    parser.add_argument(
        "--sync-concurrency", type=int, default=16, help="writes in flight, no-limit run"
    )
    parser.add_argument(
        "--sync-sweep",
        default="500,1000,2000",
        help="node counts of the extra no-limit runs behind the convergence plot (comma "
        "separated; empty for none; --quick: 50,100)",
    )


@dataclass(slots=True)
class Run:
    """One timed run."""

    nodes: int
    seconds: float = 0.0
    allocated_s: float = 0.0  # append -> the allocator committed the batch
    requests: int = 0
    retries: int = 0
    mismatches: int = 0
    own_cpu_s: float = 0.0
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)


class Services:
    """PostgreSQL and the Kubernetes API server for the whole benchmark."""

    def __init__(self) -> None:
        self.postgres = bench.ScratchPostgres("ipledger-bench-sync-")
        self.kube = KubeAPIServer()

    def start(self) -> None:
        """Start both, or neither: an API server that fails to start stops the database too."""
        self.postgres.start()
        try:
            self.kube.start()
        except BaseException:
            self.postgres.stop()
            raise

    def stop(self) -> None:
        try:
            self.kube.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def fresh_database(self) -> str:
        return await self.postgres.fresh_database()


def run(args: argparse.Namespace) -> list[bench.Result]:
    # The servers start and stop here, in the main thread and around the event loop, so that an
    # exception, Ctrl-C or SIGTERM (python -m bench makes it an exception) anywhere stops them.
    with Services() as services:
        return anyio.run(_run, args, services)


async def _run(args: argparse.Namespace, services: Services) -> list[bench.Result]:
    nodes = QUICK["nodes"] if args.quick else args.sync_nodes
    qps = float(args.sync_qps)
    paced = await one_run(
        services, nodes, sync.SyncSettings(qps=qps, burst=40, resync_interval_s=3600)
    )
    unlimited_settings = sync.SyncSettings(
        qps=0, concurrency=args.sync_concurrency, resync_interval_s=3600
    )
    unlimited = await one_run(services, nodes, unlimited_settings)
    profiled = await one_run(services, nodes, unlimited_settings, profile=True)
    sweep_sizes = (
        f"{QUICK['sweep_small']},{QUICK['sweep_large']}" if args.quick else args.sync_sweep
    )
    sweep = {nodes: unlimited.seconds}
    for size in sorted({int(n) for n in sweep_sizes.split(",") if n.strip()} - {nodes}):
        sweep[size] = (await one_run(services, size, unlimited_settings)).seconds
    convergence = (
        bench.Series.of(
            "sync-convergence-vs-nodes",
            f"no QPS limit ({args.sync_concurrency} in flight)",
            sorted(sweep),
            [sweep[n] for n in sorted(sweep)],
            title="CiliumNode convergence: nodes allocated at once until all are correct",
            x_label="nodes allocated in one append",
            y_label="seconds until the last CiliumNode is applied",
        ),
        bench.Series.of(
            "sync-convergence-vs-nodes",
            f"paced at QPS {qps:g}",
            [nodes],
            [paced.seconds],
            kind="scatter",
        ),
    )

    bound = nodes / qps + 10
    results = [
        bench.Result(
            NAME,
            f"{nodes:,} nodes at QPS {qps:g}: all CiliumNodes correct",
            paced.seconds,
            "s",
            f"<= {bound:.0f} ({nodes:,}/QPS + 10)",
            paced.seconds <= bound and paced.mismatches == 0,
            f"{paced.requests} requests, {paced.retries} retries, allocator committed after "
            f"{paced.allocated_s:.2f} s, {paced.mismatches} objects wrong at the end",
            series=convergence,
        ),
        bench.Result(
            NAME,
            f"{nodes:,} nodes, no QPS limit ({args.sync_concurrency} in flight)",
            unlimited.seconds,
            "s",
            detail=f"{unlimited.requests} requests, {unlimited.retries} retries, "
            f"{unlimited.mismatches} objects wrong at the end",
        ),
        bench.Result(
            NAME,
            "writes per second, no QPS limit",
            unlimited.requests / unlimited.seconds,
            "writes/s",
            met=False if unlimited.mismatches else None,
        ),
    ]
    wall = unlimited.seconds
    cpu = ", ".join(f"{name} {s:.1f} s" for name, s in sorted(unlimited.server_cpu_s.items()))
    results.append(
        bench.Result(
            NAME,
            "CPU per 1,000 writes, this process (allocator + sync worker)",
            unlimited.own_cpu_s / unlimited.requests * 1000,
            "s",
            detail=f"wall {wall:.1f} s; CPU over the run: this process "
            f"{unlimited.own_cpu_s:.1f} s, {cpu} ({os.cpu_count()} CPUs shared by all)",
        )
    )
    total = sum(profiled.profile.values()) or 1.0
    shares = sorted(profiled.profile.items(), key=lambda item: -item[1])
    results.append(
        bench.Result(
            NAME,
            "profile of the worker's process (no QPS limit)",
            profiled.seconds,
            "s",
            detail="; ".join(f"{name} {100 * s / total:.0f} %" for name, s in shares if s > 0),
        )
    )
    return results


async def one_run(
    services: Services, nodes: int, settings: sync.SyncSettings, *, profile: bool = False
) -> Run:
    """Allocate ``nodes`` at once with the worker idle, and time them onto CiliumNodes."""
    result = Run(nodes=nodes)
    dsn = await services.fresh_database()
    kubeconfig = services.kube.kubeconfig_path
    await _delete_all_ciliumnodes(kubeconfig)
    event_log = table_log.PostgresTableLog.from_dsn(dsn)
    # A long lease: a 5,000-node batch on a loaded machine outlasts the default one, and the
    # allocator then loses it, stands by and reloads over and over (seen at a load of 20).
    projection = pg_projection.PostgresProjection.from_dsn(
        dsn, log_name="table", holder="bench-allocator", lease_ttl_s=60.0
    )
    alloc = allocator.PartitionAllocator(
        event_log, projection, 0, settings=allocator.LoopSettings(batch_max_records=nodes + 1)
    )
    client = kube_client.KubernetesClusterClient.connect(kubeconfig)
    store = sync_store.PostgresSyncStore.from_dsn(dsn)
    worker = sync.ClusterSync(CLUSTER, client, store, settings)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(alloc.run, stop)
            await event_log.append([(CLUSTER.encode(), POOL)])
            await _until(lambda: alloc.metrics.next_offset.get(0, 0) >= 1)
            tasks.start_soon(worker.run, stop)
            await worker.resynced()
            events = [
                (
                    CLUSTER.encode(),
                    b'{"type":"node.added","id":"n%d","node":"node-%05d"}' % (i, i),
                )
                for i in range(nodes)
            ]
            profiler = cProfile.Profile() if profile else None
            cpu_before, servers_before = time.process_time(), _server_cpu()
            with _profiling(profiler):
                started = time.monotonic()
                await event_log.append(events)
                await _until(lambda: alloc.metrics.next_offset.get(0, 0) >= nodes + 1)
                result.allocated_s = time.monotonic() - started
                await _until(lambda: worker.metrics.nodes_mirrored >= nodes, timeout=600)
                result.seconds = time.monotonic() - started
            result.own_cpu_s = time.process_time() - cpu_before
            servers_after = _server_cpu()
            result.server_cpu_s = {
                name: servers_after.get(name, 0.0) - seconds
                for name, seconds in servers_before.items()
            }
            result.requests = worker.metrics.requests
            result.retries = worker.metrics.retries
            if profiler is not None:
                result.profile = _buckets(profiler)
            stop.set()
        result.mismatches = await _mismatches(dsn, client)
    finally:
        await client.close()
        await store.close()
        await projection.close()
        await event_log.close()
    return result


async def _until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


@contextlib.contextmanager
def _profiling(profiler: cProfile.Profile | None) -> Iterator[None]:
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


def _buckets(profiler: cProfile.Profile) -> dict[str, float]:
    """Own time of every profiled function, summed per bucket."""
    totals: dict[str, float] = {}
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, function), entry in stats.items():
        own = entry[2]
        where = f"{filename}:{function}"
        bucket = next((label for key, label in BUCKETS if key in where), OTHER)
        totals[bucket] = totals.get(bucket, 0.0) + own
    return totals


async def _delete_all_ciliumnodes(kubeconfig: Path) -> None:
    # kube-apiserver deletes a collection in one request that lasts until the last object is
    # gone (each deletion audited): longer than lightkube's default timeout for 5,000 objects.
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig), timeout=httpx2.Timeout(300))
    try:
        await client.deletecollection(kube_client.CiliumNode)
        with anyio.fail_after(60):
            while [n async for n in client.list(kube_client.CiliumNode)]:
                await anyio.sleep(0.1)
    finally:
        await client.close()


async def _mismatches(dsn: str, client: kube_client.KubernetesClusterClient) -> int:
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        wanted = {
            node.name: tuple(addresses.format_network(cidr) for cidr in node.pod_cidrs)
            for cluster in await reader.clusters()
            for node in await reader.nodes(cluster.name)
        }
    finally:
        await reader.close()
    listed = {n.name: n.pod_cidrs for n in await client.list_nodes()}
    return sum(1 for name, cidrs in wanted.items() if listed.get(name) != cidrs)


def _server_cpu() -> dict[str, float]:
    """CPU seconds used so far by each server this process started, with its children."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                text = stat.read()
        except OSError:
            continue
        pid = int(entry)
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(pid)
        names[pid] = name
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def tree(pid: int) -> float:
        return cpu.get(pid, 0.0) + sum(tree(child) for child in children.get(pid, []))

    totals: dict[str, float] = {}
    for pid in children.get(os.getpid(), []):
        # /proc's comm is cut at 15 characters: "kube-apiserver" fits.
        label = {"kube-apiserver": "apiserver", "postgres": "PostgreSQL"}.get(
            names[pid], names[pid]
        )
        totals[label] = totals.get(label, 0.0) + tree(pid)
    return totals
