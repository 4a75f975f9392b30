"""The restart benchmark's database: a projection holding ``nodes`` x 110 pod addresses.

What ``bench.allocator``'s restart figure loads (issue 13: 7.2 M addresses, 10.0.0.0/8 cut into
/24s, 110 pods on each of 65,536 nodes). Built once by server-side ``INSERT ... SELECT`` (a
minute at the full size, where building the state in Python and copying it out took many) and
kept under ``$IPLEDGER_CACHE/bench-restart`` (ignored by git), keyed by the build and the size.
Each run gets a copy of it (``CREATE DATABASE ... TEMPLATE``), since a restart applies a tail and
so writes; the copy is dropped afterwards. The rows are those the allocator would have written
after the events of ``events_state`` (the same names, owners, addresses and cursors):
``python -m bench.restart_db 64 --check`` compares the digest of the loaded state with theirs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
from pathlib import Path

import anyio
import asyncpg

import bench
from service.adapters.postgres import embedded, migrate
from service.adapters.postgres import projection as pg_projection
from service.domain import allocation, document, state
from service.settings import Settings

PODS_PER_NODE = 110
BASE = "restart_base"

_BUILD = [
    "INSERT INTO cluster (name, partition, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask, "
    "cursors, next_seq, version) VALUES ('default', 0, ARRAY['10.0.0.0/8'], 24, "
    "ARRAY[]::text[], NULL, "
    "json_build_object('ipv4', json_build_array({nodes} - 1), 'ipv6', json_build_array()), "
    "{nodes}, 0)",
    "INSERT INTO node (cluster, name, seq, pod_cidrs, error, conflict, addresses, pinned, "
    "waiting, cursors, deleted, version, updated_at) SELECT 'default', 'node-' || i, i, "
    "ARRAY[host('10.0.0.0'::inet + i * 256) || '/24'], NULL, NULL, ARRAY[]::text[], false, "
    "false, ARRAY[{pods}::bigint], false, 0, now() FROM generate_series(0, {nodes} - 1) AS i",
    "INSERT INTO pod_ip (cluster, address, node, owner, partition, since_offset, since_time) "
    "SELECT 'default', '10.0.0.0'::inet + (p / {pods}) * 256 + 1 + p % {pods}, "
    "'node-' || (p / {pods}), 'ns/pod-' || (p / {pods}) || '-' || (p % {pods}), 0, 0, now() "
    "FROM generate_series(0, {nodes} * {pods} - 1) AS p",
]
BUILD_VERSION = "1"  # part of the cache key, with the statements
_REPOSITORY = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    root = Path(os.environ.get("IPLEDGER_CACHE") or _REPOSITORY / ".cache")
    return root / "bench-restart"


def _key(nodes: int) -> str:
    digest = hashlib.sha256(BUILD_VERSION.encode() + "\0".join(_BUILD).encode()).hexdigest()
    return f"{nodes}x{PODS_PER_NODE}-{digest[:16]}"


def server_cpu_s(data_dir: Path) -> float:
    """CPU seconds of the server of ``data_dir`` so far: the postmaster's own, its ended
    children's (a restart's connections end before it is measured) and its live children's."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    total = 0.0
    for pid, process in bench.process_times().items():
        if pid == postmaster:
            total += process.own + process.reaped  # only the postmaster's children are its own
        elif process.parent == postmaster:
            total += process.own
    return total


