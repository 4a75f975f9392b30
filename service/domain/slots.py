"""Sparse next-fit allocation over a range of integer slots.

One structure serves both levels of allocation: the node CIDRs of a pool element (slot = the index
of a /mask block inside the element) and the pod addresses of a node CIDR (slot = the offset of an
address from the CIDR's network address). Used by ``service.domain.pool``,
``service.domain.state`` and ``service.domain.restore``; it knows nothing about addresses.

Why not a bitmap: an IPv6 pool such as fd00::/48 cut into /112 blocks has 2**64 slots, and each
/112 node CIDR has 65,534 pod addresses. Why not a list of released slots: next-fit moves the
cursor on at every request, so with pods coming and going a node's released addresses pile up
behind it until the cursor wraps; in a /112 that is tens of thousands of entries per node. The
free space is kept as runs of consecutive free slots instead. Runs are separated by used slots,
so there are never more than ``used + 1`` of them (nor more than there are free slots): memory
follows what is allocated, never the size of the range or its history.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import pairwise


class NextFitSlots:
    """Free/used bookkeeping for slots ``lo .. hi-1`` with a rotating next-fit cursor.

    ``bounds`` holds the free runs flattened, ``[start0, end0, start1, end1, ...]`` (ends
    exclusive), strictly increasing: runs neither overlap nor touch. So a slot ``s`` in range is
    free iff ``bisect_right(bounds, s)`` is odd. ``cursor`` is the last slot handed out by
    ``take_next`` (or set by the caller to undo or restore); the next search starts one past it
    and wraps, which is Cilium's next-fit order: the first free slot after the cursor, else the
    lowest free slot.
    """

    __slots__ = ("bounds", "cursor", "hi", "lo", "used")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.bounds: list[int] = [lo, hi] if lo < hi else []
        self.cursor = lo - 1
        self.used = 0

    @property
    def capacity(self) -> int:
        return self.hi - self.lo

    @property
    def full(self) -> bool:
        return self.used >= self.hi - self.lo

    def is_free(self, slot: int) -> bool:
        if slot < self.lo or slot >= self.hi:
            return False
        return bisect_right(self.bounds, slot) & 1 == 1

    def take_next(self) -> int | None:
        """Occupy the first free slot after the cursor (wrapping); None when full."""
        bounds = self.bounds
        if not bounds:
            return None
        slot = self.cursor + 1
        i = bisect_right(bounds, slot)
        if i & 1:
            start = i - 1
        else:
            # The slot after the cursor is used: take the start of the next run, or wrap to the
            # first run.
            start = 0 if i == len(bounds) else i
            slot = bounds[start]
        # As ``_take``, inlined: this runs for every pod address handed out.
        if slot == bounds[start]:
            if slot + 1 == bounds[start + 1]:
                del bounds[start : start + 2]
            else:
                bounds[start] = slot + 1
        elif slot + 1 == bounds[start + 1]:
            bounds[start + 1] = slot
        else:
            bounds[start + 1 : start + 1] = (slot, slot + 1)
        self.used += 1
        self.cursor = slot
        return slot

    def _take(self, slot: int, start: int) -> None:
        """Remove ``slot`` from the free run that begins at ``bounds[start]``."""
        bounds = self.bounds
        if slot == bounds[start]:
            if slot + 1 == bounds[start + 1]:
                del bounds[start : start + 2]
            else:
                bounds[start] = slot + 1
        elif slot + 1 == bounds[start + 1]:
            bounds[start + 1] = slot
        else:
            bounds[start + 1 : start + 1] = (slot, slot + 1)
        self.used += 1

    def occupy(self, slot: int) -> bool:
        """Mark a specific slot used (adoption, restore); False if it is not free."""
        if slot < self.lo or slot >= self.hi:
            return False
        i = bisect_right(self.bounds, slot)
        if not i & 1:
            return False
        self._take(slot, i - 1)
        return True

    def occupy_ascending(self, slots: list[int]) -> bool:
        """Mark ``slots`` used (ascending, distinct): what ``occupy`` of each would do, in bulk.

        For rebuilding a range from stored rows, where a node's 110 (or 65,534) addresses come
        at once: on a range with nothing used yet the free runs are computed in one pass (one
        run when the slots are consecutive, the usual case), instead of a bisection and a list
        edit per slot. False if a slot is out of range (nothing changed) or, on a range already
        in use, where ``occupy`` is used per slot, not free.
        """
        if not slots:
            return True
        first, last = slots[0], slots[-1]
        if first < self.lo or last >= self.hi:
            return False
        if self.used:
            return all([self.occupy(slot) for slot in slots])
        # The free runs: lo..first, every gap between two used slots, last+1..hi.
        bounds = [self.lo, first]
        if last - first != len(slots) - 1:
            for previous, slot in pairwise(slots):
                if slot - previous > 1:
                    bounds += (previous + 1, slot)
        bounds += (last + 1, self.hi)
        # Only the first and the last run can be empty (a used slot at lo or at hi-1).
        if bounds[-2] == bounds[-1]:
            del bounds[-2:]
        if bounds and bounds[0] == bounds[1]:
            del bounds[:2]
        self.bounds = bounds
        self.used = len(slots)
        return True

    def release(self, slot: int) -> bool:
        """Free a used slot; False if it was not in use. The cursor does not move."""
        if slot < self.lo or slot >= self.hi:
            return False
        bounds = self.bounds
        i = bisect_right(bounds, slot)
        if i & 1:
            return False  # already free
        # The slot lies in the gap between the run ending at bounds[i-1] and the one starting
        # at bounds[i]: extend either, join both, or open a run of one.
        joins_left = i > 0 and bounds[i - 1] == slot
        joins_right = i < len(bounds) and bounds[i] == slot + 1
        if joins_left and joins_right:
            del bounds[i - 1 : i + 1]
        elif joins_left:
            bounds[i - 1] = slot + 1
        elif joins_right:
            bounds[i] = slot
        else:
            bounds[i:i] = (slot, slot + 1)
        self.used -= 1
        return True

    def restore_cursor(self, cursor: int) -> None:
        """Set the cursor of a rebuilt range, once its used slots are occupied.

        Any order of occupying and setting the cursor gives the same structure here; the method
        stays so that rebuilding code does not depend on that.
        """
        self.cursor = cursor

    def used_slots(self) -> list[int]:
        """Every used slot, ascending: the gaps between the free runs. Costs O(used + runs)."""
        out: list[int] = []
        bounds = self.bounds
        previous = self.lo
        for i in range(0, len(bounds), 2):
            out.extend(range(previous, bounds[i]))
            previous = bounds[i + 1]
        out.extend(range(previous, self.hi))
        return out
