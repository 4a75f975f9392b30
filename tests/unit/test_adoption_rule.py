"""The adoption rule (``service.domain.adoption``) agrees with the core's ``node.adopted``.

``ipledger adopt`` refuses a CiliumNode before appending anything when the rule says its CIDRs
cannot be adopted; that is only right if the allocator, given the same event on a pool with no
other node, would grant exactly those CIDRs when the rule accepts and would not when it refuses.
Checked here for every list of up to two CIDRs drawn from a set of edge cases, on a dual-stack
and a single-stack pool.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from service.domain import addresses, adoption, pool

from .conftest import Ledger

CANDIDATES = [
    "10.0.1.0/24",  # one block
    "10.2.15.0/24",  # the last block of the second element
    "10.0.1.0/25",  # inside, wrong size
    "10.0.0.0/16",  # an element itself: wrong size
    "10.0.0.0/8",  # contains the elements
    "10.1.0.0/24",  # between the elements
    "10.2.16.0/24",  # just past the second element
    "10.0.1.1/24",  # host bits
    "10.0.1.0/024",  # leading zero
    "10.0.1.0/255.255.255.0",  # netmask
    "10.0.1.0",  # no prefix
    "fd00::100/120",
    "fd00::/104",
    "fd01::/120",
    "::ffff:10.0.1.0/120",  # IPv4-mapped
    "fe80::%eth0/120",  # zone
    "bogus",
]
POOLS: dict[str, dict[str, Any]] = {
    "dual-stack": {"v4": ["10.0.0.0/16", "10.2.0.0/20"], "m4": 24, "v6": ["fd00::/104"], "m6": 120},
    "ipv4 only": {"v4": ["10.0.0.0/16", "10.2.0.0/20"], "m4": 24},
}


def rule_pools(config: dict[str, Any]) -> dict[int, pool.FamilyPool]:
    return adoption.family_pools(
        {pool.IPV4: config.get("v4", []), pool.IPV6: config.get("v6", [])},
        {pool.IPV4: config.get("m4"), pool.IPV6: config.get("m6")},
    )


@pytest.mark.parametrize("name", sorted(POOLS))
def test_the_rule_accepts_exactly_what_the_core_grants_as_asked(name: str) -> None:
    config = POOLS[name]
    pools = rule_pools(config)
    requests = [list(c) for n in (1, 2) for c in itertools.product(CANDIDATES, repeat=n)]
    disagreements = []
    for texts in requests:
        networks, reason = adoption.adoptable(texts, pools)
        ledger = Ledger()
        ledger.pool(**config)
        decision = ledger("node.adopted", node="n", podCIDRs=texts)
        granted = decision["error"] is None and all(t in decision["podCIDRs"] for t in texts)
        if (reason is None) != granted:
            disagreements.append((texts, reason, decision["error"]))
        if reason is None:
            assert [addresses.format_network(n) for n in networks] == sorted(
                texts, key=lambda t: ":" in t
            )
    assert disagreements == []


def test_a_request_is_refused_with_the_cores_own_reasons() -> None:
    ledger = Ledger()
    ledger.pool(["10.0.0.0/8"], 24)
    for texts in (["10.0.3.1/24"], ["10.0.3.0/24", "10.0.4.0/24"]):
        reason = adoption.requested_cidrs(texts)
        assert isinstance(reason, str)
        assert ledger("node.adopted", node="a", podCIDRs=texts)["error"] == reason


def test_a_block_refusal_says_why() -> None:
    pools = rule_pools(POOLS["ipv4 only"])
    v4, v6 = pools[pool.IPV4], pools[pool.IPV6]

    def refusal(text: str, family_pool: pool.FamilyPool) -> str | None:
        return adoption.block_refusal(addresses.parse_network(text), family_pool)

    assert refusal("10.0.1.0/24", v4) is None
    assert (
        refusal("10.1.0.0/24", v4) == "10.1.0.0/24 is outside the pool (10.0.0.0/16, 10.2.0.0/20)"
    )
    assert refusal("10.0.0.0/8", v4) == "10.0.0.0/8 is outside the pool (10.0.0.0/16, 10.2.0.0/20)"
    assert refusal("10.0.1.0/25", v4) == "10.0.1.0/25 is a /25; the pool hands out /24"
    assert refusal("fd00::/120", v6) == "fd00::/120 is IPv6, which the pool does not enable"


def test_a_pool_the_core_would_refuse_is_refused() -> None:
    with pytest.raises(pool.PoolConfigError):
        adoption.family_pools({pool.IPV4: ["10.0.0.0/16"]}, {pool.IPV4: None})
