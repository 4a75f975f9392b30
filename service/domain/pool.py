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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from service.domain.slots import NextFitSlots

IPV4 = 4
IPV6 = 6
FAMILIES = (IPV4, IPV6)
FAMILY_NAMES = {IPV4: "ipv4", IPV6: "ipv6"}
FAMILY_LABELS = {IPV4: "IPv4", IPV6: "IPv6"}
MAX_MASK = {IPV4: 30, IPV6: 126}
ADDRESS_BITS = {IPV4: 32, IPV6: 128}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def format_ip(family: int, value: int) -> str:
    """Canonical text of an address (dotted quad, or RFC 5952 compressed IPv6).

    The same text as ``str(ipaddress.ip_address(value))`` on Python 3.11, in under half the
    time for IPv6: every node decision spells its CIDRs out.
    """
    if family == IPV4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    text = (
        f"{value >> 112:x}:{value >> 96 & 0xFFFF:x}:{value >> 80 & 0xFFFF:x}:"
        f"{value >> 64 & 0xFFFF:x}:{value >> 48 & 0xFFFF:x}:{value >> 32 & 0xFFFF:x}:"
        f"{value >> 16 & 0xFFFF:x}:{value & 0xFFFF:x}"
    )
    hextets = text.split(":")
    zeros = 0
    for hextet in hextets:
        zeros = zeros << 1 | (hextet == "0")
    start, end = _ZERO_RUN[zeros]
    if start == end:
        return text
    return ":".join(hextets[:start]) + "::" + ":".join(hextets[end:])


def _zero_runs() -> tuple[tuple[int, int], ...]:
    """For each set of zero hextets (bit 7 = the first hextet), the run that "::" replaces.

    RFC 5952 as ipaddress applies it: the longest run of two or more zero hextets, the first of
    equally long ones; (0, 0) when there is none.
    """
    table = []
    for zeros in range(256):
        best_start = best_length = start = length = 0
        for i in range(8):
            if zeros >> (7 - i) & 1:
                if length == 0:
                    start = i
                length += 1
                if length > best_length:
                    best_start, best_length = start, length
            else:
                length = 0
        table.append((best_start, best_start + best_length) if best_length > 1 else (0, 0))
    return tuple(table)


_ZERO_RUN = _zero_runs()


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
        return f"{format_ip(self.family, self.base)}/{self.prefixlen}"


class PoolElement:
    """One entry of ``clusterPoolIPv{4,6}PodCIDRList``, cut into blocks of the mask size."""

    __slots__ = ("base", "end", "family", "index", "mask", "network", "slots", "step")

    def __init__(self, family: int, index: int, network: Network, mask: int) -> None:
        self.family = family
        self.index = index
        self.network = network
        self.mask = mask
        self.base = int(network.network_address)
        self.end = self.base + network.num_addresses  # first address past the element
        self.step = 1 << (ADDRESS_BITS[family] - mask)
        self.slots = NextFitSlots(0, 1 << (mask - network.prefixlen))

    def cidr_at(self, slot: int) -> NodeCidr:
        return NodeCidr(self.family, self.index, slot, self.base + slot * self.step, self.mask)

    def slot_of(self, network: Network) -> int | None:
        """The slot of ``network`` if it is exactly one block of this element, else None."""
        if network.prefixlen != self.mask or not network.subnet_of(self.network):  # type: ignore[arg-type]
            return None
        return (int(network.network_address) - self.base) // self.step


class FamilyPool:
    """The elements of one address family, in list order, and their shared mask size."""

    __slots__ = ("elements", "family", "mask")

    def __init__(self, family: int) -> None:
        self.family = family
        self.mask: int | None = None
        self.elements: list[PoolElement] = []

    @property
    def enabled(self) -> bool:
        return bool(self.elements)

    def allocate(self) -> NodeCidr | None:
        """Next-fit in the first element that is not full; None when every element is full."""
        for element in self.elements:
            slot = element.slots.take_next()
            if slot is not None:
                return element.cidr_at(slot)
        return None

    def release(self, cidr: NodeCidr) -> None:
        self.elements[cidr.element].slots.release(cidr.slot)

    def locate(self, network: Network) -> tuple[PoolElement, int] | None:
        """The element and slot that ``network`` would occupy, if the pool covers it."""
        for element in self.elements:
            slot = element.slot_of(network)
            if slot is not None:
                return element, slot
        return None

    def contains_address(self, address: int) -> Network | None:
        for element in self.elements:
            if element.base <= address < element.end:
                return element.network
        return None


@dataclass(frozen=True, slots=True)
class PoolChange:
    """A validated configuration: the elements each family appends, and its mask size."""

    appended: dict[int, list[Network]]
    masks: dict[int, int | None]


def parse_network(text: str, family: int) -> Network:
    """Parse a pool element or node CIDR of the given family, with a reason on failure."""
    try:
        network = ipaddress.ip_network(text, strict=True)
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
    """Check a requested configuration against the current one; raise PoolConfigError if bad."""
    appended: dict[int, list[Network]] = {}
    for family in FAMILIES:
        pool = pools[family]
        name = FAMILY_LABELS[family]
        requested = [parse_network(text, family) for text in lists[family]]
        mask = masks[family]
        current = [element.network for element in pool.elements]
        if len(requested) < len(current) or requested[: len(current)] != current:
            raise PoolConfigError(
                f"clusterPool{name}PodCIDRList may only be appended to: "
                f"in force {_fmt(current)}, requested {_fmt(requested)}"
            )
        if not requested:
            appended[family] = []
            continue
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
        for i, network in enumerate(requested):
            if mask < network.prefixlen:
                raise PoolConfigError(
                    f"clusterPool{name}MaskSize {mask} is shorter than the prefix of {network}"
                )
            for other in requested[:i]:
                if network.overlaps(other):
                    raise PoolConfigError(f"pool elements {other} and {network} overlap")
        appended[family] = requested[len(current) :]
    return PoolChange(appended=appended, masks=dict(masks))


def commit_change(pools: dict[int, FamilyPool], change: PoolChange) -> bool:
    """Apply a planned change; True if any family gained elements."""
    grew = False
    for family, networks in change.appended.items():
        pool = pools[family]
        if networks:
            pool.mask = change.masks[family]
            grew = True
        for network in networks:
            assert pool.mask is not None
            pool.elements.append(PoolElement(family, len(pool.elements), network, pool.mask))
    return grew


def _fmt(networks: Sequence[object]) -> str:
    return "[" + " ".join(str(n) for n in networks) + "]"
