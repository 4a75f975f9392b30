"""restore.restore_pod_ips: a node's addresses in bulk rebuild what one at a time does, and
rows that no allocator could have written are refused."""

from __future__ import annotations

import pytest

from service.domain import allocation, document, restore, state
from service.domain.pool import IPV4

POOL = (
    b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/16"],'
    b'"clusterPoolIPv4MaskSize":24}'
)


def _rebuilt_node() -> tuple[state.State, state.ClusterState]:
    """A state with node ``a`` (10.0.0.0/24) rebuilt from rows and no pod address yet."""
    rebuilt = state.State()
    cluster = restore.restore_cluster(
        rebuilt,
        "default",
        ipv4_cidrs=["10.0.0.0/16"],
        ipv4_mask=24,
        ipv6_cidrs=[],
        ipv6_mask=None,
        cursors={"ipv4": [0], "ipv6": []},
        next_seq=1,
    )
    restore.restore_node(
        cluster,
        "a",
        seq=0,
        pod_cidrs=["10.0.0.0/24"],
        error=None,
        conflict=None,
        addresses=[],
        pinned=False,
        cursors=[4],  # the last address handed out: 10.0.0.4
    )
    return rebuilt, cluster


def test_bulk_rebuilds_the_state_one_at_a_time_does() -> None:
    live = state.State()
    allocation.apply_record(live, POOL)
    allocation.apply_record(live, b'{"type":"node.added","id":"n","node":"a"}')
    for pod in range(4):
        allocation.apply_record(
            live, b'{"type":"ip.requested","id":"i","node":"a","owner":"ns/p%d"}' % pod
        )
    allocation.apply_record(live, b'{"type":"ip.released","id":"r","node":"a","owner":"ns/p1"}')
    rebuilt, cluster = _rebuilt_node()
    base = 0x0A000000
    # Any order: 10.0.0.4, .1 and .3 (held by p3, p0 and p2).
    restore.restore_pod_ips(
        cluster, "a", IPV4, [base + 4, base + 1, base + 3], ["ns/p3", "ns/p0", "ns/p2"]
    )
    restore.finish(cluster)
    assert document.digest(rebuilt) == document.digest(live)


@pytest.mark.parametrize(
    ("values", "owners"),
    [
        ([1, 2], ["ns/p0", "ns/p0"]),  # one owner, two addresses of one family
        ([0], ["ns/p0"]),  # the network address
        ([255], ["ns/p0"]),  # the broadcast address
        ([256 + 1], ["ns/p0"]),  # outside the node's CIDR
        ([1, 2], ["ns/p0"]),  # fewer owners than addresses
    ],
)
def test_rows_no_allocator_writes_are_refused(values: list[int], owners: list[str]) -> None:
    _, cluster = _rebuilt_node()
    with pytest.raises(restore.RestoreError):
        restore.restore_pod_ips(cluster, "a", IPV4, [0x0A000000 + v for v in values], owners)


def test_a_second_piece_that_holds_an_address_again_is_refused() -> None:
    _, cluster = _rebuilt_node()
    restore.restore_pod_ips(cluster, "a", IPV4, [0x0A000001], ["ns/p0"])
    with pytest.raises(restore.RestoreError):
        restore.restore_pod_ips(cluster, "a", IPV4, [0x0A000002], ["ns/p0"])
    with pytest.raises(restore.RestoreError):
        restore.restore_pod_ips(cluster, "a", IPV4, [0x0A000001], ["ns/p9"])


def test_addresses_of_an_unknown_node_are_refused() -> None:
    _, cluster = _rebuilt_node()
    with pytest.raises(restore.RestoreError):
        restore.restore_pod_ips(cluster, "b", IPV4, [0x0A000001], ["ns/p0"])
