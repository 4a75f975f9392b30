"""Pod addresses inside a node CIDR: usable range, next-fit, idempotency, families, release."""

from __future__ import annotations

from service.domain import document

from .conftest import Ledger


def test_usable_addresses_are_network_plus_one_to_last_minus_one(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30, ["fd00::/126"], 126)
    ledger("node.added", node="a")
    assert ledger("ip.requested", node="a", owner="ns/p")["ips"] == ["fd00::1", "10.0.0.1"]
    assert ledger("ip.requested", node="a", owner="ns/q")["ips"] == ["fd00::2", "10.0.0.2"]
    decision = ledger("ip.requested", node="a", owner="ns/r")
    assert decision["error"] == "range is full"
    assert decision["ips"] == []


def test_next_fit_reuses_a_released_address_only_when_the_cursor_comes_round(
    ledger: Ledger,
) -> None:
    ledger.pool(["10.0.0.0/29"], 29)
    ledger("node.added", node="a")
    for i in range(3):
        ledger("ip.requested", node="a", owner=f"ns/p{i}", family="ipv4")
    ledger("ip.released", node="a", owner="ns/p0")
    got = [ledger("ip.requested", node="a", owner=f"ns/q{i}")["ips"][0] for i in range(4)]
    assert got == ["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.1"]


def test_repeated_request_returns_the_same_address(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    first = ledger("ip.requested", node="a", owner="ns/p")
    before = document.digest(ledger.state)
    assert ledger("ip.requested", node="a", owner="ns/p") == {**first, "id": ledger.last_id}
    assert document.digest(ledger.state) == before


def test_family_omitted_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30, ["fd00::/120"], 120)
    ledger("node.added", node="a")
    ledger("ip.requested", node="a", owner="ns/x", family="ipv4")
    ledger("ip.requested", node="a", owner="ns/y", family="ipv4")
    before = document.digest(ledger.state)
    decision = ledger("ip.requested", node="a", owner="ns/p")
    assert decision["error"] == "range is full"
    # The IPv6 address taken first was given back, cursor included.
    assert document.digest(ledger.state) == before
    assert ledger("ip.requested", node="a", owner="ns/p", family="ipv6")["ips"] == ["fd00::1"]


def test_a_single_family_can_be_requested(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    ledger("node.added", node="a")
    assert ledger("ip.requested", node="a", owner="ns/p", family="ipv4")["ips"] == ["10.0.0.1"]
    assert ledger("ip.requested", node="a", owner="ns/p")["ips"] == ["fd00::1", "10.0.0.1"]


def test_requesting_a_family_that_is_not_enabled_is_rejected(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    assert ledger("ip.requested", node="a", owner="o", family="ipv6")["error"] == (
        "ipv6 is not enabled in the pool"
    )


def test_requests_on_unknown_or_cidr_less_nodes_are_rejected(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30)
    ledger("node.added", node="a")
    ledger("node.added", node="b")  # waits: allocator full
    assert ledger("ip.requested", node="zz", owner="o")["error"] == "unknown node zz"
    assert ledger("ip.requested", node="b", owner="o")["error"] == "node b has no ipv4 pod CIDR"


def test_release_by_owner_and_by_address(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    ledger("node.added", node="a")
    ledger("ip.requested", node="a", owner="ns/p")
    assert ledger("ip.released", node="a", owner="ns/p", ip="10.0.0.1")["ips"] == ["10.0.0.1"]
    assert ledger("ip.released", node="a", owner="ns/p")["ips"] == ["fd00::1"]
    assert ledger.node("a").ranges[4].owner_of == {}


def test_releasing_what_is_not_held_is_rejected_and_changes_nothing(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    ledger("ip.requested", node="a", owner="ns/p")
    before = document.digest(ledger.state)
    assert ledger("ip.released", node="a", owner="ns/q")["error"] == (
        "ns/q holds no address on node a"
    )
    assert ledger("ip.released", node="a", owner="ns/q", ip="10.0.0.1")["error"] == (
        "10.0.0.1 is not held by ns/q on node a"
    )
    assert ledger("ip.released", node="a", owner="ns/p", ip="10.9.9.9")["error"] == (
        "10.9.9.9 is not held by ns/p on node a"
    )
    assert ledger("ip.released", node="a", owner="ns/p", ip="bad")["error"].startswith(
        "invalid ip 'bad'"
    )
    assert document.digest(ledger.state) == before


def test_changes_journal_records_every_address_handed_out_and_back(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24)
    ledger("node.added", node="a")
    ledger.state.clusters["default"].take_changes()
    ledger("ip.requested", node="a", owner="ns/p")
    ledger("ip.requested", node="a", owner="ns/q")
    ledger("node.deleted", node="a")
    changes = ledger.state.clusters["default"].take_changes()
    assert [(c.address & 0xFF, c.owner, c.held) for c in changes.ips] == [
        (1, "ns/p", True),
        (2, "ns/q", True),
        (1, "ns/p", False),
        (2, "ns/q", False),
    ]
    assert changes.nodes == {"a"}
    assert changes.pool
