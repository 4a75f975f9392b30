"""Applying in slices: a commit in flight goes on between them, and nothing stored changes.

``PartitionAllocator._apply`` applies a read in slices of ``loop.APPLY_SLICE_RECORDS`` with a
turn of the event loop after each (so that the commit in flight, a chain of round trips, is not
held up for a whole read). The batch must be the one applying the read at once gives: the same
decisions, changes, rows and journal, the same tree heads (sizes, roots, digests, chaining) and
subtrees; and the loop with tiny slices ends with every decision and the state of ``simulate``.
"""

from __future__ import annotations

import anyio
import pytest

from service import allocator, ports
from service.adapters import memory
from service.allocator import batch as batches
from service.allocator import loop
from service.domain import allocation, document, events, merkle, state
from tests import waiting
from tests.streams import key_of, mixed_stream
from tests.unit.test_allocator_grouping import SlowProjection, _records, _stored

CLUSTERS = ("default", "east")
# Heads every 40 records and a digest every 80: some fall inside slices, some on their ends.
EVIDENCE = allocator.TreeSettings(head_every=40, digest_every=80)


def _heads(batch: ports.Batch) -> list[tuple[object, ...]]:
    """The heads as stored, less the writer's clock (each apply reads it)."""
    return [
        (h.head.size, h.head.root, h.head.state_digest, h.frontier, h.head.previous is None)
        for h in batch.heads
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(("size", "rows"), [(7, True), (7, False), (40, True), (1000, True)])
async def test_a_read_applied_in_slices_stores_what_applying_it_at_once_would(
    monkeypatch: pytest.MonkeyPatch, size: int, rows: bool
) -> None:
    records = _records(mixed_stream(300, seed=11, clusters=CLUSTERS))
    whole_tree = merkle.Tree()
    whole = batches.apply_records(
        state.State(track_changes=True),
        records,
        0,
        1,
        partitions=1,
        tree=whole_tree,
        evidence=EVIDENCE,
        rows=rows,
    )
    monkeypatch.setattr(loop, "APPLY_SLICE_RECORDS", size)
    settings = allocator.LoopSettings(tree=EVIDENCE)
    worker = allocator.PartitionAllocator(
        memory.MemoryEventLog(), memory.MemoryProjection(holder="w"), 0, settings=settings
    )
    worker._partitions = 1
    worker._tree = merkle.Tree()
    sliced_state = state.State(track_changes=True)
    sliced = await worker._apply(sliced_state, 1, records, {}, rows=rows)
    assert _stored(sliced) == _stored(whole)
    assert _heads(sliced) == _heads(whole)
    assert [h.head.size for h in sliced.heads] == [40 * k for k in range(1, 8)] + [300]
    assert sliced.subtrees == whole.subtrees
    assert worker._tree.root() == whole_tree.root()
    assert document.digest(sliced_state) == document.digest(whole.state)


@pytest.mark.anyio
async def test_the_loop_applying_in_tiny_slices_decides_as_simulate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop, "APPLY_SLICE_RECORDS", 3)
    values = mixed_stream(2000, seed=12, clusters=CLUSTERS)
    log = memory.MemoryEventLog(clock_ms=lambda: 1_795_000_000_000)
    await log.append([(key_of(v), v) for v in values])
    projection = SlowProjection(memory.MemoryProjectionTables(), holder="writer")
    committed: list[ports.Batch] = []
    settings = allocator.LoopSettings(
        batch_max_records=50,
        batch_group_max_records=400,
        batch_max_wait_s=0.01,
        lease_poll_s=0.01,
        renew_every_s=600.0,
        tree=EVIDENCE,
    )
    worker = allocator.PartitionAllocator(
        log, projection, 0, settings=settings, on_commit=committed.append
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
    # Grouped beyond a read, so slices were applied while commits ran.
    assert max(len(b.applied) for b in committed) > settings.batch_max_records
    offset = 0
    for batch in committed:
        assert [a.record.offset for a in batch.applied] == list(range(offset, batch.next_offset))
        # Every committed batch ends with a head; the others every 40 records or at the end of
        # a read grouped into it (a read of at most 50), never at a slice's end only.
        sizes = [h.head.size for h in batch.heads]
        assert sizes[-1] == batch.next_offset
        assert sizes == sorted(set(sizes))
        assert all(b - a <= 50 for a, b in zip([offset, *sizes], sizes, strict=False))
        offset = batch.next_offset
    reader = memory.MemoryProjectionReader(projection.tables)
    oracle = state.State()
    expected = [events.encode_decision(allocation.apply_record(oracle, v)[0]) for v in values]
    assert [d.body for d in await reader.decisions(0, limit=len(values) + 1)] == expected
    assert document.digest(await reader.state()) == document.digest(oracle)