class RestartDatabase:
    """The server over the cached base database; ``copy()`` hands out a DSN of a fresh copy."""

    def __init__(self, nodes: int, *, fsync: bool = True) -> None:
        self.nodes = nodes
        self.home = cache_dir() / _key(nodes)
        self._fsync = fsync
        self._server: embedded.EmbeddedPostgres | None = None
        self.built_s = 0.0
        self._copies = 0

    @property
    def server(self) -> embedded.EmbeddedPostgres:
        if self._server is None:
            raise RuntimeError("RestartDatabase.start() first")
        return self._server

    def start(self) -> None:
        """Start the server (blocking; on the thread that lives as long as it should: the
        server ends with the thread that started it), then ``await prepare()``."""
        if not (self.home / "ready").exists():
            self._remove()
            self.home.mkdir(parents=True)
            self.home.chmod(0o755)
        # As root the server runs as an account that cannot enter a cache under a private home
        # (/root is 0700): the cluster then lives under the system data directory and home/pg
        # links to it (embedded.place_cluster), as for bench.api's database.
        system = Settings.from_env(os.environ, check=False).system_data_dir
        # fsync on while measuring: the tail's commits are durable as in production. The build
        # itself runs with synchronous_commit off (a lost build is built again).
        self._server = embedded.EmbeddedPostgres(
            embedded.place_cluster(self.home / "pg", system),
            fsync=self._fsync,
            settings={"shared_buffers": "512MB"},
            end_with_parent=True,
        )
        self._server.start()

    def _remove(self) -> None:
        """The cached database, and the cluster its link points to when it is elsewhere."""
        pointer = self.home / "pg"
        if pointer.is_symlink():
            shutil.rmtree(pointer.resolve(), ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    async def prepare(self) -> None:
        """Build the base database if the cache has none, and migrate it to the schema."""
        ready = self.home / "ready"
        if not ready.exists():
            self.built_s = await self._build()
            ready.write_text(f"built in {self.built_s:.0f} s\n")
        await migrate.upgrade(self.server.dsn_for(BASE))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def _build(self) -> float:
        began = time.monotonic()
        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute(f'CREATE DATABASE "{BASE}"')
        finally:
            await db.close()
        dsn = self.server.dsn_for(BASE)
        await migrate.upgrade(dsn)
        db = await asyncpg.connect(dsn)
        try:
            await db.execute("SET synchronous_commit = off")
            await db.execute("SET maintenance_work_mem = '512MB'")
            for template in _BUILD:
                await db.execute(template.format(nodes=self.nodes, pods=PODS_PER_NODE))
            await db.execute("VACUUM (ANALYZE)")
        finally:
            await db.close()
        return time.monotonic() - began

    async def copy(self) -> str:
        """A new database with the base's rows (file copy: seconds, not a rebuild)."""
        self._copies += 1
        name = f"restart_{os.getpid()}_{self._copies}"
        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await db.execute(f'CREATE DATABASE "{name}" TEMPLATE "{BASE}" STRATEGY FILE_COPY')
        finally:
            await db.close()
        return self.server.dsn_for(name)

    async def drop(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await db.close()


def events_state(nodes: int, pods: int) -> state.State:
    """The state the rows stand for, from the events: the pool, then each node and its pods."""
    current = state.State()
    allocation.apply_record(
        current,
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
        b'"clusterPoolIPv4MaskSize":24}',
    )
    for n in range(nodes):
        allocation.apply_record(current, b'{"type":"node.added","id":"n","node":"node-%d"}' % n)
        for p in range(pods):
            allocation.apply_record(
                current,
                b'{"type":"ip.requested","id":"i","node":"node-%d","owner":"ns/pod-%d-%d"}'
                % (n, n, p),
            )
    return current


async def _check(database: RestartDatabase) -> None:
    """The loaded state's digest equals that of the events the rows stand for."""
    dsn = await database.copy()
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="table", holder="check")
    try:
        loaded = await projection.load([0])
    finally:
        await projection.close()
        await database.drop(dsn)
    expected = events_state(database.nodes, PODS_PER_NODE)
    ours, theirs = document.digest(loaded.state), document.digest(expected)
    print(f"loaded {ours}\nevents {theirs}\n{'EQUAL' if ours == theirs else 'DIFFERENT'}")
    if ours != theirs:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("nodes", type=int, nargs="?", default=65_536)
    parser.add_argument("--check", action="store_true", help="compare with events_state's digest")
    args = parser.parse_args()
    database = RestartDatabase(args.nodes)
    database.start()
    try:
        anyio.run(database.prepare)
        print(
            f"{database.home}: built in {database.built_s:.0f} s"
            if database.built_s
            else f"{database.home}: from the cache"
        )
        if args.check:
            anyio.run(_check, database)
    finally:
        database.stop()


if __name__ == "__main__":
    main()
