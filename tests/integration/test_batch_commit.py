"""Both commit paths (``batch_commit``, ``batch_copy``) write the rows the memory projection writes.

The statement replays a batch's address changes partly in the client (what is current at the
batch's end, which holdings started and ended within it) and partly in the server (the holdings
from before the batch, deleted and moved into ``ip_history``). Both halves are checked here
against ``MemoryProjection``, which keeps every holding in memory, over a stream that hands
addresses out and back within a batch and across batches, in two clusters at once and in both
families, with batches of one record up to the whole stream: every table the commit writes must
hold the same rows, ``ip_history`` in the same order (its ids grow with the end of holdings).
The same runs again with every batch committed by COPY (``batch_copy``, for large batches).
"""

from __future__ import annotations

import ipaddress

import asyncpg
import pytest

from service import allocator, ports
from service.adapters import memory
from service.adapters.postgres import batch_copy
from service.adapters.postgres import projection as pg_projection
from service.domain import state
from service.domain.pool import IPV4
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

STREAM = mixed_stream(1200, seed=13, clusters=("default", "blue"))
START_MS = 1_764_000_000_000


def _records() -> list[ports.Record]:
    # Log times of their own (three records share each): the times the rows carry are then
    # the same on both sides, not each side's clock.
    return [
        ports.Record(0, offset, key_of(value), value, START_MS + offset // 3)
        for offset, value in enumerate(STREAM)
    ]


def _text(family: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == IPV4 else ipaddress.IPv6Address(value))


@pytest.mark.parametrize(
    ("batch_size", "path"),
    [
        (1, "statement"),
        (7, "statement"),
        (64, "statement"),
        (1200, "statement"),
        (1, "copy"),
        (64, "copy"),
        (1200, "copy"),
    ],
)
async def test_the_commit_writes_what_the_memory_projection_writes(
    pg_dsn: str, batch_size: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_copy, "COPY_FROM_RECORDS", 1 if path == "copy" else len(STREAM) + 1)
    tables = memory.MemoryProjectionTables()
    in_memory = memory.MemoryProjection(tables, holder="writer", log_name="check")
    projection = pg_projection.PostgresProjection.from_dsn(
        pg_dsn, log_name="check", holder="writer"
    )
    records = _records()
    try:
        tokens = [await in_memory.try_acquire(0), await projection.try_acquire(0)]
        states = [state.State(track_changes=True), state.State(track_changes=True)]
        for start in range(0, len(records), batch_size):
            part = records[start : start + batch_size]
            for side, (current, token) in enumerate(zip(states, tokens, strict=True)):
                assert token is not None
                batch = allocator.apply_records(current, part, 0, token, partitions=1)
                await (in_memory, projection)[side].commit(batch)
        db = await asyncpg.connect(pg_dsn)
        try:
            held = await db.fetch(
                "SELECT cluster, host(address) AS a, node, owner, partition, since_offset, "
                "since_time FROM pod_ip"
            )
            ended = await db.fetch(
                "SELECT cluster, host(address) AS a, node, owner, partition, from_offset, "
                "from_time, to_offset, to_time FROM ip_history ORDER BY id"
            )
            nodes = await db.fetch(
                "SELECT cluster, name, seq, pod_cidrs, error, conflict, addresses, pinned, "
                "waiting, cursors, deleted, version FROM node"
            )
            offset = await db.fetchval("SELECT next_offset FROM consumer_offset")
            decisions = await db.fetchval("SELECT count(*) FROM decision")
        finally:
            await db.close()
    finally:
        await projection.close()

    assert {tuple(r) for r in held} == {
        (
            row.cluster,
            _text(row.family, row.address),
            row.node,
            row.owner,
            row.partition,
            row.since_offset,
            row.since_time,
        )
        for rows in tables.pod_ips.values()
        for row in rows.values()
    }
    # The memory projection keeps each cluster's history in the order holdings ended; the
    # table's ids give that order across the clusters of a batch too.
    by_cluster: dict[str, list[tuple[object, ...]]] = {}
    for r in ended:
        by_cluster.setdefault(r["cluster"], []).append(tuple(r))
    assert by_cluster == {
        cluster: [
            (
                row.cluster,
                _text(row.family, row.address),
                row.node,
                row.owner,
                row.partition,
                row.from_offset,
                row.from_time,
                row.to_offset,
                row.to_time,
            )
            for row in rows
        ]
        for cluster, rows in tables.history.items()
        if rows
    }
    assert {tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in nodes} == {
        (
            cluster,
            row.name,
            row.seq,
            row.pod_cidrs,
            row.error,
            row.conflict,
            row.addresses,
            row.pinned,
            row.waiting,
            row.cursors,
            row.deleted,
            row.version,
        )
        for cluster, rows in tables.nodes.items()
        for row in rows.values()
    }
    assert offset == len(records) and decisions == len(records)
    # The stream exercises what the statement distinguishes: holdings that end in a later
    # batch than they began (from the rows before it) and, in batches of several records,
    # within the batch that began them; both families; both clusters.
    assert {r["cluster"] for r in ended} == {"default", "blue"}
    assert any(":" in r["a"] for r in ended) and any("." in r["a"] for r in ended)
    if batch_size < len(records):
        assert any(r["from_offset"] // batch_size != r["to_offset"] // batch_size for r in ended)
    if batch_size > 1:
        assert any(r["from_offset"] // batch_size == r["to_offset"] // batch_size for r in ended)
