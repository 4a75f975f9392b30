"""One writer per partition: a hot standby takes over a stopped or killed writer within 10 s,
and a paused writer that lost the lease never commits after it resumes."""

from __future__ import annotations

import os
import signal

import pytest

from service import ports
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from tests import waiting
from tests.e2e.conftest import Allocators, assert_projection_matches, wait_consumed
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
TAKEOVER_LIMIT_S = 10.0


async def lease(dsn: str) -> ports.Lease:
    """Partition 0's writer lease, as the read side sees it."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        (found,) = [lease for lease in await reader.leases() if lease.partition == 0]
    finally:
        await reader.close()
    return found


async def lease_holder(dsn: str) -> tuple[str, int]:
    found = await lease(dsn)
    return found.holder, found.token


async def test_standby_takes_over_a_paused_then_a_killed_writer(
    pg_dsn: str, allocators: Allocators
) -> None:
    records = mixed_stream(4000, seed=5)
    parts = [records[:1000], records[1000:2000], records[2000:3000], records[3000:]]
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    env = {"IPLEDGER_DATABASE_URL": pg_dsn, "IPLEDGER_LEASE_TTL_S": "3"}
    try:
        await event_log.append([(key_of(r), r) for r in parts[0]])
        first = allocators.start(env, "first")
        await wait_consumed(pg_dsn, 1000, 60, allocators)
        first_holder, first_token = await lease_holder(pg_dsn)
        assert first_holder.split(":")[1] == str(first.pid)

        second = allocators.start(env, "second")
        # The standby must not lead while the writer is healthy.
        await event_log.append([(key_of(r), r) for r in parts[1]])
        await wait_consumed(pg_dsn, 2000, 60, allocators)
        assert (await lease_holder(pg_dsn))[0] == first_holder

        # Pause the writer: its lease runs out and the standby takes over.
        os.kill(first.pid, signal.SIGSTOP)
        await event_log.append([(key_of(r), r) for r in parts[2]])
        took = await wait_consumed(pg_dsn, 3000, 30, allocators)
        assert took < TAKEOVER_LIMIT_S
        second_holder, second_token = await lease_holder(pg_dsn)
        assert second_holder.split(":")[1] == str(second.pid)
        assert second_token > first_token

        # The paused writer resumes with stale state and a stale token: fenced, it commits
        # nothing (one decision per offset below proves it) and stands by.
        os.kill(first.pid, signal.SIGCONT)
        await event_log.append([(key_of(r), r) for r in parts[3][:500]])
        await wait_consumed(pg_dsn, 3500, 60, allocators)
        await waiting.until(
            lambda: "another allocator took over; standing by" in allocators.log_of(first),
            timeout=20,
            what="the paused writer to log that it stands by",
            interval=0.1,
        )

        # Kill the new writer: the old one, now a standby, takes over.
        second.kill()
        second.wait(timeout=10)
        await event_log.append([(key_of(r), r) for r in parts[3][500:]])
        took = await wait_consumed(pg_dsn, len(records), 30, allocators)
        assert took < TAKEOVER_LIMIT_S
        assert (await lease_holder(pg_dsn))[0].split(":")[1] == str(first.pid)
    finally:
        await event_log.close()

    await assert_projection_matches(pg_dsn, "table", records)


async def test_sigterm_finishes_the_batch_and_exits_cleanly(
    pg_dsn: str, allocators: Allocators
) -> None:
    records = mixed_stream(2000, seed=9)
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    try:
        await event_log.append([(key_of(r), r) for r in records])
    finally:
        await event_log.close()
    process = allocators.start({"IPLEDGER_DATABASE_URL": pg_dsn}, "terminated")
    await wait_consumed(pg_dsn, len(records), 60, allocators)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, allocators.logs()
    # It gave its lease up: a successor need not wait for it to expire.
    assert (await lease(pg_dsn)).expired
