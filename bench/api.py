"""The query API benchmark (``ipledger api``, docs/api.md) over a large projection in PostgreSQL.

The projection is written straight into its tables by ``INSERT ... SELECT`` over
``generate_series`` inside the server (faster than streaming rows from Python with COPY, and the
rows are the ones the allocator would have written for the log described below), then the API
runs in a process of its own, as ``ipledger api`` does, and this process offers it load on
loopback. Figures, each the median of ``--api-runs`` runs (min and max in the detail):

- p50/p99 latency at 200 requests/s offered (open loop: a request's latency counts from the
  moment it was due, so a stall is not hidden by the requests it delayed) of an IP lookup, a
  node, an owner, and an IP lookup ``as_of`` an offset inside the history;
- the saturation throughput of each (closed loop, ``--api-concurrency`` connections), beside a
  bare asyncpg loop running the same SQL the reader runs for that request (captured from the
  reader itself), in the same run: the ratio is the API's cost over its queries.

The log the rows stand for, cluster ``default`` on partition 0: offset 0 configures the pool
10.0.0.0/8 by /24; offsets 1..N add the nodes (node i gets the i-th /24); then ``--api-history``
holdings that came and went (a request and a release each, on addresses spread over the nodes);
then 110 pods on every node, still held. The issue's size is ``--api-nodes 65536 --api-history
10000000`` (7.2 M addresses held); the default is scaled down to build in a few minutes on a
small machine, and the report names the size measured.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

import bench
from service import bootstrap
from service.adapters.postgres import reader as pg_reader
from service.settings import Settings

NAME = "api"
PODS_PER_NODE = 110
CLUSTER = "default"
RATE = 200.0
P99_TARGET_MS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-nodes", type=int, default=4096, help="nodes (110 pods each)")
    parser.add_argument(
        "--api-history", type=int, default=1_000_000, help="finished holdings (ip_history rows)"
    )
    parser.add_argument("--api-seconds", type=float, default=8.0, help="seconds at 200/s, per run")
    parser.add_argument(
        "--api-saturation-seconds", type=float, default=4.0, help="seconds of saturation, per run"
    )
    parser.add_argument(
        "--api-nodelay",
        action="store_true",
        help="run the API with TCP_NODELAY on its listening socket (see NODELAY)",
    )
    parser.add_argument("--api-runs", type=int, default=3, help="runs (median, min, max)")
    parser.add_argument(
        "--api-concurrency", type=int, default=16, help="connections of the saturation runs"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    nodes: int
    history: int

    @property
    def history_base(self) -> int:
        return 1 + self.nodes

    @property
    def current_base(self) -> int:
        return self.history_base + 2 * self.history

    @property
    def last(self) -> int:
        return self.current_base + self.nodes * PODS_PER_NODE - 1


# Node i's /24 and pod j's address (j = 1..110); history holding h is on node h % N, slot
# 1 + (h / N) % 110, requested at offset HB + 2h and released at HB + 2h + 1.
_BUILD = [
    "SET synchronous_commit = off",
    "INSERT INTO cluster (name, partition, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask, "
    "cursors, next_seq, version) VALUES ('default', 0, ARRAY['10.0.0.0/8'], 24, "
    "ARRAY[]::text[], NULL, "
    "json_build_object('ipv4', json_build_array($1::bigint), 'ipv6', json_build_array()), "
    "$1::bigint, $3::bigint)",
    'INSERT INTO cluster_history (cluster, "offset", partition, time, ipv4_cidrs, '
    "ipv4_mask, ipv6_cidrs, ipv6_mask) VALUES ('default', 0, 0, $4::timestamptz, "
    "ARRAY['10.0.0.0/8'], "
    "24, ARRAY[]::text[], NULL)",
    "INSERT INTO consumer_offset (partition, log, next_offset, updated_at) "
    "VALUES (0, 'table', $3::bigint + 1, now())",
    "INSERT INTO node (cluster, name, seq, pod_cidrs, error, conflict, addresses, pinned, "
    "waiting, cursors, deleted, version, updated_at) SELECT 'default', 'node-' || i, i, "
    "ARRAY[host('10.0.0.0'::inet + i * 256) || '/24'], NULL, NULL, ARRAY[]::text[], false, "
    "false, ARRAY[110::bigint], false, $2::bigint + i * 110 + 109, now() "
    "FROM generate_series(0, $1::bigint - 1) AS i",
    'INSERT INTO node_history (cluster, name, "offset", partition, time, deleted, pod_cidrs, '
    "error, conflict, addresses, pinned, waiting) SELECT 'default', 'node-' || i, 1 + i, 0, "
    "$4::timestamptz + (1 + i) * interval '1 ms', false, "
    "ARRAY[host('10.0.0.0'::inet + i * 256) || '/24'], NULL, NULL, ARRAY[]::text[], false, false "
    "FROM generate_series(0, $1::bigint - 1) AS i",
    "INSERT INTO pod_ip (cluster, address, node, owner, partition, since_offset, since_time) "
    "SELECT 'default', '10.0.0.0'::inet + (p / 110) * 256 + 1 + p % 110, "
    "'node-' || (p / 110), 'ns-' || (p / 110) % 100 || '/pod-' || p, 0, $2::bigint + p, "
    "$4::timestamptz + ($2::bigint + p) * interval '1 ms' "
    "FROM generate_series(0, $1::bigint * 110 - 1) AS p",
    "INSERT INTO ip_history (cluster, address, node, owner, partition, from_offset, from_time, "
    "to_offset, to_time) SELECT 'default', "
    "'10.0.0.0'::inet + (h % $1::bigint) * 256 + 1 + (h / $1::bigint) % 110, "
    "'node-' || h % $1::bigint, 'old-' || h % 100 || '/pod-' || h, 0, "
    "$5::bigint + 2 * h, $4::timestamptz + ($5::bigint + 2 * h) * interval '1 ms', "
    "$5::bigint + 2 * h + 1, $4::timestamptz + ($5::bigint + 2 * h + 1) * interval '1 ms' "
    "FROM generate_series(0, $6::bigint - 1) AS h",
    'INSERT INTO decision (partition, "offset", cluster, event_id, type, error, body, '
    "event_time, log_time, applied_at) SELECT 0, o, 'default', 'e' || o, "
    "CASE WHEN o = 0 THEN 'pool.configured' WHEN o < $5::bigint THEN 'node.added' "
    "WHEN o >= $2::bigint OR (o - $5::bigint) % 2 = 0 THEN 'ip.requested' "
    "ELSE 'ip.released' END, NULL, convert_to('{\"id\":\"e' || o || '\"}', 'UTF8'), "
    "$4::timestamptz + o * interval '1 ms', $4::timestamptz + o * interval '1 ms', now() "
    "FROM generate_series(0, $3::bigint) AS o",
    "ANALYZE",
]


async def build(dsn: str, shape: Shape) -> float:
    """Write the projection; the seconds it took."""
    began = time.monotonic()
    # Every value is a number or a time of this module's own: written into the text, so that
    # each statement is one server-side INSERT ... SELECT.
    values = {
        "$1::bigint": str(shape.nodes),
        "$2::bigint": str(shape.current_base),
        "$3::bigint": str(shape.last),
        "$4::timestamptz": "'2026-11-01T00:00:00Z'::timestamptz",
        "$5::bigint": str(shape.history_base),
        "$6::bigint": str(shape.history),
    }
    db = await asyncpg.connect(dsn)
    try:
        for template in _BUILD:
            statement = template
            for name, value in values.items():
                statement = statement.replace(name, f"({value})")
            await db.execute(statement)
    finally:
        await db.close()
    return time.monotonic() - began


# --- the requests ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request: its paths (drawn at random) and the reader calls its route makes."""

    name: str
    paths: Callable[[random.Random], str]
    reads: Callable[[pg_reader.PostgresProjectionReader, random.Random], Awaitable[Any]]


