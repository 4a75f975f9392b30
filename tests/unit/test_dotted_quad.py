"""The dotted-quad path of ``addresses.parse_address`` against ipaddress, its reference.

Four numbers read by ``int()`` are taken only when they are 0-255 and written back are the text
itself: ``int()`` also reads signs, spaces, underscores and other scripts' digits, which
ipaddress refuses, and leading zeros, which it refuses since Python 3.9.5. Whatever that path
does not take goes to ipaddress; so for every text with three dots, the address (or the refusal)
must be ipaddress's.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import addresses

PARTS = [
    *("0", "00", "000", "1", "01", "001", "9", "10", "99", "100", "199", "249", "250", "255"),
    *("256", "299", "999", "1000", "+1", "-1", "-0", " 1", "1 ", "1_0", "0_0", "0x1", "1e1"),
    *("", "a", "\u0663", "\u0661\u0662", "\u00b2", "\uff10", "\n1", "1\n"),
]
octets = st.sampled_from(PARTS) | st.integers(0, 300).map(str)


def verdict(parse: object, text: str) -> tuple[str, int] | str:
    try:
        address = parse(text)  # type: ignore[operator]
    except ValueError:
        return "refused"
    return (type(address).__name__, int(address))


@settings(max_examples=4000, deadline=None)
@given(st.lists(octets, min_size=4, max_size=4).map(".".join))
def test_a_dotted_quad_is_read_as_ipaddress_reads_it(text: str) -> None:
    assert verdict(addresses.parse_address, text) == verdict(ipaddress.IPv4Address, text), text


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_every_canonical_address_has_its_value(value: int) -> None:
    text = str(ipaddress.IPv4Address(value))
    assert addresses.parse_address(text) == ipaddress.IPv4Address(value)
