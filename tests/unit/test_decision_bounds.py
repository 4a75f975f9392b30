"""What a decision touches: the bounds of docs/allocation.md, counted rather than timed.

Each test builds a large cluster and counts the calls a decision makes into the structures that
used to be walked whole (every waiting node tried, every pool element scanned, every node's
conflict re-checked), so a regression to O(n) per decision fails here on any machine, fast or
loaded. Times live in the benchmark (``python -m bench --only core``), not in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.domain import allocation, document, pool, state

from .conftest import Ledger


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Iterator[list[int]]:
    """Count the calls of ``owner.name`` while the block runs."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, counted)
        yield calls


def full_pool_with_waiting(ledger: Ledger, waiting: int) -> None:
    """A /22 cut into /24s (4 node CIDRs), 4 nodes holding them and ``waiting`` more waiting."""
    ledger.pool(["10.0.0.0/22"], 24)
    for i in range(4 + waiting):
        ledger("node.added", node=f"n{i}")
    assert len(ledger.state.clusters["default"].waiting) == waiting


def test_deleting_a_waiting_node_tries_no_other_node(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_pool_with_waiting(ledger, 2000)
    with counting(monkeypatch, allocation, "_allocate_missing") as tries:
        for i in range(100, 200):
            assert ledger("node.deleted", node=f"n{i}")["error"] is None
    # Nothing was freed: at most one try per deletion finds IPv4 full, then the pass ends.
    assert tries[0] <= 100
    assert len(ledger.state.clusters["default"].waiting) == 1900


def test_a_deletion_that_frees_one_cidr_serves_the_earliest_waiting_node_only(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_pool_with_waiting(ledger, 2000)
    with counting(monkeypatch, allocation, "_allocate_missing") as tries:
        decision = ledger("node.deleted", node="n1")
    assert decision["podCIDRs"] == ["10.0.1.0/24"]
    assert tries[0] == 2  # n4 is served, n5 finds the pool full and ends the pass
    assert ledger.node("n4").pod_cidr_texts() == ("10.0.1.0/24",)
    assert ledger.node("n5").ranges == {}


def test_waiting_nodes_that_need_a_full_family_are_skipped_not_tried(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dual stack with IPv4 full and IPv6 roomy: every waiting node needs IPv4, so once the first
    # try finds IPv4 full the pass is over, however many wait.
    ledger.pool(["10.0.0.0/23"], 24, ["fd00::/118"], 120)  # 2 IPv4, 4 IPv6 node CIDRs
    ledger("node.added", node="a")
    ledger("node.added", node="b")
    for i in range(500):
        ledger("node.added", node=f"w{i}")  # lack both families: IPv4 is full
    ledger("node.deleted", node="b")  # frees one of each; w0 takes them
    # Next-fit: IPv6's cursor is past b's block, so w0 gets the next one.
    assert ledger.node("w0").pod_cidr_texts() == ("10.0.1.0/24", "fd00::200/120")
    with counting(monkeypatch, allocation, "_allocate_missing") as tries:
        ledger("node.deleted", node="w300")
    assert tries[0] <= 1


def test_the_first_element_with_room_is_found_without_walking_the_full_ones(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    elements = [f"10.{i // 256}.{i % 256}.0/24" for i in range(1024)]
    ledger.pool(elements, 25)  # two node CIDRs per element
    for i in range(2 * 1024 - 1):
        ledger("node.added", node=f"n{i}")
    with counting(monkeypatch, pool.NextFitSlots, "take_next") as takes:
        assert ledger("node.added", node="last")["podCIDRs"] == ["10.3.255.128/25"]
    # The full elements before it are popped from the heap once, when first found full.
    assert takes[0] == 1
    ledger("node.deleted", node="n0")  # element 0 has room again: it is first in list order
    assert ledger("node.added", node="again")["podCIDRs"] == ["10.0.0.0/25"]


def test_repeating_a_large_pool_parses_nothing(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    v4 = [f"10.{i // 256}.{i % 256}.0/24" for i in range(1024)]
    v6 = [f"fd00:{i:x}:0::/64" for i in range(1024)]  # not the canonical spelling
    assert ledger.pool(v4, 26, v6, 120)["error"] is None
    before = document.digest(ledger.state)
    with counting(monkeypatch, pool.addresses, "parse_network") as parsed:
        assert ledger.pool(v4, 26, v6, 120)["error"] is None
        canonical = list(ledger.state.clusters["default"].pools[6].texts)
        assert canonical[:2] == ["fd00::/64", "fd00:1::/64"]
        assert ledger.pool(v4, 26, canonical, 120)["error"] is None
    assert parsed[0] == 0
    assert document.digest(ledger.state) == before


def test_appended_elements_are_checked_for_overlap_without_pairing_every_element(
    ledger: Ledger,
) -> None:
    v4 = [f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)]
    ledger.pool(v4, 26)
    overlapping = ledger.pool([*v4, "10.0.5.128/25"], 26)
    assert overlapping["error"] == "pool elements 10.0.5.0/24 and 10.0.5.128/25 overlap"
    among_new = ledger.pool([*v4, "192.168.0.0/16", "192.168.4.0/24"], 26)
    assert among_new["error"] == "pool elements 192.168.0.0/16 and 192.168.4.0/24 overlap"
    assert ledger.pool([*v4, "192.168.0.0/24"], 26)["error"] is None


def test_pool_growth_rechecks_only_the_nodes_inside_the_new_element(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.pool(["10.0.0.0/16"], 24)
    for i in range(200):
        ledger("node.added", node=f"n{i}", addresses=[f"192.168.{i}.1"])
    ledger("node.added", node="inside", addresses=["172.16.0.9"])
    with counting(monkeypatch, allocation, "_refresh_conflict") as checks:
        ledger.pool(["10.0.0.0/16", "172.16.0.0/16"], 24)
    assert checks[0] == 1
    assert ledger.node("inside").conflict == (
        "node address 172.16.0.9 is inside the pod CIDR pool 172.16.0.0/16"
    )


def test_restored_waiting_queue_is_derived_in_arrival_order() -> None:
    ledger = Ledger()
    ledger.pool(["10.0.0.0/24"], 24)
    for name in ("z", "b", "m", "a"):
        ledger("node.added", node=name)
    cluster = ledger.state.clusters["default"]
    assert cluster.waiting.names() == ["b", "m", "a"]
    ledger("node.deleted", node="z")
    assert ledger.node("b").pod_cidr_texts() == ("10.0.0.0/24",)
    assert cluster.waiting.names() == ["m", "a"]
    assert isinstance(cluster.waiting, state.WaitingQueue)
