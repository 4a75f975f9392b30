"""The Merkle tree across ``kill -9``: a restart never changes a root.

Real allocator processes over the table log, killed at random points while they work through a
pre-filled log in small batches (heads every 37 records and at every batch boundary). At the
end every head's root must equal the root of a straight run (the pure core's decisions over the
same records, hashed in one pass), the chain of heads must be unbroken, and ``ipledger replay
--verify`` must find nothing: the frontier stored with each head in the batch's transaction is
what the next writer extends.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.adapters.postgres import audit as pg_audit
from service.adapters.postgres import table_log
from service.domain import allocation, events, merkle, state
from tests.e2e.conftest import Allocators, kill_at_random_points, wait_consumed
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
KILLS = 6


async def test_roots_after_kill_9_equal_a_straight_run_and_replay_verifies(
    pg_dsn: str, allocators: Allocators
) -> None:
    records = mixed_stream(3000, seed=21)
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    try:
        for start in range(0, len(records), 1000):
            await event_log.append([(key_of(r), r) for r in records[start : start + 1000]])
    finally:
        await event_log.close()
    env = {
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_BATCH_MAX_RECORDS": "31",
        "IPLEDGER_LEASE_TTL_S": "1",
        "IPLEDGER_TREE_HEAD_EVERY": "37",
        "IPLEDGER_TREE_DIGEST_EVERY": "370",
    }
    await kill_at_random_points(pg_dsn, allocators, env, len(records), KILLS, seed=20261202)
    allocators.start(env)
    await wait_consumed(pg_dsn, len(records), 120, allocators)

    straight = state.State()
    leaves = [
        merkle.leaf_hash(events.encode_decision(allocation.apply_record(straight, r)[0]), r)
        for r in records
    ]
    reader = pg_audit.PostgresAuditReader.from_dsn(pg_dsn)
    try:
        heads = await reader.heads(0)
    finally:
        await reader.close()
    assert heads[-1].head.size == len(records)
    assert {h.head.size for h in heads} >= set(range(37, len(records) + 1, 37))
    previous = None
    for recorded in heads:
        head = recorded.head
        assert head.root == merkle.subtree_root(leaves, 0, head.size).hex(), head.size
        assert head.previous == previous, head.size
        previous = recorded.hash.hex()
    replay = subprocess.run(
        [sys.executable, "-m", "service.cli", "replay", "--verify", "--quiet"],
        env={**os.environ, "IPLEDGER_DATABASE_URL": pg_dsn},
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr.decode(errors="replace")
    assert b"verified: 3000 record(s)" in replay.stdout
    assert f"{len(heads)} tree head(s) checked".encode() in replay.stdout
