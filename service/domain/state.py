"""The allocation state: clusters, their pools, nodes, node CIDRs and the pod addresses in them.

Mutated only by ``service.domain.allocation.apply``; read by ``service.domain.document`` (state
document and digest) and by the projection code that persists it. Pure data plus the small
operations that keep its indexes consistent; the allocation rules live in ``allocation``.

Addresses are integers inside: a pod address is stored as its offset from the node CIDR's network
address, which keeps a /24's offsets among Python's cached small integers and the memory for
millions of addresses low.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
from sortedcontainers import SortedList

from service.domain.addresses import ADDRESS_BITS, Address, format_ip
from service.domain.pool import FAMILIES, IPV4, IPV6, FamilyPool, NodeCidr
from service.domain.slots import NextFitSlots

__all__ = ["Address", "format_ip"]


def shared_offset(offset: int) -> int:
    """``offset`` itself, as an int object shared by every pod range that holds it.

    A pod address is a key of ``owner_of`` and a value of ``by_owner``. Offsets up to 256 are
    Python's cached small ints; above, each is an object of its own, 28 bytes per address held.
    IPv4 /24 offsets never get there, but an IPv6 /112 node's do once its next-fit cursor has
    moved past 256, which would make it dearer than an IPv4 node holding as many pods.
    """
    if offset <= CACHED_INT_MAX or offset >= _SHARED_OFFSETS:
        return offset
    if not _offset_objects:
        _offset_objects.extend(range(_SHARED_OFFSETS))
    return _offset_objects[offset]


CACHED_INT_MAX = 256  # Python's small ints are shared objects up to here
_SHARED_OFFSETS = 1 << 16  # a /112's addresses: 65,536 shared objects, about 2.3 MB
_offset_objects: list[int] = []  # made on first use, so IPv4-only processes never pay


# Per family: the prefix length from which a CIDR fixes every group of its addresses but the
# last, the separator before that group, and the group's bits.
_LAST_GROUP = {IPV4: (24, ".", 0xFF), IPV6: (112, ":", 0xFFFF)}


class PodRange:
    """Pod addresses inside one node CIDR: network+1 .. last-1, next-fit.

    The node's own addresses are occupied in ``slots`` and listed in ``reserved`` so that they
    are never handed out and are not mistaken for pods.
    """

    __slots__ = ("_text_low", "_text_prefix", "by_owner", "cidr", "owner_of", "reserved", "slots")

    def __init__(self, cidr: NodeCidr) -> None:
        self.cidr = cidr
        self.slots = NextFitSlots(1, (1 << (ADDRESS_BITS[cidr.family] - cidr.prefixlen)) - 1)
        self.owner_of: dict[int, str] = {}
        self.by_owner: dict[str, int] = {}
        self.reserved: set[int] = set()
        # Every decision on a pod address spells the address out. When the CIDR fixes all but
        # the last group of its addresses, their text is a constant prefix plus that group: one
        # concatenation instead of formatting every group (and, for IPv6, finding the "::").
        self._text_prefix: str | None = None
        self._text_low = 0
        fixed, separator, group_mask = _LAST_GROUP[cidr.family]
        if cidr.family == IPV4 and cidr.prefixlen >= fixed:
            base = cidr.base  # format_ip's text of base+1 up to its last dot, written out
            self._text_low = base & group_mask
            self._text_prefix = f"{base >> 24}.{(base >> 16) & 255}.{(base >> 8) & 255}."
        elif cidr.prefixlen >= fixed:
            self._text_low = cidr.base & group_mask
            # An IPv6 last hextet that is not zero is never part of the "::" run, so base+1 up
            # to its last colon is the prefix of every address but the network's own.
            first = format_ip(cidr.family, cidr.base + 1)
            self._text_prefix = first[: first.rfind(separator) + 1]

    def offset_of(self, value: int) -> int | None:
        offset = value - self.cidr.base
        return offset if 0 <= offset < self.cidr.size else None

    def address_text(self, offset: int) -> str:
        """``format_ip`` of the address at ``offset`` in this CIDR (same text, faster)."""
        prefix = self._text_prefix
        if prefix is not None:
            low = self._text_low + offset
            if self.cidr.family == IPV4:
                return f"{prefix}{low}"
            if low:
                return f"{prefix}{low:x}"
        return format_ip(self.cidr.family, self.cidr.base + offset)

    def reserve_addresses(self, addresses: tuple[Address, ...]) -> None:
        """Make the reserved set match the node addresses that fall inside this CIDR."""
        wanted: set[int] = set()
        cidr = self.cidr
        for address in addresses:
            if address.version == cidr.family:
                offset = int(address) - cidr.base
                if 0 <= offset < cidr.size:  # ``offset_of``, written out
                    wanted.add(offset)
        if not wanted and not self.reserved:
            return  # the usual case: node addresses outside the pod CIDR, nothing reserved
        for offset in self.reserved - wanted:
            self.slots.release(offset)
        # An address already held by a pod stays with the pod; it is not reserved twice.
        self.reserved = {o for o in wanted if o in self.reserved or self.slots.occupy(o)}


@dataclass(slots=True)
class Node:
    """A registered node. ``pinned`` nodes (failed adoption) are not served automatically.

    ``seq`` is the node's arrival number in its cluster: every order among nodes that a decision
    depends on (who is served first) is this order, never the order of a dict.
    """

    name: str
    seq: int
    addresses: tuple[Address, ...] = ()
    ranges: dict[int, PodRange] = field(default_factory=dict)
    error: str | None = None
    conflict: str | None = None
    pinned: bool = False

    def pod_cidrs(self) -> tuple[NodeCidr, ...]:
        """IPv4 first, then IPv6, as Cilium's operator writes ``spec.ipam.podCIDRs``."""
        return tuple(self.ranges[f].cidr for f in FAMILIES if f in self.ranges)

    def pod_cidr_texts(self) -> tuple[str, ...]:
        ranges = self.ranges
        return tuple([str(r.cidr) for f in FAMILIES if (r := ranges.get(f)) is not None])


