"""The contract of ``ports.SyncStore``, written once and run against every adapter.

Each test runs against ``MemorySyncStore`` (stores over one ``MemorySyncTables``, no service) and
``PostgresSyncStore`` (stores on a fresh migrated database of the test's own, ``pg_dsn``,
requested only by the PostgreSQL parameter, so ``-m "not postgres"`` starts nothing). Several
stores on one database stand for several sync-worker processes. What the allocator does to the
database is done by hand: a node is "committed" by writing it at its version and notifying (for
PostgreSQL: a ``node`` row, its ``pod_ip`` rows and ``NOTIFY ipledger_nodes`` in one
transaction); a session is "lost" the way a dropped connection loses it (PostgreSQL: the server
terminates the backend that holds the lock; memory: ``drop_session``).

Asserted for every adapter (the port's docstring states the contract):

- one store at a time holds a cluster's lock, per cluster; holding it again is True;
  ``unlock`` and ``close`` hand it over at once, and unlocking a lock not held changes nothing;
- ``check_lock`` passes for the holder only and raises ``FencedError`` otherwise;
- a lost session frees the lock for another store, and fences the old one: its progress write
  raises ``FencedError`` and writes nothing; it can lock again once the lock is free;
- ``changed_nodes`` returns the cluster's nodes without a record at their version, tombstones
  included, in ``(version, name)`` order, paged by its cursor and ``limit``;
- recorded versions never go back; the same version replaces the error; within one call the
  last outcome of the highest version wins; progress is seen by other stores, also after the
  writer closed;
- ``all_nodes`` lists every node by name with its record or ``(None, None)``; pod addresses
  only when asked for, an empty map for a node without any, none on a tombstone;
- a change wakes ``wait_for_change`` (also one that came before the wait began); without one it
  waits out its timeout.

Not asserted, because the adapters differ there on purpose: whether a store without an open
session (one that never took a lock) hears notifications (memory: yes; PostgreSQL: its
``LISTEN`` is on the session, opened by the first ``try_lock``); and that a new PostgreSQL
session counts as a change (it may have missed notifications), which memory never needs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import asyncpg
import pytest

from service import errors, ports
from service.adapters import memory
from service.adapters.postgres import projection as pg_projection
from service.adapters.postgres import sync_store
from tests import waiting
from tests.fakes import intent

pytestmark = pytest.mark.anyio

EAST, WEST = "east", "west"
DEADLINE_S = 10.0


@dataclass
class Database:
    """One database of the adapter under test: stores on it, and what the allocator does to it."""

    new_store: Callable[[], ports.SyncStore]
    #: Commit a node of a cluster as the allocator does (and notify).
    put: Callable[[str, ports.NodeIntent], Awaitable[None]]
    #: End the session of the store holding a cluster's lock, as a lost connection does.
    end_session: Callable[[str], Awaitable[None]]
    opened: list[ports.SyncStore] = field(default_factory=list)

    def store(self) -> ports.SyncStore:
        """A new store (one sync-worker process) on this database, closed after the test."""
        store = self.new_store()
        self.opened.append(store)
        return store


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    if request.param == "memory":
        tables = memory.MemorySyncTables()

        async def put_memory(cluster: str, node: ports.NodeIntent) -> None:
            tables.put(cluster, node)

        async def end_memory_session(cluster: str) -> None:
            holder = tables.holder(cluster)
            assert holder is not None, f"nobody holds {cluster}'s lock"
            holder.drop_session()

        db = Database(lambda: memory.MemorySyncStore(tables), put_memory, end_memory_session)
        yield db
        for store in db.opened:
            await store.close()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    connection = await asyncpg.connect(dsn)

    async def put_postgres(cluster: str, node: ports.NodeIntent) -> None:
        await _commit_node(connection, cluster, node)

    async def end_postgres_session(cluster: str) -> None:
        await _terminate_holder(connection, cluster)

    db = Database(
        lambda: sync_store.PostgresSyncStore.from_dsn(dsn), put_postgres, end_postgres_session
    )
    try:
        yield db
    finally:
        for store in db.opened:
            await store.close()
        await connection.close()


async def _commit_node(db: asyncpg.Connection, cluster: str, node: ports.NodeIntent) -> None:
    """The part of the projection's commit a sync store reads: the node, its pods, the notice."""
    async with db.transaction():
        await db.execute(
            "INSERT INTO node (cluster, name, seq, pod_cidrs, error, addresses, pinned, waiting, "
            "cursors, deleted, version, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, '{}', false, false, '{}', $6, $7, now()) "
            "ON CONFLICT (cluster, name) DO UPDATE SET pod_cidrs = EXCLUDED.pod_cidrs, "
            "error = EXCLUDED.error, deleted = EXCLUDED.deleted, version = EXCLUDED.version",
            cluster,
            node.name,
            -1 if node.deleted else 0,
            [str(c) for c in node.pod_cidrs],
            node.error,
            node.deleted,
            node.version,
        )
        await db.execute("DELETE FROM pod_ip WHERE cluster = $1 AND node = $2", cluster, node.name)
        pods = node.pod_ips or {}
        await db.executemany(
            "INSERT INTO pod_ip (cluster, address, node, owner, partition, since_offset, "
            "since_time) VALUES ($1, $2::inet, $3, $4, 0, $5, now())",
            [(cluster, str(a), node.name, owner, node.version) for a, owner in pods.items()],
        )
        await db.execute("SELECT pg_notify($1, '0')", pg_projection.NODES_CHANNEL)


