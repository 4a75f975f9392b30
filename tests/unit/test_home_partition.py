"""``apply_records`` and the home partition: a cluster is only ever applied on its own partition.

Uses the in-memory log, which places keys as Kafka's default partitioner does; a record on the
wrong partition (what a producer with another partitioner writes) is built by hand.
"""

from __future__ import annotations

import json

import pytest

from service import allocator, errors, ports
from service.adapters import memory
from service.domain import partitioning, state

pytestmark = pytest.mark.anyio
CLUSTERS = ("default", "east", "west", "alpha", "beta", "north", "lab", "edge")


def pool(cluster: str) -> bytes:
    return json.dumps(
        {
            "type": "pool.configured",
            "id": f"{cluster}-pool",
            "cluster": cluster,
            "clusterPoolIPv4PodCIDRList": ["10.0.0.0/16"],
            "clusterPoolIPv4MaskSize": 24,
        }
    ).encode()


def node(cluster: str, name: str) -> bytes:
    return json.dumps(
        {"type": "node.added", "id": f"{cluster}-{name}", "cluster": cluster, "node": name}
    ).encode()


async def test_each_partition_applies_exactly_the_clusters_whose_home_it_is() -> None:
    log = memory.MemoryEventLog(4)
    await log.append(
        [(c.encode(), pool(c)) for c in CLUSTERS] + [(c.encode(), node(c, "n1")) for c in CLUSTERS]
    )
    for partition in range(4):
        records = await log.read(partition, 0, 100, max_wait_s=0)
        current = state.State(track_changes=True)

        batch = allocator.apply_records(current, records, partition, 1, partitions=4)

        assert not any(applied.rejected for applied in batch.applied)
        mine = {c for c in CLUSTERS if partitioning.home_partition(c, 4) == partition}
        assert mine, f"no cluster lives on partition {partition}"
        assert set(current.clusters) == mine
        assert set(batch.cluster_rows) == mine


def test_a_record_off_its_home_partition_is_refused_and_applies_nothing() -> None:
    home = partitioning.home_partition("east", 4)
    wrong = (home + 1) % 4
    neighbour = next(c for c in CLUSTERS if partitioning.home_partition(c, 4) == wrong)
    records = [
        ports.Record(wrong, 0, neighbour.encode(), pool(neighbour), None),
        ports.Record(wrong, 1, b"east", pool("east"), None),
        ports.Record(wrong, 2, b"east", node("east", "n1"), None),
        ports.Record(wrong, 3, neighbour.encode(), node(neighbour, "n1"), None),
    ]
    current = state.State(track_changes=True)

    batch = allocator.apply_records(current, records, wrong, 1, partitions=4)

    reason = (
        f"cluster 'east' belongs to partition {home} of 4 (murmur2 of the key); this record "
        f"is on partition {wrong}: the producer must use Kafka's default (murmur2) partitioner"
    )
    assert [(a.rejected, a.wrong_partition, a.decision.error) for a in batch.applied] == [
        (False, False, None),
        (True, True, reason),
        (True, True, reason),
        (False, False, None),
    ]
    assert [a.decision.id for a in batch.applied[1:3]] == ["east-pool", "east-n1"]
    assert all(a.decision.cluster == "east" for a in batch.applied[1:3])
    # No second "east" in this partition's writer; its neighbour went on as usual.
    assert set(current.clusters) == {neighbour}
    assert set(batch.changes) == set(batch.cluster_rows) == {neighbour}
    assert "n1" in current.clusters[neighbour].nodes


def test_a_key_that_is_not_the_cluster_is_refused_as_such_not_as_a_wrong_partition() -> None:
    # Placement follows the key, so a key mismatch explains the partition too.
    record = ports.Record(0, 0, b"other", pool("east"), None)

    (applied,) = allocator.apply_records(
        state.State(track_changes=True), [record], 0, 1, partitions=4
    ).applied

    assert applied.rejected and not applied.wrong_partition
    assert applied.decision.error is not None
    assert "does not match the event's cluster" in applied.decision.error


def test_with_one_partition_every_cluster_is_at_home() -> None:
    records = [ports.Record(0, i, c.encode(), pool(c), None) for i, c in enumerate(CLUSTERS)]
    current = state.State(track_changes=True)

    batch = allocator.apply_records(current, records, 0, 1, partitions=1)

    assert not any(applied.rejected for applied in batch.applied)
    assert set(current.clusters) == set(CLUSTERS)


def test_a_loaded_state_with_a_cluster_off_its_home_is_refused() -> None:
    current = state.State(track_changes=True)
    record = ports.Record(0, 0, b"default", pool("default"), None)
    allocator.apply_records(current, [record], 0, 1, partitions=1)
    assert partitioning.home_partition("default", 2) == 1

    allocator.check_homes(current, 0, 1)
    with pytest.raises(errors.ConfigurationError, match="partition count changed"):
        allocator.check_homes(current, 0, 2)


async def test_the_partition_count_check_refuses_consumed_partitions_the_log_lacks() -> None:
    class Fresh:
        async def consumed_offsets(self) -> dict[int, int]:
            return {0: 5, 2: 7}

    log = memory.MemoryEventLog(3)
    assert await allocator.check_partition_count(log, Fresh()) == 3  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="at least 3"):
        await allocator.check_partition_count(memory.MemoryEventLog(2), Fresh())  # type: ignore[arg-type]
