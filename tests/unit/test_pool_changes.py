"""Pool configuration: validation and the append-only rule (Cilium accepts such changes)."""

from __future__ import annotations

import pytest

from service.domain import document

from .conftest import Ledger


@pytest.mark.parametrize(
    ("v4", "m4", "v6", "m6", "reason"),
    [
        (["10.0.0.1/8"], 24, None, None, "invalid CIDR '10.0.0.1/8'"),
        (["not-a-cidr"], 24, None, None, "invalid CIDR 'not-a-cidr'"),
        (["fd00::/104"], 24, None, None, "fd00::/104 is not an IPv4 CIDR"),
        (None, None, ["10.0.0.0/8"], 120, "10.0.0.0/8 is not an IPv6 CIDR"),
        (["10.0.0.0/8", "10.1.0.0/16"], 24, None, None, "overlap"),
        (["10.0.0.0/16"], 8, None, None, "shorter than the prefix of 10.0.0.0/16"),
        (["10.0.0.0/8"], 31, None, None, "leaves no pod address (at most 30)"),
        (None, None, ["fd00::/104"], 127, "leaves no pod address (at most 126)"),
        (["10.0.0.0/8"], None, None, None, "clusterPoolIPv4MaskSize is required"),
    ],
)
def test_invalid_pools_are_rejected_with_a_reason(
    ledger: Ledger,
    v4: list[str] | None,
    m4: int | None,
    v6: list[str] | None,
    m6: int | None,
    reason: str,
) -> None:
    decision = ledger.pool(v4, m4, v6, m6)
    assert decision["error"] is not None
    assert reason in decision["error"]
    assert "default" not in ledger.state.clusters


@pytest.mark.parametrize(
    ("v4", "m4", "reason"),
    [
        (["10.1.0.0/16"], 24, "may only be appended to"),
        ([], None, "may only be appended to"),
        (["10.2.0.0/16", "10.0.0.0/16"], 24, "may only be appended to"),
        (["10.0.0.0/16"], 25, "cannot change from 24 to 25"),
    ],
)
def test_changing_or_removing_elements_or_the_mask_is_refused_and_changes_nothing(
    ledger: Ledger, v4: list[str], m4: int | None, reason: str
) -> None:
    ledger.pool(["10.0.0.0/16"], 24)
    ledger("node.added", node="a")
    before = document.digest(ledger.state)
    decision = ledger.pool(v4, m4)
    assert reason in (decision["error"] or "")
    assert document.digest(ledger.state) == before


def test_repeating_the_same_pool_is_accepted_and_changes_nothing(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/16"], 24, ["fd00::/104"], 120)
    ledger("node.added", node="a")
    before = document.digest(ledger.state)
    assert ledger.pool(["10.0.0.0/16"], 24, ["fd00::/104"], 120)["error"] is None
    assert document.digest(ledger.state) == before


def test_appending_an_element_of_a_full_pool_keeps_existing_allocations(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/30"], 30)
    ledger("node.added", node="a")
    assert ledger.pool(["10.0.0.0/30", "10.9.0.0/30"], 30)["error"] is None
    assert ledger.node("a").pod_cidr_texts() == ("10.0.0.0/30",)
    assert ledger("node.added", node="b")["podCIDRs"] == ["10.9.0.0/30"]


def test_pool_document_shows_the_configuration_in_force(ledger: Ledger) -> None:
    ledger.pool(["10.0.0.0/8"], 24, ["fd00::/104"], 120)
    ledger.pool(["10.0.0.0/8", "11.0.0.0/8"], 24, ["fd00::/104"], 120)
    doc = document.state_document(ledger.state)["clusters"]["default"]["pool"]
    assert doc == {
        "clusterPoolIPv4PodCIDRList": ["10.0.0.0/8", "11.0.0.0/8"],
        "clusterPoolIPv4MaskSize": 24,
        "clusterPoolIPv6PodCIDRList": ["fd00::/104"],
        "clusterPoolIPv6MaskSize": 120,
    }
