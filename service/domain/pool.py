"""The cluster pool: validated pool configuration and node-CIDR allocation inside it.

Called by ``service.domain.allocation`` when it applies ``pool.configured``, ``node.added``,
``node.adopted`` and ``node.deleted``. Pure: no I/O, no clock, no randomness.

Rules (Cilium v1.16 cluster-pool, plus the stricter pool-change rules of ipledger):
- a family is enabled iff its element list is non-empty;
- elements are networks of their family that do not overlap one another;
- the node mask size is >= every element's prefix length and <= 30 (IPv4) / 126 (IPv6);
- a new configuration may only append elements; changing or removing an element, or changing
  the mask size, is refused and leaves the pool as it was;
- node CIDRs come from the first element in list order that is not full, next-fit inside it.

Costs (docs/allocation.md has the table): a pool may hold 1,024 elements per family, so nothing
here walks them per decision. The elements that still have room sit in a heap by list position,
lookups by address bisect the elements sorted by their first address, and a configuration that
repeats the one in force is recognised by its text before anything is parsed.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from service.domain import addresses
from service.domain.addresses import ADDRESS_BITS, IPV4, IPV6, Network, format_ip
from service.domain.slots import NextFitSlots

FAMILIES = (IPV4, IPV6)
FAMILY_NAMES = {IPV4: "ipv4", IPV6: "ipv6"}
FAMILY_LABELS = {IPV4: "IPv4", IPV6: "IPv6"}
MAX_MASK = {IPV4: 30, IPV6: 126}

__all__ = ["ADDRESS_BITS", "FAMILIES", "IPV4", "IPV6", "Network", "format_ip"]


class PoolConfigError(ValueError):
    """The pool configuration is invalid or is not an append-only change of the current one."""


class NodeCidr(msgspec.Struct, frozen=True, gc=False):
    """A node CIDR: which element and slot it occupies, and its network as integers.

    A msgspec struct rather than a frozen dataclass: one is made for every node, and this
    constructs several times faster; ``gc=False`` as it holds only integers.
    """

    family: int
    element: int
    slot: int
    base: int
    prefixlen: int

    @property
    def size(self) -> int:
        return 1 << (ADDRESS_BITS[self.family] - self.prefixlen)

    @property
    def network(self) -> Network:
        if self.family == IPV4:
            return ipaddress.IPv4Network((self.base, self.prefixlen))
        return ipaddress.IPv6Network((self.base, self.prefixlen))

    def __str__(self) -> str:
        # The text of ``self.network`` without building an ipaddress network for it: node
        # decisions spell their CIDRs out, and that construction was most of their cost.
        base = self.base
        if self.family == IPV4:  # format_ip's dotted quad, written out
            return (
                f"{base >> 24}.{(base >> 16) & 255}.{(base >> 8) & 255}.{base & 255}"
                f"/{self.prefixlen}"
            )
        return f"{format_ip(self.family, base)}/{self.prefixlen}"


_MAX_SPELLINGS = 4  # spellings of the list in force kept per family (the latest first)


class PoolElement:
    """One entry of ``clusterPoolIPv{4,6}PodCIDRList``, cut into blocks of the mask size."""

    __slots__ = (
        "base",
        "end",
        "family",
        "index",
        "mask",
        "network",
        "open",
        "slots",
        "step",
        "text",
    )

    def __init__(self, family: int, index: int, network: Network, mask: int) -> None:
        self.family = family
        self.index = index
        self.network = network
        self.text = addresses.format_network(network)
        self.mask = mask
        self.base = int(network.network_address)
        self.end = self.base + network.num_addresses  # first address past the element
        self.step = 1 << (ADDRESS_BITS[family] - mask)
        self.slots = NextFitSlots(0, 1 << (mask - network.prefixlen))
        self.open = True  # listed in its pool's heap of elements with room

    def cidr_at(self, slot: int) -> NodeCidr:
        return NodeCidr(self.family, self.index, slot, self.base + slot * self.step, self.mask)

    def slot_of(self, network: Network) -> int | None:
        """The slot of ``network`` if it is exactly one block of this element, else None."""
        value = int(network.network_address)
        if network.prefixlen != self.mask or not self.base <= value < self.end:
            return None
        return (value - self.base) // self.step


class FamilyPool:
    """The elements of one address family, in list order, and their shared mask size.

    ``_open`` is a heap of the list positions of elements that may have room: an element is
    pushed when it is appended and when a release gives a full one room again, and dropped
    lazily when found full. The first element in list order with room is so the heap's top,
    in O(log k) amortised for k elements instead of a walk over the full ones.
    """

    __slots__ = (
        "_by_start",
        "_open",
        "_starts",
        "elements",
        "family",
        "mask",
        "spellings",
        "texts",
    )

    def __init__(self, family: int) -> None:
        self.family = family
        self.mask: int | None = None
        self.elements: list[PoolElement] = []
        self.texts: tuple[str, ...] = ()  # the elements' canonical text, in list order
        # The list in force as accepted configurations spelt it (a producer may write
        # fd00:0::/64 for fd00::/64), the latest first, at most _MAX_SPELLINGS: a cache that
        # lets a repeat skip parsing, never state. Each names exactly the elements in force, so
        # it cannot change a decision; appending elements starts it afresh.
        self.spellings: list[tuple[str, ...]] = []
        self._open: list[int] = []
        self._starts: list[int] = []  # first address of each element, ascending
        self._by_start: list[PoolElement] = []  # the elements in that order

    @property
    def enabled(self) -> bool:
        return bool(self.elements)

    def extend(self, networks: Sequence[Network], mask: int, spelt: tuple[str, ...]) -> None:
        """Append elements (all of a change at once: the text tuples are rebuilt once)."""
        texts = list(self.texts)
        for network in networks:
            element = PoolElement(self.family, len(self.elements), network, mask)
            self.mask = mask
            self.elements.append(element)
            texts.append(element.text)
            heapq.heappush(self._open, element.index)
            at = bisect_right(self._starts, element.base)
            self._starts.insert(at, element.base)
            self._by_start.insert(at, element)
        self.texts = tuple(texts)
        self.spellings.clear()
        self.remember(spelt)

    def remember(self, spelt: tuple[str, ...]) -> None:
        """Keep how an accepted configuration spelt the elements in force (one per element)."""
        if spelt == self.texts or spelt in self.spellings:
            return
        self.spellings.insert(0, spelt)
        del self.spellings[_MAX_SPELLINGS:]

    def names_in_force(self, texts: Sequence[str]) -> bool:
        """True if ``texts`` are the elements in force, in order, spelt as seen before.

        Tuple comparisons only (C loops): the canonical text, then each kept spelling.
        """
        return texts == self.texts or texts in self.spellings

    def allocate(self) -> tuple[NodeCidr, int] | None:
        """Next-fit in the first element with room: the CIDR and that element's cursor before.

        None when every element is full. Only the element that hands out a CIDR is touched, so
        putting its cursor back undoes the allocation's effect on the order completely.
        """
        heap = self._open
        elements = self.elements
        while heap:
            element = elements[heap[0]]
            cursor = element.slots.cursor
            slot = element.slots.take_next()
            if slot is not None:
                return element.cidr_at(slot), cursor
            heapq.heappop(heap)
            element.open = False
        return None

    def release(self, cidr: NodeCidr) -> None:
        element = self.elements[cidr.element]
        element.slots.release(cidr.slot)
        self.reopen(element)

    def undo(self, cidr: NodeCidr, cursor: int) -> None:
        """Give back a CIDR ``allocate`` just handed out and put the cursor where it was."""
        self.release(cidr)
        self.elements[cidr.element].slots.cursor = cursor

    def reopen(self, element: PoolElement) -> None:
        if not element.open:
            element.open = True
            heapq.heappush(self._open, element.index)

    def element_at(self, value: int) -> PoolElement | None:
        """The element that contains the address ``value``, if any."""
        at = bisect_right(self._starts, value) - 1
        if at < 0:
            return None
        element = self._by_start[at]
        return element if value < element.end else None

    def locate(self, network: Network) -> tuple[PoolElement, int] | None:
        """The element and slot that ``network`` would occupy, if the pool covers it."""
        element = self.element_at(int(network.network_address))
        if element is None:
            return None
        slot = element.slot_of(network)
        return None if slot is None else (element, slot)

    def contains_address(self, address: int) -> Network | None:
        element = self.element_at(address)
        return None if element is None else element.network

    def overlapping(self, network: Network) -> PoolElement | None:
        """An element that shares an address with ``network``, if any."""
        start = int(network.network_address)
        end = start + network.num_addresses
        at = bisect_right(self._starts, end - 1) - 1  # the last element starting inside
        if at < 0:
            return None
        element = self._by_start[at]
        return element if element.end > start else None


@dataclass(frozen=True, slots=True)
class PoolChange:
    """A validated configuration: the elements each family appends, and its mask size."""

    appended: dict[int, list[Network]]
    masks: dict[int, int | None]
    spelt: dict[int, tuple[str, ...]]  # each family's list as the request spelt it


def parse_network(text: str, family: int) -> Network:
    """Parse a pool element or node CIDR of the given family, with a reason on failure."""
    try:
        network = addresses.parse_network(text)
    except ValueError as exc:
        raise PoolConfigError(f"invalid CIDR {text!r}: {exc}") from None
    if network.version != family:
        raise PoolConfigError(f"{text} is not an {FAMILY_LABELS[family]} CIDR")
    return network


def plan_change(
    pools: dict[int, FamilyPool],
    lists: dict[int, Sequence[str]],
    masks: dict[int, int | None],
) -> PoolChange:
    """Check a requested configuration against the current one; raise PoolConfigError if bad.

    Costs O(k) string comparisons for the k elements in force when the request repeats them in
    their canonical text (the usual case: a producer re-sending its configuration), plus
    O(m log(k + m)) for m appended elements; a request that spells the elements in force as an
    earlier accepted one did costs O(k) dict lookups, and only a new spelling parses them all.
    """
    appended: dict[int, list[Network]] = {}
    for family in FAMILIES:
        pool = pools[family]
        name = FAMILY_LABELS[family]
        texts = tuple(lists[family])
        held = len(pool.texts)
        if pool.names_in_force(texts[:held]):
            requested_new = [parse_network(text, family) for text in texts[held:]]
        else:
            requested = [parse_network(text, family) for text in texts]
            current = [element.network for element in pool.elements]
            if len(requested) < len(current) or requested[: len(current)] != current:
                raise PoolConfigError(
                    f"clusterPool{name}PodCIDRList may only be appended to: "
                    f"in force {_fmt(pool.texts)}, "
                    f"requested {_fmt(map(addresses.format_network, requested))}"
                )
            requested_new = requested[len(current) :]
        if not texts:
            appended[family] = []
            continue
        mask = masks[family]
        if mask is None:
            raise PoolConfigError(f"clusterPool{name}MaskSize is required with a {name} pool")
        if pool.mask is not None and mask != pool.mask:
            raise PoolConfigError(
                f"clusterPool{name}MaskSize cannot change from {pool.mask} to {mask}"
            )
        if mask > MAX_MASK[family]:
            raise PoolConfigError(
                f"clusterPool{name}MaskSize {mask} leaves no pod address "
                f"(at most {MAX_MASK[family]})"
            )
        for network in requested_new:
            if mask < network.prefixlen:
                raise PoolConfigError(
                    f"clusterPool{name}MaskSize {mask} is shorter than the prefix of "
                    f"{addresses.format_network(network)}"
                )
        _check_disjoint(pool, requested_new)
        appended[family] = requested_new
    spelt = {family: tuple(lists[family]) for family in FAMILIES}
    return PoolChange(appended=appended, masks=dict(masks), spelt=spelt)


def _check_disjoint(pool: FamilyPool, new: list[Network]) -> None:
    """Refuse appended elements that overlap an element in force or one another.

    The elements in force are disjoint already, so each new one is bisected against them, and
    the new ones are sorted by first address and compared with their neighbour only.
    """
    for network in new:
        element = pool.overlapping(network)
        if element is not None:
            raise PoolConfigError(
                f"pool elements {element.text} and {addresses.format_network(network)} overlap"
            )
    spans = sorted(
        (int(n.network_address), int(n.network_address) + n.num_addresses, i)
        for i, n in enumerate(new)
    )
    for (_, end, i), (start, _, j) in itertools.pairwise(spans):
        if start < end:
            first, second = sorted((i, j))
            raise PoolConfigError(
                f"pool elements {addresses.format_network(new[first])} and "
                f"{addresses.format_network(new[second])} overlap"
            )


def commit_change(pools: dict[int, FamilyPool], change: PoolChange) -> bool:
    """Apply a planned change; True if any family gained elements."""
    grew = False
    for family, networks in change.appended.items():
        mask = change.masks[family]
        if networks:
            assert mask is not None
            pools[family].extend(networks, mask, change.spelt[family])
            grew = True
        else:
            pools[family].remember(change.spelt[family])
    return grew


def _fmt(texts: Iterable[str]) -> str:
    return "[" + " ".join(texts) + "]"
