"""The PostgreSQL projection: the allocator's durable state, its log position and its lease.

Written by ``service.allocator`` (one transaction per batch: decisions, rejections, node rows,
pod addresses, their history and the consumed offset, all or nothing) and read when an allocator
starts (``load``) and by the decisions outbox relay; ``restore_clusters`` rebuilds the state
from the rows, for ``load`` and for the read side (``reader``). The tables are declared in
``schema``; Alembic builds them.

Single writer per log partition: ``try_acquire`` takes a time-bound lease with a fencing token,
and every ``commit`` re-checks that token inside its own transaction and extends the lease. A
writer that was paused past its lease (SIGSTOP, a long GC, a partition) finds the token changed
and its commit writes nothing: it can never write after losing the role. Times come from the
database clock (``clock_timestamp()``), so writers on different hosts need no clock agreement.

The hot path talks to asyncpg directly through the SQLAlchemy pool (``driver.connection``): a
batch is committed by one statement (``batch_commit``), its own transaction, or by COPY when it
is large (``batch_copy``). asyncpg exceptions
are translated by ``driver.Translation`` to ``errors.ProjectionError``, or
``errors.ProjectionDataError`` when the values written are to blame, and go no further.

Over 400 lines on purpose: the lease, load and the batch writes are one transaction discipline
(the fencing token checked in the same transaction as every write), kept in one file so that it
can be read as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import json
import socket
import struct
import weakref
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import errors, ports
from service.adapters.postgres import batch_commit, batch_copy, driver
from service.domain import merkle, restore, state
from service.domain.pool import IPV4, IPV6

UTC = datetime.UTC
NODES_CHANNEL = batch_commit.NODES_CHANNEL
DECISIONS_CHANNEL = batch_commit.DECISIONS_CHANNEL
# A writer connection stuck in a transaction (its process paused) is cut off by the server, so
# its row locks cannot stall the writer that takes over.
WRITER_SESSION_SETTINGS = {"idle_in_transaction_session_timeout": "5000"}
# A pooled connection is pinged before use only after this long back in the pool: a commit is
# one round trip, and pinging before each one cost three more (driver.engine).
WRITER_PING_IDLE_S = 1.0


# Driver errors become ProjectionError, and those that blame the values written (which the
# allocator isolates rather than retries) ProjectionDataError.
_translate = driver.Translation(errors.ProjectionError, data_error=errors.ProjectionDataError)


class PostgresProjection:
    """The projection and lease for one deployment's log (``log_name`` guards against mixing)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        log_name: str,
        holder: str,
        lease_ttl_s: float = 6.0,
        owns_engine: bool = False,
    ) -> None:
        self._engine = engine
        self.log_name = log_name
        self.holder = holder
        self.lease_ttl_s = lease_ttl_s
        self._owns_engine = owns_engine

    @classmethod
    def from_dsn(
        cls, dsn: str, *, log_name: str, holder: str, lease_ttl_s: float = 6.0, pool_size: int = 4
    ) -> PostgresProjection:
        engine = driver.engine(
            dsn,
            pool_size=pool_size,
            server_settings=WRITER_SESSION_SETTINGS,
            ping_idle_s=WRITER_PING_IDLE_S,
        )
        return cls(
            engine, log_name=log_name, holder=holder, lease_ttl_s=lease_ttl_s, owns_engine=True
        )

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    def _driver(self, doing: str, *, transaction: bool) -> AbstractAsyncContextManager[Any]:
        """An asyncpg connection from the pool, in a transaction if asked; errors translated."""
        return driver.connection(self._engine, _translate, doing, transaction=transaction)

    # --- the lease ------------------------------------------------------------------------------

    async def try_acquire(self, partition: int) -> int | None:
        """Take the partition's writer lease if it is free or expired; the new token, or None."""
        ttl = datetime.timedelta(seconds=self.lease_ttl_s)
        async with self._driver("acquiring the writer lease", transaction=True) as db:
            await db.execute(
                "INSERT INTO writer_lease (partition, holder, token, expires_at) "
                "VALUES ($1, '', 0, '-infinity') ON CONFLICT (partition) DO NOTHING",
                partition,
            )
            token: int | None = await db.fetchval(
                "UPDATE writer_lease SET holder = $2, token = token + 1, "
                "expires_at = clock_timestamp() + $3::interval "
                "WHERE partition = $1 AND (expires_at < clock_timestamp() OR holder = $2) "
                "RETURNING token",
                partition,
                self.holder,
                ttl,
            )
            return token

    async def renew(self, partition: int, token: int) -> None:
        """Extend the lease; raise FencedError if it was lost."""
        async with self._driver("renewing the writer lease", transaction=True) as db:
            await self._fence(db, partition, token)

    async def release(self, partition: int, token: int) -> None:
        """Give the lease up at once (clean shutdown), so a standby need not wait for expiry."""
        async with self._driver("releasing the writer lease", transaction=True) as db:
            await db.execute(
                "UPDATE writer_lease SET expires_at = '-infinity' "
                "WHERE partition = $1 AND token = $2",
                partition,
                token,
            )

    async def _fence(self, db: Any, partition: int, token: int) -> None:
        ok = await db.fetchval(
            "UPDATE writer_lease SET expires_at = clock_timestamp() + $3::interval "
            "WHERE partition = $1 AND token = $2 AND expires_at > clock_timestamp() "
            "RETURNING true",
            partition,
            token,
            datetime.timedelta(seconds=self.lease_ttl_s),
        )
        if not ok:
            raise errors.FencedError(
                f"partition {partition}: writer lease {token} lost; another allocator took over"
            )

    # --- loading --------------------------------------------------------------------------------

    async def next_offset(self, partition: int) -> int:
        async with self._driver("reading the consumed offset", transaction=False) as db:
            return await self._next_offset(db, partition)

    async def _next_offset(self, db: Any, partition: int) -> int:
        row = await db.fetchrow(
            "SELECT log, next_offset FROM consumer_offset WHERE partition = $1", partition
        )
        if row is None:
            return 0
        if row["log"] != self.log_name:
            raise errors.ConfigurationError(
                f"partition {partition} of this database was fed by log {row['log']!r}, "
                f"not {self.log_name!r}"
            )
        return int(row["next_offset"])

    async def load(self, partitions: Sequence[int] | None = None) -> ports.Loaded:
        """Rebuild the state of the clusters on ``partitions`` (all when None).

        With one partition, also returns where to continue reading it.
        """
        current = state.State(track_changes=True)
        async with self._driver("loading the projection", transaction=True) as db:
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # The writer's idle-in-transaction timeout is for transactions holding row locks;
            # this one holds none, and between two fetches of its cursor the client may build
            # millions of addresses for longer than the timeout on a loaded machine (the
            # server then closed the connection and the load started over, for ever).
            await db.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            next_offset, tree = 0, None
            if partitions and len(partitions) == 1:
                next_offset = await self._next_offset(db, partitions[0])
                tree = await _latest_tree(db, partitions[0])
            await restore_clusters(db, current, partitions)
        return ports.Loaded(state=current, next_offset=next_offset, tree=tree)

    # --- committing a batch ---------------------------------------------------------------------

    async def commit(self, batch: ports.Batch) -> None:
        """Write everything one batch did, and its offset, in one transaction (or nothing).

        One statement (``batch_commit``), its own implicit transaction: one round trip and the
        WAL flush; for a large batch (``batch_copy.by_copy``), where round trips do not count
        and COPY costs less per row, one COPY per table in a transaction (``batch_copy``). A
        writer whose lease was lost writes nothing and gets ``FencedError``.
        """
        now = datetime.datetime.now(UTC)
        if batch_copy.by_copy(batch):
            async with self._driver("committing a batch", transaction=True) as db:
                await _writer_codecs(db)
                await batch_copy.write(
                    db,
                    batch,
                    fence=lambda db: self._fence(db, batch.partition, batch.token),
                    log_name=self.log_name,
                    now=now,
                )
            return
        arguments = batch_commit.arguments(
            batch,
            lease_ttl=datetime.timedelta(seconds=self.lease_ttl_s),
            log_name=self.log_name,
            now=now,
        )
        async with self._driver("committing a batch", transaction=False) as db:
            if db.is_in_transaction():
                # The statement would then commit with that transaction, not on its own.
                raise errors.ProjectionError("committing a batch: a transaction is open")
            await _writer_codecs(db)
            ok = await db.fetchval(batch_commit.STATEMENT, *arguments)
        if not ok:
            raise errors.FencedError(
                f"partition {batch.partition}: writer lease {batch.token} lost; "
                "another allocator took over"
            )

    # --- reading for the outbox relay and the CLI -------------------------------------------------

    async def decisions_after(
        self, partition: int, start: int, limit: int
    ) -> list[tuple[int, str | None, bytes]]:
        """``(offset, event id, decision JSON)`` of committed decisions from ``start`` on."""
        async with self._driver("reading decisions", transaction=False) as db:
            rows = await db.fetch(
                'SELECT "offset", event_id, body FROM decision '
                'WHERE partition = $1 AND "offset" >= $2 ORDER BY "offset" LIMIT $3',
                partition,
                start,
                limit,
            )
        return [(r["offset"], r["event_id"], bytes(r["body"])) for r in rows]

    async def heads_between(
        self, partition: int, after: int, upto: int
    ) -> list[ports.RecordedHead]:
        """The committed tree heads of ``partition`` with ``after < size <= upto``, by size."""
        async with self._driver("reading tree heads", transaction=False) as db:
            rows = await db.fetch(
                "SELECT body, hash, frontier FROM tree_head "
                "WHERE partition = $1 AND size > $2 AND size <= $3 ORDER BY size",
                partition,
                after,
                upto,
            )
        return [recorded_head(row) for row in rows]

    async def outbox_offset(self, partition: int) -> int:
        async with self._driver("reading the outbox position", transaction=False) as db:
            value = await db.fetchval(
                "SELECT next_offset FROM outbox_offset WHERE partition = $1", partition
            )
        return int(value or 0)

    async def advance_outbox(self, partition: int, token: int, next_offset: int) -> None:
        async with self._driver("advancing the outbox", transaction=True) as db:
            await self._fence(db, partition, token)
            await db.execute(
                "INSERT INTO outbox_offset (partition, next_offset) VALUES ($1, $2) "
                "ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                partition,
                next_offset,
            )

    async def consumed_offsets(self) -> dict[int, int]:
        async with self._driver("reading consumed offsets", transaction=False) as db:
            rows = await db.fetch("SELECT partition, next_offset FROM consumer_offset")
        return {r["partition"]: r["next_offset"] for r in rows}


