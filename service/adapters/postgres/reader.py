"""The PostgreSQL read side: ``ports.ProjectionReader`` over the projection and sync tables.

Used by ``ipledger state`` (built by ``service.bootstrap.open_reader``), later by the query API,
``ipledger status`` and dashboards. Read-only by construction, so that it can connect as a role
that may only read: every session it opens has ``default_transaction_read_only`` on; an answer
of one statement is that statement alone (one snapshot: it never mixes two commits), run on
asyncpg's own pool in one round trip; an answer of several runs them in one ``READ ONLY``
transaction at ``REPEATABLE READ``; nothing here takes a lock, a lease or an advisory lock.
Such a role needs ``CONNECT`` on the database, ``USAGE`` on its schema and ``SELECT`` on the
tables of ``schema`` and the view ``ip_holding``;
``tests/contract/test_projection_reader_contract.py`` runs every query as one.

The state is rebuilt with the projection's own ``restore_clusters`` (the code the allocator
loads with), pool use with ``pool_use``; names sort bytewise (``COLLATE "C"``) whatever the
database's collation. asyncpg and SQLAlchemy exceptions become ``errors.ProjectionError`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import errors, ports
from service.adapters import pool_use
from service.adapters.postgres import driver, projection
from service.domain import document, state

_log = logging.getLogger(__name__)

READ_ONLY_SESSION = {"default_transaction_read_only": "on"}
_translate = driver.Translation(errors.ProjectionError)
# Failures of a pooled connection itself (closed by the server, or broken), after which the
# same statement on a new connection may succeed; anything else is the statement's own.
_LOST_CONNECTION = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.PostgresConnectionError,
    ConnectionError,
)

_NODE_COLUMNS = (
    "n.cluster, n.name, n.pod_cidrs, n.error, n.conflict, n.addresses, n.waiting, n.pinned, "
    "n.version, n.updated_at, coalesce(p.v4, 0) AS v4, coalesce(p.v6, 0) AS v6"
)
# Pod addresses held on each node, per family.
_POD_IP_COUNTS = (
    "LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE family(i.address) = 4) AS v4, "
    "count(*) FILTER (WHERE family(i.address) = 6) AS v6 FROM pod_ip i "
    "WHERE i.cluster = n.cluster AND i.node = n.name) p ON true"
)
# Holdings, ended and current (the view ip_holding), with the events that began and ended them.
_HOLDINGS = (
    "SELECT true AS h_found, h.cluster, h.address, h.node, h.owner, h.partition, "
    "h.from_offset, h.from_time, h.to_offset, h.to_time, b.event_id AS from_event_id, "
    "e.event_id AS to_event_id "
    "FROM ip_holding h "
    'LEFT JOIN decision b ON b.partition = h.partition AND b."offset" = h.from_offset '
    'LEFT JOIN decision e ON e.partition = h.partition AND e."offset" = h.to_offset '
)
_DECISION_COLUMNS = (
    'partition, "offset", cluster, event_id, type, error, body, event_time, log_time, applied_at'
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A connection's reset on its return to the pool: nothing beyond asyncpg's own rollback
    of a transaction left open. The reader changes no session state (no SET, LISTEN, cursor
    or advisory lock), so the default reset (RESET ALL and the rest) would be a round trip
    per statement for nothing."""


# How long closing waits for the reader's connections to come back before it ends them.
CLOSE_TIMEOUT_S = 5.0


