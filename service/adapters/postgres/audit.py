"""``ports.AuditReader`` over PostgreSQL: tree heads, leaves and the projection's rows, read-only.

Used by ``ipledger audit`` and ``ipledger replay`` (built by ``service.bootstrap``). Sessions are
read-only like the read side's (``reader.READ_ONLY_SESSION``); ``rows`` reads every table in one
``REPEATABLE READ`` transaction, so the rows compared come from one commit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import errors, ports
from service.adapters.postgres import driver, projection, reader

_translate = driver.Translation(errors.ProjectionError)


class PostgresAuditReader:
    """Read-only audit queries over one ipledger database."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine

    @classmethod
    def from_dsn(cls, dsn: str) -> PostgresAuditReader:
        return cls(
            driver.engine(dsn, pool_size=2, server_settings=reader.READ_ONLY_SESSION),
            owns_engine=True,
        )

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    def _read(self, doing: str) -> AbstractAsyncContextManager[Any]:
        return driver.connection(self._engine, _translate, doing, transaction=True)

    async def heads(self, partition: int) -> list[ports.RecordedHead]:
        async with self._read("reading tree heads") as db:
            rows = await db.fetch(
                "SELECT body, hash, frontier FROM tree_head WHERE partition = $1 ORDER BY size",
                partition,
            )
        return [projection.recorded_head(row) for row in rows]

    async def head(self, partition: int, size: int | None = None) -> ports.RecordedHead | None:
        async with self._read("reading a tree head") as db:
            row = await db.fetchrow(
                "SELECT body, hash, frontier FROM tree_head WHERE partition = $1 "
                "AND ($2::bigint IS NULL OR size = $2) ORDER BY size DESC LIMIT 1",
                partition,
                size,
            )
        return None if row is None else projection.recorded_head(row)

    async def leaves(self, partition: int, end: int, start: int = 0) -> list[bytes | None]:
        async with self._read("reading leaves") as db:
            rows = await db.fetch(
                'SELECT "offset", leaf FROM decision WHERE partition = $1 AND "offset" >= $2 '
                'AND "offset" < $3 ORDER BY "offset"',
                partition,
                start,
                end,
            )
        found: list[bytes | None] = [None] * max(0, end - start)
        for row in rows:
            found[row["offset"] - start] = None if row["leaf"] is None else bytes(row["leaf"])
        return found

    async def subtrees(
        self, partition: int, wanted: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        if not wanted:
            return {}
        async with self._read("reading subtree roots") as db:
            rows = await db.fetch(
                "SELECT n.start, n.level, n.hash FROM tree_node n "
                "JOIN unnest($2::smallint[], $3::bigint[]) AS w(level, start) "
                "ON n.level = w.level AND n.start = w.start WHERE n.partition = $1",
                partition,
                [level for _, level in wanted],
                [start for start, _ in wanted],
            )
        return {(r["start"], r["level"]): bytes(r["hash"]) for r in rows}

    async def decisions(self, partition: int, start: int, limit: int) -> list[ports.StoredDecision]:
        async with self._read("reading decisions") as db:
            rows = await db.fetch(
                'SELECT "offset", body, leaf FROM decision WHERE partition = $1 '
                'AND "offset" >= $2 ORDER BY "offset" LIMIT $3',
                partition,
                start,
                limit,
            )
        return [
            ports.StoredDecision(
                r["offset"], bytes(r["body"]), None if r["leaf"] is None else bytes(r["leaf"])
            )
            for r in rows
        ]

    async def decision_digest(self, partition: int, start: int, end: int) -> tuple[int, bytes]:
        # ``ports.decision_digest``'s bytes, made and hashed by the server: the replay's own
        # process then neither parses nor copies the bodies (a fifth of its reading).
        async with self._read("reading a digest of decisions") as db:
            row = await db.fetchrow(
                "SELECT count(*), sha256(coalesce(string_agg("
                'int8send("offset") || int4send(length(body)) || body '
                "|| coalesce('\\x01'::bytea || leaf, '\\x00'::bytea), "
                """'\\x'::bytea ORDER BY "offset"), '\\x'::bytea)) FROM decision """
                'WHERE partition = $1 AND "offset" >= $2 AND "offset" < $3',
                partition,
                start,
                end,
            )
        if row is None:  # an aggregate has its row; a driver that says otherwise is broken
            raise errors.ProjectionError("reading a digest of decisions: no row")
        return int(row[0]), bytes(row[1])

    async def address_digests(self, partition: int) -> dict[str, tuple[int, bytes]]:
        """The digests of ``pod_ip`` and ``ip_history`` that ``service.audit.address_digest``
        makes of a replay's rows (its docstring has the bytes), computed by the server: the
        rows are neither sent nor parsed (``replay --verify`` reads them only if one differs)."""
        found = {}
        async with self._read("reading digests of the address tables") as db:
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # Each statement sorts its table once (the aggregates share their ORDER BY): in
            # memory, not in the default 4 MB's external merge (a million-event log's history
            # took 1.1 s so, written to temporary files).
            await db.execute("SET LOCAL work_mem = '128MB'")
            for table, (query, columns) in _ADDRESS_DIGESTS.items():
                row = await db.fetchrow(query, partition)
                if row is None:  # an aggregate has its row
                    raise errors.ProjectionError(f"reading a digest of {table}: no row")
                digests = b"".join(bytes(row[i]) for i in range(1, columns + 1))
                found[table] = (int(row[0]), hashlib.sha256(digests).digest())
        return found

    async def rows_besides_addresses(self, partitions: Sequence[int]) -> ports.ProjectionRows:
        return await self.rows(partitions, addresses=False)

    async def node_history(self, cluster: str, name: str) -> dict[tuple[str, str, int], Any]:
        async with self._read("reading a node's history") as db:
            rows = await db.fetch(
                'SELECT * FROM node_history WHERE cluster = $1 AND name = $2 ORDER BY "offset"',
                cluster,
                name,
            )
        return {(cluster, name, r["offset"]): _node_history_value(r) for r in rows}

    async def partitions(self) -> dict[int, int]:
        async with self._read("reading consumed offsets") as db:
            rows = await db.fetch("SELECT partition, next_offset FROM consumer_offset")
        return {r["partition"]: r["next_offset"] for r in rows}

    async def rows(
        self, partitions: Sequence[int] | None = None, *, addresses: bool = True
    ) -> ports.ProjectionRows:
        found = ports.ProjectionRows()
        wanted = list(partitions) if partitions else None
        async with self._read("reading the projection's rows") as db:
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            where = "WHERE ($1::int[] IS NULL OR partition = ANY($1::int[]))"
            in_clusters = f"cluster IN (SELECT name FROM cluster {where})"
            for r in await db.fetch(f"SELECT * FROM cluster {where}", wanted):
                cursors = r["cursors"]
                cursors = json.loads(cursors) if isinstance(cursors, str | bytes) else cursors
                found.clusters[r["name"]] = (
                    r["partition"],
                    tuple(r["ipv4_cidrs"]),
                    r["ipv4_mask"],
                    tuple(r["ipv6_cidrs"]),
                    r["ipv6_mask"],
                    json.dumps(cursors, sort_keys=True),
                    r["next_seq"],
                )
            for r in await db.fetch(f"SELECT * FROM node WHERE {in_clusters}", wanted):
                found.nodes[(r["cluster"], r["name"])] = (
                    r["seq"],
                    tuple(r["pod_cidrs"]),
                    r["error"],
                    r["conflict"],
                    tuple(r["addresses"]),
                    r["pinned"],
                    r["waiting"],
                    tuple(r["cursors"]),
                    r["deleted"],
                )
            if addresses:
                found.pod_ips, found.history = await _address_rows(db, in_clusters, wanted)
            for r in await db.fetch(f"SELECT * FROM node_history WHERE {in_clusters}", wanted):
                found.node_history[(r["cluster"], r["name"], r["offset"])] = _node_history_value(r)
            for r in await db.fetch(f"SELECT * FROM cluster_history WHERE {in_clusters}", wanted):
                found.cluster_history[(r["cluster"], r["offset"])] = (
                    r["partition"],
                    r["time"],
                    tuple(r["ipv4_cidrs"]),
                    r["ipv4_mask"],
                    tuple(r["ipv6_cidrs"]),
                    r["ipv6_mask"],
                )
            for r in await db.fetch(f"SELECT * FROM tree_node {where}", wanted):
                found.tree_nodes[(r["partition"], r["level"], r["start"])] = (
                    bytes(r["hash"]).hex(),
                )
            for r in await db.fetch(f"SELECT * FROM rejection {where}", wanted):
                found.rejections[(r["partition"], r["offset"])] = (
                    r["reason"],
                    None if r["key"] is None else bytes(r["key"]),
                    bytes(r["raw"]),
                )
        return found


async def _address_rows(db: Any, in_clusters: str, wanted: list[int] | None) -> tuple[Any, Any]:
    # The address as PostgreSQL's text, not asyncpg's ``ipaddress`` object: building one per
    # row was a fifth of ``replay --verify``'s comparison (``_address``). The columns in the
    # order of the row's key and value, taken by position and the value sliced off in C (these
    # two tables are most of a long log's rows).
    pod_ips = {
        (r[0], _address(r[1])): r[2:]
        for r in await db.fetch(
            "SELECT cluster, abbrev(address), node, owner, partition, since_offset, "
            f"since_time FROM pod_ip WHERE {in_clusters}",
            wanted,
        )
    }
    history = {
        (r[0], _address(r[1]), r[2]): r[3:]
        for r in await db.fetch(
            "SELECT cluster, abbrev(address), from_offset, node, owner, partition, "
            f"from_time, to_offset, to_time FROM ip_history WHERE {in_clusters}",
            wanted,
        )
    }
    return pod_ips, history


def _digest_query(table: str, order: str, columns: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """The statement of one table's digest (``service.audit.address_digest``): the row count,
    then the SHA-256 of each column (a text two: its lengths, its values); and how many."""
    key = [("text", "cluster"), ("int2", "family(address)"), ("address", "address")]
    hashed = []
    for kind, column in [*key, ("int2", "masklen(address)"), *columns]:
        if kind == "text":
            hashed.append(f"string_agg(int4send(octet_length({column})), ''::bytea {order})")
            hashed.append(f"convert_to(string_agg({column}, '' {order}), 'UTF8')")
        else:
            value = {
                "int2": f"int2send(({column})::int2)",
                "int4": f"int4send({column})",
                "int8": f"int8send({column})",
                "address": f"substring(inet_send({column}) from 5)",
                "time": f"float8send(extract(epoch from {column})::float8)",
            }[kind]
            hashed.append(f"string_agg({value}, ''::bytea {order})")
    digests = ", ".join(f"sha256(coalesce({h}, ''::bytea))" for h in hashed)
    query = (
        f"SELECT count(*), {digests} FROM {table} "
        "WHERE cluster IN (SELECT name FROM cluster WHERE partition = $1)"
    )
    return query, len(hashed)


# Each address table's digest statement: its columns after the key, in the order of
# ``service.audit.address_digest.of``. The same ORDER BY in every aggregate: the server sorts once.
_ADDRESS_DIGESTS = {
    "pod_ip": _digest_query(
        "pod_ip",
        'ORDER BY since_offset, cluster COLLATE "C", family(address), address',
        [
            ("int8", "since_offset"),
            ("text", "node"),
            ("text", "owner"),
            ("int4", "partition"),
            ("time", "since_time"),
        ],
    ),
    "ip_history": _digest_query(
        "ip_history",
        'ORDER BY to_offset, cluster COLLATE "C", family(address), address, from_offset',
        [
            ("int8", "to_offset"),
            ("int8", "from_offset"),
            ("text", "node"),
            ("text", "owner"),
            ("int4", "partition"),
            ("time", "from_time"),
            ("time", "to_time"),
        ],
    ),
}


def _node_history_value(r: Any) -> tuple[Any, ...]:
    return (
        r["partition"],
        r["time"],
        r["deleted"],
        tuple(r["pod_cidrs"]),
        r["error"],
        r["conflict"],
        tuple(r["addresses"]),
        r["pinned"],
        r["waiting"],
    )


def _address(text: str) -> str:
    """An ``inet``'s text as ``ipaddress`` writes the value asyncpg decodes it to (an address,
    or an interface when it has a shorter mask). PostgreSQL writes an IPv4 host as ``ipaddress``
    does; IPv6 and masks go through ``ipaddress`` (an IPv4-mapped address, say, is written
    differently)."""
    if ":" not in text and "/" not in text:
        return text
    if "/" in text:
        return str(ipaddress.ip_interface(text))
    return str(ipaddress.ip_address(text))
