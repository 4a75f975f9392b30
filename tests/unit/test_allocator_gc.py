"""The cyclic GC while leading: its full collections spaced out (``loop.GC_FULL_AFTER``).

A writer that loaded its state sets the oldest generation's threshold to ``GC_FULL_AFTER``,
leaving the two young ones as they were; cyclic garbage made meanwhile is still collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import anyio
import pytest

from service import allocator
from service.adapters import memory
from service.allocator import loop
from tests import waiting
from tests.streams import key_of, mixed_stream


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.anyio
async def test_a_writer_spaces_full_collections_out_and_cycles_are_still_freed(
    thresholds: tuple[int, int, int],
) -> None:
    values = mixed_stream(200, seed=3)
    log = memory.MemoryEventLog(clock_ms=lambda: 1_795_000_000_000)
    await log.append([(key_of(v), v) for v in values])
    settings = allocator.LoopSettings(batch_max_wait_s=0.01, lease_poll_s=0.01)
    worker = allocator.PartitionAllocator(
        log, memory.MemoryProjection(holder="w"), 0, settings=settings
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        await waiting.until(
            lambda: worker.metrics.next_offset.get(0, -1) >= len(values),
            timeout=30.0,
            what="every record committed",
        )
        stop.set()
    assert gc.get_threshold() == (thresholds[0], thresholds[1], loop.GC_FULL_AFTER)
    cycles = [_Cycle() for _ in range(100)]
    del cycles
    assert gc.collect() >= 100
