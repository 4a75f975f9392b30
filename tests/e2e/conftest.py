"""Helpers for end-to-end tests: real ``ipledger`` processes against real services."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from service.adapters.postgres import reader as pg_reader
from service.domain import allocation, document, events, state
from tests import waiting


class Allocators:
    """Starts ``ipledger run`` processes and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str], name: str = "allocator") -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"{name}-{len(self.processes)}.log").open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "run"],
                env={**os.environ, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        index = self.processes.index(process)
        (path,) = self.tmp_path.glob(f"*-{index}.log")
        return path.read_text(errors="replace")

    def logs(self, tail: int | None = 3000) -> str:
        """Every process's log, each cut to its last ``tail`` characters (for a failure's
        message; None: whole, for counting lines)."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail if tail else 0 :]}"
            for p in sorted(self.tmp_path.glob("*.log"))
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def allocators(tmp_path: Path) -> Iterator[Allocators]:
    procs = Allocators(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


async def consumed(dsn: str) -> int:
    """The highest next offset a partition has committed (0 before any commit)."""
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        return max((position.next_offset for position in await reader.positions()), default=0)
    finally:
        await reader.close()


async def wait_consumed(
    dsn: str,
    target: int,
    timeout: float,
    allocators: Allocators | None = None,
    interval: float = 0.05,
) -> float:
    """Wait until the projection has consumed ``target`` records; return the seconds taken."""
    at = 0

    async def caught_up() -> bool:
        nonlocal at
        at = await consumed(dsn)
        return at >= target

    return await waiting.until(
        caught_up,
        timeout=timeout,
        what=lambda: (
            f"the projection to consume {target} records (at {at})\n"
            + (allocators.logs() if allocators else "")
        ),
        interval=interval,
    )


def simulate(records: Sequence[bytes]) -> tuple[state.State, list[events.Decision]]:
    """The oracle: the pure core over the same records, in memory."""
    oracle = state.State()
    decisions = [allocation.apply_record(oracle, record)[0] for record in records]
    return oracle, decisions


async def assert_projection_matches(
    dsn: str, log_name: str, records: Sequence[bytes] | Mapping[int, Sequence[bytes]]
) -> None:
    """The projection's digest equals simulate's, and every offset has exactly one decision.

    ``records`` are partition 0's in offset order, or a mapping of every partition to its
    records in offset order. Clusters do not depend on each other and each lives on one
    partition, so simulating the partitions one after the other gives every cluster's state.
    """
    per_partition = records if isinstance(records, Mapping) else {0: records}
    oracle, _ = simulate([record for p in sorted(per_partition) for record in per_partition[p]])
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        assert document.digest(await reader.state()) == document.digest(oracle)
        for partition, mine in sorted(per_partition.items()):
            offsets = [decision.offset for decision in await reader.decisions(partition)]
            assert offsets == list(range(len(mine))), f"partition {partition}"
        assert {position.log for position in await reader.positions()} <= {log_name}
    finally:
        await reader.close()


async def kill_at_random_points(
    dsn: str, allocators: Allocators, env: dict[str, str], total: int, kills: int, seed: int
) -> None:
    """Start an allocator and SIGKILL it ``kills`` times mid-stream, at random points.

    Each one first consumes a random share of what is left (at most half of its even share,
    so the kills stay mid-stream however fast the machine: a time-based delay let a quiet
    machine with group commit consume the whole log before the last kills), then is killed
    within 20 ms of that commit, while it works on the next batch.
    Fails if the log was consumed before all the kills happened (the stream is too short).
    """
    rng = random.Random(seed)
    for done in range(kills):
        before = await consumed(dsn)
        assert before < total, f"the log was consumed after only {done} kills; lengthen it"
        process = allocators.start(env)
        step = rng.randint(1, max(1, (total - before) // (2 * (kills - done))))
        await wait_consumed(dsn, before + step, 120, allocators, interval=0.005)
        await anyio.sleep(rng.uniform(0.0, 0.02))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
