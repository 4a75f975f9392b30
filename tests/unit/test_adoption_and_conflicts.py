"""node.adopted (take over existing CIDRs, Cilium's error strings) and node/pool conflicts."""

from __future__ import annotations

from service.domain import document

from .conftest import Ledger


def test_adopted_cidrs_are_occupied_exactly_and_skipped_by_next_fit(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    decision = ledger("node.adopted", node="old", podCIDRs=["10.0.1.0/24"])
    assert decision["error"] is None
    assert decision["podCIDRs"] == ["10.0.1.0/24"]
    assert ledger("node.added", node="a")["podCIDRs"] == ["10.0.0.0/24"]
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.0.2.0/24"]


def test_adopting_outside_the_pool_gives_ciliums_error(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    decision = ledger("node.adopted", node="n", podCIDRs=["192.168.0.0/24"])
    assert decision["error"] == "allocator not configured for the requested CIDR 192.168.0.0/24"
    assert decision["podCIDRs"] == []
    # Wrong size is not a block of the pool either.
    decision = ledger("node.adopted", node="m", podCIDRs=["10.0.0.0/16"])
    assert decision["error"] == "allocator not configured for the requested CIDR 10.0.0.0/16"


def test_adopting_a_taken_cidr_gives_ciliums_error_and_the_node_is_not_given_another(
    ledger: Ledger,
) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    decision = ledger("node.adopted", node="b", podCIDRs=["10.0.0.0/24"])
    assert decision["error"] == "requested CIDR (10.0.0.0/24) is already allocated"
    assert ledger.node("b").error == decision["error"]
    ledger("node.deleted", node="a")
    # Pinned: it asked for exactly that CIDR, so freeing space does not hand it a different one.
    assert ledger.node("b").ranges == {}


def test_adopting_different_cidrs_for_a_node_that_has_some_is_refused(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    before = document.digest(ledger.state)
    decision = ledger("node.adopted", node="a", podCIDRs=["10.0.5.0/24"])
    assert decision["error"] == (
        "node has CIDRs allocated ([10.0.0.0/24]) that conflict with requested CIDRs [10.0.5.0/24]"
    )
    assert document.digest(ledger.state) == before


def test_re_adopting_the_same_cidrs_is_idempotent(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    first = ledger("node.adopted", node="a", podCIDRs=["10.0.7.0/24", "fd00::700/120"])
    assert first["error"] is None
    before = document.digest(ledger.state)
    again = ledger("node.adopted", node="a", podCIDRs=["10.0.7.0/24", "fd00::700/120"])
    assert again["podCIDRs"] == first["podCIDRs"] == ["10.0.7.0/24", "fd00::700/120"]
    assert document.digest(ledger.state) == before


def test_adopting_one_family_in_a_dual_stack_pool_allocates_the_other(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    decision = ledger("node.adopted", node="a", podCIDRs=["10.0.3.0/24"])
    assert decision["podCIDRs"] == ["10.0.3.0/24", "fd00::/120"]


def test_malformed_adoptions_are_rejected(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    assert "invalid CIDR" in ledger("node.adopted", node="a", podCIDRs=["10.0.3.1/24"])["error"]
    assert (
        "more than one ipv4"
        in ledger("node.adopted", node="a", podCIDRs=["10.0.3.0/24", "10.0.4.0/24"])["error"]
    )
    assert ledger("node.adopted", node="a", podCIDRs=[])["error"] == "podCIDRs is empty"
    assert "a" not in ledger.state.clusters["default"].nodes


def test_node_address_inside_the_pool_is_flagged_and_still_served(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    decision = ledger("node.added", node="a", addresses=["10.0.0.5", "192.168.1.1"])
    assert decision["conflict"] == "node address 10.0.0.5 is inside the pod CIDR pool 10.0.0.0/8"
    assert decision["podCIDRs"] == ["10.0.0.0/24"]
    # Its own address sits in its CIDR and must never go to a pod.
    ips = [ledger("ip.requested", node="a", owner=f"ns/p{i}")["ips"][0] for i in range(6)]
    assert "10.0.0.5" not in ips
    assert ips == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.6", "10.0.0.7"]


def test_pool_growth_over_a_node_network_flags_the_node(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/16"], 24)
    assert ledger("node.added", node="a", addresses=["10.9.0.1"])["conflict"] is None
    ledger.pool(["10.0.0.0/16", "10.9.0.0/16"], 24)
    assert (
        ledger.node("a").conflict == "node address 10.9.0.1 is inside the pod CIDR pool 10.9.0.0/16"
    )
    # Moving the node off the pool clears the flag.
    assert ledger("node.added", node="a", addresses=["192.0.2.1"])["conflict"] is None


def test_invalid_node_address_is_rejected(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    decision = ledger("node.added", node="a", addresses=["10.0.0.300"])
    assert decision["error"].startswith("invalid address '10.0.0.300'")
    assert "a" not in ledger.state.clusters["default"].nodes
