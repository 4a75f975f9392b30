"""Node CIDRs from the cluster pool: Cilium v1.16 cluster-pool behaviour, plus the BETTERs."""

from __future__ import annotations

from service.domain import document

from .conftest import Ledger


def test_nodes_get_consecutive_cidrs_from_the_first_element(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    assert ledger("node.added", node="a")["podCIDRs"] == ["10.0.0.0/24"]
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.0.1.0/24"]


def test_dual_stack_lists_ipv4_before_ipv6(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    decision = ledger("node.added", node="a")
    assert decision == {
        "id": decision["id"],
        "type": "node.added",
        "cluster": "default",
        "error": None,
        "podCIDRs": ["10.0.0.0/24", "fd00::/120"],
        "conflict": None,
    }


def test_first_element_that_is_not_full_is_used_in_list_order(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30", "10.1.0.0/30"], 30)
    assert ledger("node.added", node="a")["podCIDRs"] == ["10.0.0.0/30"]
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.1.0.0/30"]
    ledger("node.deleted", node="a")
    # The first element has room again and comes first in list order.
    assert ledger("node.added", node="c")["podCIDRs"] == ["10.0.0.0/30"]


def test_released_cidr_is_reused_only_when_the_cursor_comes_round(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/28"], 30)
    ledger("node.added", node="a")
    ledger("node.added", node="b")
    ledger("node.deleted", node="a")
    assert ledger("node.added", node="c")["podCIDRs"] == ["10.0.0.8/30"]
    assert ledger("node.added", node="d")["podCIDRs"] == ["10.0.0.12/30"]
    assert ledger("node.added", node="e")["podCIDRs"] == ["10.0.0.0/30"]


def test_exhausted_node_waits_with_cilium_error_and_is_served_when_the_pool_grows(
    ledger: Ledger,
) -> None:
    ledger.pool(["10.0.0.0/30"], 30)
    ledger("node.added", node="a")
    for name in ("b", "c"):
        decision = ledger("node.added", node=name)
        assert decision["error"] == "allocator full"
        assert decision["podCIDRs"] == []
    assert ledger.node("b").error == "allocator full"
    assert ledger.pool(["10.0.0.0/30", "10.0.1.0/29"], 30)["error"] is None
    # Served in arrival order: b first, then c.
    assert ledger.node("b").pod_cidr_texts() == ("10.0.1.0/30",)
    assert ledger.node("c").pod_cidr_texts() == ("10.0.1.4/30",)
    assert ledger.node("b").error is None


def test_deleting_a_node_serves_the_oldest_waiting_node(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30)
    ledger("node.added", node="a")
    ledger("node.added", node="b")
    ledger("node.added", node="c")
    ledger("node.deleted", node="a")
    assert ledger.node("b").pod_cidr_texts() == ("10.0.0.0/30",)
    assert ledger.node("c").error == "allocator full"


def test_dual_stack_is_all_or_nothing_and_rolls_back_the_cursor(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/29"], 30, ["fd00::/126"], 126)
    ledger("node.added", node="a")
    before = document.digest(ledger.state)
    decision = ledger("node.added", node="b")
    assert decision["error"] == "allocator full"
    assert decision["podCIDRs"] == []
    assert ledger.node("b").ranges == {}
    ledger("node.deleted", node="b")
    assert document.digest(ledger.state) == before
    # The IPv4 block b briefly took went back, cursor included: the next node gets it.
    ledger.pool(["10.0.0.0/29"], 30, ["fd00::/126", "fd00:1::/126"], 126)
    assert ledger("node.added", node="c")["podCIDRs"] == ["10.0.0.4/30", "fd00:1::/126"]


def test_repeated_node_added_is_idempotent_and_only_updates_addresses(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    first = ledger("node.added", node="a", addresses=["192.168.0.1"])
    again = ledger("node.added", node="a", addresses=["192.168.0.2"])
    assert again["podCIDRs"] == first["podCIDRs"]
    assert [str(a) for a in ledger.node("a").addresses] == ["192.168.0.2"]
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.0.1.0/24"]


def test_ipv6_pool_with_more_than_16_bits_of_node_cidrs_is_accepted(ledger: Ledger) -> None:
    assert ledger.pool(v6=["fd00::/48"], m6=112)["error"] is None
    assert ledger("node.added", node="a")["podCIDRs"] == ["fd00::/112"]
    assert ledger("node.added", node="b")["podCIDRs"] == ["fd00::1:0/112"]


def test_nodes_added_before_any_pool_wait_and_are_served_when_it_arrives(ledger: Ledger) -> None:
    decision = ledger("node.added", node="a")
    assert decision["error"] == "no pool configured for cluster default"
    ledger.pool(["10.0.0.0/8"], 24)
    assert ledger.node("a").pod_cidr_texts() == ("10.0.0.0/24",)


def test_enabling_a_second_family_gives_existing_nodes_a_cidr_of_it(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    assert ledger.node("a").pod_cidr_texts() == ("10.0.0.0/24", "fd00::/120")


def test_node_deleted_releases_cidrs_and_reports_them(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30)
    ledger("node.added", node="a")
    ledger("ip.requested", node="a", owner="ns/p")
    decision = ledger("node.deleted", node="a")
    assert decision["error"] is None
    assert decision["podCIDRs"] == ["10.0.0.0/30"]
    assert "a" not in ledger.state.clusters["default"].nodes
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.0.0.0/30"]


def test_deleting_an_unknown_node_is_rejected_and_changes_nothing(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    before = document.digest(ledger.state)
    assert ledger("node.deleted", node="ghost")["error"] == "unknown node ghost"
    assert document.digest(ledger.state) == before


def test_clusters_are_independent_allocation_domains(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, cluster="east")
    ledger.pool(["10.0.0.0/8"], 24, cluster="west")
    assert ledger("node.added", node="a", cluster="east")["podCIDRs"] == ["10.0.0.0/24"]
    assert ledger("node.added", node="a", cluster="west")["podCIDRs"] == ["10.0.0.0/24"]
    assert ledger("node.added", node="b", cluster="west")["cluster"] == "west"
    assert set(ledger.state.clusters) == {"east", "west"}
