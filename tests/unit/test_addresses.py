"""The fast IPv6 path of ``addresses.parse_address`` against ipaddress, its reference.

``_plain_ipv6`` parses the plain IPv6 form itself (pool elements, podCIDRs and node addresses are
IPv6 half the time, and ipaddress spends ~10 us on each) and must never accept what ipaddress
refuses, nor give another value. Hypothesis writes strings of IPv6's own characters, valid and
nearly valid (extra colons, long groups, stray dots), and real addresses in every compression.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import addresses

near_ipv6 = st.text(alphabet="0123456789abcdefABCDEF:.", min_size=0, max_size=45)
groups = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8)


def reference(text: str) -> int | None:
    try:
        return int(ipaddress.IPv6Address(text))
    except ValueError:
        return None


@settings(max_examples=3000, deadline=None)
@given(near_ipv6)
def test_the_fast_path_accepts_only_what_ipaddress_accepts_with_the_same_value(text: str) -> None:
    fast = addresses._plain_ipv6(text)
    if fast is not None:
        assert fast == reference(text), text


@settings(max_examples=1000, deadline=None)
@given(groups, st.integers(0, 8), st.integers(0, 8), st.booleans())
def test_every_compression_of_a_real_address_takes_the_fast_path(
    values: list[int], start: int, length: int, upper: bool
) -> None:
    """Real addresses, with any run of groups (zero or not) written as ``::``, in either case."""
    end = min(8, start + length)
    for i in range(start, end):
        values[i] = 0
    texts = [f"{v:x}" for v in values]
    if end - start >= 1:
        text = ":".join(texts[:start]) + "::" + ":".join(texts[end:])
    else:
        text = ":".join(texts)
    if upper:
        text = text.upper()
    value = int(ipaddress.IPv6Address(text))
    assert addresses._plain_ipv6(text) == value
    if value >> 32 != 0xFFFF:
        assert int(addresses.parse_address(text)) == value


@settings(max_examples=2000, deadline=None)
@given(near_ipv6)
def test_parse_address_agrees_with_ipaddress_and_the_refusal_rules(text: str) -> None:
    expected = reference(text)
    try:
        got: int | None = int(addresses.parse_address(text))
    except ValueError:
        got = None
    if expected is not None and ipaddress.IPv6Address(expected).ipv4_mapped is not None:
        expected = None  # refused on purpose: write the IPv4 form
    if got is not None and ":" not in text:
        return  # an IPv4 dotted quad: the other path's business
    assert got == expected, text
