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
import datetime
import hashlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import bench
from bench import http_load
from service import bootstrap
from service.adapters.postgres import embedded, migrate
from service.adapters.postgres import reader as pg_reader
from service.settings import Settings

NAME = "api"
PODS_PER_NODE = 110
CLUSTER = "default"
RATE = 200.0
# The offered rates (requests/s) of the latency-against-rate sweep of IP lookups.
SWEEP_RATES = (100.0, 200.0, 400.0, 800.0, 1600.0)
# --quick (a smoke run): every kind and the sweep, short. Nodes and history rows of the
# database, ms of open loop per run and per sweep rate, ms of saturation, point-in-time lookups.
QUICK = {
    "nodes": 64,
    "history": 10_000,
    "open_ms": 1000,
    "saturation_ms": 500,
    "sweep_ms": 1000,
    "lookups": 200,
}
P99_TARGET_MS = 10.0
# Issue 10: a point-in-time lookup of one address.
PIT_TARGET_MS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-nodes", type=int, default=4096, help="nodes (110 pods each)")
    parser.add_argument(
        "--api-history", type=int, default=1_000_000, help="finished holdings (ip_history rows)"
    )
    parser.add_argument("--api-seconds", type=float, default=8.0, help="seconds at 200/s, per run")
    parser.add_argument(
        "--api-saturation-seconds", type=float, default=4.0, help="seconds of saturation, per run"
    )
    parser.add_argument("--api-runs", type=int, default=3, help="runs (median, min, max)")
    parser.add_argument(
        "--api-rebuild", action="store_true", help="build the database again, cached or not"
    )
    parser.add_argument(
        "--api-concurrency", type=int, default=16, help="connections of the saturation runs"
    )
    parser.add_argument(
        "--api-load-processes", type=int, default=2, help="processes offering the load"
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


# Tables the build fills whose secondary indexes are dropped first and created again after (one
# sort per index instead of a tree insert per row): several times faster at the issue's size.
_BULK_TABLES = ("decision", "ip_history", "pod_ip", "node", "node_history")
# The statements of _BUILD that may run side by side, on two connections (the two cores): the
# decisions (the most rows) on one, everything else on the other, in order.
_DECISIONS = 8


def _statements(shape: Shape) -> list[str]:
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
    out = []
    for template in _BUILD:
        statement = template
        for name, value in values.items():
            statement = statement.replace(name, f"({value})")
        out.append(statement)
    return out


async def build(dsn: str, shape: Shape) -> float:
    """Write the projection; the seconds it took."""
    began = time.monotonic()
    statements = _statements(shape)
    db = await asyncpg.connect(dsn)
    other = await asyncpg.connect(dsn)
    try:
        indexes = await db.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)",
            list(_BULK_TABLES),
        )
        for index in indexes:
            await db.execute(f'DROP INDEX "{index["indexname"]}"')
        for connection in (db, other):
            await connection.execute("SET synchronous_commit = off")
            await connection.execute("SET maintenance_work_mem = '512MB'")

        async def serially(connection: asyncpg.Connection, todo: list[str]) -> None:
            for statement in todo:
                await connection.execute(statement)

        rest = [
            s for i, s in enumerate(statements) if i not in (0, _DECISIONS, len(statements) - 1)
        ]
        await asyncio.gather(serially(db, [statements[_DECISIONS]]), serially(other, rest))
        # Two at a time, again one per core.
        pending = [str(index["indexdef"]) for index in indexes]
        while pending:
            await asyncio.gather(
                *(c.execute(d) for c, d in zip((db, other), pending[:2], strict=False))
            )
            pending = pending[2:]
        await asyncio.gather(
            db.execute("VACUUM (ANALYZE) decision"),
            serially(other, [f"VACUUM (ANALYZE) {t}" for t in _BULK_TABLES if t != "decision"]),
        )
        await db.execute("ANALYZE")
    finally:
        await other.close()
        await db.close()
    return time.monotonic() - began


# Part of the cache key: a change to how the rows are built must not find an old database.
BUILD_VERSION = "2"
_REPOSITORY = Path(__file__).resolve().parents[1]


