"""``replay_partition`` over the memory adapters: a log of several chunks, read ahead.

The integration tests (tests/integration/test_audit.py) replay a log shorter than one chunk;
here the chunks are made small so that the read ahead is running, or waiting to hand over the
next chunk, when the applier meets a divergence and stops: the replay must still return it as
its report (and leave no task behind), and a clean log of many chunks must verify. Also a log
applied with the tree off: its decisions carry no leaf, so no chunk's digest can match the
replayed one (which has the leaves), and they are compared by their bodies alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import anyio
import pytest

from service import allocator, errors, ports
from service.adapters import memory
from service.adapters.memory_audit import MemoryAuditReader
from service.audit import replay
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
RECORDS = mixed_stream(3000, seed=11)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "CHUNK", 200)
    monkeypatch.setattr(replay, "FIRST_CHUNK", 50)


async def _ledger(
    *, tree: bool = True
) -> tuple[memory.MemoryEventLog, memory.MemoryProjectionTables]:
    event_log = memory.MemoryEventLog(1)
    for start in range(0, len(RECORDS), 500):
        await event_log.append([(key_of(r), r) for r in RECORDS[start : start + 500]])
    tables = memory.MemoryProjectionTables()
    projection = memory.MemoryProjection(tables, holder="test", lease_ttl_s=1e9)
    worker = allocator.PartitionAllocator(
        event_log,
        projection,
        0,
        settings=allocator.LoopSettings(
            batch_max_records=170, tree=allocator.TreeSettings(head_every=100) if tree else None
        ),
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        with anyio.fail_after(60):
            while worker.metrics.next_offset.get(0, -1) < len(RECORDS):
                await anyio.sleep(0.01)
        stop.set()
    return event_log, tables


async def test_a_clean_log_of_many_chunks_verifies() -> None:
    event_log, tables = await _ledger()

    report = await replay.replay_partition(event_log, MemoryAuditReader(tables), 0, 1)

    assert report.divergence is None, report.divergence.describe()
    assert report.records == len(RECORDS)
    assert report.heads_checked == len(tables.heads[0])


async def test_a_log_applied_with_the_tree_off_verifies_by_the_decisions_bodies() -> None:
    event_log, tables = await _ledger(tree=False)
    assert all(d.leaf is None for d in tables.decisions[0])

    report = await replay.replay_partition(event_log, MemoryAuditReader(tables), 0, 1)

    assert report.divergence is None, report.divergence.describe()
    assert (report.records, report.heads_checked) == (len(RECORDS), 0)


@pytest.mark.parametrize("tree", [True, False])
@pytest.mark.parametrize("offset", [60, 1234, 2950])
async def test_a_divergence_mid_log_is_reported_while_the_next_chunks_are_read(
    offset: int, tree: bool
) -> None:
    event_log, tables = await _ledger(tree=tree)
    decisions = tables.decisions[0]
    at = next(i for i, d in enumerate(decisions) if d.offset == offset)
    decisions[at] = dataclasses.replace(decisions[at], body=decisions[at].body + b" ")

    report = await replay.replay_partition(event_log, MemoryAuditReader(tables), 0, 1)

    divergence = report.divergence
    assert divergence is not None
    assert (divergence.offset, divergence.what) == (offset, "decision"), divergence.describe()
    assert divergence.found.endswith(" ")


async def test_a_missing_record_mid_log_is_reported_as_a_gap() -> None:
    event_log, tables = await _ledger()
    records: list[ports.Record] = event_log._records[0]
    del records[1500]

    report = await replay.replay_partition(event_log, MemoryAuditReader(tables), 0, 1)

    divergence = report.divergence
    assert divergence is not None
    assert (divergence.offset, divergence.what) == (1500, "log record"), divergence.describe()


class _FailingReader(MemoryAuditReader):
    """The committed tables, with one read failing as a database that went away would."""

    def __init__(self, tables: memory.MemoryProjectionTables, failing: str) -> None:
        super().__init__(tables)
        self.failing = failing

    async def rows(self, partitions: Sequence[int] | None = None) -> ports.ProjectionRows:
        if self.failing == "rows":
            raise errors.ProjectionError("reading the projection's rows: gone")
        return await super().rows(partitions)

    async def decision_digest(self, partition: int, start: int, end: int) -> tuple[int, bytes]:
        if self.failing == "digest" and start > 1000:
            raise errors.ProjectionError("reading a digest of decisions: gone")
        return await super().decision_digest(partition, start, end)


class _FailingLog(memory.MemoryEventLog):
    async def read(
        self, partition: int, offset: int, limit: int, wait_s: float
    ) -> Sequence[ports.Record]:
        if offset > 1000:
            raise errors.MemoryLogError("reading the log: gone")
        return await super().read(partition, offset, limit, wait_s)


@pytest.mark.parametrize("failing", ["rows", "digest", "log"])
async def test_a_read_that_fails_raises_its_own_error_not_a_group(failing: str) -> None:
    # The callers (``ipledger replay``: exit 2) catch LogError and ProjectionError; the replay's
    # task groups must not hand them over wrapped in an ExceptionGroup.
    event_log, tables = await _ledger()
    if failing == "log":
        failing_log = _FailingLog(1)
        failing_log._records = event_log._records
        event_log = failing_log

    expected = errors.LogError if failing == "log" else errors.ProjectionError
    with pytest.raises(expected, match="gone"):
        await replay.replay_partition(event_log, _FailingReader(tables, failing), 0, 1)
