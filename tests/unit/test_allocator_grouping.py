"""Group commit: what arrives while a commit runs is applied into the next batch.

``allocator.batch.extend`` appends a batch applied right after another to it, and the loop
(``PartitionAllocator._group``) uses it while a commit is in flight. Where batches end must not
change anything the projection stores: the same records applied in one batch, or in two of
which the second extends the first, give the same decisions, rows and journal (the tree heads
aside: each batch records one at its end). And the loop, against a projection whose commits are
slow, groups batches beyond ``batch_max_records`` (up to ``batch_group_max_records``), in
order, each record decided once and the state simulate's.
"""

from __future__ import annotations

import anyio
import pytest

from service import allocator, ports
from service.adapters import memory
from service.allocator import batch as batches
from service.domain import allocation, document, events, state
from tests import waiting
from tests.streams import key_of, mixed_stream

CLUSTERS = ("default", "east")


def _records(values: list[bytes]) -> list[ports.Record]:
    return [ports.Record(0, i, key_of(v), v, 1_795_000_000_000 + i) for i, v in enumerate(values)]


def _stored(batch: ports.Batch) -> dict[str, object]:
    """What the projection writes of a batch, tree heads aside."""
    return {
        "next_offset": batch.next_offset,
        "applied": [(a.record.offset, a.body, a.event_time, a.log_time) for a in batch.applied],
        "changes": {
            name: (sorted(c.nodes), c.pool, list(c.ips)) for name, c in batch.changes.items()
        },
        "ip_times": batch.ip_times,
        "cluster_rows": batch.cluster_rows,
        "node_rows": {name: list(rows.items()) for name, rows in batch.node_rows.items()},
        "node_history": batch.node_history,
        "pool_history": batch.pool_history,
    }


@pytest.mark.parametrize("split", [1, 37, 150, 299])
def test_a_batch_extended_by_the_next_stores_what_one_batch_would(split: int) -> None:
    records = _records(mixed_stream(300, seed=5, clusters=CLUSTERS))
    whole = batches.apply_records(
        state.State(track_changes=True), records, 0, 1, partitions=1, tree=None
    )
    parted_state = state.State(track_changes=True)
    parted = batches.apply_records(parted_state, records[:split], 0, 1, partitions=1, tree=None)
    batches.extend(
        parted,
        batches.apply_records(parted_state, records[split:], 0, 1, partitions=1, tree=None),
    )
    assert _stored(parted) == _stored(whole)
    assert document.digest(parted_state) == document.digest(whole.state)


@pytest.mark.parametrize("split", [1, 120])
def test_parts_applied_without_rows_then_rows_taken_once_store_what_one_batch_would(
    split: int,
) -> None:
    records = _records(mixed_stream(300, seed=9, clusters=CLUSTERS))
    whole = batches.apply_records(
        state.State(track_changes=True), records, 0, 1, partitions=1, tree=None
    )
    parted_state = state.State(track_changes=True)
    parted = batches.apply_records(parted_state, records[:split], 0, 1, partitions=1, tree=None)
    for start in range(split, len(records), 50):
        more = batches.apply_records(
            parted_state, records[start : start + 50], 0, 1, partitions=1, tree=None, rows=False
        )
        batches.extend(parted, more)
    batches.take_rows(parted, parted_state)
    assert _stored(parted) == _stored(whole)


def test_only_the_batch_applied_right_after_can_extend_one() -> None:
    records = _records(mixed_stream(20, seed=6))
    current = state.State(track_changes=True)
    first = batches.apply_records(current, records[:10], 0, 1, partitions=1, tree=None)
    batches.apply_records(current, records[10:15], 0, 1, partitions=1, tree=None)
    later = batches.apply_records(current, records[15:], 0, 1, partitions=1, tree=None)
    with pytest.raises(ValueError, match="right after"):
        batches.extend(first, later)


class SlowProjection(memory.MemoryProjection):
    """A memory projection whose commits take a while, as PostgreSQL's do under load."""

    async def commit(self, batch: ports.Batch) -> None:
        await anyio.sleep(0.05)
        await super().commit(batch)


@pytest.mark.anyio
async def test_the_loop_groups_what_arrives_during_a_slow_commit() -> None:
    values = mixed_stream(3000, seed=8, clusters=CLUSTERS)
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
    sizes = [len(b.applied) for b in committed]
    # The first batch has no commit before it to wait for; the later ones grouped.
    assert max(sizes) > settings.batch_max_records
    assert max(sizes) <= settings.batch_group_max_records
    offset = 0
    for batch in committed:
        assert [a.record.offset for a in batch.applied] == list(range(offset, batch.next_offset))
        offset = batch.next_offset
    assert offset == len(values)
    reader = memory.MemoryProjectionReader(projection.tables)
    oracle = state.State()
    expected = [events.encode_decision(allocation.apply_record(oracle, v)[0]) for v in values]
    assert [d.body for d in await reader.decisions(0, limit=len(values) + 1)] == expected
    assert document.digest(await reader.state()) == document.digest(oracle)