async def _terminate_holder(db: asyncpg.Connection, cluster: str) -> None:
    """Terminate the backend holding ``cluster``'s advisory lock, and wait until it is gone."""
    # A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32).
    pid = await db.fetchval(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND d.datname = current_database() "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
        sync_store.LOCK_NAMESPACE + cluster,
    )
    assert pid is not None, f"nobody holds {cluster}'s lock"
    assert await db.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)


def names(nodes: list[ports.NodeIntent]) -> list[tuple[str, int]]:
    return [(n.name, n.version) for n in nodes]


async def progress(
    store: ports.SyncStore, cluster: str
) -> dict[str, tuple[int | None, str | None]]:
    return {n.name: (v, e) for n, v, e in await store.all_nodes(cluster, with_pod_ips=False)}


async def lock_within_deadline(store: ports.SyncStore, cluster: str) -> None:
    """Take the lock a lost session frees; PostgreSQL frees it when the backend has exited."""
    await waiting.until(
        lambda: store.try_lock(cluster),
        timeout=DEADLINE_S,
        what=f"the lock of {cluster} freed by the lost session",
        interval=0.02,
    )


class TestLock:
    async def test_one_store_at_a_time_holds_a_clusters_lock(self, database: Database) -> None:
        first, second = database.store(), database.store()

        assert await first.try_lock(EAST)
        assert not await second.try_lock(EAST)
        assert await first.try_lock(EAST)  # held already
        # Locks are per cluster.
        assert await second.try_lock(WEST)
        assert not await first.try_lock(WEST)

    async def test_check_lock_passes_for_the_holder_only(self, database: Database) -> None:
        first, second = database.store(), database.store()
        assert await first.try_lock(EAST)

        await first.check_lock(EAST)
        with pytest.raises(errors.FencedError):
            await second.check_lock(EAST)
        with pytest.raises(errors.FencedError):
            await first.check_lock(WEST)  # never taken

    async def test_unlock_hands_the_lock_over_at_once(self, database: Database) -> None:
        first, second = database.store(), database.store()
        assert await first.try_lock(EAST)

        await second.unlock(EAST)  # not its lock: nothing happens
        await first.check_lock(EAST)
        assert not await second.try_lock(EAST)

        await first.unlock(EAST)
        assert await second.try_lock(EAST)
        with pytest.raises(errors.FencedError):
            await first.check_lock(EAST)
        await first.unlock(EAST)  # twice: nothing happens
        await second.check_lock(EAST)

    async def test_close_gives_up_every_lock(self, database: Database) -> None:
        first, second = database.store(), database.store()
        assert await first.try_lock(EAST) and await first.try_lock(WEST)

        await first.close()

        assert await second.try_lock(EAST) and await second.try_lock(WEST)

    async def test_a_lost_session_frees_the_lock_and_fences_its_store(
        self, database: Database
    ) -> None:
        first, second = database.store(), database.store()
        await database.put(EAST, intent("a", 1, "10.0.1.0/24"))
        assert await first.try_lock(EAST)
        await first.record_synced(EAST, [("a", 1, None)])

        await database.end_session(EAST)

        with pytest.raises(errors.FencedError):
            await first.record_synced(EAST, [("a", 1, "written by a fenced worker")])
        with pytest.raises(errors.FencedError):
            await first.check_lock(EAST)
        await lock_within_deadline(second, EAST)
        await second.record_synced(EAST, [("a", 1, "written by the new holder")])
        assert await progress(second, EAST) == {"a": (1, "written by the new holder")}
        # The old store is a store again, on a new session, once the lock is free.
        assert not await first.try_lock(EAST)
        await second.unlock(EAST)
        assert await first.try_lock(EAST)
        await first.record_synced(EAST, [("a", 1, None)])
        assert await progress(second, EAST) == {"a": (1, None)}

    async def test_progress_needs_the_lock(self, database: Database) -> None:
        holder, other = database.store(), database.store()
        await database.put(EAST, intent("a", 1, "10.0.1.0/24"))
        assert await holder.try_lock(EAST)

        with pytest.raises(errors.FencedError):
            await other.record_synced(EAST, [("a", 1, None)])

        assert await progress(holder, EAST) == {"a": (None, None)}


