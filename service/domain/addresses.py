"""Addresses and CIDRs on the wire: what the contract accepts, and the one text of each.

Called by ``service.domain.pool`` (pool elements), ``service.domain.allocation`` (``podCIDRs``,
node ``addresses``, ``ip``), ``service.domain.restore`` and ``service.domain.document``. Pure.

Accepted is what Cilium's Go parsers accept (``netip.ParseAddr``, ``netip.ParsePrefix``), minus
three forms ipledger refuses on purpose, each with a reason in the decision:
- zone identifiers (``fe80::1%eth0``): no pod or node CIDR lives in a link-local zone, and
  Python's ``ipaddress`` keeps the zone in the value, so two spellings would be two addresses;
- IPv4-mapped IPv6 (``::ffff:10.0.0.1``): Python 3.11 and 3.13 spell it differently, which would
  make the digest depend on the interpreter; the IPv4 form says the same thing;
- a prefix length that is not plain decimal digits without a leading zero (``/255.0.0.0``,
  ``/024``, ``/+8``): ``netip.ParsePrefix`` refuses these too.
Python's ``ipaddress`` accepts all three, so it is only called once they are excluded.

Text out is ours, never ``str()`` of an ``ipaddress`` object: dotted quads and RFC 5952
compressed IPv6, identical on every Python version.
"""

from __future__ import annotations

import ipaddress

IPV4 = 4
IPV6 = 6
ADDRESS_BITS = {IPV4: 32, IPV6: 128}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address:
    """The address ``text`` spells, or ``ValueError`` with the reason it is not accepted."""
    octets = text.split(".")
    if len(octets) == 4:
        # A plain dotted quad without ipaddress's ten calls: every node event carries its
        # addresses. Only what ipaddress also accepts is taken here: four numbers 0-255 that,
        # written back, are the text itself (so one to three ASCII digits, no leading zero; int()
        # also reads " 1", "+1", "1_0" and other scripts' digits, which that refuses). Anything
        # else, every error included, goes on below.
        try:
            a, b, c, d = map(int, octets)
        except ValueError:
            pass
        else:
            if 0 <= (a | b | c | d) <= 255 and f"{a}.{b}.{c}.{d}" == text:
                return ipaddress.IPv4Address(a << 24 | b << 16 | c << 8 | d)
    elif ":" in text and (value6 := _plain_ipv6(text)) is not None:
        address6 = ipaddress.IPv6Address(value6)
        if value6 >> 32 != 0xFFFF:  # not IPv4-mapped: that is refused below, with its reason
            return address6
    if "%" in text:
        raise ValueError("zone identifiers are not accepted")
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            raise ValueError(
                f"IPv4-mapped IPv6 addresses are not accepted: write {format_ip(IPV4, int(mapped))}"
            )
    return address


_HEX = frozenset("0123456789abcdefABCDEF")


def _plain_ipv6(text: str) -> int | None:
    """The value of an IPv6 address in the plain form (hex groups, at most one ``::``), or None.

    ipaddress spends about ten microseconds on an IPv6 address; pool elements and podCIDRs are
    IPv6 as often as not. None means "not this simple form" (a dotted-quad tail, a zone, any
    error), and the caller asks ipaddress, which gives the verdict and the reason: this only
    ever accepts what ipaddress accepts, with the same value (tests/unit/test_addresses.py).
    """
    head, gap, tail = text.partition("::")
    if "::" in tail:
        return None
    left = head.split(":") if head else []
    right = tail.split(":") if tail else []
    groups = len(left) + len(right)
    if (groups > 7) if gap else (groups != 8):
        return None
    value = 0
    for group in left:
        if not 0 < len(group) <= 4 or not _HEX.issuperset(group):
            return None
        value = value << 16 | int(group, 16)
    value <<= 16 * (8 - groups)
    for group in right:
        if not 0 < len(group) <= 4 or not _HEX.issuperset(group):
            return None
        value = value << 16 | int(group, 16)
    return value


def parse_network(text: str) -> Network:
    """The CIDR ``text`` spells (host bits clear), or ``ValueError`` with the reason."""
    address_text, slash, prefix_text = text.partition("/")
    if not slash:
        raise ValueError("a CIDR needs a /prefix length")
    if not (prefix_text.isascii() and prefix_text.isdigit()) or (
        len(prefix_text) > 1 and prefix_text[0] == "0"
    ):
        raise ValueError("the prefix length must be a decimal number without a leading zero")
    address = parse_address(address_text)
    prefix = int(prefix_text)
    if prefix > ADDRESS_BITS[address.version]:
        raise ValueError(f"prefix length {prefix} is longer than an IPv{address.version} address")
    value = int(address)
    if value & ((1 << (ADDRESS_BITS[address.version] - prefix)) - 1):
        raise ValueError("host bits set")
    if address.version == IPV4:
        return ipaddress.IPv4Network((value, prefix))
    return ipaddress.IPv6Network((value, prefix))


def format_ip(family: int, value: int) -> str:
    """Canonical text of an address (dotted quad, or RFC 5952 compressed IPv6).

    The same text as ``str(ipaddress.ip_address(value))`` on Python 3.11 for every address this
    module accepts, in under half the time for IPv6: every node decision spells its CIDRs out.
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


def format_address(address: Address) -> str:
    return format_ip(address.version, int(address))


def format_network(network: Network) -> str:
    return f"{format_ip(network.version, int(network.network_address))}/{network.prefixlen}"


def _zero_runs() -> tuple[tuple[int, int], ...]:
    """For each set of zero hextets (bit 7 = the first hextet), the run that "::" replaces.

    RFC 5952: the longest run of two or more zero hextets, the first of equally long ones;
    (0, 0) when there is none.
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
