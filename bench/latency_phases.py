"""Where an event's append -> committed time goes, for ``bench.allocator``'s latency runs.

``instrument`` wraps the allocator's log reads and projection commits (on the instances, so the
allocator sees the same objects and every other method as it is), and ``fsync_probe`` times a
one-row durable commit on another connection every 20 ms: the WAL flush that any commit waits
for, however small. Together they say whether a p99 is the transport, the queue in front of the
commit (applying, and waiting for the commit before: what group commit trades) or the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg

import bench


@dataclass(slots=True)
class Phases:
    """Seconds per event: ``transport`` from the producer's send to the allocator's read
    returning it (producer, broker, fetch); ``queued`` from that read to the start of the
    commit carrying it; ``commit`` that commit (statements and COMMIT); ``fsync`` the probe's
    one-row commits; ``batch`` the records of each commit."""

    transport: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    fsync: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """p50/p99 of each phase in ms, and the records per commit (median/largest)."""
        parts = []
        for name in ("transport", "queued", "commit", "fsync"):
            values = sorted(getattr(self, name))
            if values:
                parts.append(
                    f"{name} {bench.percentile(values, 0.5) * 1000:.1f}/"
                    f"{bench.percentile(values, 0.99) * 1000:.1f}"
                )
        batch = sorted(self.batch)
        if batch:
            parts.append(f"records/commit {bench.percentile(batch, 0.5)}/{batch[-1]}")
        return "p50/p99 ms: " + ", ".join(parts)


async def fsync_probe(dsn: str, samples: list[float], stop: anyio.Event) -> None:
    """Time a one-row durable commit every 20 ms until ``stop``."""
    db = await asyncpg.connect(dsn)
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS bench_fsync_probe (at bigint)")
        while not stop.is_set():
            started = time.perf_counter()
            await db.execute("INSERT INTO bench_fsync_probe VALUES (1)")
            samples.append(time.perf_counter() - started)
            await anyio.sleep(0.02)
    finally:
        await db.close()


def instrument(
    event_log: Any, projection: Any, phases: Phases, on_commit: Callable[[Any], None]
) -> Callable[[Any], None]:
    """Time ``event_log.read`` and ``projection.commit`` into ``phases``; the ``on_commit``
    to give the allocator (it calls ``on_commit`` first)."""
    read_ns: dict[int, int] = {}
    commit_ns: dict[int, tuple[int, int]] = {}
    read, commit = event_log.read, projection.commit

    async def timed_read(*args: Any, **kwargs: Any) -> Any:
        records = await read(*args, **kwargs)
        now = time.monotonic_ns()
        for record in records:
            read_ns[record.offset] = now
        return records

    async def timed_commit(batch: Any) -> None:
        started = time.monotonic_ns()
        await commit(batch)
        commit_ns[id(batch)] = (started, time.monotonic_ns())

    def timed_on_commit(batch: Any) -> None:
        on_commit(batch)
        started, ended = commit_ns.pop(id(batch), (0, 0))
        phases.batch.append(len(batch.applied))
        for applied in batch.applied:
            event_id = applied.decision.id or ""
            got = read_ns.pop(applied.record.offset, None)
            if "@" not in event_id or got is None or not started:
                continue
            sent = int(event_id.rsplit("@", 1)[1])
            phases.transport.append((got - sent) / 1e9)
            phases.queued.append((started - got) / 1e9)
            phases.commit.append((ended - started) / 1e9)

    event_log.read, projection.commit = timed_read, timed_commit
    return timed_on_commit
