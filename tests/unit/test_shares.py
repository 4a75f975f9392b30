"""``service.shares.assign``: the table log's fair shares of partitions among live members."""

from __future__ import annotations

import itertools
import random

import pytest

from service import shares

PARTITIONS = list(range(6))


def counts(assignment: dict[str, frozenset[int]]) -> list[int]:
    return sorted(len(parts) for parts in assignment.values())


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("partitions", [1, 4, 6, 7])
def test_every_partition_once_and_the_counts_within_one(members: int, partitions: int) -> None:
    names = [f"m{i}" for i in range(members)]
    assignment = shares.assign(list(range(partitions)), names, {})
    everything = [p for parts in assignment.values() for p in parts]
    assert sorted(everything) == list(range(partitions))
    assert max(counts(assignment)) - min(counts(assignment)) <= 1
    assert set(assignment) == set(names)


def test_the_same_members_in_any_order_give_the_same_assignment() -> None:
    names = ["a:1", "b:2", "c:3"]
    holders = {0: "b:2", 3: "c:3"}
    first = shares.assign(PARTITIONS, names, holders)
    for order in itertools.permutations(names):
        assert shares.assign(PARTITIONS, list(order), holders) == first


def test_live_leases_stay_with_their_holders_within_the_quota() -> None:
    holders = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"}
    assert shares.assign(PARTITIONS, ["a", "b", "c"], holders) == {
        "a": frozenset({0, 1}),
        "b": frozenset({2, 3}),
        "c": frozenset({4, 5}),
    }


def test_one_member_holding_everything_hands_over_only_its_excess() -> None:
    # The first process up leads all six; two join: it keeps two, the others get two each.
    holders = dict.fromkeys(PARTITIONS, "first")
    assignment = shares.assign(PARTITIONS, ["first", "second", "third"], holders)
    assert counts(assignment) == [2, 2, 2]
    assert assignment["first"] <= set(PARTITIONS)
    assert len(assignment["first"]) == 2


def test_a_member_that_leaves_moves_only_its_own_partitions() -> None:
    rng = random.Random(7)
    for _ in range(50):
        names = [f"host:{rng.randrange(10**6)}" for _ in range(4)]
        before = shares.assign(list(range(8)), names, {})
        holders = {p: m for m, parts in before.items() for p in parts}
        gone = names[rng.randrange(4)]
        after = shares.assign(list(range(8)), [n for n in names if n != gone], holders)
        for member in after:
            assert before[member] <= after[member]


def test_the_holder_of_the_only_partition_keeps_it_when_a_standby_joins() -> None:
    # Whichever name sorts first: the extra partition goes to the member already leading.
    for holder, other in (("a", "z"), ("z", "a")):
        assignment = shares.assign([0], [holder, other], {0: holder})
        assert assignment == {holder: frozenset({0}), other: frozenset()}


def test_holders_that_are_not_members_are_ignored() -> None:
    assignment = shares.assign(PARTITIONS, ["a", "b"], dict.fromkeys(PARTITIONS, "dead"))
    assert counts(assignment) == [3, 3]


def test_no_members_no_assignment() -> None:
    assert shares.assign(PARTITIONS, [], {}) == {}