class TestChangedNodes:
    async def test_nodes_without_a_record_are_changed_in_version_then_name_order(
        self, database: Database
    ) -> None:
        store = database.store()
        await database.put(EAST, intent("b", 5, "10.0.2.0/24"))
        await database.put(EAST, intent("a", 3, "10.0.1.0/24", error="pool exhausted"))
        await database.put(EAST, intent("c", 5, deleted=True))
        await database.put(EAST, intent("d", 4, "10.0.4.0/24", "fd00::400/120"))
        await database.put(WEST, intent("a", 1, "10.9.1.0/24"))

        changed = await store.changed_nodes(EAST, (-1, ""), 100, with_pod_ips=False)

        assert names(changed) == [("a", 3), ("d", 4), ("b", 5), ("c", 5)]
        a, d, _, c = changed
        assert a == intent("a", 3, "10.0.1.0/24", error="pool exhausted")
        assert d.pod_cidrs == (
            ipaddress.IPv4Network("10.0.4.0/24"),
            ipaddress.IPv6Network("fd00::400/120"),
        )
        assert c.deleted and c.version == 5
        assert all(n.pod_ips is None for n in changed)
        assert names(await store.changed_nodes(WEST, (-1, ""), 100, with_pod_ips=False)) == [
            ("a", 1)
        ]

    async def test_the_cursor_and_the_limit_page_without_gaps_or_repeats(
        self, database: Database
    ) -> None:
        store = database.store()
        for i in range(7):
            await database.put(EAST, intent(f"n{i}", 10 + i // 3, "10.0.1.0/24"))

        pages: list[list[tuple[str, int]]] = []
        cursor = (-1, "")
        while page := await store.changed_nodes(EAST, cursor, 3, with_pod_ips=False):
            pages.append(names(page))
            cursor = (page[-1].version, page[-1].name)

        assert pages == [
            [("n0", 10), ("n1", 10), ("n2", 10)],
            [("n3", 11), ("n4", 11), ("n5", 11)],
            [("n6", 12)],
        ]
        assert await store.changed_nodes(EAST, (11, "n4"), 100, with_pod_ips=False) == [
            intent("n5", 11, "10.0.1.0/24"),
            intent("n6", 12, "10.0.1.0/24"),
        ]

    async def test_a_record_hides_a_node_until_its_version_grows(self, database: Database) -> None:
        store = database.store()
        await database.put(EAST, intent("a", 3, "10.0.1.0/24"))
        await database.put(EAST, intent("b", 3, "10.0.2.0/24"))
        assert await store.try_lock(EAST)

        await store.record_synced(EAST, [("a", 3, None), ("b", 3, "waiting: no CiliumNode")])
        assert await store.changed_nodes(EAST, (-1, ""), 100, with_pod_ips=False) == []

        await database.put(EAST, intent("a", 7, "10.0.7.0/24"))
        changed = await store.changed_nodes(EAST, (-1, ""), 100, with_pod_ips=False)
        assert changed == [intent("a", 7, "10.0.7.0/24")]

    async def test_reads_need_no_lock(self, database: Database) -> None:
        holder, reader = database.store(), database.store()
        await database.put(EAST, intent("a", 1, "10.0.1.0/24"))
        assert await holder.try_lock(EAST)

        assert names(await reader.changed_nodes(EAST, (-1, ""), 10, with_pod_ips=False)) == [
            ("a", 1)
        ]
        assert await progress(reader, EAST) == {"a": (None, None)}


class TestProgress:
    async def test_a_recorded_version_never_goes_back(self, database: Database) -> None:
        store = database.store()
        await database.put(EAST, intent("a", 6, "10.0.1.0/24"))
        await database.put(EAST, intent("b", 9, "10.0.2.0/24"))
        assert await store.try_lock(EAST)

        await store.record_synced(EAST, [("a", 5, None), ("b", 9, None)])
        await store.record_synced(EAST, [("a", 3, "older")])
        assert await progress(store, EAST) == {"a": (5, None), "b": (9, None)}

        await store.record_synced(EAST, [("a", 5, "rejected: 422")])
        assert (await progress(store, EAST))["a"] == (5, "rejected: 422")

        # In one call: the last outcome of the highest version.
        await store.record_synced(EAST, [("a", 6, "first"), ("a", 6, None), ("a", 4, "stale")])
        assert (await progress(store, EAST))["a"] == (6, None)

    async def test_progress_is_seen_by_every_store_even_after_the_writer_closed(
        self, database: Database
    ) -> None:
        writer = database.store()
        await database.put(EAST, intent("a", 2, "10.0.1.0/24"))
        await database.put(EAST, intent("b", 2, "10.0.2.0/24"))
        await database.put(WEST, intent("a", 2, "10.9.1.0/24"))
        assert await writer.try_lock(EAST)

        await writer.record_synced(EAST, [("a", 2, None)])
        await writer.close()

        successor = database.store()
        assert await progress(successor, EAST) == {"a": (2, None), "b": (None, None)}
        assert await progress(successor, WEST) == {"a": (None, None)}
        changed = await successor.changed_nodes(EAST, (-1, ""), 100, with_pod_ips=False)
        assert names(changed) == [("b", 2)]

    async def test_all_nodes_lists_every_node_by_name_tombstones_too(
        self, database: Database
    ) -> None:
        store = database.store()
        await database.put(EAST, intent("c", 4, "10.0.3.0/24"))
        await database.put(EAST, intent("a", 8, deleted=True))
        await database.put(EAST, intent("b", 2, "10.0.2.0/24", error="pool exhausted"))
        assert await store.try_lock(EAST)
        await store.record_synced(EAST, [("c", 4, "waiting: no CiliumNode")])

        rows = await store.all_nodes(EAST, with_pod_ips=False)

        assert [(n.name, n.version, n.deleted, v, e) for n, v, e in rows] == [
            ("a", 8, True, None, None),
            ("b", 2, False, None, None),
            ("c", 4, False, 4, "waiting: no CiliumNode"),
        ]
        assert rows[1][0] == intent("b", 2, "10.0.2.0/24", error="pool exhausted")
        assert await store.all_nodes(WEST, with_pod_ips=False) == []

    async def test_pod_addresses_only_when_asked_for(self, database: Database) -> None:
        store = database.store()
        pods = {"10.0.1.5": "default/web-1", "fd00::105": "default/web-2"}
        await database.put(EAST, intent("a", 1, "10.0.1.0/24", "fd00::100/120", pod_ips=pods))
        await database.put(EAST, intent("b", 2, "10.0.2.0/24"))
        await database.put(EAST, intent("c", 3, deleted=True))

        with_pods = await store.changed_nodes(EAST, (-1, ""), 10, with_pod_ips=True)
        without = await store.changed_nodes(EAST, (-1, ""), 10, with_pod_ips=False)
        listed = [n for n, _, _ in await store.all_nodes(EAST, with_pod_ips=True)]

        expected = {ipaddress.ip_address(a): owner for a, owner in pods.items()}
        assert [n.pod_ips for n in with_pods] == [expected, {}, None]
        assert [n.pod_ips for n in without] == [None, None, None]
        assert listed == with_pods


class TestChanges:
    async def test_a_change_wakes_a_waiting_store(self, database: Database) -> None:
        store = database.store()
        assert await store.try_lock(EAST)  # notifications arrive on the session
        seen = store.change_count()
        woke = anyio.Event()

        async def wait() -> None:
            await store.wait_for_change(seen, 60)
            woke.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await database.put(WEST, intent("a", 1, "10.9.1.0/24"))
            with anyio.fail_after(DEADLINE_S):
                await woke.wait()

        assert store.change_count() != seen

    async def test_a_change_before_the_wait_ends_it_at_once(self, database: Database) -> None:
        store = database.store()
        assert await store.try_lock(EAST)
        seen = store.change_count()

        await database.put(EAST, intent("a", 1, "10.0.1.0/24"))

        with anyio.fail_after(DEADLINE_S):
            await store.wait_for_change(seen, 60)

    async def test_without_a_change_the_wait_lasts_its_timeout(self, database: Database) -> None:
        store = database.store()
        assert await store.try_lock(EAST)
        seen = store.change_count()
        started = anyio.current_time()

        with anyio.fail_after(DEADLINE_S):
            await store.wait_for_change(seen, 0.3)

        assert anyio.current_time() - started >= 0.29
