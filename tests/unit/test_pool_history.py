"""The pool history (``cluster_history``) records configurations, not cursor movements.

A node taking a CIDR moves the pool's next-fit cursor and marks the pool changed (the cluster
row stores the cursors), but a reader of the pool as of an offset sees only its elements and
masks: a snapshot per node event repeated the whole configuration (2,048 CIDR texts per event
in a 1,024-element pool, bench/scale.py's outlier).
"""

from __future__ import annotations

from service import ports
from service.allocator import batch as batches
from service.domain import state


def _pool(cidrs: list[str]) -> bytes:
    texts = ",".join(f'"{c}"' for c in cidrs)
    return (
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":[%s],'
        b'"clusterPoolIPv4MaskSize":24}' % texts.encode()
    )


def _records(values: list[bytes]) -> list[ports.Record]:
    return [ports.Record(0, i, b"default", v, 1_795_000_000_000 + i) for i, v in enumerate(values)]


def test_a_snapshot_per_configuration_not_per_node_that_takes_a_cidr() -> None:
    nodes = [b'{"type":"node.added","id":"n%d","node":"n%d"}' % (i, i) for i in range(5)]
    values = [
        _pool(["10.0.0.0/16"]),
        *nodes[:3],
        _pool(["10.0.0.0/16", "10.1.0.0/16"]),  # an element more: a new configuration
        *nodes[3:],
        _pool(["10.0.0.0/16", "10.1.0.0/16"]),  # the same again: nothing new to see
    ]
    batch = batches.apply_records(
        state.State(track_changes=True), _records(values), 0, 1, partitions=1, tree=None
    )
    assert [(s.offset, s.ipv4_cidrs) for s in batch.pool_history] == [
        (0, ("10.0.0.0/16",)),
        (4, ("10.0.0.0/16", "10.1.0.0/16")),
    ]
    # The cluster row still carries the cursors the nodes moved.
    assert batch.cluster_rows["default"]["cursors"]["ipv4"][0] == 4  # n0..n4 took 0..4
