"""The allocation rules: ``apply(state, event) -> Decision``.

This is the deterministic heart of ipledger. The allocator service, ``ipledger simulate`` and
audit replay all call ``apply`` (or ``apply_record`` for raw log records) in log order; the same
log always gives the same state and the same decisions, bit for bit. Nothing here does I/O, reads
a clock, draws a random number or depends on hash iteration order.

``apply`` mutates ``state`` in place (rebuilding millions of addresses per event is not an
option) and returns what it did. A rejected event leaves the state exactly as it was. ``apply``
never raises: a bug surfaces as a decision whose error starts with ``internal error``.

Behaviour follows Cilium v1.16's cluster-pool IPAM and its error strings, with the deliberate
improvements written down in docs/allocation.md.

One module for every rule, over 400 lines on purpose: the handlers share the steps at the end
(allocating what a node lacks, serving the waiting, conflicts) and are read against
docs/allocation.md together; the data structures they use live in ``pool``, ``state`` and
``slots``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.domain import addresses, adoption, events
from service.domain.addresses import format_address, format_network
from service.domain.pool import (
    FAMILIES,
    FAMILY_NAMES,
    IPV4,
    IPV6,
    NodeCidr,
    PoolConfigError,
    commit_change,
    plan_change,
)
from service.domain.state import (
    CACHED_INT_MAX,
    Address,
    ClusterState,
    IpChange,
    Node,
    PodRange,
    State,
    shared_offset,
)

ALLOCATOR_FULL = "allocator full"
NO_POOL = 0  # what _allocate_missing reports when no family is enabled at all
RANGE_FULL = "range is full"
_FAMILY_BY_NAME = {"ipv4": IPV4, "ipv6": IPV6}
# The families an ip.requested without a family gets when both are enabled: IPv6 first, as
# Cilium's agent does.
_DUAL_ORDER = (IPV6, IPV4)
_NO_IPS: tuple[str, ...] = ()


def apply_record(state: State, raw: bytes | str) -> tuple[events.Decision, events.AnyEvent | None]:
    """Decode one log record and apply it. Never raises; malformed input is a rejection."""
    event = events.decode(raw)
    if isinstance(event, events.DecodeFailure):
        return (
            events.Decision(
                id=event.id, type=event.type, cluster=event.cluster, error=event.reason
            ),
            None,
        )
    # ``apply`` inlined: one call less per record on the allocator's hot path.
    handler = _HANDLERS[type(event)]
    try:
        return handler(state, event), event
    except Exception as exc:
        return _reject(event, f"internal error: {type(exc).__name__}: {exc}"), event


def apply(state: State, event: events.AnyEvent) -> events.Decision:
    """Apply one decoded event to ``state`` and return its decision."""
    handler = _HANDLERS[type(event)]
    try:
        return handler(state, event)
    except Exception as exc:
        return _reject(event, f"internal error: {type(exc).__name__}: {exc}")


# --- pool ------------------------------------------------------------------------------------


def _pool_configured(state: State, event: events.PoolConfigured) -> events.Decision:
    cluster = state.clusters.get(event.cluster) or ClusterState(event.cluster, state.track_changes)
    try:
        change = plan_change(
            cluster.pools,
            {IPV4: event.ipv4_cidrs, IPV6: event.ipv6_cidrs},
            {IPV4: event.ipv4_mask, IPV6: event.ipv6_mask},
        )
    except PoolConfigError as exc:
        return _reject(event, str(exc))
    state.clusters.setdefault(cluster.name, cluster)
    enabled_before = cluster.enabled_families()
    if commit_change(cluster.pools, change):
        _mark_pool(cluster)
        if cluster.enabled_families() != enabled_before:
            # A family was enabled: every node lacks it now, so each one changes (it gets a
            # CIDR of it or waits), in arrival order.
            for node in cluster.by_arrival():
                _refresh_conflict(cluster, node)
                if not node.pinned and (need := cluster.missing(node)):
                    cluster.waiting.put(node, need)
            _serve_waiting(cluster)
            for name in cluster.waiting.names():
                node = cluster.nodes[name]
                if node.error != ALLOCATOR_FULL:
                    node.error = ALLOCATOR_FULL  # what serving it would have said
                    _mark_node(cluster, node)
        else:
            # Only elements appended: the waiting nodes still lack what they lacked, and only
            # nodes with an address inside a new element can now be in conflict with the pool.
            touched: dict[str, Node] = {}
            for family, networks in change.appended.items():
                for network in networks:
                    start = int(network.network_address)
                    for name in cluster.address_index.within(
                        family, start, start + network.num_addresses
                    ):
                        touched[name] = cluster.nodes[name]
            for node in sorted(touched.values(), key=_arrival):
                _refresh_conflict(cluster, node)
            _serve_waiting(cluster)
    return events.Decision(id=event.id, type=event.type, cluster=event.cluster, error=None)


# --- nodes -----------------------------------------------------------------------------------


def _node_added(state: State, event: events.NodeAdded) -> events.Decision:
    node_addresses = _parse_addresses(event.addresses)
    if isinstance(node_addresses, str):
        return _reject_node(event, node_addresses)
    cluster = state.cluster(event.cluster)
    node = cluster.nodes.get(event.node)
    if node is not None:
        # A retry, or new addresses: nothing else changes, so producers may repeat freely.
        _set_addresses(cluster, node, node_addresses)
        return _node_decision(event, node)
    node = cluster.new_node(event.node)
    _set_addresses(cluster, node, node_addresses)
    _mark_node(cluster, node)
    if _allocate_missing(cluster, node) is not None:
        _wait(cluster, node)
    return _node_decision(event, node)


def _node_adopted(state: State, event: events.NodeAdopted) -> events.Decision:
    node_addresses = _parse_addresses(event.addresses)
    if isinstance(node_addresses, str):
        return _reject_node(event, node_addresses)
    requested = adoption.requested_cidrs(event.pod_cidrs)
    if isinstance(requested, str):
        return _reject_node(event, requested)
    if not requested:
        return _reject_node(event, "podCIDRs is empty")

    cluster = state.cluster(event.cluster)
    node = cluster.nodes.get(event.node)
    if node is not None and node.ranges:
        held = {f: r.cidr for f, r in node.ranges.items()}
        if any(f in held and held[f].network != n for f, n in requested.items()):
            have = " ".join(str(c) for c in node.pod_cidrs())
            want = " ".join(format_network(n) for n in requested.values())
            return _reject_node(
                event,
                f"node has CIDRs allocated ([{have}]) that conflict with requested CIDRs [{want}]",
            )

    # Find every requested block before touching anything, so a failure changes nothing.
    claims: list[tuple[int, Any, int]] = []
    error: str | None = None
    for family, network in sorted(requested.items()):
        if node is not None and family in node.ranges:
            continue  # already holds exactly this one
        located = cluster.pools[family].locate(network)
        if located is None:
            error = f"allocator not configured for the requested CIDR {format_network(network)}"
            break
        element, slot = located
        if not element.slots.is_free(slot):
            error = f"requested CIDR ({format_network(network)}) is already allocated"
            break
        claims.append((family, element, slot))

    if error is not None and node is not None and node.ranges:
        return _reject_node(event, error)
    if node is None:
        node = cluster.new_node(event.node)
    _mark_node(cluster, node)
    if error is not None:
        # The node keeps asking for exactly these CIDRs: it is not handed different ones.
        node.pinned = True
        node.error = error
        cluster.waiting.discard(node)
        _set_addresses(cluster, node, node_addresses)
        return _node_decision(event, node)

    for family, element, slot in claims:
        element.slots.occupy(slot)
        pod_range = node.ranges[family] = PodRange(element.cidr_at(slot))
        pod_range.reserve_addresses(node_addresses)
    if claims:
        _mark_pool(cluster)
    node.pinned = False
    node.error = None
    _set_addresses(cluster, node, node_addresses)
    if _allocate_missing(cluster, node) is None:
        cluster.waiting.discard(node)
    else:
        _wait(cluster, node)
    return _node_decision(event, node)


def _node_deleted(state: State, event: events.NodeDeleted) -> events.Decision:
    cluster = state.clusters.get(event.cluster)
    node = cluster.nodes.get(event.node) if cluster is not None else None
    if cluster is None or node is None:
        return _reject_node(event, f"unknown node {event.node}")
    released = node.pod_cidr_texts()
    changes = cluster.changes
    name = node.name
    for family in FAMILIES:  # IPv4 first, not the order the node happened to get them in
        pod_range = node.ranges.get(family)
        if pod_range is None:
            continue
        if changes is not None:
            base = pod_range.cidr.base
            # A list, not a generator, and positional fields: 110 pods go in one decision.
            changes.ips.extend(
                [
                    IpChange(name, family, base + offset, owner, False)
                    for offset, owner in sorted(pod_range.owner_of.items())
                ]
            )
        cluster.pools[family].release(pod_range.cidr)
    if node.ranges:
        _mark_pool(cluster)
    del cluster.nodes[node.name]
    cluster.waiting.discard(node)
    cluster.address_index.remove(node.name, node.addresses)
    _mark_node(cluster, node)
    _serve_waiting(cluster)
    return events.Decision(
        id=event.id,
        type=event.type,
        cluster=event.cluster,
        error=None,
        pod_cidrs=released,
        conflict=None,
    )


# --- pod addresses ---------------------------------------------------------------------------


def _ip_requested(state: State, event: events.IpRequested) -> events.Decision:
    cluster = state.clusters.get(event.cluster)
    node = cluster.nodes.get(event.node) if cluster is not None else None
    if cluster is None or node is None:
        return _reject_ips(event, f"unknown node {event.node}")
    pools = cluster.pools
    if event.family is None:
        # All enabled families or none; IPv6 first, as Cilium's agent does.
        if pools[IPV6].elements:
            if pools[IPV4].elements:
                return _ip_requested_dual(cluster, node, event)
            family = IPV6
        elif pools[IPV4].elements:
            family = IPV4
        else:
            return _reject_ips(event, f"no pool configured for cluster {cluster.name}")
    else:
        family = _FAMILY_BY_NAME[event.family]
        if not pools[family].elements:
            return _reject_ips(event, f"{event.family} is not enabled in the pool")

    # The usual case, one family: nothing to put back if it fails. ``_hold`` is written out:
    # this runs for every pod address.
    owner = event.owner
    pod_range = node.ranges.get(family)
    if pod_range is None:
        return _reject_ips(event, f"node {node.name} has no {FAMILY_NAMES[family]} pod CIDR")
    offset = pod_range.by_owner.get(owner)
    if offset is None:
        offset = pod_range.slots.take_next()
        if offset is None:
            return _reject_ips(event, RANGE_FULL)
        if offset > CACHED_INT_MAX:
            offset = shared_offset(offset)
        pod_range.owner_of[offset] = owner
        pod_range.by_owner[owner] = offset
        changes = cluster.changes
        if changes is not None:
            cidr = pod_range.cidr
            changes.ips.append(IpChange(node.name, cidr.family, cidr.base + offset, owner, True))
            changes.nodes.add(node.name)
    return events.Decision(
        id=event.id,
        type=event.type,
        cluster=event.cluster,
        error=None,
        ips=(pod_range.address_text(offset),),
    )


def _ip_requested_dual(
    cluster: ClusterState, node: Node, event: events.IpRequested
) -> events.Decision:
    """``ip.requested`` of both families: an address of each, or neither (taken ones put back)."""
    owner = event.owner
    ranges = node.ranges
    taken: list[tuple[PodRange, int, int]] = []  # range, offset, cursor before
    ips: list[str] = []
    for family in _DUAL_ORDER:
        pod_range = ranges.get(family)
        if pod_range is None:
            _undo(taken)
            return _reject_ips(event, f"node {node.name} has no {FAMILY_NAMES[family]} pod CIDR")
        offset = pod_range.by_owner.get(owner)
        if offset is None:
            slots = pod_range.slots
            cursor = slots.cursor
            offset = slots.take_next()
            if offset is None:
                _undo(taken)
                return _reject_ips(event, RANGE_FULL)
            taken.append((pod_range, offset, cursor))
        ips.append(pod_range.address_text(offset))
    for pod_range, offset, _ in taken:
        _hold(cluster, node, pod_range, offset, owner)
    return events.Decision(
        id=event.id, type=event.type, cluster=event.cluster, error=None, ips=tuple(ips)
    )


def _hold(cluster: ClusterState, node: Node, pod_range: PodRange, offset: int, owner: str) -> None:
    """Record that ``owner`` holds the address at ``offset`` (taken from the range's slots)."""
    if offset > CACHED_INT_MAX:
        offset = shared_offset(offset)
    pod_range.owner_of[offset] = owner
    pod_range.by_owner[owner] = offset
    changes = cluster.changes
    if changes is not None:
        cidr = pod_range.cidr
        changes.ips.append(IpChange(node.name, cidr.family, cidr.base + offset, owner, True))
        changes.nodes.add(node.name)


def _ip_released(state: State, event: events.IpReleased) -> events.Decision:
    cluster = state.clusters.get(event.cluster)
    node = cluster.nodes.get(event.node) if cluster is not None else None
    if cluster is None or node is None:
        return _reject_ips(event, f"unknown node {event.node}")
    owner = event.owner
    ranges = node.ranges
    if event.ip is None and node.conflict is None and len(ranges) == 1:
        # The usual case: a node of one family, without a conflict to look at again. What the
        # general case below does for one target, written out.
        for only in ranges.values():
            offset = only.by_owner.pop(owner, None)
            if offset is None:
                return _reject_ips(event, f"{owner} holds no address on node {node.name}")
            del only.owner_of[offset]
            only.slots.release(offset)
            changes = cluster.changes
            if changes is not None:
                cidr = only.cidr
                changes.ips.append(
                    IpChange(node.name, cidr.family, cidr.base + offset, owner, False)
                )
                changes.nodes.add(node.name)
            return events.Decision(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=None,
                ips=(only.address_text(offset),),
            )
    targets: list[tuple[PodRange, int]] = []
    if event.ip is not None:
        try:
            address = addresses.parse_address(event.ip)
        except ValueError as exc:
            return _reject_ips(event, f"invalid ip {event.ip!r}: {exc}")
        pod_range = ranges.get(address.version)
        offset = pod_range.offset_of(int(address)) if pod_range is not None else None
        if pod_range is None or offset is None or pod_range.owner_of.get(offset) != owner:
            return _reject_ips(
                event, f"{format_address(address)} is not held by {owner} on node {node.name}"
            )
        targets.append((pod_range, offset))
    else:
        for family in (IPV6, IPV4):
            pod_range = ranges.get(family)
            if pod_range is not None and (offset := pod_range.by_owner.get(owner)) is not None:
                targets.append((pod_range, offset))
        if not targets:
            return _reject_ips(event, f"{owner} holds no address on node {node.name}")

    ips = []
    changes = cluster.changes
    for pod_range, offset in targets:
        del pod_range.owner_of[offset]
        del pod_range.by_owner[owner]
        pod_range.slots.release(offset)
        ips.append(pod_range.address_text(offset))
        if changes is not None:
            cidr = pod_range.cidr
            changes.ips.append(IpChange(node.name, cidr.family, cidr.base + offset, owner, False))
    if node.conflict is not None:
        # A pod may have just given back an address the node claimed meanwhile: keep it off
        # the market from now on.
        for pod_range, _ in targets:
            pod_range.reserve_addresses(node.addresses)
        _refresh_conflict(cluster, node)
    if changes is not None:
        changes.nodes.add(node.name)
    return events.Decision(
        id=event.id, type=event.type, cluster=event.cluster, error=None, ips=tuple(ips)
    )


# --- shared steps ----------------------------------------------------------------------------


def _allocate_missing(cluster: ClusterState, node: Node) -> int | None:
    """Give ``node`` a CIDR for every enabled family it lacks: all of them or none.

    Returns None when the node has them all, else the family that had no room (``NO_POOL`` when
    no family is enabled). On failure every CIDR taken here is given back and its element's
    cursor put back, so the pool is as it was; the node records why it waits.
    """
    enabled = cluster.enabled_families()
    if not enabled:
        node.error = f"no pool configured for cluster {cluster.name}"
        return NO_POOL
    taken: list[tuple[int, NodeCidr, int]] = []
    for family in enabled:
        if family in node.ranges:
            continue
        got = cluster.pools[family].allocate()
        if got is None:
            for fam, cidr, cursor in reversed(taken):
                cluster.pools[fam].undo(cidr, cursor)
            if node.error != ALLOCATOR_FULL:
                node.error = ALLOCATOR_FULL
                _mark_node(cluster, node)
            return family
        taken.append((family, *got))
    for family, cidr, _ in taken:
        pod_range = node.ranges[family] = PodRange(cidr)
        pod_range.reserve_addresses(node.addresses)
    if taken:
        _mark_pool(cluster)
    node.error = None
    _mark_node(cluster, node)
    return None


def _wait(cluster: ClusterState, node: Node) -> None:
    """Queue a node that could not get what it lacks.

    Without any pool there is nothing to wait for in particular: such nodes are queued when a
    family is enabled, with every other node that lacks it, so the queue is always exactly the
    nodes that are not pinned and lack a CIDR of an enabled family (what ``restore`` derives).
    """
    need = cluster.missing(node)
    if need:
        cluster.waiting.put(node, need)


def _serve_waiting(cluster: ClusterState) -> None:
    """Serve waiting nodes in arrival order, as far as the pool now allows.

    Once a family is found full it stays full for the rest of the pass (nothing is released
    while serving), so every later node that needs it would fail the same way and is skipped
    without being tried: the pass costs what it serves plus at most one failure per family.
    """
    waiting = cluster.waiting
    if not waiting or not cluster.enabled_families():
        return
    full: tuple[int, ...] = ()
    while (name := waiting.first(full)) is not None:
        node = cluster.nodes[name]
        lacking = _allocate_missing(cluster, node)
        if lacking is None:
            waiting.discard(node)
        else:
            full = (*full, lacking)


def _set_addresses(cluster: ClusterState, node: Node, new: tuple[Address, ...]) -> None:
    if new != node.addresses:
        cluster.address_index.remove(node.name, node.addresses)
        cluster.address_index.add(node.name, new)
        node.addresses = new
        for pod_range in node.ranges.values():
            pod_range.reserve_addresses(new)
        _mark_node(cluster, node)
    _refresh_conflict(cluster, node)


def _refresh_conflict(cluster: ClusterState, node: Node) -> None:
    """Flag a node whose own address lies inside the pod pool (Cilium: breaks connectivity).

    Worst first: an address a pod already holds (the node claimed it after it was handed out;
    the pod keeps it), then any address inside a pool element.
    """
    inside: str | None = None
    conflict: str | None
    for address in node.addresses:
        value = int(address)
        pod_range = node.ranges.get(address.version)
        offset = pod_range.offset_of(value) if pod_range is not None else None
        if pod_range is not None and offset is not None and offset in pod_range.owner_of:
            conflict = (
                f"node address {format_address(address)} is held by {pod_range.owner_of[offset]}"
            )
            break
        if inside is None:
            element = cluster.pools[address.version].element_at(value)
            if element is not None:
                inside = (
                    f"node address {format_address(address)} is inside the pod CIDR pool "
                    f"{element.text}"
                )
    else:
        conflict = inside
    if conflict != node.conflict:
        node.conflict = conflict
        _mark_node(cluster, node)


def _parse_addresses(texts: tuple[str, ...]) -> tuple[Address, ...] | str:
    out: list[Address] = []
    for text in texts:
        try:
            address = addresses.parse_address(text)
        except ValueError as exc:
            return f"invalid address {text!r}: {exc}"
        if address not in out:
            out.append(address)
    return tuple(out)


def _arrival(node: Node) -> int:
    return node.seq


def _undo(taken: list[tuple[PodRange, int, int]]) -> None:
    for pod_range, offset, cursor in reversed(taken):
        pod_range.slots.release(offset)
        pod_range.slots.cursor = cursor


def _mark_node(cluster: ClusterState, node: Node) -> None:
    if cluster.changes is not None:
        cluster.changes.nodes.add(node.name)


def _mark_pool(cluster: ClusterState) -> None:
    if cluster.changes is not None:
        cluster.changes.pool = True


def _node_decision(event: events.AnyEvent, node: Node) -> events.Decision:
    return events.Decision(
        id=event.id,
        type=event.type,
        cluster=event.cluster,
        error=node.error,
        pod_cidrs=node.pod_cidr_texts(),
        conflict=node.conflict,
    )


def _reject(event: events.AnyEvent, reason: str) -> events.Decision:
    return events.Decision(id=event.id, type=event.type, cluster=event.cluster, error=reason)


def _reject_node(event: events.AnyEvent, reason: str) -> events.Decision:
    return events.Decision(
        id=event.id,
        type=event.type,
        cluster=event.cluster,
        error=reason,
        pod_cidrs=(),
        conflict=None,
    )


def _reject_ips(event: events.AnyEvent, reason: str) -> events.Decision:
    return events.Decision(
        id=event.id, type=event.type, cluster=event.cluster, error=reason, ips=_NO_IPS
    )


_HANDLERS: dict[type[events.Event], Callable[[State, Any], events.Decision]] = {
    events.PoolConfigured: _pool_configured,
    events.NodeAdded: _node_added,
    events.NodeAdopted: _node_adopted,
    events.NodeDeleted: _node_deleted,
    events.IpRequested: _ip_requested,
    events.IpReleased: _ip_released,
}