class IpChange(msgspec.Struct, frozen=True, gc=False):
    """One pod address handed out (``held``) or given back, for the projection's history.

    A msgspec struct rather than a frozen dataclass: one is made per address on the hot path
    (110 at once when a node leaves), and this constructs ten times faster; ``gc=False`` since
    it holds only strings and integers, so it cannot be part of a reference cycle.
    """

    node: str
    family: int
    address: int
    owner: str
    held: bool


@dataclass(slots=True)
class Changes:
    """What a run of ``apply`` calls touched, drained by the allocator once per batch."""

    nodes: set[str] = field(default_factory=set)
    pool: bool = False
    ips: list[IpChange] = field(default_factory=list)


class WaitingQueue:
    """The nodes that lack a CIDR of an enabled family, by arrival, grouped by what they lack.

    Derived state: a node waits iff it is not pinned and lacks a CIDR of an enabled family, so a
    rebuilt state derives it again. Waiting nodes are served in arrival order (``Node.seq``). The
    grouping lets a deletion that freed only an IPv4 CIDR skip every node that also needs an
    IPv6 one when IPv6 is full, without walking them: serving costs what it serves.
    """

    __slots__ = ("_need", "_queues")

    def __init__(self) -> None:
        self._need: dict[str, tuple[int, ...]] = {}
        # Per need: (seq, name) ascending, in a SortedList (O(log n) insert and removal, where a
        # plain list moves every entry behind). Which need's queue is looked at first never
        # matters: ``first`` takes the lowest seq over all of them.
        self._queues: dict[tuple[int, ...], SortedList] = {}

    def __len__(self) -> int:
        return len(self._need)

    def __contains__(self, name: object) -> bool:
        return name in self._need

    def put(self, node: Node, need: tuple[int, ...]) -> None:
        """Make ``node`` wait for the families in ``need`` (its place is its arrival)."""
        old = self._need.get(node.name)
        if old == need:
            return
        if old is not None:
            self.discard(node)
        self._need[node.name] = need
        queue = self._queues.get(need)
        if queue is None:
            queue = self._queues[need] = SortedList()
        queue.add((node.seq, node.name))

    def discard(self, node: Node) -> None:
        need = self._need.pop(node.name, None)
        if need is not None:
            self._queues[need].remove((node.seq, node.name))

    def first(self, full: tuple[int, ...] = ()) -> str | None:
        """The earliest arrival among waiting nodes that need none of the ``full`` families."""
        best: tuple[int, str] | None = None
        for need, queue in self._queues.items():
            if queue and (best is None or queue[0] < best) and not any(f in full for f in need):
                best = queue[0]
        return None if best is None else best[1]

    def names(self) -> list[str]:
        """Every waiting node, in arrival order."""
        return [name for _, name in sorted(e for q in self._queues.values() for e in q)]