def _cache_key(shape: Shape) -> str:
    """The build and the size: what the database holds. Not the schema: a cached database is
    brought to the current one by the migrations when it is opened (what they are for), which
    takes seconds where a build takes minutes."""
    digest = hashlib.sha256(BUILD_VERSION.encode() + "\0".join(_BUILD).encode())
    return f"{shape.nodes}x{PODS_PER_NODE}-{shape.history}-{digest.hexdigest()[:16]}"


def cache_dir() -> Path:
    """Where built databases are kept: ``$IPLEDGER_CACHE/bench-api`` (ignored by git)."""
    root = Path(os.environ.get("IPLEDGER_CACHE") or _REPOSITORY / ".cache")
    return root / "bench-api"


# The server of a built database: its data outlives the run (fsync off: a database that is lost
# with the machine is built again; a clean stop writes everything out).
_SERVER_SETTINGS = {"shared_buffers": "512MB", "max_connections": "100"}


class BuiltDatabase:
    """A PostgreSQL server over a database holding the projection of ``shape``, built once and
    kept under ``cache_dir()`` keyed by the build and the size, migrated to the current schema
    each time it is opened; ``--api-rebuild`` builds it again. ``start()`` returns the DSN and
    the build's seconds (0 when it came from the cache); ``stop()`` stops the server."""

    def __init__(self, shape: Shape, *, rebuild: bool = False, keep: bool = True) -> None:
        self.shape = shape
        self.key = _cache_key(shape)
        self.rebuild = rebuild
        self.keep = keep
        self.home = cache_dir() / self.key
        self.server: embedded.EmbeddedPostgres | None = None

    def _server(self) -> embedded.EmbeddedPostgres:
        # As root the server runs as an account that cannot enter a cache under a private home
        # (/root is 0700): the cluster then lives under the system data directory and
        # home/pg links to it (embedded.place_cluster).
        system = Settings.from_env(os.environ, check=False).system_data_dir
        data = embedded.place_cluster(self.home / "pg", system)
        return embedded.EmbeddedPostgres(
            data, fsync=False, settings=_SERVER_SETTINGS, end_with_parent=True
        )

    def _remove(self) -> None:
        """The cached database, and the cluster its link points to when it is elsewhere."""
        pointer = self.home / "pg"
        if pointer.is_symlink():
            shutil.rmtree(pointer.resolve(), ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    async def start(self) -> tuple[str, float]:
        ready = self.home / "ready"
        if self.rebuild or not ready.exists() or not self.keep:
            self._remove()
            self.home.mkdir(parents=True)
            self.home.chmod(0o755)
            self.server = self._server()
            self.server.start()
            db = await asyncpg.connect(self.server.dsn)
            try:
                await db.execute('CREATE DATABASE "bench"')
            finally:
                await db.close()
            dsn = self.server.dsn_for("bench")
            await migrate.upgrade(dsn)
            took = await build(dsn, self.shape)
            await bootstrap.ensure_api_role(dataclasses.replace(Settings(), database_url=dsn))
            ready.write_text(f"built in {took:.0f} s\n")
            return dsn, took
        self.server = self._server()
        self.server.start()
        dsn = self.server.dsn_for("bench")
        await migrate.upgrade(dsn)
        return dsn, 0.0

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if not self.keep:
            self._remove()


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

    def as_of_time_path(rng: random.Random) -> str:
        ip, offset = past(rng)
        return f"/v1/clusters/{CLUSTER}/ips/{ip}?as_of={_time_of(offset)}"

    # What the routes call (service.api.routes): the basis and the answer in one statement.
    async def ip_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        return await reader.address_history_based(
            CLUSTER, 0, ipaddress.ip_address(address(*pod(rng))), None
        )

    async def node_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        return await reader.node_based(CLUSTER, 0, f"node-{rng.randrange(shape.nodes)}", None)

    async def owner_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        node, slot = pod(rng)
        owner = f"ns-{node % 100}/pod-{node * PODS_PER_NODE + slot}"
        return await reader.owner_history_based(CLUSTER, 0, owner, None)

    async def as_of_reads(reader: pg_reader.PostgresProjectionReader, rng: random.Random) -> Any:
        ip, offset = past(rng)
        return await reader.address_history_based(CLUSTER, 0, ipaddress.ip_address(ip), offset)

    async def as_of_time_reads(
        reader: pg_reader.PostgresProjectionReader, rng: random.Random
    ) -> Any:
        ip, offset = past(rng)
        at = datetime.datetime.fromisoformat(_time_of(offset))
        return await reader.address_history_based(CLUSTER, 0, ipaddress.ip_address(ip), at)

    return [
        Kind("ip", ip_path, ip_reads),
        Kind("node", node_path, node_reads),
        Kind("owner", owner_path, owner_reads),
        Kind("as_of ip", as_of_path, as_of_reads),
        Kind("as_of time ip", as_of_time_path, as_of_time_reads),
    ]


_EPOCH = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)


