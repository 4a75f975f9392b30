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