def kinds(shape: Shape) -> list[Kind]:
    def pod(rng: random.Random) -> tuple[int, int]:
        return rng.randrange(shape.nodes), rng.randrange(PODS_PER_NODE)

    def address(node: int, slot: int) -> str:
        value = (10 << 24) + node * 256 + 1 + slot
        return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))

    def past(rng: random.Random) -> tuple[str, int]:
        h = rng.randrange(shape.history)
        node, slot = h % shape.nodes, (h // shape.nodes) % PODS_PER_NODE
        return address(node, slot), shape.history_base + 2 * h

    def ip_path(rng: random.Random) -> str:
        return f"/v1/clusters/{CLUSTER}/ips/{address(*pod(rng))}"

    def node_path(rng: random.Random) -> str:
        return f"/v1/clusters/{CLUSTER}/nodes/node-{rng.randrange(shape.nodes)}"

    def owner_path(rng: random.Random) -> str:
        node, slot = pod(rng)
        p = node * PODS_PER_NODE + slot
        return f"/v1/clusters/{CLUSTER}/owners/ns-{node % 100}%2Fpod-{p}"

    def as_of_path(rng: random.Random) -> str:
        ip, offset = past(rng)
        return f"/v1/clusters/{CLUSTER}/ips/{ip}?as_of={offset}"

    # What the routes call (service.api.routes: the basis, then the one query of the answer).
    async def ip_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        await reader.applied_offset(0)
        return await reader.address_history(CLUSTER, ipaddress.ip_address(address(*pod(rng))))

    async def node_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        at = await reader.applied_offset(0)
        assert at is not None
        return await reader.node_at(CLUSTER, f"node-{rng.randrange(shape.nodes)}", at)

    async def owner_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        await reader.applied_offset(0)
        node, slot = pod(rng)
        return await reader.owner_history(
            CLUSTER, f"ns-{node % 100}/pod-{node * PODS_PER_NODE + slot}"
        )

    async def as_of_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        await reader.applied_offset(0)
        ip, _ = past(rng)
        return await reader.address_history(CLUSTER, ipaddress.ip_address(ip))

    return [
        Kind("ip", ip_path, ip_reads),
        Kind("node", node_path, node_reads),
        Kind("owner", owner_path, owner_reads),
        Kind("as_of ip", as_of_path, as_of_reads),
    ]


class _Recorder(pg_reader.PostgresProjectionReader):
    """The reader, noting each statement it runs (and its arguments) instead of running it."""

    def __init__(self, dsn: str) -> None:
        reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
        super().__init__(reader._engine, owns_engine=True)
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def _fetch(self, doing: str, query: str, *args: Any) -> list[Any]:
        self.statements.append((query, args))
        return await super()._fetch(doing, query, *args)


async def statements_of(
    dsn: str, kind: Kind, count: int, seed: int
) -> list[list[tuple[str, tuple[Any, ...]]]]:
    """The SQL (with arguments) the reader runs for ``count`` requests of ``kind``."""
    recorder = _Recorder(dsn)
    rng = random.Random(seed)
    out = []
    try:
        for _ in range(count):
            recorder.statements = []
            await kind.reads(recorder, rng)
            out.append(recorder.statements)
    finally:
        await recorder.close()
    return out


# --- load -----------------------------------------------------------------------------------------


async def offered(base: str, kind: Kind, seconds: float, seed: int) -> tuple[list[float], int]:
    """Latencies (s) at RATE requests/s offered, counted from when each was due; and failures."""
    rng = random.Random(seed)
    count = int(seconds * RATE)
    paths = [kind.paths(rng) for _ in range(count)]
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        await client.get(paths[0])
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal failures
            due = start + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await client.get(paths[i])
            except httpx.TransportError:
                # A kept-alive connection the server closed as it was reused: a failure to
                # count, not a latency.
                failures += 1
                return
            latencies.append(time.perf_counter() - due)
            if response.status_code != 200:
                failures += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    latencies.sort()
    return latencies, failures


async def saturated_api(
    base: str, kind: Kind, seconds: float, concurrency: int, seed: int
) -> tuple[float, int]:
    """Requests/s with ``concurrency`` requests always in flight; and failures."""
    rng = random.Random(seed)
    done = 0
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as client:
        await client.get(kind.paths(rng))
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, failures
            while time.perf_counter() < end:
                try:
                    response = await client.get(kind.paths(rng))
                except httpx.TransportError:
                    failures += 1
                    continue
                done += 1
                if response.status_code != 200:
                    failures += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return done / elapsed, failures


async def saturated_sql(
    dsn: str,
    requests: list[list[tuple[str, tuple[Any, ...]]]],
    seconds: float,
    concurrency: int,
) -> float:
    """Requests/s of a bare asyncpg loop running each request's statements as the reader does
    (each in its own read-only REPEATABLE READ transaction), ``concurrency`` connections."""
    pool = await asyncpg.create_pool(
        dsn, min_size=concurrency, max_size=concurrency, server_settings=pg_reader.READ_ONLY_SESSION
    )
    done = 0
    try:
        end = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            async with pool.acquire() as db:
                while time.perf_counter() < end:
                    for query, args in requests[i % len(requests)]:
                        async with db.transaction(isolation="repeatable_read", readonly=True):
                            await db.fetch(query, *args)
                    done += 1
                    i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await pool.close()
    return done / elapsed


# --- the API's process ----------------------------------------------------------------------------


# ``--api-nodelay``: the API's process with TCP_NODELAY set on its listening socket (accepted
# sockets inherit it). ``socket.create_server`` makes a socket whose protocol is 0, for which
# asyncio does not set TCP_NODELAY itself, so a kept-alive connection waits for the client's
# delayed ACK (about 40 ms) before the body of each answer leaves; this shows the figures with
# that fixed, beside the figures of the API as it is.
NODELAY = (
    "import socket, sys\n"
    "import service.processes.api as api\n"
    "listen = api._listen\n"
    "def nodelay(host, port):\n"
    "    s = listen(host, port)\n"
    "    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "    return s\n"
    "api._listen = nodelay\n"
    "from service.cli import main\n"
    "sys.exit(main(['api']))\n"
)


def start_api(dsn: str, port: int, *, nodelay: bool = False) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        IPLEDGER_DATABASE_URL=dsn,
        IPLEDGER_API_ADDRESS=f"127.0.0.1:{port}",
        IPLEDGER_LOG="table",
        IPLEDGER_LOG_LEVEL="WARNING",
    )
    return subprocess.Popen(
        [sys.executable, "-c", NODELAY]
        if nodelay
        else [sys.executable, "-m", "service.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
    )


async def wait_ready(base: str, api: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
        while True:
            if api.poll() is not None:
                raise RuntimeError(f"ipledger api exited with {api.returncode}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ipledger api did not answer /healthz within 60 s")
            await asyncio.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the benchmark --------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str) -> str:
    return f"median of {len(values)} runs; min {min(values):{fmt}}, max {max(values):{fmt}}"


async def _run(args: argparse.Namespace, postgres: bench.ScratchPostgres) -> list[bench.Result]:
    quick = bool(getattr(args, "quick", False))
    shape = Shape(
        nodes=64 if quick else args.api_nodes, history=10_000 if quick else args.api_history
    )
    runs = 1 if quick else (args.repeat or args.api_runs)
    seconds = 2.0 if quick else args.api_seconds
    sat_seconds = 1.0 if quick else args.api_saturation_seconds
    dsn = await postgres.fresh_database()
    took = await build(dsn, shape)
    settings = dataclasses.replace(Settings(), database_url=dsn)
    await bootstrap.ensure_api_role(settings)
    held = shape.nodes * PODS_PER_NODE
    size = (
        f"{shape.nodes:,} nodes x {PODS_PER_NODE} pods = {held:,} addresses held, "
        f"{shape.history:,} ip_history rows, {shape.last + 1:,} decisions; built in {took:.0f} s"
    )
    if args.api_nodelay:
        size += "; API with TCP_NODELAY on its listening socket (--api-nodelay)"
    print(f"[api] {size}", file=sys.stderr, flush=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(dsn, port, nodelay=args.api_nodelay)
    results: list[bench.Result] = []
    try:
        await wait_ready(base, api)
        for kind in kinds(shape):
            p50s: list[float] = []
            p99s: list[float] = []
            apis: list[float] = []
            sqls: list[float] = []
            ratios: list[float] = []
            failed = 0
            requests = await statements_of(dsn, kind, 500, seed=7)
            for run in range(runs):
                latencies, failures = await offered(base, kind, seconds, seed=run)
                failed += failures
                p50s.append(bench.percentile(latencies, 0.50) * 1000)
                p99s.append(bench.percentile(latencies, 0.99) * 1000)
                rate, failures = await saturated_api(
                    base, kind, sat_seconds, args.api_concurrency, seed=100 + run
                )
                failed += failures
                sql = await saturated_sql(dsn, requests, sat_seconds, args.api_concurrency)
                apis.append(rate)
                sqls.append(sql)
                ratios.append(rate / sql)
            note = f"; {failed} requests failed or not 200" if failed else ""
            p99 = bench.median(p99s)
            results += [
                bench.Result(
                    NAME,
                    f"{kind.name}: p50 at 200/s",
                    bench.median(p50s),
                    "ms",
                    detail=_spread(p50s, ".2f") + f"; {size}",
                ),
                bench.Result(
                    NAME,
                    f"{kind.name}: p99 at 200/s",
                    p99,
                    "ms",
                    target=f"<= {P99_TARGET_MS:g} ms",
                    met=p99 <= P99_TARGET_MS,
                    detail=_spread(p99s, ".2f") + note,
                ),
                bench.Result(
                    NAME,
                    f"{kind.name}: saturation",
                    bench.median(apis),
                    "requests/s",
                    detail=_spread(apis, ".0f") + f", {args.api_concurrency} connections",
                ),
                bench.Result(
                    NAME,
                    f"{kind.name}: bare asyncpg, same SQL",
                    bench.median(sqls),
                    "requests/s",
                    detail=_spread(sqls, ".0f"),
                ),
                bench.Result(
                    NAME,
                    f"{kind.name}: API / bare SQL",
                    bench.median(ratios),
                    "ratio",
                    detail=_spread(ratios, ".3f"),
                ),
            ]
            print(f"[api] {kind.name} done", file=sys.stderr, flush=True)
    finally:
        api.terminate()
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
    return results


def run(args: argparse.Namespace) -> list[bench.Result]:
    with bench.ScratchPostgres("ipledger-bench-api-") as postgres:
        return asyncio.run(_run(args, postgres))
