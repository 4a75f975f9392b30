"""NextFitSlots: next-fit order, wrap-around, sparse ranges and out-of-order occupation."""

from __future__ import annotations

from service.domain.slots import NextFitSlots


def test_hands_out_in_order_then_wraps_to_released_slots_only_when_cursor_comes_round() -> None:
    slots = NextFitSlots(0, 4)
    assert [slots.take_next() for _ in range(3)] == [0, 1, 2]
    assert slots.release(0)
    # The cursor is at 2: the never-used 3 comes before the released 0.
    assert slots.take_next() == 3
    assert slots.take_next() == 0
    assert slots.take_next() is None
    assert slots.full


def test_released_slot_ahead_of_cursor_is_taken_first() -> None:
    slots = NextFitSlots(0, 8)
    for _ in range(6):
        slots.take_next()
    slots.release(1)
    slots.release(4)
    slots.cursor = 2  # as if the cursor had last handed out 2
    assert slots.take_next() == 4
    assert slots.take_next() == 6
    assert slots.take_next() == 7
    assert slots.take_next() == 1


def test_lower_bound_is_respected() -> None:
    slots = NextFitSlots(1, 3)
    assert [slots.take_next(), slots.take_next(), slots.take_next()] == [1, 2, None]
    assert not slots.is_free(0)
    assert not slots.occupy(0)
    assert not slots.release(3)


def test_occupy_far_slot_in_a_huge_range_costs_nothing_and_is_skipped() -> None:
    slots = NextFitSlots(0, 1 << 64)
    assert slots.occupy(1 << 60)
    assert slots.occupy(1)
    assert not slots.occupy(1)
    assert slots.take_next() == 0
    assert slots.take_next() == 2  # 1 was occupied out of order
    assert slots.used == 4
    assert slots.release(1 << 60)
    assert slots.is_free(1 << 60)
    assert slots.used_slots() == [0, 1, 2]


def test_double_release_is_refused_and_counts_stay_right() -> None:
    slots = NextFitSlots(0, 2)
    slots.take_next()
    assert slots.release(0)
    assert not slots.release(0)
    assert slots.used == 0
    assert slots.take_next() == 1
    assert slots.take_next() == 0


def test_occupying_ascending_slots_in_bulk_is_occupying_each() -> None:
    cases = [
        (1, 255, list(range(1, 111))),  # a /24 node's 110 pods: one used run
        (1, 255, [1, 2, 5, 9, 10, 254]),  # gaps, and a used slot at each end
        (0, 8, [3]),
        (0, 8, list(range(8))),  # the whole range
        (0, 8, []),
    ]
    for lo, hi, used in cases:
        bulk, each = NextFitSlots(lo, hi), NextFitSlots(lo, hi)
        assert bulk.occupy_ascending(used)
        assert all(each.occupy(slot) for slot in used)
        assert (bulk.bounds, bulk.used) == (each.bounds, each.used)
        assert bulk.used_slots() == used


def test_occupying_in_bulk_refuses_slots_out_of_range_and_taken_ones() -> None:
    slots = NextFitSlots(1, 255)
    assert not slots.occupy_ascending([0, 1])
    assert not slots.occupy_ascending([254, 255])
    assert (slots.bounds, slots.used) == ([1, 255], 0)
    assert slots.occupy_ascending([3, 4])
    # On a range in use, slot by slot: a taken slot is refused (the free ones are occupied;
    # a restore that meets one gives up on the whole state).
    assert not slots.occupy_ascending([4, 5])
    assert slots.occupy_ascending([7, 8])
    assert slots.used_slots() == [3, 4, 5, 7, 8]
