"""The replay's own apply loop (``service.audit.replay_apply``) against ``apply_records``.

The replay applies the log without building what only the allocator's commit needs; what it
does build must be exactly what ``batch.apply_records`` builds, record for record: the
decisions' bodies and leaves, the tree, the change journals, the node and pool history, the
stored subtrees, and the rejected records with their reasons (undecodable, a key that is not
the event's cluster, a cluster whose home is another partition); and the pod address rows it
keeps over the whole log must be those the memory projection writes batch by batch from
``apply_records``' batches. Checked over a mixed stream cut into batches of several sizes.
"""

from __future__ import annotations

import datetime
import json
import types

import pytest

from service import ports
from service.adapters.memory_audit import MemoryAuditReader
from service.adapters.memory_projection import MemoryProjection
from service.allocator import batch as batches
from service.allocator.settings import TreeSettings
from service.audit import replay_apply
from service.domain import document, merkle, partitioning, state
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
PARTITION, PARTITIONS = 0, 2
_NO_HEADS = TreeSettings(head_every=1 << 62, digest_every=1 << 62)
_NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


class _FixedNow(datetime.datetime):
    """The wall clock both loops fall back to for a record with neither time, held still."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _FixedNow:
        return cls.fromtimestamp(_NOW.timestamp(), tz)


@pytest.fixture(autouse=True)
def _still_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = types.SimpleNamespace(datetime=_FixedNow, UTC=datetime.UTC)
    monkeypatch.setattr(batches, "datetime", clock)
    monkeypatch.setattr(replay_apply, "datetime", clock)


def _records() -> list[ports.Record]:
    """A mixed stream over three clusters (not all at home on partition 0), with event times
    on some records, records keyed by another cluster or by none, and some without a log
    time, as ``Record``s of partition 0."""
    clusters = ("default", "blue", "green")
    homes = {c: partitioning.home_partition(c, PARTITIONS) for c in clusters}
    assert PARTITION in homes.values() and set(homes.values()) != {PARTITION}
    out = []
    for offset, raw in enumerate(mixed_stream(3000, seed=3, clusters=clusters)):
        key: bytes | None = key_of(raw)
        if offset % 97 == 5:
            key = b"not-the-cluster"
        elif offset % 131 == 7:
            key = None
        value = raw
        if offset % 11 == 3 and raw.startswith(b"{") and raw.endswith(b"}"):
            body = json.loads(raw)
            body["time"] = f"2026-11-26T08:{offset // 60 % 60:02d}:{offset % 60:02d}Z"
            value = json.dumps(body).encode()
        moment = None if offset % 53 == 9 else 1_780_000_000_000 + (offset // 10) * 7
        out.append(ports.Record(PARTITION, offset, key, value, moment))
    return out


@pytest.mark.parametrize("size", [1, 7, 250, 3000])
async def test_the_replay_loop_builds_what_apply_records_builds(size: int) -> None:
    records = _records()
    theirs, mine = state.State(track_changes=True), state.State(track_changes=True)
    their_tree, my_tree = merkle.Tree(), merkle.Tree()
    projection = MemoryProjection(holder="test", lease_ttl_s=1e9)
    token = await projection.try_acquire(PARTITION)
    assert token is not None
    addresses = replay_apply.Addresses()
    kinds = set()
    for start in range(0, len(records), size):
        span = records[start : start + size]
        expected = batches.apply_records(
            theirs,
            span,
            PARTITION,
            token,
            partitions=PARTITIONS,
            tree=their_tree,
            evidence=_NO_HEADS,
        )
        await projection.commit(expected)
        decided = replay_apply.Decided()
        found = await replay_apply.apply_batch(
            mine,
            span,
            PARTITION,
            token,
            partitions=PARTITIONS,
            tree=my_tree,
            decided=decided,
            addresses=addresses,
        )

        assert decided.records == [a.record for a in expected.applied]
        assert decided.bodies == [a.body for a in expected.applied]
        assert decided.leaves == [a.leaf for a in expected.applied]
        assert decided.digest() == ports.decision_digest(
            (a.record.offset, a.body, a.leaf) for a in expected.applied
        )
        assert found.applied == [a for a in expected.applied if a.rejected]
        assert found.next_offset == expected.next_offset
        assert found.changes == expected.changes
        assert found.node_history == expected.node_history
        assert found.pool_history == expected.pool_history
        assert found.subtrees == expected.subtrees
        assert (my_tree.size, my_tree.frontier) == (their_tree.size, their_tree.frontier)
        for a in found.applied:
            kinds.add("wrong partition" if a.wrong_partition else (a.decision.error or "")[:12])
    assert document.digest(mine) == document.digest(theirs)
    committed = await MemoryAuditReader(projection.tables).rows([PARTITION])
    pod_ips, history = addresses.rows()
    assert committed.pod_ips and committed.history
    assert any(":" in address for _, address in committed.pod_ips)  # IPv6 texts too
    assert pod_ips == committed.pod_ips
    assert history == committed.history
    # Every kind of rejection was met (and so compared) at least once.
    assert {"wrong partition", "record key '", "invalid even"} <= kinds


async def test_decided_extend_takes_apply_records_decisions_and_the_same_digest() -> None:
    records = _records()[:500]
    applied = batches.apply_records(
        state.State(track_changes=True),
        records,
        PARTITION,
        1,
        partitions=PARTITIONS,
        tree=None,
        evidence=_NO_HEADS,
    ).applied
    decided = replay_apply.Decided()
    decided.extend(applied)

    assert decided.leaves == [None] * len(records)
    assert decided.digest() == ports.decision_digest(
        (a.record.offset, a.body, a.leaf) for a in applied
    )
