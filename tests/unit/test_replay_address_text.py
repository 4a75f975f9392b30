"""The replay's address texts are ``ipaddress``'s, on both sides of its final comparison.

``replay --verify`` compares the pod address rows it rebuilt with the committed ones by their
text (``ports.ProjectionRows``). It writes IPv4 texts in C (``replay_apply.address_text``, a
column at a time in ``Addresses.rows``), and the PostgreSQL reader takes the server's text of
the ``inet`` instead of asyncpg's ``ipaddress`` object (``audit._address``): each must write
every address exactly as ``ipaddress`` does, or a clean ledger would fail to verify.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from service.adapters.postgres import audit as pg_audit
from service.audit import replay_apply

_EDGES = [0, 1, 2**32 - 1, 0x0A000001, 0x7F000001, 0xC0A80001]
_EDGES6 = [0, 1, 2**128 - 1, 0xFFFF << 32, (0xFFFF << 32) | 0x01020304, 0xFD00 << 112, 1 << 64]


def test_ipv4_texts_are_ipaddress_texts() -> None:
    rng = random.Random(1)
    for value in _EDGES + [rng.getrandbits(32) for _ in range(5000)]:
        assert replay_apply.address_text(4, value) == str(ipaddress.IPv4Address(value))


def test_ipv6_texts_are_ipaddress_texts() -> None:
    rng = random.Random(2)
    for value in _EDGES6 + [rng.getrandbits(128) for _ in range(2000)]:
        assert replay_apply.address_text(6, value) == str(ipaddress.IPv6Address(value))


def test_the_address_rows_of_either_family_are_keyed_by_ipaddress_texts() -> None:
    rng = random.Random(3)
    v4 = _EDGES + [rng.getrandbits(32) for _ in range(500)]
    v6 = _EDGES6 + [rng.getrandbits(128) for _ in range(500)]
    for families in ([4], [6], [4, 6]):
        addresses = replay_apply.Addresses()
        for family in families:
            for value in v4 if family == 4 else v6:
                addresses.holding[("c", family, value)] = ("node", "ns/pod", 0, value, None)
                addresses.finished.append((("c", family, value), 1, ("node", "ns/pod", 0)))
        pod_ips, history = addresses.rows()
        expected = {
            str(
                ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
            ): value
            for family in families
            for value in (v4 if family == 4 else v6)
        }
        assert {text: row[3] for (_, text), row in pod_ips.items()} == expected
        assert {text for _, text, _ in history} == set(expected)


@pytest.mark.parametrize(
    ("server_text", "asyncpg_value"),
    [
        ("10.0.0.1", ipaddress.ip_address("10.0.0.1")),
        ("0.0.0.0", ipaddress.ip_address("0.0.0.0")),
        ("10.0.0.1/24", ipaddress.ip_interface("10.0.0.1/24")),
        ("fd00::1", ipaddress.ip_address("fd00::1")),
        # PostgreSQL writes an IPv4-mapped address in dotted form, ipaddress (3.11) does not.
        ("::ffff:1.2.3.4", ipaddress.ip_address("::ffff:1.2.3.4")),
        ("::ffff:0.0.0.0/96", ipaddress.ip_interface("::ffff:0:0/96")),
        ("2001:db8::1:0:0:1", ipaddress.ip_address("2001:db8::1:0:0:1")),
        ("::", ipaddress.ip_address("::")),
    ],
)
def test_the_servers_inet_text_reads_as_asyncpgs_value_would(
    server_text: str, asyncpg_value: object
) -> None:
    assert pg_audit._address(server_text) == str(asyncpg_value)