class AddressIndex:
    """The nodes' own addresses, per family, sorted by value: which nodes have one in a range.

    Pool growth must flag nodes whose addresses fall inside a new element; this finds them by
    bisection instead of looking at every node of the cluster.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        # SortedList: O(log n) insert and removal in a 65,536-node cluster, where a plain
        # sorted list moves every entry behind the one inserted.
        self._entries: dict[int, SortedList] = {f: SortedList() for f in FAMILIES}

    def add(self, node: str, addresses: tuple[Address, ...]) -> None:
        for address in addresses:
            self._entries[address.version].add((int(address), node))

    def remove(self, node: str, addresses: tuple[Address, ...]) -> None:
        for address in addresses:
            self._entries[address.version].discard((int(address), node))

    def within(self, family: int, start: int, end: int) -> Iterator[str]:
        """Names of nodes with an address in ``start .. end-1`` (a node may come twice)."""
        for _, name in self._entries[family].irange((start, ""), (end, ""), (True, False)):
            yield name


class ClusterState:
    """Everything one cluster (one allocation domain with its own pool and order) holds."""

    __slots__ = ("address_index", "changes", "name", "next_seq", "nodes", "pools", "waiting")

    def __init__(self, name: str, track_changes: bool) -> None:
        self.name = name
        self.pools: dict[int, FamilyPool] = {f: FamilyPool(f) for f in FAMILIES}
        self.nodes: dict[str, Node] = {}
        self.next_seq = 0  # the arrival number the next new node gets
        self.waiting = WaitingQueue()
        self.address_index = AddressIndex()
        self.changes: Changes | None = Changes() if track_changes else None

    def enabled_families(self) -> tuple[int, ...]:
        pools = self.pools
        return tuple([f for f in FAMILIES if pools[f].elements])

    def new_node(self, name: str) -> Node:
        node = self.nodes[name] = Node(name=name, seq=self.next_seq)
        self.next_seq += 1
        return node

    def by_arrival(self) -> list[Node]:
        """Every node in arrival order: the order of anything done to all of them."""
        return sorted(self.nodes.values(), key=_seq)

    def missing(self, node: Node) -> tuple[int, ...]:
        """The enabled families ``node`` has no CIDR of."""
        ranges = node.ranges
        pools = self.pools
        return tuple([f for f in FAMILIES if pools[f].elements and f not in ranges])

    def take_changes(self) -> Changes:
        changes = self.changes
        if changes is None:
            raise RuntimeError("this state does not track changes")
        self.changes = Changes()
        return changes


def _seq(node: Node) -> int:
    return node.seq


class State:
    """All clusters. ``track_changes`` keeps a journal for the projection (off for simulate)."""

    __slots__ = ("clusters", "track_changes")

    def __init__(self, *, track_changes: bool = False) -> None:
        self.clusters: dict[str, ClusterState] = {}
        self.track_changes = track_changes

    def cluster(self, name: str) -> ClusterState:
        cluster = self.clusters.get(name)
        if cluster is None:
            cluster = self.clusters[name] = ClusterState(name, self.track_changes)
        return cluster
