"""The address tables' digests: the server's (``PostgresAuditReader.address_digests``) and the
replay's (``service.audit.address_digest.of``) are the same bytes for the same rows, whatever
the order the replay holds them in, and differ for any change of a row.

Real PostgreSQL: rows written straight into ``pod_ip`` and ``ip_history`` of a migrated
database, with what the allocator's workload never makes (IPv6, names that are not ASCII,
clusters whose byte order is not their order in a language's collation, several rows of one
offset), beside the replay's own form of the same rows.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
from typing import Any

import asyncpg
import pytest

from service.adapters.postgres import audit as pg_audit
from service.audit import address_digest

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

_T0 = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)
# "B" before "a" by their bytes (COLLATE "C"), after it in most languages' collations.
_CLUSTERS = ("a", "B", "zürich")


def _rows(seed: int) -> tuple[dict[Any, tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Replayed rows (``replay_apply.Addresses``' form) of the clusters on partition 0."""
    chooser = random.Random(seed)
    holding: dict[Any, tuple[Any, ...]] = {}
    finished: list[tuple[Any, ...]] = []
    for index in range(300):
        cluster = chooser.choice(_CLUSTERS)
        family = chooser.choice((4, 6))
        address = chooser.randrange(1 << (32 if family == 4 else 128))
        offset = index // 3  # three rows to an offset: an event's rows, in no particular order
        when = _T0 + datetime.timedelta(microseconds=chooser.randrange(10**12))
        node, owner = f"node-{chooser.randrange(9)}", f"ns/pöd-{index}"
        if chooser.random() < 0.5:
            holding[(cluster, family, address)] = (node, owner, 0, offset, when)
        else:
            begun = when - datetime.timedelta(seconds=chooser.randrange(1, 10**6))
            finished.append(
                (
                    (cluster, family, address),
                    max(0, offset - 7),
                    (node, owner, 0, begun, offset, when),
                )
            )
    return holding, finished


async def _store(dsn: str, holding: dict[Any, Any], finished: list[Any]) -> None:
    db = await asyncpg.connect(dsn)
    try:
        for partition, name in [(0, c) for c in _CLUSTERS] + [(1, "other")]:
            await db.execute(
                "INSERT INTO cluster (name, partition, ipv4_cidrs, ipv6_cidrs, cursors, next_seq, "
                "version) VALUES ($1, $2, '{}', '{}', '{}', 0, 0)",
                name,
                partition,
            )
        text = address_text
        await db.executemany(
            "INSERT INTO pod_ip (cluster, address, node, owner, partition, since_offset, "
            "since_time) VALUES ($1, $2::inet, $3, $4, $5, $6, $7)",
            [(k[0], text(k[1], k[2]), *v) for k, v in holding.items()],
        )
        await db.executemany(
            "INSERT INTO ip_history (cluster, address, from_offset, node, owner, partition, "
            "from_time, to_offset, to_time) VALUES ($1, $2::inet, $3, $4, $5, $6, $7, $8, $9)",
            [(k[0], text(k[1], k[2]), begun, *v) for k, begun, v in finished],
        )
        # Rows of another partition's cluster, which the digests of partition 0 leave out.
        await db.execute("INSERT INTO pod_ip VALUES ('other', '10.0.0.1', 'n', 'o', 1, 0, now())")
    finally:
        await db.close()


def address_text(family: int, address: int) -> str:
    return str(ipaddress.IPv4Address(address) if family == 4 else ipaddress.IPv6Address(address))


async def _server_digests(dsn: str) -> dict[str, address_digest.Digest]:
    reader = pg_audit.PostgresAuditReader.from_dsn(dsn)
    try:
        return await reader.address_digests(0)
    finally:
        await reader.close()


async def test_the_server_digests_the_rows_as_the_replay_does_in_any_order(pg_dsn: str) -> None:
    holding, finished = _rows(seed=1)
    await _store(pg_dsn, holding, finished)

    server = await _server_digests(pg_dsn)

    assert server["pod_ip"][0] == len(holding)
    assert server["ip_history"][0] == len(finished)
    assert address_digest.of(holding, finished) == server
    shuffled = list(holding.items())
    random.Random(2).shuffle(shuffled)
    assert address_digest.of(dict(shuffled), random.Random(3).sample(finished, len(finished))) == (
        server
    )


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE pod_ip SET owner = owner || 'x' WHERE since_offset = 10",
        "UPDATE pod_ip SET since_time = since_time + interval '1 microsecond' "
        "WHERE since_offset = 10",
        "UPDATE pod_ip SET address = set_masklen(address, masklen(address) - 1) "
        "WHERE since_offset = 10",
        "DELETE FROM pod_ip WHERE since_offset = 10",
        "UPDATE ip_history SET to_offset = to_offset + 1000 "
        "WHERE id = (SELECT min(id) FROM ip_history)",
        "UPDATE ip_history SET node = 'node-x' WHERE id = (SELECT min(id) FROM ip_history)",
        "INSERT INTO ip_history (cluster, address, from_offset, node, owner, partition, "
        "from_time, to_offset, to_time) SELECT cluster, address, from_offset, node, owner, "
        "partition, from_time, to_offset, to_time FROM ip_history "
        "WHERE id = (SELECT min(id) FROM ip_history)",
    ],
)
async def test_any_change_of_a_row_changes_the_servers_digest(pg_dsn: str, change: str) -> None:
    holding, finished = _rows(seed=4)
    if not any(v[3] == 10 for v in holding.values()):
        holding[("a", 4, 7)] = ("node-1", "ns/p", 0, 10, _T0)
    await _store(pg_dsn, holding, finished)
    db = await asyncpg.connect(pg_dsn)
    try:
        await db.execute(change)
    finally:
        await db.close()

    assert address_digest.of(holding, finished) != await _server_digests(pg_dsn)