# A cluster's pod addresses grouped by node. Through the (cluster, node) index, so that the
# groups stream out as the scan goes (the client builds one node while the server reads the
# next): the planner would otherwise hash or sort all 7 M rows before sending the first group,
# and the two cores would take turns instead of working side by side. The order of addresses
# within a group does not matter (restore_pod_ips), so no sort is asked for. The owners come
# joined by newlines, one string per node and family (a fifth less server time than an array,
# and 110 times fewer strings to decode): an owner never holds a control character (events
# refuses them), and a count that does not match the addresses' is a RestoreError.
_PODS_BY_NODE = (
    "SELECT node, "
    "array_agg(address - '0.0.0.0'::inet) FILTER (WHERE family(address) = 4) AS v4, "
    "string_agg(owner, E'\\n') FILTER (WHERE family(address) = 4) AS v4_owners, "
    "array_agg(host(address)) FILTER (WHERE family(address) = 6) AS v6, "
    "string_agg(owner, E'\\n') FILTER (WHERE family(address) = 6) AS v6_owners "
    "FROM pod_ip WHERE cluster = $1 GROUP BY node"
)
_PODS_PREFETCH = 128  # nodes per round trip of the cursor (about 14,000 addresses)


async def restore_clusters(db: Any, current: state.State, partitions: Sequence[int] | None) -> None:
    """Rebuild into ``current`` the clusters on ``partitions`` (all when None) from their rows.

    ``db`` is an asyncpg connection in a transaction (the pod address cursor needs one), at
    REPEATABLE READ so that every cluster is read as of one commit. Shared by ``load`` and the
    read side (``reader``), so both rebuild the state exactly alike.
    """
    where, args = (
        ("WHERE partition = ANY($1::int[])", [list(partitions)]) if partitions else ("", [])
    )
    # For _PODS_BY_NODE's plan; local to the caller's transaction.
    await db.execute("SET LOCAL enable_hashagg = off; SET LOCAL enable_sort = off")
    clusters = await db.fetch(f"SELECT * FROM cluster {where} ORDER BY name", *args)
    # The cyclic GC off while millions of objects are made that all live on: each full
    # collection would walk every one made so far (a third of the client's time at 7 M
    # addresses). Nothing built here forms a cycle, so nothing is left for it to find.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for row in clusters:
            await _restore_cluster(db, current, row)
    finally:
        if collecting:
            gc.enable()