def _time_of(offset: int) -> str:
    """The time of the record at ``offset`` (1 ms per offset from the epoch of _BUILD)."""
    moment = _EPOCH + datetime.timedelta(milliseconds=offset)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Recorder(pg_reader.PostgresProjectionReader):
    """The reader, noting each statement it runs (and its arguments) instead of running it."""

    def __init__(self, dsn: str) -> None:
        reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
        super().__init__(reader._engine, owns_engine=True)
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def _fetch(
        self, doing: str, query: str, *args: Any, custom_plan: bool = False
    ) -> list[Any]:
        self.statements.append((query, args))
        return await super()._fetch(doing, query, *args, custom_plan=custom_plan)


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


# --- load (bench/http_load.py: processes of their own) and the bare SQL loop ----------------------


async def saturated_sql(
    dsn: str,
    requests: list[list[tuple[str, tuple[Any, ...]]]],
    seconds: float,
    concurrency: int,
) -> float:
    """Requests/s of a bare asyncpg loop running each request's statements as the reader runs
    them (each on its own, outside an explicit transaction, on read-only sessions),
    ``concurrency`` connections."""
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
                        await db.fetch(query, *args)
                    done += 1
                    i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await pool.close()
    return done / elapsed


async def point_in_time(dsn: str, shape: Shape, count: int) -> list[float]:
    """Latencies (s, sorted) of ``count`` point-in-time lookups of one address, one after the
    other, through the reader itself (``holder(at=...)``, what ``ipledger audit ip --at`` asks):
    a past holding's address at a time inside it."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    rng = random.Random(11)
    out = []
    try:
        for _ in range(count):
            h = rng.randrange(shape.history)
            node, slot = h % shape.nodes, (h // shape.nodes) % PODS_PER_NODE
            ip = ipaddress.ip_address((10 << 24) + node * 256 + 1 + slot)
            at = datetime.datetime.fromisoformat(_time_of(shape.history_base + 2 * h))
            began = time.perf_counter()
            found = await reader.holder(CLUSTER, ip, at=at)
            out.append(time.perf_counter() - began)
            if found is None or found.from_offset != shape.history_base + 2 * h:
                raise RuntimeError(f"holder({ip}, at={at}) is {found}")
    finally:
        await reader.close()
    out.sort()
    return out


# --- the API's process ----------------------------------------------------------------------------


def api_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_api(dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        IPLEDGER_DATABASE_URL=dsn,
        IPLEDGER_API_ADDRESS=f"127.0.0.1:{port}",
        IPLEDGER_LOG="table",
        IPLEDGER_LOG_LEVEL="WARNING",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api"], env=env, stdout=subprocess.DEVNULL
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


def _shape(args: argparse.Namespace) -> Shape:
    if getattr(args, "quick", False):
        return Shape(nodes=QUICK["nodes"], history=QUICK["history"])
    return Shape(nodes=args.api_nodes, history=args.api_history)


async def _run(args: argparse.Namespace, dsn: str, took: float) -> list[bench.Result]:
    quick = bool(getattr(args, "quick", False))
    shape = _shape(args)
    runs = 1 if quick else (args.repeat or args.api_runs)
    seconds = QUICK["open_ms"] / 1000 if quick else args.api_seconds
    sat_seconds = QUICK["saturation_ms"] / 1000 if quick else args.api_saturation_seconds
    held = shape.nodes * PODS_PER_NODE
    built = f"built in {took:.0f} s" if took else f"from the cache ({cache_dir()})"
    size = (
        f"{shape.nodes:,} nodes x {PODS_PER_NODE} pods = {held:,} addresses held, "
        f"{shape.history:,} ip_history rows, {shape.last + 1:,} decisions; {built}"
    )
    print(f"[api] {size}", file=sys.stderr, flush=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(dsn, port)
    results: list[bench.Result] = []
    processes = args.api_load_processes
    try:
        await wait_ready(base, api)
        for kind in kinds(shape):
            p50s: list[float] = []
            p99s: list[float] = []
            answered99s: list[float] = []
            late99s: list[float] = []
            apis: list[float] = []
            cpu_us: list[float] = []
            sqls: list[float] = []
            ratios: list[float] = []
            failed = 0
            requests = await statements_of(dsn, kind, 500, seed=7)
            for run in range(runs):
                rng = random.Random(run)
                paths = [kind.paths(rng) for _ in range(int(seconds * RATE))]
                offered = await asyncio.to_thread(
                    http_load.open_loop, "127.0.0.1", port, paths, RATE, processes=processes
                )
                failed += offered.not_ok
                p50s.append(bench.percentile(offered.latencies, 0.50) * 1000)
                p99s.append(bench.percentile(offered.latencies, 0.99) * 1000)
                answered99s.append(bench.percentile(offered.answered, 0.99) * 1000)
                late99s.append(bench.percentile(offered.late, 0.99) * 1000)
                rng = random.Random(100 + run)
                paths = [kind.paths(rng) for _ in range(5000)]
                cpu_before = api_cpu_s(api.pid)
                saturated = await asyncio.to_thread(
                    http_load.closed_loop,
                    "127.0.0.1",
                    port,
                    paths,
                    sat_seconds,
                    processes=processes,
                    connections=args.api_concurrency,
                )
                cpu_us.append((api_cpu_s(api.pid) - cpu_before) / max(saturated.done, 1) * 1e6)
                failed += saturated.not_ok
                rate = saturated.done / saturated.seconds
                sql = await saturated_sql(dsn, requests, sat_seconds, args.api_concurrency)
                apis.append(rate)
                sqls.append(sql)
                ratios.append(rate / sql)
            note = f"; {failed} requests failed or not 200" if failed else ""
            target = P99_TARGET_MS
            results += [
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: p50 at 200/s",
                    p50s,
                    "ms",
                    issue="9",
                    better="lower",
                    detail=f"open loop from {processes} processes; {size}",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: p99 at 200/s",
                    p99s,
                    "ms",
                    target=f"<= {target:g} ms",
                    met=bench.median(p99s) <= target,
                    issue="9",
                    better="lower",
                    detail=f"latency from each request's due time{note}; its parts' p99s "
                    f"(medians of the runs): from the request's write to its answer "
                    f"{bench.median(answered99s):.2f} ms, the load process's own lateness "
                    f"(due to write) {bench.median(late99s):.2f} ms",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: saturation",
                    apis,
                    "requests/s",
                    better="higher",
                    detail=f"closed loop, {args.api_concurrency} connections "
                    f"from {processes} processes",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: bare asyncpg, same SQL",
                    sqls,
                    "requests/s",
                    better="higher",
                    detail=f"{args.api_concurrency} connections, the statement the reader runs",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: API / bare SQL",
                    ratios,
                    "ratio",
                    better="higher",
                    detail="saturation of the API over the bare loop's, each run side by side",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{kind.name}: API CPU per request",
                    cpu_us,
                    "us",
                    better="lower",
                    detail="user + system CPU of the API process over the saturation run, "
                    "per answer (/proc/<pid>/stat)",
                ),
            ]
            if kind.name == "as_of time ip":
                results.append(
                    bench.Result.of_samples(
                        NAME,
                        "point-in-time lookup via the API: p99 at 200/s",
                        p99s,
                        "ms",
                        target=f"<= {PIT_TARGET_MS:g} ms",
                        met=bench.median(p99s) <= PIT_TARGET_MS,
                        issue="10",
                        better="lower",
                        detail="an address ?as_of=<RFC 3339 time> inside a past holding",
                    )
                )
            print(f"[api] {kind.name} done", file=sys.stderr, flush=True)
        sweep_seconds = QUICK["sweep_ms"] / 1000 if quick else args.api_seconds
        results += await rate_sweep(kinds(shape)[0], port, sweep_seconds, processes, size)
    finally:
        api.terminate()
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
    p99s = []
    for _ in range(runs):
        lookups = await point_in_time(dsn, shape, QUICK["lookups"] if quick else 2000)
        p99s.append(bench.percentile(lookups, 0.99) * 1000)
    results.append(
        bench.Result.of_samples(
            NAME,
            "point-in-time lookup, reader.holder(at=T): p99",
            p99s,
            "ms",
            target=f"<= {PIT_TARGET_MS:g} ms",
            met=bench.median(p99s) <= PIT_TARGET_MS,
            issue="10",
            better="lower",
            detail=f"one after the other, in this process (ipledger audit ip --at); {size}",
        )
    )
    return results


async def rate_sweep(
    kind: Kind, port: int, seconds: float, processes: int, size: str
) -> list[bench.Result]:
    """Open-loop runs of one request kind at each of ``SWEEP_RATES``: p50/p99 against the rate.

    The same paths and schedule shape as the 200/s runs, only the rate changes; past the rate
    the API sustains, the latency from the due time grows with the backlog (it is not hidden).
    """
    p50s: list[float] = []
    p99s: list[float] = []
    results: list[bench.Result] = []
    for rate in SWEEP_RATES:
        rng = random.Random(int(rate))
        paths = [kind.paths(rng) for _ in range(max(1, int(seconds * rate)))]
        offered = await asyncio.to_thread(
            http_load.open_loop, "127.0.0.1", port, paths, rate, processes=processes
        )
        p50s.append(bench.percentile(offered.latencies, 0.50) * 1000)
        p99s.append(bench.percentile(offered.latencies, 0.99) * 1000)
        failed = f", {offered.not_ok} failed or not 200" if offered.not_ok else ""
        results.append(
            bench.Result(
                NAME,
                f"{kind.name}: p99 at {rate:g}/s offered (rate sweep)",
                p99s[-1],
                "ms",
                detail=f"p50 {p50s[-1]:.2f} ms; {len(paths):,} requests over {seconds:g} s "
                f"from {processes} processes{failed}",
                issue="9",
                better="lower",
            )
        )
    print(f"[api] rate sweep of {kind.name} done", file=sys.stderr, flush=True)
    plot = {
        "title": f"API latency against offered request rate ({kind.name} lookups, open loop)",
        "x_label": "requests/s offered",
        "y_label": "ms from due time to answer",
        "log_x": True,
        "log_y": True,
    }
    last = results[-1]
    results[-1] = dataclasses.replace(
        last,
        detail=f"{last.detail}; {size}",
        series=(
            bench.Series.of("api-latency-vs-rate", "p50", SWEEP_RATES, p50s, **plot),
            bench.Series.of("api-latency-vs-rate", "p99", SWEEP_RATES, p99s, **plot),
        ),
    )
    return results


def run(args: argparse.Namespace) -> list[bench.Result]:
    database = BuiltDatabase(
        _shape(args),
        rebuild=bool(getattr(args, "api_rebuild", False)),
        keep=not getattr(args, "quick", False),
    )
    try:
        dsn, took = asyncio.run(database.start())
        return asyncio.run(_run(args, dsn, took))
    finally:
        database.stop()


def main() -> None:
    """Build (or find) the database of the given size and leave it in the cache."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args()
    database = BuiltDatabase(_shape(args), rebuild=args.api_rebuild)
    try:
        dsn, took = asyncio.run(database.start())
        print(f"{dsn} ({database.home}); built in {took:.0f} s", flush=True)
    finally:
        database.stop()


if __name__ == "__main__":
    main()
