"""The allocation state as rows, and back: what the PostgreSQL projection stores and loads.

``cluster_row``, ``node_row`` and ``pod_ips`` give the plain values the projection writes after a
batch. When an allocator starts, the projection reads clusters, nodes and pod addresses and hands
them to ``restore_cluster``, ``restore_node``, ``restore_pod_ips`` (or ``restore_pod_ip`` for one
address) and ``finish``, in that order.
The rebuilt state decides exactly as the one that was persisted: the next-fit cursors, the
nodes' arrival numbers and the pinned flags come back too (the waiting queue is derived from
them), so its digest equals the digest of the state that wrote the rows. Nothing here depends on
the order the rows come in. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from service.domain.addresses import format_address, parse_address, parse_network
from service.domain.pool import FAMILIES, IPV4, IPV6, commit_change, plan_change
from service.domain.state import (
    CACHED_INT_MAX,
    ClusterState,
    Node,
    PodRange,
    State,
    format_ip,
    shared_offset,
)


class RestoreError(ValueError):
    """The persisted rows do not describe a consistent state."""


def restore_cluster(
    state: State,
    name: str,
    *,
    ipv4_cidrs: Sequence[str],
    ipv4_mask: int | None,
    ipv6_cidrs: Sequence[str],
    ipv6_mask: int | None,
    cursors: dict[str, list[int]],
    next_seq: int,
) -> ClusterState:
    cluster = state.cluster(name)
    change = plan_change(
        cluster.pools,
        {IPV4: ipv4_cidrs, IPV6: ipv6_cidrs},
        {IPV4: ipv4_mask, IPV6: ipv6_mask},
    )
    commit_change(cluster.pools, change)
    for family, key in ((IPV4, "ipv4"), (IPV6, "ipv6")):
        elements = cluster.pools[family].elements
        values = cursors.get(key, [])
        if len(values) != len(elements):
            raise RestoreError(f"cluster {name}: {len(values)} {key} cursors for {len(elements)}")
        for element, cursor in zip(elements, values, strict=True):
            element.slots.cursor = cursor  # made consistent by finish()
    cluster.next_seq = next_seq
    return cluster


def restore_node(
    cluster: ClusterState,
    name: str,
    *,
    seq: int,
    pod_cidrs: Sequence[str],
    error: str | None,
    conflict: str | None,
    addresses: Sequence[str],
    pinned: bool,
    cursors: Sequence[int],
) -> Node:
    if not 0 <= seq < cluster.next_seq:
        raise RestoreError(f"node {name}: arrival {seq} outside 0..{cluster.next_seq - 1}")
    node = cluster.nodes[name] = Node(
        name=name,
        seq=seq,
        addresses=tuple(parse_address(a) for a in addresses),
        error=error,
        conflict=conflict,
        pinned=pinned,
    )
    if len(cursors) != len(pod_cidrs):
        raise RestoreError(f"node {name}: {len(cursors)} cursors for {len(pod_cidrs)} CIDRs")
    for text, cursor in zip(pod_cidrs, cursors, strict=True):
        network = parse_network(text)
        located = cluster.pools[network.version].locate(network)
        if located is None or not located[0].slots.occupy(located[1]):
            raise RestoreError(f"node {name}: {text} is outside the pool or held twice")
        element, slot = located
        pod_range = node.ranges[network.version] = PodRange(element.cidr_at(slot))
        pod_range.slots.cursor = cursor  # made consistent by finish()
    return node


def restore_pod_ip(
    cluster: ClusterState, node_name: str, family: int, value: int, owner: str
) -> None:
    """Re-occupy one held pod address (``value`` is the address as an integer)."""
    node = cluster.nodes.get(node_name)
    pod_range = node.ranges.get(family) if node is not None else None
    offset = pod_range.offset_of(value) if pod_range is not None else None
    if pod_range is None or offset is None or not pod_range.slots.occupy(offset):
        raise RestoreError(f"pod address {value} of {owner} does not fit node {node_name}")
    offset = shared_offset(offset)  # as the live allocator stores it: memory, not meaning
    pod_range.owner_of[offset] = owner
    pod_range.by_owner[owner] = offset


def restore_pod_ips(
    cluster: ClusterState,
    node_name: str,
    family: int,
    values: Sequence[int],
    owners: Sequence[str],
) -> None:
    """Re-occupy the held pod addresses of one node in one family at once, in any order.

    The same state as ``restore_pod_ip`` of each (``values[i]`` held by ``owners[i]``), built
    a node at a time: the address index, the owner index and the free runs are made in bulk,
    which is what makes a start with millions of addresses fast. An address outside the node's
    CIDR, held twice or an owner holding two addresses of one family on a node (the allocator
    never does: a second request by an owner gets the address it holds) is a ``RestoreError``.
    """
    node = cluster.nodes.get(node_name)
    pod_range = node.ranges.get(family) if node is not None else None
    if pod_range is None or len(values) != len(owners):
        raise RestoreError(f"{len(values)} pod addresses do not fit node {node_name}")
    base = pod_range.cidr.base
    offsets = [value - base for value in values]
    if offsets and max(offsets) > CACHED_INT_MAX:
        offsets = [shared_offset(offset) for offset in offsets]
    owner_of = dict(zip(offsets, owners, strict=True))
    by_owner = dict(zip(owners, offsets, strict=True))
    if (
        len(owner_of) != len(offsets)
        or len(by_owner) != len(owners)
        or not pod_range.slots.occupy_ascending(sorted(owner_of))
    ):
        raise RestoreError(f"pod addresses of node {node_name} held twice or outside its CIDR")
    if pod_range.owner_of:
        # Rows of one node and family come in one piece; a second piece is merged, checked.
        if pod_range.owner_of.keys() & owner_of.keys() or pod_range.by_owner.keys() & by_owner:
            raise RestoreError(f"pod addresses of node {node_name} held twice")
        pod_range.owner_of.update(owner_of)
        pod_range.by_owner.update(by_owner)
    else:
        pod_range.owner_of = owner_of
        pod_range.by_owner = by_owner


def finish(cluster: ClusterState) -> None:
    """Complete a rebuilt cluster once every node and pod address is occupied.

    Reserves the nodes' own addresses after the pods (a pod keeps an address it held first), and
    only then settles the cursors: doing it before occupying would make every occupation search
    the slots released behind the cursor. Derives the waiting queue and the address index.
    """
    for pool in cluster.pools.values():
        for element in pool.elements:
            element.slots.restore_cursor(element.slots.cursor)
    if len({node.seq for node in cluster.nodes.values()}) != len(cluster.nodes):
        raise RestoreError(f"cluster {cluster.name}: two nodes with one arrival number")
    # Rebuilt in arrival order, so that even the dict's order is the live allocator's.
    nodes = cluster.by_arrival()
    cluster.nodes = {node.name: node for node in nodes}
    for node in nodes:
        for family in FAMILIES:
            pod_range = node.ranges.get(family)
            if pod_range is not None:
                pod_range.reserve_addresses(node.addresses)
                pod_range.slots.restore_cursor(pod_range.slots.cursor)
        cluster.address_index.add(node.name, node.addresses)
        if not node.pinned and (need := cluster.missing(node)):
            cluster.waiting.put(node, need)


def cluster_row(cluster: ClusterState) -> dict[str, Any]:
    v4, v6 = cluster.pools[IPV4], cluster.pools[IPV6]
    return {
        "name": cluster.name,
        "ipv4_cidrs": list(v4.texts),
        "ipv4_mask": v4.mask,
        "ipv6_cidrs": list(v6.texts),
        "ipv6_mask": v6.mask,
        "cursors": {
            "ipv4": [e.slots.cursor for e in v4.elements],
            "ipv6": [e.slots.cursor for e in v6.elements],
        },
        "next_seq": cluster.next_seq,
    }


def node_row(cluster: ClusterState, node: Node) -> dict[str, Any]:
    ranges = [node.ranges[f] for f in FAMILIES if f in node.ranges]
    return {
        "name": node.name,
        "seq": node.seq,
        "waiting": node.name in cluster.waiting,
        "pod_cidrs": [str(r.cidr) for r in ranges],
        "error": node.error,
        "conflict": node.conflict,
        "addresses": [format_address(a) for a in node.addresses],
        "pinned": node.pinned,
        "cursors": [r.slots.cursor for r in ranges],
    }


def pod_ips(node: Node) -> Iterator[tuple[int, int, str, str]]:
    """``(family, address as int, address text, owner)`` of every pod address on the node."""
    for family in FAMILIES:
        pod_range = node.ranges.get(family)
        if pod_range is not None:
            base = pod_range.cidr.base
            for offset, owner in pod_range.owner_of.items():
                yield family, base + offset, format_ip(family, base + offset), owner
