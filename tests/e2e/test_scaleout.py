"""N ``ipledger run`` processes share P partitions: the work spread, a killed one's taken over.

Three processes on six partitions, on Kafka (the consumer group assigns the partitions) and on
the table log (member rows and fair shares in PostgreSQL). Each must lead two partitions once
they have settled (not the first one up leading all six); one is killed with SIGKILL and its
partitions must be led by the others within 10 s (a new lease each), which then apply what it
left; a fourth that joins must get its share, and one that stops hands its share back. At the
end every partition's state is ``simulate``'s over that partition's records (and every offset
has one decision).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path

import pytest

from service.adapters.postgres import reader as pg_reader
from service.domain import document, events, partitioning, state
from tests import waiting
from tests.e2e.conftest import Allocators, assert_projection_matches, simulate
from tests.e2e.test_partitions import cli, environment
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
PARTITIONS = 6
CLUSTERS = tuple(f"c{i}" for i in range(18))
TAKEOVER_LIMIT_S = 10.0
SETTLE_S = 45.0


async def leaders(dsn: str) -> dict[int, str]:
    """The pid holding each partition's live writer lease."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        return {
            lease.partition: lease.holder.split(":")[1]
            for lease in await reader.leases()
            if not lease.expired
        }
    finally:
        await reader.close()


async def positions(dsn: str) -> dict[int, int]:
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        return {p.partition: p.next_offset for p in await reader.positions()}
    finally:
        await reader.close()


async def wait_spread(
    dsn: str, processes: list[subprocess.Popen[bytes]], allocators: Allocators
) -> float:
    """Wait until every partition is led, each of ``processes`` leading the same share."""
    pids = {str(process.pid) for process in processes}
    found: dict[int, str] = {}

    async def spread() -> bool:
        nonlocal found
        found = await leaders(dsn)
        counts = collections.Counter(found.values())
        share = PARTITIONS // len(pids)
        return len(found) == PARTITIONS and set(counts) == pids and set(counts.values()) == {share}

    return await waiting.until(
        spread,
        timeout=SETTLE_S,
        what=lambda: (
            f"{PARTITIONS} partitions spread over {sorted(pids)} (leaders: {found})\n"
            + allocators.logs()
        ),
        interval=0.1,
    )


async def wait_caught_up(dsn: str, ends: dict[int, int], timeout: float, what: str) -> float:
    at: dict[int, int] = {}

    async def caught_up() -> bool:
        nonlocal at
        at = await positions(dsn)
        return all(at.get(p, 0) >= end for p, end in ends.items())

    return await waiting.until(
        caught_up, timeout=timeout, what=lambda: f"{what} (at {at}, want {ends})", interval=0.05
    )


async def append(env: dict[str, str], path: Path, records: list[bytes]) -> None:
    path.write_bytes(b"\n".join(records) + b"\n")
    code, output = await cli(env, "append", str(path))
    assert code == 0, output


def partition_state(full: state.State, partition: int) -> state.State:
    """The clusters of ``full`` whose home is ``partition``."""
    part = state.State()
    part.clusters = {
        name: cluster
        for name, cluster in full.clusters.items()
        if partitioning.partition_for(name.encode(), PARTITIONS) == partition
    }
    return part


@pytest.mark.parametrize(
    "kind", ["table", pytest.param("kafka", marks=pytest.mark.kafka)], ids=["table", "kafka"]
)
async def test_three_processes_share_six_partitions_and_take_over_a_killed_one(
    kind: str,
    pg_dsn: str,
    request: pytest.FixtureRequest,
    allocators: Allocators,
    tmp_path: Path,
) -> None:
    base, log_name = environment(kind, pg_dsn, request)
    env = {
        **base,
        "IPLEDGER_PARTITIONS": str(PARTITIONS),
        "IPLEDGER_BATCH_MAX_RECORDS": "300",
        "IPLEDGER_LEASE_TTL_S": "6",
    }
    records = [
        r
        for r in mixed_stream(3000, seed=13, clusters=CLUSTERS)
        if not isinstance(events.decode(r), events.DecodeFailure)
    ]
    per_partition: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for record in records:
        per_partition[partitioning.partition_for(key_of(record), PARTITIONS)].append(record)
    assert all(per_partition.values()), "a partition without records tests nothing"
    third = len(records) // 3
    phases = [records[:third], records[third : 2 * third], records[2 * third :]]

    def ends(upto: int) -> dict[int, int]:
        counts = collections.Counter(
            partitioning.partition_for(key_of(r), PARTITIONS) for r in records[:upto]
        )
        return {p: counts.get(p, 0) for p in range(PARTITIONS)}

    code, output = await cli(env, "init")
    assert code == 0, output
    await append(env, tmp_path / "phase-0.jsonl", phases[0])
    processes = [allocators.start(env, f"run-{i}") for i in range(3)]
    await wait_spread(pg_dsn, processes, allocators)
    await wait_caught_up(pg_dsn, ends(third), 90, "the first third applied")

    # SIGKILL one: it releases nothing and leaves no group. Its partitions must be led by the
    # survivors (a new lease token) within 10 s, and what was appended just before the kill,
    # which it may not have applied, must be applied by them.
    before = await leaders(pg_dsn)
    victim = processes[0]
    orphaned = sorted(p for p, pid in before.items() if pid == str(victim.pid))
    assert len(orphaned) == PARTITIONS // 3
    await append(env, tmp_path / "phase-1.jsonl", phases[1])
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    survivors = processes[1:]
    alive = {str(s.pid) for s in survivors}
    now: dict[int, str] = {}

    async def taken_over() -> bool:
        nonlocal now
        now = await leaders(pg_dsn)
        return all(now.get(p) in alive for p in orphaned)

    await waiting.until(
        taken_over,
        timeout=60,
        what=lambda: (
            f"partitions {orphaned} led by {sorted(alive)} (leaders: {now})\n" + allocators.logs()
        ),
        interval=0.05,
    )
    took = time.monotonic() - killed_at
    assert took < TAKEOVER_LIMIT_S, f"taken over in {took:.1f}s\n{allocators.logs()}"
    await wait_caught_up(pg_dsn, ends(2 * third), 60, "the second third applied after the kill")
    await wait_spread(pg_dsn, survivors, allocators)

    # A fourth process joins: the group rebalances to two partitions each again.
    joined = allocators.start(env, "run-joined")
    live = [*survivors, joined]
    await wait_spread(pg_dsn, live, allocators)
    await append(env, tmp_path / "phase-2.jsonl", phases[2])
    await wait_caught_up(pg_dsn, ends(len(records)), 90, "everything applied")

    # Every partition's state is simulate's over that partition's records.
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    try:
        stored = await reader.state()
    finally:
        await reader.close()
    for partition, mine in per_partition.items():
        oracle, _ = simulate(mine)
        assert document.digest(partition_state(stored, partition)) == document.digest(
            partition_state(oracle, partition)
        ), f"partition {partition}"
    await assert_projection_matches(pg_dsn, log_name, per_partition)

    # A clean stop hands over at once: the others lead the stopped one's partitions.
    joined.send_signal(signal.SIGTERM)
    assert joined.wait(timeout=30) == 0, allocators.logs()
    await wait_spread(pg_dsn, survivors, allocators)