async def _restore_cluster(db: Any, current: state.State, row: Any) -> None:
    """Rebuild one cluster (its ``cluster`` row given) with its nodes and pod addresses."""
    cluster = restore.restore_cluster(
        current,
        row["name"],
        ipv4_cidrs=row["ipv4_cidrs"],
        ipv4_mask=row["ipv4_mask"],
        ipv6_cidrs=row["ipv6_cidrs"],
        ipv6_mask=row["ipv6_mask"],
        cursors=_json(row["cursors"]),
        next_seq=row["next_seq"],
    )
    nodes = await db.fetch(
        "SELECT * FROM node WHERE cluster = $1 AND NOT deleted ORDER BY seq",
        cluster.name,
    )
    for node in nodes:
        restore.restore_node(
            cluster,
            node["name"],
            seq=node["seq"],
            pod_cidrs=node["pod_cidrs"],
            error=node["error"],
            conflict=node["conflict"],
            addresses=node["addresses"],
            pinned=node["pinned"],
            cursors=node["cursors"],
        )
    # The pod addresses a node at a time, in bulk (restore.restore_pod_ips): per address,
    # Python work is what made a start with 7 M addresses slow. IPv4 as integers straight
    # from the server (parsing 7 M strings in Python would dominate); IPv6 as text.
    # Double-buffered: the next chunk is asked for before this one is built, so the server
    # computes and sends it meanwhile (a cursor's own prefetch asks only once its buffer is
    # empty, and server and client then took turns: a third more wall time at 7 M addresses).
    cursor = await db.cursor(_PODS_BY_NODE, cluster.name)
    chunk = await cursor.fetch(_PODS_PREFETCH)
    while chunk:
        following = asyncio.ensure_future(cursor.fetch(_PODS_PREFETCH))
        await asyncio.sleep(0)  # the request is on its way
        try:
            _restore_pods(cluster, chunk)
        except BaseException:
            # The connection must not be left with a fetch in flight; the error is this one.
            with contextlib.suppress(Exception):
                await following
            raise
        chunk = await following
    restore.finish(cluster)


