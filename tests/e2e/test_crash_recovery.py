"""Exactly-once under ``kill -9``: real allocator processes killed at random points.

The log is pre-filled; allocator processes are started and SIGKILLed again and again while they
work through it in small batches. At the end the projection's digest must equal ``simulate``
over the same log, and every offset must have exactly one decision.
"""

from __future__ import annotations

import pytest

from service.adapters.postgres import table_log
from tests.e2e.conftest import (
    Allocators,
    assert_projection_matches,
    kill_at_random_points,
    wait_consumed,
)
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
KILLS = 20


async def test_kill_9_at_random_points_loses_nothing_and_applies_nothing_twice(
    pg_dsn: str, allocators: Allocators
) -> None:
    records = mixed_stream(12000, seed=3)
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    try:
        for start in range(0, len(records), 1000):
            await event_log.append([(key_of(r), r) for r in records[start : start + 1000]])
    finally:
        await event_log.close()
    env = {
        "IPLEDGER_DATABASE_URL": pg_dsn,
        "IPLEDGER_BATCH_MAX_RECORDS": "10",
        "IPLEDGER_LEASE_TTL_S": "1",
    }
    await kill_at_random_points(pg_dsn, allocators, env, len(records), KILLS, seed=20261126)

    allocators.start(env)
    await wait_consumed(pg_dsn, len(records), 120, allocators)

    await assert_projection_matches(pg_dsn, "table", records)