class _StatementPool:
    """asyncpg's pool for the reader's single statements, opened at the first one."""

    def __init__(self, dsn: str, size: int, session: dict[str, str], *, keep: bool) -> None:
        self._dsn = (
            sa.make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.size = size
        self._keep = keep
        self._session = session
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self.size if self._keep else 0,
                        max_size=self.size,
                        # Kept: never closed for being idle (0), so that a quiet hour is not
                        # followed by requests that each wait for a connect.
                        max_inactive_connection_lifetime=0 if self._keep else 300,
                        server_settings=self._session,
                        reset=_keep_session,
                    )
        return self._pool

    async def close(self) -> None:
        """Close the pool; terminate it when a connection is not back within
        ``CLOSE_TIMEOUT_S``. asyncpg's ``Pool.close`` waits for every acquired connection to
        be released, with no bound of its own, and a statement cancelled at the wrong moment
        (Ctrl-C in ``ipledger status --watch``) must not keep the process from ending."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with anyio.move_on_after(CLOSE_TIMEOUT_S) as waited:
                await pool.close()
            if waited.cancelled_caught:
                _log.warning(
                    "the reader's connections were not released within %g s: closed by force",
                    CLOSE_TIMEOUT_S,
                )
                pool.terminate()


class PostgresProjectionReader:
    """Read-only queries over one ipledger database."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool = False,
        statements: _StatementPool | None = None,
    ) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        # Single statements (``_fetch``) go to asyncpg's own pool when there is one: each call
        # through SQLAlchemy's pool cost ~0.55 ms of CPU more than the statement itself
        # (checkout, events, the greenlet), a quarter of the API's CPU per lookup.
        self._statements = statements

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        *,
        pool_size: int = 2,
        statement_timeout_ms: int | None = None,
        keep_connections: bool = False,
    ) -> PostgresProjectionReader:
        """A reader with an engine of its own whose sessions are read-only (and whose every
        statement the server cancels after ``statement_timeout_ms``, when given).
        ``keep_connections`` (a server's reader, the query API's): the single statements' pool
        opens all ``pool_size`` connections at once and keeps them however long they are
        idle; else it opens them as needed and closes those idle for 5 minutes."""
        session = dict(READ_ONLY_SESSION)
        if statement_timeout_ms is not None:
            session["statement_timeout"] = str(statement_timeout_ms)
        return cls(
            driver.engine(dsn, pool_size=pool_size, server_settings=session, pre_ping=False),
            owns_engine=True,
            statements=_StatementPool(dsn, pool_size, session, keep=keep_connections),
        )

    async def close(self) -> None:
        if self._statements is not None:
            await self._statements.close()
        if self._owns_engine:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def _read(self, doing: str) -> AsyncIterator[Any]:
        """A connection in one ``REPEATABLE READ READ ONLY`` transaction (one ``BEGIN``), for
        the answers that take several statements."""
        async with (
            driver.connection(self._engine, _translate, doing, transaction=False) as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield db

    async def _fetch(
        self, doing: str, query: str, *args: Any, custom_plan: bool = False
    ) -> list[Any]:
        """One statement, outside any explicit transaction: a statement sees one snapshot, so
        its answer is consistent by itself, and it costs one round trip (no ``BEGIN``,
        ``COMMIT``, ping or reset around it; every session is read-only already). A pooled
        connection found dead (the server restarted, or ended it) is discarded and the
        statement runs once more on a new one, which is what a ping before use would have
        bought, at the price of a round trip per call.

        ``custom_plan``: run it as a statement of its own, planned for these arguments. asyncpg
        keeps each statement prepared, and after five runs PostgreSQL may keep one generic plan
        for it; for a page of nodes that plan (a limit and a cursor it cannot see) sorts every
        node after the cursor instead of reading the index in order (docs/benchmarks.md, Query
        API). One more round trip, for the answers where the plan matters more."""
        try:
            return await self._fetch_once(doing, query, args, custom_plan)
        except errors.ProjectionError as exc:
            if not isinstance(exc.__cause__, _LOST_CONNECTION):
                raise
        return await self._fetch_once(doing, query, args, custom_plan)

    async def _fetch_once(
        self, doing: str, query: str, args: tuple[Any, ...], custom_plan: bool = False
    ) -> list[Any]:
        if self._statements is not None:
            with _translate(doing):
                pool = await self._statements.pool()
                async with pool.acquire() as db:
                    return await _run(db, query, args, custom_plan)
        async with driver.connection(self._engine, _translate, doing, transaction=False) as db:
            return await _run(db, query, args, custom_plan)

    # --- the state ------------------------------------------------------------------------------

    async def state(self) -> state.State:
        """Every cluster's state, rebuilt from the rows as ``PostgresProjection.load`` does."""
        current = state.State()
        async with self._read("reading the state") as db:
            await projection.restore_clusters(db, current, None)
        return current

    async def state_document(self) -> dict[str, Any]:
        """The state document ``ipledger state`` prints."""
        return document.state_document(await self.state())

    # --- clusters and nodes ---------------------------------------------------------------------

    async def clusters(self) -> list[ports.ClusterView]:
        """Every cluster by name, with its pool and the use of each element."""
        async with self._read("reading clusters") as db:
            clusters = await db.fetch(
                "SELECT name, partition, version, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask "
                'FROM cluster ORDER BY name COLLATE "C"'
            )
            nodes = await db.fetch(
                "SELECT cluster, count(*) AS nodes FROM node WHERE NOT deleted GROUP BY cluster"
            )
            # A node holds one CIDR per family, so its pod addresses of that family are in it.
            cidrs = await db.fetch(
                "SELECT n.cluster, c.cidr, CASE WHEN strpos(c.cidr, ':') > 0 "
                "THEN coalesce(p.v6, 0) ELSE coalesce(p.v4, 0) END AS pod_ips "
                f"FROM node n {_POD_IP_COUNTS} CROSS JOIN LATERAL unnest(n.pod_cidrs) AS c(cidr) "
                "WHERE NOT n.deleted"
            )
        counts = {row["cluster"]: row["nodes"] for row in nodes}
        held: dict[str, list[tuple[str, int]]] = {}
        for cidr in cidrs:
            held.setdefault(cidr["cluster"], []).append((cidr["cidr"], cidr["pod_ips"]))
        views = []
        for row in clusters:
            views.append(
                ports.ClusterView(
                    name=row["name"],
                    partition=row["partition"],
                    version=row["version"],
                    ipv4_mask=row["ipv4_mask"],
                    ipv6_mask=row["ipv6_mask"],
                    elements=pool_use.element_use(
                        ipv4_cidrs=row["ipv4_cidrs"],
                        ipv4_mask=row["ipv4_mask"],
                        ipv6_cidrs=row["ipv6_cidrs"],
                        ipv6_mask=row["ipv6_mask"],
                        node_cidrs=held.get(row["name"], ()),
                    ),
                    nodes=counts.get(row["name"], 0),
                )
            )
        return views

    async def nodes(
        self,
        cluster: str,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[ports.NodeView]:
        """``cluster``'s live nodes by name, filtered, after ``after``, at most ``limit``."""
        rows = await self._fetch(
            "reading nodes",
            f"SELECT {_NODE_COLUMNS} FROM node n {_POD_IP_COUNTS} "
            "WHERE n.cluster = $1 AND NOT n.deleted "
            "AND ($2::bool IS NULL OR (n.error IS NOT NULL) = $2) "
            "AND ($3::bool IS NULL OR (n.conflict IS NOT NULL) = $3) "
            "AND ($4::bool IS NULL OR n.waiting = $4) "
            'AND starts_with(n.name, $5) AND n.name > $6 COLLATE "C" '
            'ORDER BY n.name COLLATE "C" LIMIT $7',
            cluster,
            error,
            conflict,
            waiting,
            prefix,
            after,
            None if limit is None else max(limit, 0),
        )
        return [_node_view(row) for row in rows]

    async def node(self, cluster: str, name: str) -> ports.NodeView | None:
        """One live node, or None."""
        rows = await self._fetch(
            "reading a node",
            f"SELECT {_NODE_COLUMNS} FROM node n {_POD_IP_COUNTS} "
            "WHERE n.cluster = $1 AND n.name = $2 AND NOT n.deleted",
            cluster,
            name,
        )
        return _node_view(rows[0]) if rows else None

    # --- addresses ------------------------------------------------------------------------------

    async def holder(
        self, cluster: str, address: ports.Address, *, at: datetime.datetime | None = None
    ) -> ports.Holding | None:
        """Who holds ``address`` now, or held it at ``at``; None if nobody."""
        args: tuple[datetime.datetime, ...] = ()
        if at is None:
            where = "h.to_offset IS NULL"
        else:
            where, args = "h.from_time <= $3 AND (h.to_time IS NULL OR h.to_time > $3)", (at,)
        rows = await self._fetch(
            "reading an address's holder",
            f"{_HOLDINGS} WHERE h.cluster = $1 AND h.address = $2::inet AND {where} "
            "ORDER BY h.from_offset DESC LIMIT 1",
            cluster,
            str(address),
            *args,
        )
        return _holding(rows[0]) if rows else None

    async def address_history(self, cluster: str, address: ports.Address) -> list[ports.Holding]:
        """Every holding of ``address``, in the order they started."""
        rows = await self._fetch(
            "reading an address's history",
            f"{_HOLDINGS} WHERE h.cluster = $1 AND h.address = $2::inet ORDER BY h.from_offset",
            cluster,
            str(address),
        )
        return [_holding(row) for row in rows]

    async def owner_addresses(self, cluster: str, owner: str) -> list[ports.Holding]:
        """The addresses ``owner`` holds now, by address."""
        rows = await self._fetch(
            "reading an owner's addresses",
            f"{_HOLDINGS} WHERE h.cluster = $1 AND h.owner = $2 AND h.to_offset IS NULL "
            "ORDER BY h.address",
            cluster,
            owner,
        )
        return [_holding(row) for row in rows]

    async def owner_history(self, cluster: str, owner: str) -> list[ports.Holding]:
        """Every holding of ``owner``, in the order they started."""
        rows = await self._fetch(
            "reading an owner's history",
            f"{_HOLDINGS} WHERE h.cluster = $1 AND h.owner = $2 ORDER BY h.from_offset, h.address",
            cluster,
            owner,
        )
        return [_holding(row) for row in rows]

    # --- the log's side: decisions, rejections, positions, leases -------------------------------

    async def decisions(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[ports.CommittedDecision]:
        """Committed decisions of ``partition`` from offset ``start`` on, at most ``limit``."""
        rows = await self._fetch(
            "reading decisions",
            f"SELECT {_DECISION_COLUMNS} FROM decision "
            'WHERE partition = $1 AND "offset" >= $2 ORDER BY "offset" LIMIT $3',
            partition,
            start,
            None if limit is None else max(limit, 0),
        )
        return [
            ports.CommittedDecision(
                partition=row["partition"],
                offset=row["offset"],
                cluster=row["cluster"],
                event_id=row["event_id"],
                type=row["type"],
                error=row["error"],
                body=bytes(row["body"]),
                event_time=row["event_time"],
                log_time=row["log_time"],
                applied_at=row["applied_at"],
            )
            for row in rows
        ]

    async def rejections(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[ports.Rejection]:
        """Rejected records of ``partition`` from offset ``start`` on, at most ``limit``."""
        rows = await self._fetch(
            "reading rejections",
            'SELECT partition, "offset", reason, key, raw, rejected_at FROM rejection '
            'WHERE partition = $1 AND "offset" >= $2 ORDER BY "offset" LIMIT $3',
            partition,
            start,
            None if limit is None else max(limit, 0),
        )
        return [_rejection(row) for row in rows]

    async def last_rejections(self, partition: int, limit: int) -> list[ports.Rejection]:
        """The last ``limit`` rejected records of ``partition``, by offset."""
        rows = await self._fetch(
            "reading the last rejections",
            'SELECT partition, "offset", reason, key, raw, rejected_at FROM rejection '
            'WHERE partition = $1 ORDER BY "offset" DESC LIMIT $2',
            partition,
            max(limit, 0),
        )
        return [_rejection(row) for row in reversed(rows)]

    async def positions(self) -> list[ports.PartitionPosition]:
        """Every partition that has a commit: consumed and published offsets."""
        rows = await self._fetch(
            "reading consumed offsets",
            "SELECT c.partition, c.log, c.next_offset, c.updated_at, o.next_offset AS published "
            "FROM consumer_offset c LEFT JOIN outbox_offset o ON o.partition = c.partition "
            "ORDER BY c.partition",
        )
        return [
            ports.PartitionPosition(
                partition=row["partition"],
                log=row["log"],
                next_offset=row["next_offset"],
                updated_at=row["updated_at"],
                published=row["published"],
            )
            for row in rows
        ]

    async def leases(self) -> list[ports.Lease]:
        """Every partition's writer lease ever taken, expired or not on the database's clock."""
        rows = await self._fetch(
            "reading writer leases",
            "SELECT partition, holder, token, expires_at, "
            "expires_at < clock_timestamp() AS expired FROM writer_lease ORDER BY partition",
        )
        return [
            ports.Lease(
                partition=row["partition"],
                holder=row["holder"],
                token=row["token"],
                expires_at=row["expires_at"],
                expired=row["expired"],
            )
            for row in rows
        ]

    async def sync_progress(self, cluster: str) -> list[ports.NodeSync]:
        """Every node of ``cluster`` (tombstones too) by name, with what the worker recorded."""
        rows = await self._fetch(
            "reading sync progress",
            "SELECT n.name, n.version, n.deleted, s.synced_version, s.error FROM node n "
            "LEFT JOIN node_sync s ON s.cluster = n.cluster AND s.name = n.name "
            'WHERE n.cluster = $1 ORDER BY n.name COLLATE "C"',
            cluster,
        )
        return [
            ports.NodeSync(
                name=row["name"],
                version=row["version"],
                deleted=row["deleted"],
                synced_version=row["synced_version"],
                error=row["error"],
            )
            for row in rows
        ]

    # --- as of a log offset (node_history, cluster_history, ip_holding) -------------------------

    async def cluster_partitions(self) -> dict[str, int]:
        """Every cluster's name and partition."""
        rows = await self._fetch(
            "reading clusters' partitions", "SELECT name, partition FROM cluster"
        )
        return {row["name"]: row["partition"] for row in rows}

    async def applied_offset(
        self, partition: int, *, at_time: datetime.datetime | None = None
    ) -> int | None:
        """The last applied offset of ``partition``, or the last one at or before ``at_time``."""
        if at_time is None:
            rows = await self._fetch(
                "reading the applied offset",
                "SELECT next_offset - 1 AS at FROM consumer_offset WHERE partition = $1",
                partition,
            )
        else:
            rows = await self._fetch(
                "finding the offset of a time",
                f'SELECT "offset" AS at FROM decision WHERE partition = $1 AND {_TIME} <= $2 '
                f'ORDER BY {_TIME} DESC, "offset" DESC LIMIT 1',
                partition,
                at_time,
            )
        if not rows or rows[0]["at"] is None or rows[0]["at"] < 0:
            return None
        return int(rows[0]["at"])

    async def cluster_at(self, cluster: str, at: int) -> ports.ClusterAt | None:
        """``cluster`` with its pool, pool use and node counts right after offset ``at``."""
        async with self._read("reading a cluster as of an offset") as db:
            pool = await db.fetchrow(
                'SELECT "offset", partition, ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask '
                'FROM cluster_history WHERE cluster = $1 AND "offset" <= $2 '
                'ORDER BY "offset" DESC LIMIT 1',
                cluster,
                at,
            )
            if pool is None:
                return None
            nodes = await db.fetch(
                f"SELECT n.pod_cidrs, n.error, n.conflict, n.waiting, p.v4, p.v6 "
                f"FROM ({_NODES_AT}) n {_POD_IP_COUNTS_AT} WHERE NOT n.deleted",
                cluster,
                at,
                "",
                "",
            )
        cidrs = [
            (cidr, node["v6"] if ":" in cidr else node["v4"])
            for node in nodes
            for cidr in node["pod_cidrs"]
        ]
        return ports.ClusterAt(
            name=cluster,
            partition=pool["partition"],
            offset=at,
            pool_offset=pool["offset"],
            ipv4_mask=pool["ipv4_mask"],
            ipv6_mask=pool["ipv6_mask"],
            elements=pool_use.element_use(
                ipv4_cidrs=pool["ipv4_cidrs"],
                ipv4_mask=pool["ipv4_mask"],
                ipv6_cidrs=pool["ipv6_cidrs"],
                ipv6_mask=pool["ipv6_mask"],
                node_cidrs=cidrs,
            ),
            nodes=len(nodes),
            nodes_with_cidrs=sum(1 for node in nodes if node["pod_cidrs"]),
            nodes_waiting=sum(1 for node in nodes if node["waiting"]),
            nodes_in_error=sum(1 for node in nodes if node["error"] is not None),
            nodes_in_conflict=sum(1 for node in nodes if node["conflict"] is not None),
        )

    async def nodes_at(
        self,
        cluster: str,
        at: int,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[ports.NodeAt]:
        """``cluster``'s live nodes right after offset ``at``, by name, filtered and paged."""
        rows = await self._fetch(
            "reading nodes as of an offset",
            f"SELECT n.*, p.v4, p.v6, d.event_id FROM ({_NODES_AT}) n {_POD_IP_COUNTS_AT} "
            'LEFT JOIN decision d ON d.partition = n.partition AND d."offset" = n."offset" '
            "WHERE NOT n.deleted "
            "AND ($5::bool IS NULL OR (n.error IS NOT NULL) = $5) "
            "AND ($6::bool IS NULL OR (n.conflict IS NOT NULL) = $6) "
            "AND ($7::bool IS NULL OR n.waiting = $7) "
            'ORDER BY n.name COLLATE "C" LIMIT $8',
            cluster,
            at,
            prefix,
            after,
            error,
            conflict,
            waiting,
            None if limit is None else max(limit, 0),
            custom_plan=True,
        )
        return [_node_at(row) for row in rows]

    async def node_at(self, cluster: str, name: str, at: int) -> ports.NodeAt | None:
        """One node right after offset ``at``, or None."""
        rows = await self._fetch(
            "reading a node as of an offset",
            "SELECT n.*, p.v4, p.v6, d.event_id FROM ("
            "SELECT * FROM node_history WHERE cluster = $1 AND name = $3 "
            'AND "offset" <= $2 ORDER BY "offset" DESC LIMIT 1) n '
            f"{_POD_IP_COUNTS_AT} "
            'LEFT JOIN decision d ON d.partition = n.partition AND d."offset" = n."offset" '
            "WHERE NOT n.deleted",
            cluster,
            at,
            name,
        )
        return _node_at(rows[0]) if rows else None

    # --- the basis and the answer in one statement ----------------------------------------------

    async def _based(
        self, doing: str, query: str, partition: int, wanted: ports.Wanted, *args: Any
    ) -> tuple[int | None, int | None, list[Any]]:
        """Run ``query`` (``_BASED`` ahead of it binds $1-$3) with ``args`` as $4...; the
        applied offset, the basis, and the rows that carry an answer (``h_found``)."""
        at_offset = wanted if isinstance(wanted, int) else None
        at_time = wanted if isinstance(wanted, datetime.datetime) else None
        rows = await self._fetch(doing, query, partition, at_offset, at_time, *args)
        applied = rows[0]["applied"] if rows else None
        basis = rows[0]["basis"] if rows else None
        return (
            None if applied is None or applied < 0 else int(applied),
            None if basis is None else int(basis),
            [row for row in rows if row["h_found"]],
        )

    async def address_history_based(
        self, cluster: str, partition: int, address: ports.Address, wanted: ports.Wanted
    ) -> ports.Based[list[ports.Holding]]:
        """The holdings of ``address`` begun at the basis, with the basis, in one statement."""
        applied, basis, rows = await self._based(
            "reading an address's history",
            f"{_BASED} LEFT JOIN LATERAL ({_HOLDINGS} WHERE h.cluster = $4 "
            "AND h.address = $5::inet AND h.from_offset <= q.basis) h ON true "
            "ORDER BY h.from_offset",
            partition,
            wanted,
            cluster,
            str(address),
        )
        return ports.Based(applied, basis, [_holding(row) for row in rows])

    async def owner_history_based(
        self, cluster: str, partition: int, owner: str, wanted: ports.Wanted
    ) -> ports.Based[list[ports.Holding]]:
        """The holdings of ``owner`` begun at the basis, with the basis, in one statement."""
        applied, basis, rows = await self._based(
            "reading an owner's history",
            f"{_BASED} LEFT JOIN LATERAL ({_HOLDINGS} WHERE h.cluster = $4 "
            "AND h.owner = $5 AND h.from_offset <= q.basis) h ON true "
            "ORDER BY h.from_offset, h.address",
            partition,
            wanted,
            cluster,
            owner,
        )
        return ports.Based(applied, basis, [_holding(row) for row in rows])

    async def node_based(
        self, cluster: str, partition: int, name: str, wanted: ports.Wanted
    ) -> ports.Based[ports.NodeAt | None]:
        """``node_at`` at the basis, with the basis, in one statement."""
        applied, basis, rows = await self._based(
            "reading a node as of an offset",
            f"{_BASED} LEFT JOIN LATERAL (SELECT true AS h_found, n.*, p.v4, p.v6, d.event_id "
            "FROM (SELECT * FROM node_history WHERE cluster = $4 AND name = $5 "
            'AND "offset" <= q.basis ORDER BY "offset" DESC LIMIT 1) n '
            f"{_POD_IP_COUNTS_AT.replace('$2', 'q.basis')} "
            'LEFT JOIN decision d ON d.partition = n.partition AND d."offset" = n."offset" '
            "WHERE NOT n.deleted) h ON true",
            partition,
            wanted,
            cluster,
            name,
        )
        return ports.Based(applied, basis, _node_at(rows[0]) if rows else None)

    async def warm_up(self) -> None:
        """Every connection of the single statements' pool open, and each ``*_based`` read run
        once on each (for a cluster that cannot exist: nothing is found). A new connection
        costs a connect and an authentication, and each statement's first run on it a parse
        and a plan, a backend's catalog caches filled besides: at the issue's size a freshly
        started API answered its first 800 lookups at 200/s with a p99 of 38-98 ms, then
        9-16 ms (docs/benchmarks.md, Query API). The reads of one round are started
        together, so that each takes a connection of its own."""
        if self._statements is None:
            return
        nowhere = ipaddress.ip_address("0.0.0.0")
        for read in (
            lambda: self.address_history_based("", -1, nowhere, None),
            lambda: self.owner_history_based("", -1, "", None),
            lambda: self.node_based("", -1, "", None),
        ):
            await asyncio.gather(*(read() for _ in range(self._statements.size)))

    async def cluster_decisions(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[ports.CommittedDecision]:
        """Decisions about ``cluster`` on its partition with ``start <= offset <= upto``."""
        rows = await self._fetch(
            "reading a cluster's decisions",
            f"SELECT {_DECISION_COLUMNS} FROM decision WHERE partition = "
            "(SELECT partition FROM cluster WHERE name = $1) AND cluster = $1 "
            'AND "offset" >= $2 AND "offset" <= $3 ORDER BY "offset" LIMIT $4',
            cluster,
            start,
            upto,
            max(limit, 0),
        )
        return [_decision(row) for row in rows]

    async def cluster_rejections(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[ports.Rejection]:
        """Rejected records naming ``cluster`` on its partition, ``start <= offset <= upto``."""
        rows = await self._fetch(
            "reading a cluster's rejections",
            'SELECT r.partition, r."offset", r.reason, r.key, r.raw, r.rejected_at '
            'FROM rejection r JOIN decision d ON d.partition = r.partition AND d."offset" = '
            'r."offset" WHERE r.partition = (SELECT partition FROM cluster WHERE name = $1) '
            'AND d.cluster = $1 AND r."offset" >= $2 AND r."offset" <= $3 '
            'ORDER BY r."offset" LIMIT $4',
            cluster,
            start,
            upto,
            max(limit, 0),
        )
        return [_rejection(row) for row in rows]


# A record's time, as the readers' as_of=<time> compares it: the event's, else the log's, else
# when it was applied. Exactly the expression of the index ix_decision_time (migration 0007).
_TIME = "coalesce(event_time, log_time, applied_at)"
# The basis of an answer (ports.Based): $1 the partition, $2 an offset wanted (or NULL), $3 a
# time wanted (or NULL); one row ``q`` (applied, basis) that the answer's rows join laterally.
_BASED = (
    "SELECT q.applied, q.basis, h.* FROM (SELECT a.applied, CASE "
    "WHEN a.applied IS NULL OR a.applied < 0 THEN NULL "
    "WHEN $2::bigint IS NOT NULL THEN least($2::bigint, a.applied) "
    "WHEN $3::timestamptz IS NULL THEN a.applied "
    'ELSE (SELECT least(d."offset", a.applied) FROM decision d WHERE d.partition = $1 '
    f"AND {_TIME} <= $3::timestamptz ORDER BY {_TIME} DESC, "
    'd."offset" DESC LIMIT 1) END AS basis '
    "FROM (SELECT (SELECT next_offset - 1 FROM consumer_offset WHERE partition = $1) "
    "AS applied) a) q"
)
# The latest node_history row of each node of cluster $1 at or before offset $2, names starting
# with $3 and after $4 (bytewise); read in order from ix_node_history_name_c (migration 0009), so
# that a page stops at its limit instead of sorting every node's history first.
_NODES_AT = (
    'SELECT DISTINCT ON (h.name COLLATE "C") h.* FROM node_history h '
    'WHERE h.cluster = $1 AND h."offset" <= $2 AND starts_with(h.name, $3) '
    'AND h.name > $4 COLLATE "C" ORDER BY h.name COLLATE "C", h."offset" DESC'
)
# Pod addresses held on each node right after offset $2, per family: those held now that were
# taken by then, and the ended holdings that spanned it. A holding ends at an applied record,
# so at or after the last applied offset of every partition no ended one spans $2, and that
# part is skipped by a one-time filter (it reads ~150 history rows per node at the issue's
# size: 3 ms a node, most of a page of nodes at the current basis).
_POD_IP_COUNTS_AT = (
    "LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE family(i.address) = 4) AS v4, "
    "count(*) FILTER (WHERE family(i.address) = 6) AS v6 FROM ("
    "SELECT c.address FROM pod_ip c WHERE c.cluster = n.cluster AND c.node = n.name "
    "AND c.since_offset <= $2 UNION ALL "
    "SELECT e.address FROM ip_history e WHERE $2 < coalesce("
    "(SELECT max(next_offset) - 1 FROM consumer_offset), 9223372036854775807) "
    "AND e.cluster = n.cluster AND e.node = n.name AND e.from_offset <= $2 "
    "AND e.to_offset > $2) i) p ON true"
)


async def _run(db: Any, query: str, args: tuple[Any, ...], custom_plan: bool) -> list[Any]:
    if custom_plan:
        # A statement prepared for this call alone (asyncpg closes it when it is collected):
        # PostgreSQL plans its first runs for the arguments given.
        statement = await db.prepare(query)
        rows: list[Any] = await statement.fetch(*args)
        return rows
    found: list[Any] = await db.fetch(query, *args)
    return found


def _node_at(row: Any) -> ports.NodeAt:
    return ports.NodeAt(
        cluster=row["cluster"],
        name=row["name"],
        pod_cidrs=tuple(ipaddress.ip_network(cidr) for cidr in row["pod_cidrs"]),
        error=row["error"],
        conflict=row["conflict"],
        addresses=tuple(ipaddress.ip_address(address) for address in row["addresses"]),
        waiting=row["waiting"],
        pinned=row["pinned"],
        ipv4_pod_ips=row["v4"] or 0,
        ipv6_pod_ips=row["v6"] or 0,
        changed_offset=row["offset"],
        changed_time=row["time"],
        changed_event_id=row["event_id"],
    )


def _decision(row: Any) -> ports.CommittedDecision:
    return ports.CommittedDecision(
        partition=row["partition"],
        offset=row["offset"],
        cluster=row["cluster"],
        event_id=row["event_id"],
        type=row["type"],
        error=row["error"],
        body=bytes(row["body"]),
        event_time=row["event_time"],
        log_time=row["log_time"],
        applied_at=row["applied_at"],
    )


def _node_view(row: Any) -> ports.NodeView:
    return ports.NodeView(
        cluster=row["cluster"],
        name=row["name"],
        pod_cidrs=tuple(ipaddress.ip_network(cidr) for cidr in row["pod_cidrs"]),
        error=row["error"],
        conflict=row["conflict"],
        addresses=tuple(ipaddress.ip_address(address) for address in row["addresses"]),
        waiting=row["waiting"],
        pinned=row["pinned"],
        ipv4_pod_ips=row["v4"],
        ipv6_pod_ips=row["v6"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _rejection(row: Any) -> ports.Rejection:
    return ports.Rejection(
        partition=row["partition"],
        offset=row["offset"],
        reason=row["reason"],
        key=None if row["key"] is None else bytes(row["key"]),
        raw=bytes(row["raw"]),
        rejected_at=row["rejected_at"],
    )


def _holding(row: Any) -> ports.Holding:
    return ports.Holding(
        cluster=row["cluster"],
        address=_address(row["address"]),
        node=row["node"],
        owner=row["owner"],
        partition=row["partition"],
        from_offset=row["from_offset"],
        from_time=row["from_time"],
        from_event_id=row["from_event_id"],
        to_offset=row["to_offset"],
        to_time=row["to_time"],
        to_event_id=row["to_event_id"],
    )


def _address(value: Any) -> ports.Address:
    # asyncpg decodes an inet holding one address as an ipaddress address already.
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(str(value))
