"""A restart never changes a decision: random streams rebuilt through the real projection.

The promise is that the log decides: an allocator that stops and loads its state back from
PostgreSQL must decide every following record exactly as one that ran straight through. Here a
stream is applied as the allocator applies it (``allocator.apply_records`` per batch, committed
with the real ``PostgresProjection.commit``), and at a few random points the state is thrown
away and rebuilt with ``PostgresProjection.load`` from the rows, in the order ``load`` reads
them; the rest of the stream continues on the loaded state. Every decision (as encoded bytes),
the digest and the state document must equal those of an uninterrupted in-memory run, which is
what ``ipledger simulate`` does.

The streams are the allocator state machine's (tests/random_streams.py). Each example starts
from emptied tables of one migrated database: TRUNCATE costs milliseconds, a database per
example would cost a clone and a drop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import allocator, ports
from service.adapters.postgres import projection as pg_projection
from service.domain import allocation, document, events, state
from tests.random_streams import streams
from tests.streams import key_of

pytestmark = pytest.mark.postgres

PARTITION = 0
# Any fixed time: decisions do not depend on it, the projection stores it beside them.
LOG_TIME_MS = 1_790_000_000_000
STEPS = 60


@dataclass(slots=True)
class Run:
    """What a run decided, and the states it went through at the rebuild points."""

    decisions: list[bytes] = field(default_factory=list)
    final: state.State = field(default_factory=state.State)
    # (records applied, digest, state document) of the state right after each rebuild.
    rebuilt: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


def uninterrupted(records: Sequence[bytes], checkpoints: Iterable[int] = ()) -> Run:
    """The oracle: the pure core over every record in one go, as ``ipledger simulate`` runs it.

    Also records digest and document after ``checkpoints`` records, to compare rebuilt states.
    """
    wanted = set(checkpoints)
    run = Run()
    for done, record in enumerate(records):
        if done in wanted:
            run.rebuilt.append(_snapshot(done, run.final))
        run.decisions.append(events.encode_decision(allocation.apply_record(run.final, record)[0]))
    if len(records) in wanted:
        run.rebuilt.append(_snapshot(len(records), run.final))
    return run


async def rebuilt_through_projection(
    dsn: str, records: Sequence[bytes], rebuild_at: Iterable[int], batch_sizes: Sequence[int]
) -> Run:
    """Apply ``records`` as the allocator does, rebuilding from PostgreSQL before ``rebuild_at``.

    Batches take their sizes from ``batch_sizes`` in turn and never cross a rebuild point; each
    is committed with its offset before the next is applied, as the allocator's loop does.
    """
    points = sorted(set(rebuild_at))
    projection = pg_projection.PostgresProjection.from_dsn(
        dsn, log_name="table", holder="restart-property", lease_ttl_s=600
    )
    run = Run()
    try:
        token = await projection.try_acquire(PARTITION)
        assert token is not None
        loaded = await projection.load([PARTITION])
        current, done = loaded.state, loaded.next_offset
        assert done == 0
        sizes = iter(batch_sizes)
        for end in [*points, len(records)]:
            while done < end:
                size = min(next(sizes, 1), end - done)
                batch = allocator.apply_records(
                    current,
                    [_record(records, offset) for offset in range(done, done + size)],
                    PARTITION,
                    token,
                    partitions=1,
                )
                await projection.commit(batch)
                run.decisions.extend(applied.body for applied in batch.applied)
                done += size
            if end in points:
                # The restart: nothing of the old state survives but its rows.
                loaded = await projection.load([PARTITION])
                assert loaded.next_offset == done
                current = loaded.state
                run.rebuilt.append(_snapshot(done, current))
        run.final = current
        # What a later `ipledger state` reads: the projection of the whole run.
        at_the_end = await projection.load([PARTITION])
        assert document.state_document(at_the_end.state) == document.state_document(current)
        assert document.digest(at_the_end.state) == document.digest(current)
    finally:
        await projection.close()
    return run


def assert_same_run(records: Sequence[bytes], rebuild_at: Iterable[int], rebuilt: Run) -> None:
    """The run through the projection decided and ended exactly as the uninterrupted one."""
    points = sorted(set(rebuild_at))
    straight = uninterrupted(records, points)
    for offset, (ours, theirs) in enumerate(
        zip(rebuilt.decisions, straight.decisions, strict=True)
    ):
        restarts = [p for p in points if p <= offset]
        assert ours == theirs, (
            f"decision {offset} differs after restarts at {restarts}\n"
            f"record:        {records[offset]!r}\n"
            f"rebuilt run:   {ours.decode()}\n"
            f"uninterrupted: {theirs.decode()}"
        )
    assert rebuilt.rebuilt == straight.rebuilt
    assert document.digest(rebuilt.final) == document.digest(straight.final)
    assert document.state_document(rebuilt.final) == document.state_document(straight.final)


def _record(records: Sequence[bytes], offset: int) -> ports.Record:
    value = records[offset]
    return ports.Record(
        partition=PARTITION,
        offset=offset,
        key=key_of(value),
        value=value,
        timestamp_ms=LOG_TIME_MS + offset,
    )


def _snapshot(done: int, current: state.State) -> tuple[int, str, dict[str, Any]]:
    return done, document.digest(current), document.state_document(current)


async def _tables(dsn: str) -> list[str]:
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version' ORDER BY 1"
        )
    finally:
        await db.close()
    return [row["tablename"] for row in rows]


async def _empty(dsn: str, tables: Sequence[str]) -> None:
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(
            "TRUNCATE " + ", ".join(f'"{name}"' for name in tables) + " RESTART IDENTITY"
        )
    finally:
        await db.close()


@st.composite
def restarted_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[int]]:
    """A stream, where to restart in it (two to five times), and the batch sizes to apply it in."""
    # As long as the state machine's runs: short streams seldom reach what a restart can break.
    records = draw(streams(min_steps=STEPS // 2, max_steps=STEPS))
    points = draw(st.lists(st.integers(1, len(records) - 1), min_size=2, max_size=5, unique=True))
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=len(records)))
    return records, sorted(points), sizes


@settings(
    max_examples=50,
    deadline=None,
    # One database for the whole test, emptied by each example itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=restarted_streams())
def test_decisions_after_a_rebuild_from_the_projection_equal_an_uninterrupted_run(
    pg_dsn: str, case: tuple[list[bytes], list[int], list[int]]
) -> None:
    records, points, sizes = case
    tables = anyio.run(_tables, pg_dsn)
    anyio.run(_empty, pg_dsn, tables)
    rebuilt = anyio.run(rebuilt_through_projection, pg_dsn, records, points, sizes)
    assert_same_run(records, points, rebuilt)


def _event(**body: Any) -> bytes:
    return json.dumps(body).encode()


# Issue 7: IPv4 first, two nodes that arrive out of name order, a restart, then IPv6.
ISSUE_7_RECORDS = [
    _event(
        type="pool.configured",
        id="pool-v4",
        cluster="c2",
        clusterPoolIPv4PodCIDRList=["10.20.0.0/16"],
        clusterPoolIPv4MaskSize=24,
    ),
    _event(type="node.added", id="add-b", cluster="c2", node="worker-b"),
    _event(type="node.added", id="add-a", cluster="c2", node="worker-a"),
    _event(
        type="pool.configured",
        id="pool-v6",
        cluster="c2",
        clusterPoolIPv4PodCIDRList=["10.20.0.0/16"],
        clusterPoolIPv4MaskSize=24,
        clusterPoolIPv6PodCIDRList=["fd20::/104"],
        clusterPoolIPv6MaskSize=120,
    ),
]


@pytest.mark.parametrize("batch", [1, 3], ids=["a-batch-per-event", "one-batch-before-the-restart"])
def test_issue_7_ipv6_enabled_after_a_restart_follows_arrival_order(
    pg_dsn: str, batch: int
) -> None:
    records = ISSUE_7_RECORDS
    straight = uninterrupted(records)
    nodes = document.state_document(straight.final)["clusters"]["c2"]["nodes"]
    # worker-b arrived first, so it is served first in each family, IPv6 included.
    assert nodes["worker-b"]["podCIDRs"] == ["10.20.0.0/24", "fd20::/120"]
    assert nodes["worker-a"]["podCIDRs"] == ["10.20.1.0/24", "fd20::100/120"]

    rebuilt = anyio.run(rebuilt_through_projection, pg_dsn, records, [3], [batch])
    assert document.state_document(rebuilt.final)["clusters"]["c2"]["nodes"] == nodes
    assert_same_run(records, [3], rebuilt)