def _restore_pods(cluster: state.ClusterState, chunk: Sequence[Any]) -> None:
    for pods in chunk:
        if pods["v4"] is not None:
            owners = pods["v4_owners"].split("\n")
            restore.restore_pod_ips(cluster, pods["node"], IPV4, pods["v4"], owners)
        if pods["v6"] is not None:
            values = [
                int.from_bytes(socket.inet_pton(socket.AF_INET6, v), "big") for v in pods["v6"]
            ]
            owners = pods["v6_owners"].split("\n")
            restore.restore_pod_ips(cluster, pods["node"], IPV6, values, owners)


def recorded_head(row: Any) -> ports.RecordedHead:
    """A ``tree_head`` row (``body``, ``hash``, ``frontier``) as the port's value."""
    body = bytes(row["body"])
    return ports.RecordedHead(
        head=merkle.decode_head(json.loads(body)),
        body=body,
        hash=bytes(row["hash"]),
        frontier=bytes(row["frontier"]),
    )


async def _latest_tree(db: Any, partition: int) -> merkle.Tree | None:
    """The partition's tree as of its latest head, or None before the first."""
    row = await db.fetchrow(
        "SELECT body, hash, frontier FROM tree_head WHERE partition = $1 "
        "ORDER BY size DESC LIMIT 1",
        partition,
    )
    if row is None:
        return None
    return tree_of(recorded_head(row))


def tree_of(head: ports.RecordedHead) -> merkle.Tree:
    """The tree a recorded head's frontier edges, ready to be extended."""
    try:
        return merkle.Tree.resume(head.head.size, head.frontier, head.hash)
    except merkle.ProofError as exc:
        raise errors.ProjectionError(f"partition {head.head.partition}: tree head: {exc}") from None


# The writer's connections with its own inet and timestamptz codecs (``_writer_codecs``); a
# connection the pool replaced is a new object and gets them again.
_FAST_CODECS: weakref.WeakSet[Any] = weakref.WeakSet()
# PostgreSQL's binary inet: family (2 AF_INET, 3 the next), prefix bits, is-cidr, length.
_V4_HEAD = bytes((2, 32, 0, 4))
_V6_HEAD = bytes((3, 128, 0, 16))


async def _writer_codecs(db: Any) -> None:
    """Give ``db`` inet and timestamptz codecs that encode the commit's values directly.

    asyncpg's inet codec builds an ``ipaddress`` object of every address it sends (~1 µs
    each, a pod address being encoded twice per event: the ``DELETE`` of the previous
    holders and its ``pod_ip`` or ``ip_history`` row); this one turns integers (IPv4) and
    16-byte strings (IPv6) into the wire format. asyncpg's timestamptz codec compares each
    value with its two infinities and converts it to UTC (~0.6 µs); a batch's times are few
    (its records share their log timestamp, each change the time of its event), so this one
    encodes each distinct UTC time once. Anything else is encoded, and every value decoded,
    as asyncpg does, so the connection's other queries see no difference
    (tests/integration/test_writer_codecs.py).
    """
    if db in _FAST_CODECS:
        return
    await db.set_type_codec(
        "inet", schema="pg_catalog", encoder=_encode_inet, decoder=_decode_inet, format="binary"
    )
    await db.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=_decode_timestamptz,
        format="binary",
    )
    _FAST_CODECS.add(db)


# PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC, a signed 64-bit integer,
# with the extremes for infinity. asyncpg maps those to its own two datetimes (naive), and
# maps the microsecond of those datetimes back to infinity.
_INT64 = struct.Struct("!q")
_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=UTC)
_PG_INFINITY = 0x7FFFFFFFFFFFFFFF
_PG_NEGATIVE_INFINITY = -0x8000000000000000
_INFINITY = datetime.datetime(datetime.MAXYEAR, 12, 31, 23, 59, 59, 999999)
_NEGATIVE_INFINITY = datetime.datetime(datetime.MINYEAR, 1, 1)
_INFINITY_US = 252455615999999999
_NEGATIVE_INFINITY_US = -63082281600000000
# Encoded UTC times, shared by the writer's connections; emptied when it reaches the bound.
_TIMES: dict[datetime.datetime, bytes] = {}
_TIMES_KEPT = 4096


def _encode_timestamptz(value: Any) -> bytes:
    if type(value) is datetime.datetime and value.tzinfo is UTC:
        moment: datetime.datetime = value
        encoded = _TIMES.get(moment)
        if encoded is None:
            if len(_TIMES) >= _TIMES_KEPT:
                _TIMES.clear()
            encoded = _TIMES[moment] = _pg_time(moment - _PG_EPOCH)
        return encoded
    # As asyncpg's (pgproto's timestamptz_encode): a date is midnight local time, a naive
    # datetime local time; asyncpg's own infinities are infinity.
    if not isinstance(value, datetime.datetime):
        if not isinstance(value, datetime.date):
            raise TypeError(
                "expected a datetime.date or datetime.datetime instance, "
                f"got {type(value).__name__!r}"
            )
        local = datetime.datetime.now(UTC).astimezone().utcoffset()
        assert local is not None
        value = datetime.datetime(
            value.year, value.month, value.day, tzinfo=datetime.timezone(local)
        )
    if value == _INFINITY:
        return _INT64.pack(_PG_INFINITY)
    if value == _NEGATIVE_INFINITY:
        return _INT64.pack(_PG_NEGATIVE_INFINITY)
    return _pg_time(value.astimezone(UTC) - _PG_EPOCH)


def _pg_time(delta: datetime.timedelta) -> bytes:
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if micros == _INFINITY_US:
        micros = _PG_INFINITY
    elif micros == _NEGATIVE_INFINITY_US:
        micros = _PG_NEGATIVE_INFINITY
    return _INT64.pack(micros)


def _decode_timestamptz(data: bytes) -> datetime.datetime:
    (micros,) = _INT64.unpack(data)
    if micros == _PG_INFINITY:
        return _INFINITY
    if micros == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _PG_EPOCH + datetime.timedelta(microseconds=micros)


def _encode_inet(value: Any) -> bytes:
    # Exact types only (not a bool, say): the rest goes through ipaddress as in asyncpg's.
    if type(value) is int and 0 <= value < 1 << 32:
        number: int = value
        return _V4_HEAD + number.to_bytes(4, "big")
    if type(value) is bytes and len(value) == 16:
        packed: bytes = value
        return _V6_HEAD + packed
    # As asyncpg's: an address, else an interface (PostgreSQL's inet holds both).
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        interface = ipaddress.ip_interface(value)
        packed = interface.packed
        family = 2 if interface.version == 4 else 3
        return bytes((family, interface.network.prefixlen, 1, len(packed))) + packed
    packed = address.packed
    return (_V4_HEAD if address.version == 4 else _V6_HEAD) + packed


def _decode_inet(data: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | Any:
    family, bits, length = data[0], data[1], data[3]
    packed = data[4 : 4 + length]
    if bits != (32 if family == 2 else 128):
        return ipaddress.ip_interface((packed, bits))
    return ipaddress.ip_address(packed)


def _json(value: Any) -> Any:
    # SQLAlchemy's pool installs a JSON codec on its asyncpg connections; a bare one has none.
    return json.loads(value) if isinstance(value, str | bytes) else value
