"""The consumer group position (lag monitoring) is reported off the commit's path.

With Kafka, ``ipledger run`` publishes the committed offset as the consumer group's after every
commit. That is a broker round trip, and it used to be awaited before the next commit could
start. Checked against the in-memory adapters, with a log whose position reports wait until the
test lets them go: every batch commits while the first report is still out; then the reports
go one at a time, in increasing order, and end at the last committed offset. And at most one
report goes out per ``position_every_s``, however many commits land.
"""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from service import allocator, ports
from service.adapters import memory
from tests import fakes, waiting
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio

RECORDS = 200
SETTINGS = allocator.LoopSettings(
    batch_max_records=50,
    batch_max_wait_s=0.01,
    lease_poll_s=0.01,
    renew_every_s=600.0,
    backoff_initial_s=0.001,
    backoff_max_s=0.01,
    position_every_s=0.0,
)


class ReportingLog(memory.MemoryEventLog):
    """A memory log with a consumer group position whose reports wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__(clock_ms=lambda: 1_795_000_000_000)
        self.gate = anyio.Event()
        self.reported: list[int] = []
        self.out = 0
        self.most_out = 0

    async def commit_consumer_offset(self, partition: int, offset: int) -> None:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await self.gate.wait()
            self.reported.append(offset)
        finally:
            self.out -= 1


async def test_commits_do_not_wait_for_position_reports_which_go_in_order() -> None:
    event_log = ReportingLog()
    assert isinstance(event_log, ports.ReportsConsumerPosition)
    tables = memory.MemoryProjectionTables(clock=fakes.ManualClock())
    projection = memory.MemoryProjection(tables, holder="writer", lease_ttl_s=6.0)
    batches: list[ports.Batch] = []
    worker = allocator.PartitionAllocator(
        event_log, projection, 0, settings=SETTINGS, on_commit=batches.append
    )
    values = mixed_stream(RECORDS)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await event_log.append([(key_of(v), v) for v in values[:50]])
        await waiting.until(lambda: event_log.out == 1, timeout=20, what="the first report out")
        await event_log.append([(key_of(v), v) for v in values[50:]])
        await waiting.until(
            lambda: worker.metrics.next_offset.get(0, -1) >= RECORDS,
            timeout=20,
            what="every record committed while the first report waits",
        )
        assert event_log.reported == [] and len(batches) >= 2
        event_log.gate.set()
        await waiting.until(
            lambda: event_log.reported[-1:] == [RECORDS], timeout=20, what="the last reported"
        )
        stop.set()
    assert event_log.most_out == 1
    assert event_log.reported == sorted(set(event_log.reported))
    # The first report, and then the latest offset: not one per commit that landed meanwhile.
    assert event_log.reported == [batches[0].next_offset, RECORDS]


async def test_at_most_one_report_per_interval_however_many_commits() -> None:
    event_log = ReportingLog()
    event_log.gate.set()
    tables = memory.MemoryProjectionTables(clock=fakes.ManualClock())
    projection = memory.MemoryProjection(tables, holder="writer", lease_ttl_s=6.0)
    batches: list[ports.Batch] = []
    settings = dataclasses.replace(SETTINGS, position_every_s=3600.0)
    worker = allocator.PartitionAllocator(
        event_log, projection, 0, settings=settings, on_commit=batches.append
    )
    values = mixed_stream(RECORDS)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await event_log.append([(key_of(v), v) for v in values[:50]])
        await waiting.until(lambda: event_log.reported != [], timeout=20, what="the first report")
        await event_log.append([(key_of(v), v) for v in values[50:]])
        await waiting.until(
            lambda: worker.metrics.next_offset.get(0, -1) >= RECORDS,
            timeout=20,
            what="every record committed",
        )
        stop.set()
    assert len(batches) >= 2
    # The first commit was reported at once; the later ones wait for the interval to pass.
    assert event_log.reported == [batches[0].next_offset]
