"""The PostgreSQL side of the Kubernetes sync worker: changed nodes, durable progress, one instance.

Used by ``service.sync`` (built by ``service.bootstrap.open_sync_store``) and by ``ipledger adopt``.
It reads the projection the allocator writes (``node``, ``pod_ip``, ``cluster``) and writes only
``node_sync``, the worker's progress: the node version last mirrored onto each CiliumNode. It
never writes the projection, and the allocator never waits for it.

One worker per cluster at a time: each cluster's worker holds a session-level advisory lock on
one dedicated connection, "the session". The session also ``LISTEN``s on the channel the
projection notifies on commit, and carries every ``node_sync`` write. If the session is lost,
its locks go with it (another instance may then take over) and the next progress write fails
with ``errors.FencedError`` instead of landing behind the new holder's back. asyncpg and
SQLAlchemy exceptions are translated (``driver.Translation``) to ``errors.SyncStoreError``, a
``errors.ProjectionError``, and go no further.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import errors, ports
from service.adapters.postgres import driver
from service.adapters.postgres.projection import NODES_CHANNEL

log = logging.getLogger("ipledger.sync")
# Advisory lock keys are one 64-bit space shared by every user of the database: prefix ours.
LOCK_NAMESPACE = "ipledger.sync/"

_NODE_COLUMNS = "n.name, n.version, n.deleted, n.pod_cidrs, n.error"
# Every held pod address of the node with its owner, in address order (only when mirroring).
_POD_IPS_JOIN = (
    "LEFT JOIN LATERAL (SELECT array_agg(host(p.address) ORDER BY p.address) AS ips, "
    "array_agg(p.owner ORDER BY p.address) AS owners FROM pod_ip p "
    "WHERE p.cluster = n.cluster AND p.node = n.name) pods ON true"
)


# Every failure, a write's refused values included, is a SyncStoreError: nothing here is
# isolated record by record, and the worker retries progress writes from what is pending.
_translate = driver.Translation(errors.SyncStoreError)


class PostgresSyncStore:
    """The sync worker's view of PostgreSQL, for every cluster one process mirrors."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self._session: AsyncConnection | None = None
        self._session_driver: Any = None  # the asyncpg connection under _session
        self._session_lock = anyio.Lock()
        self._locked: set[str] = set()
        self._changes = 0
        self._changed = anyio.Event()

    @classmethod
    def from_dsn(cls, dsn: str, *, pool_size: int = 4) -> PostgresSyncStore:
        """A store with its own engine (the session takes one connection of the pool for good)."""
        return cls(driver.engine(dsn, pool_size=pool_size), owns_engine=True)

    async def close(self) -> None:
        """Drop the session (which releases every lock) and, if owned, dispose the engine."""
        async with self._session_lock:
            await self._drop_session()
        if self._owns_engine:
            await self._engine.dispose()

    # --- the session: locks, notifications, progress ------------------------------------------

    async def try_lock(self, cluster: str) -> bool:
        """Become the one sync worker of ``cluster`` if no other holds it; True on success."""
        async with self._session_lock:
            if cluster in self._locked and self._session_alive():
                return True
            session = await self._ensure_session()
            with self._on_session("taking the sync lock"):
                locked = bool(
                    await session.fetchval(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                        LOCK_NAMESPACE + cluster,
                    )
                )
            if locked:
                self._locked.add(cluster)
            return locked

    async def unlock(self, cluster: str) -> None:
        """Give the lock up at once (clean shutdown), so a waiting instance need not wait."""
        async with self._session_lock:
            if cluster not in self._locked:
                return
            self._locked.discard(cluster)
            if not self._session_alive():
                return
            with (
                contextlib.suppress(errors.SyncStoreError),
                self._on_session("releasing the sync lock"),
            ):
                await self._session_driver.fetchval(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))", LOCK_NAMESPACE + cluster
                )

    async def check_lock(self, cluster: str) -> None:
        """Raise ``errors.FencedError`` unless this process still holds ``cluster``'s lock."""
        async with self._session_lock:
            session = self._fenced_driver(cluster)
            with self._on_session("checking the sync lock"):
                await session.fetchval("SELECT 1")

    def change_count(self) -> int:
        """How many node notifications arrived so far; pass it to :meth:`wait_for_change`."""
        return self._changes

    async def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once a notification arrived after ``seen`` was read, or after ``timeout``.

        The timeout is the fallback poll: notifications are lost while the session reconnects.
        """
        if self._changes != seen:
            return
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    async def record_synced(
        self, cluster: str, outcomes: Sequence[tuple[str, int, str | None]]
    ) -> None:
        """Upsert ``(node, synced version, error)`` rows; fenced by the cluster's lock.

        A version never goes back: a row already at a higher version is left as it is.
        """
        latest: dict[str, tuple[int, str | None]] = {}
        for name, version, error in outcomes:
            if name not in latest or latest[name][0] <= version:
                latest[name] = (version, error)
        if not latest:
            return
        names = list(latest)
        async with self._session_lock:
            session = self._fenced_driver(cluster)
            with self._on_session("recording sync progress"):
                await session.execute(
                    "INSERT INTO node_sync (cluster, name, synced_version, synced_at, error) "
                    "SELECT $1, u.name, u.version, clock_timestamp(), u.error "
                    "FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(name, version, error) "
                    "ON CONFLICT (cluster, name) DO UPDATE SET "
                    "synced_version = EXCLUDED.synced_version, synced_at = EXCLUDED.synced_at, "
                    "error = EXCLUDED.error "
                    "WHERE node_sync.synced_version <= EXCLUDED.synced_version",
                    cluster,
                    names,
                    [latest[n][0] for n in names],
                    [latest[n][1] for n in names],
                )

    def _fenced_driver(self, cluster: str) -> Any:
        if cluster not in self._locked or not self._session_alive():
            self._locked.discard(cluster)
            raise errors.FencedError(
                f"cluster {cluster}: the sync lock was lost (its PostgreSQL session ended)"
            )
        return self._session_driver

    def _session_alive(self) -> bool:
        return self._session_driver is not None and not self._session_driver.is_closed()

    async def _ensure_session(self) -> Any:
        if self._session_alive():
            return self._session_driver
        await self._drop_session()
        self._session, self._session_driver = await driver.listen(
            self._engine,
            _translate,
            "opening the sync session",
            NODES_CHANNEL,
            self._on_notify,
            no_driver="the sync session has no asyncpg connection",
        )
        # A new session: whatever changed while there was none was not notified.
        self._notify()
        return self._session_driver

    async def _drop_session(self) -> None:
        connection, session_driver = self._session, self._session_driver
        self._session = self._session_driver = None
        self._locked.clear()
        if connection is None:
            return
        await driver.close_listening(
            connection,
            session_driver,
            NODES_CHANNEL,
            self._on_notify,
            log=log,
            broke="the sync session broke while closing",
            # Returned to the pool, session-level advisory locks would outlive us.
            before_close=["SELECT pg_advisory_unlock_all()"],
        )

    @contextlib.contextmanager
    def _on_session(self, doing: str) -> Iterator[None]:
        """Errors on the session; one that ended the session took every lock with it."""
        try:
            with _translate(doing):
                yield
        except errors.SyncStoreError as exc:
            if self._session_alive():
                raise
            lost = sorted(self._locked)
            self._locked.clear()
            if not lost:
                raise
            raise errors.FencedError(
                f"the PostgreSQL session holding the sync lock of {', '.join(lost)} ended: {exc}"
            ) from exc

    def _on_notify(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        self._notify()

    def _notify(self) -> None:
        self._changes += 1
        self._changed.set()
        self._changed = anyio.Event()

    # --- reads (pooled connections) -----------------------------------------------------------

    def _driver(self, doing: str) -> AbstractAsyncContextManager[Any]:
        return driver.connection(self._engine, _translate, doing, transaction=False)

    async def changed_nodes(
        self,
        cluster: str,
        after: tuple[int, str],
        limit: int,
        *,
        with_pod_ips: bool,
    ) -> list[ports.NodeIntent]:
        """Nodes not mirrored at their current version, after ``(version, name)``, in that order.

        "Not mirrored" is: no ``node_sync`` row, or one with an older version. Paging on
        ``(version, name)`` lets the caller read only what changed since its last call.
        """
        pods = ", pods.ips, pods.owners" if with_pod_ips else ""
        join = _POD_IPS_JOIN if with_pod_ips else ""
        async with self._driver("reading changed nodes") as db:
            rows = await db.fetch(
                f"SELECT {_NODE_COLUMNS}{pods} FROM node n "
                "LEFT JOIN node_sync s ON s.cluster = n.cluster AND s.name = n.name "
                f"{join} "
                "WHERE n.cluster = $1 AND (n.version, n.name) > ($2, $3) "
                "AND (s.name IS NULL OR n.version > s.synced_version) "
                "ORDER BY n.version, n.name LIMIT $4",
                cluster,
                after[0],
                after[1],
                limit,
            )
        return [_intent(row, with_pod_ips) for row in rows]

    async def all_nodes(
        self, cluster: str, *, with_pod_ips: bool
    ) -> list[tuple[ports.NodeIntent, int | None, str | None]]:
        """Every node of ``cluster`` (tombstones too) with its synced version and sync error."""
        pods = ", pods.ips, pods.owners" if with_pod_ips else ""
        join = _POD_IPS_JOIN if with_pod_ips else ""
        async with self._driver("reading nodes for a resync") as db:
            rows = await db.fetch(
                f"SELECT {_NODE_COLUMNS}, s.synced_version, s.error AS sync_error{pods} "
                "FROM node n LEFT JOIN node_sync s ON s.cluster = n.cluster AND s.name = n.name "
                f"{join} WHERE n.cluster = $1 ORDER BY n.name",
                cluster,
            )
        return [
            (_intent(row, with_pod_ips), row["synced_version"], row["sync_error"]) for row in rows
        ]

    async def pool(self, cluster: str) -> ports.ClusterPool | None:
        """The pool configured for ``cluster``, or None before any ``pool.configured``."""
        async with self._driver("reading the cluster's pool") as db:
            row = await db.fetchrow(
                "SELECT ipv4_cidrs, ipv4_mask, ipv6_cidrs, ipv6_mask FROM cluster WHERE name = $1",
                cluster,
            )
        if row is None:
            return None
        return ports.ClusterPool(
            ipv4_cidrs=tuple(ipaddress.IPv4Network(c) for c in row["ipv4_cidrs"]),
            ipv4_mask=row["ipv4_mask"],
            ipv6_cidrs=tuple(ipaddress.IPv6Network(c) for c in row["ipv6_cidrs"]),
            ipv6_mask=row["ipv6_mask"],
        )

    async def node_pod_cidrs(self, cluster: str) -> dict[str, tuple[str, ...]]:
        """The pod CIDRs of every live node of ``cluster`` (what ``adopt`` must not repeat)."""
        async with self._driver("reading node CIDRs") as db:
            rows = await db.fetch(
                "SELECT name, pod_cidrs FROM node WHERE cluster = $1 AND NOT deleted", cluster
            )
        return {row["name"]: tuple(row["pod_cidrs"]) for row in rows}


def _intent(row: Any, with_pod_ips: bool) -> ports.NodeIntent:
    if row["deleted"]:
        return ports.NodeIntent(name=row["name"], version=row["version"], deleted=True)
    pod_ips: dict[ports.Address, str] | None = None
    if with_pod_ips:
        ips, owners = row["ips"] or [], row["owners"] or []
        pod_ips = {ipaddress.ip_address(ip): owner for ip, owner in zip(ips, owners, strict=True)}
    return ports.NodeIntent(
        name=row["name"],
        version=row["version"],
        pod_cidrs=tuple(ipaddress.ip_network(c) for c in row["pod_cidrs"]),
        error=row["error"],
        pod_ips=pod_ips,
    )
