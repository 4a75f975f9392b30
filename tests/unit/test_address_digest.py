"""``service.audit.address_digest.of``: the replay's side of the address tables' digests (the
server's side, and that both are the same bytes: tests/integration/test_address_digest.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from service.audit import address_digest

_T0 = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)
_HOLDING = {
    ("a", 4, 1): ("n1", "ns/p1", 0, 3, _T0),
    ("a", 6, 1 << 100): ("n1", "ns/p2", 0, 3, _T0),
    ("b", 4, 1): ("n2", "ns/p3", 0, 5, _T0),
}
_FINISHED = [
    (("a", 4, 9), 0, ("n1", "ns/p0", 0, _T0, 3, _T0)),
    (("a", 4, 8), 1, ("n1", "ns/p4", 0, _T0, 3, _T0)),
]


def _digests(holding: dict[Any, Any], finished: list[Any]) -> dict[str, address_digest.Digest]:
    digests = address_digest.of(holding, finished)
    assert digests is not None
    return digests


def test_the_order_the_rows_are_held_in_does_not_matter() -> None:
    reordered = dict(reversed(_HOLDING.items()))
    assert address_digest.of(reordered, _FINISHED[::-1]) == address_digest.of(_HOLDING, _FINISHED)


@pytest.mark.parametrize(
    ("key", "index", "value"),
    [
        (("a", 4, 1), 0, "n9"),
        (("a", 4, 1), 1, "ns/p1x"),
        (("a", 4, 1), 2, 1),
        (("a", 4, 1), 3, 4),
        (("a", 4, 1), 4, _T0 + datetime.timedelta(microseconds=1)),
    ],
)
def test_any_changed_field_of_a_holding_changes_its_digest(
    key: tuple[str, int, int], index: int, value: object
) -> None:
    changed = dict(_HOLDING)
    row = list(changed[key])
    row[index] = value
    changed[key] = tuple(row)
    assert _digests(changed, _FINISHED)["pod_ip"] != _digests(_HOLDING, _FINISHED)["pod_ip"]


def test_a_text_moved_from_one_field_to_the_next_changes_the_digest() -> None:
    # Texts are framed by their lengths: "n1" + "ns/p1" is not "n1n" + "s/p1".
    moved = dict(_HOLDING)
    moved[("a", 4, 1)] = ("n1n", "s/p1", 0, 3, _T0)
    assert address_digest.of(moved, _FINISHED) != address_digest.of(_HOLDING, _FINISHED)


def test_a_finished_holding_more_or_less_changes_the_history_digest() -> None:
    fewer = _digests(_HOLDING, _FINISHED[:1])
    assert fewer["ip_history"] != _digests(_HOLDING, _FINISHED)["ip_history"]
    assert fewer["ip_history"][0] == 1


def test_a_time_a_double_cannot_keep_to_the_microsecond_declines() -> None:
    far = datetime.datetime(2300, 1, 1, tzinfo=datetime.UTC)
    assert address_digest.of({("a", 4, 1): ("n", "o", 0, 0, far)}, []) is None
    assert address_digest.of({}, [(("a", 4, 1), 0, ("n", "o", 0, _T0, 1, far))]) is None


def test_no_rows_have_a_digest() -> None:
    digests = _digests({}, [])
    assert digests["pod_ip"][0] == digests["ip_history"][0] == 0
