"""Sparse next-fit allocation over a range of integer slots.

One structure serves both levels of allocation: the node CIDRs of a pool element (slot = the index
of a /mask block inside the element) and the pod addresses of a node CIDR (slot = the offset of an
address from the CIDR's network address). Used by ``service.domain.pool`` and
``service.domain.state``; it knows nothing about addresses.

Why not a bitmap: an IPv6 pool such as fd00::/48 cut into /112 blocks has 2**64 slots. The free
space is kept as a high-water mark plus the slots released below it, so memory follows what was
allocated, never the size of the range.
"""

from __future__ import annotations

from bisect import bisect_right, insort


class NextFitSlots:
    """Free/used bookkeeping for slots ``lo .. hi-1`` with a rotating next-fit cursor.

    Invariant: a slot ``s`` is free iff ``s < hwm and s in freed`` or ``s >= hwm and s not in
    above``. ``freed`` is a sorted list; ``above`` holds slots occupied out of order (adoption)
    at or past the high-water mark. ``cursor`` is the last slot handed out by ``take_next``; the
    next search starts one past it and wraps, which is Cilium's next-fit order.
    """

    __slots__ = ("above", "cursor", "freed", "hi", "hwm", "lo", "used")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.hwm = lo
        self.freed: list[int] = []
        self.above: set[int] | None = None
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
        if slot < self.hwm:
            freed = self.freed
            i = bisect_right(freed, slot)
            return i > 0 and freed[i - 1] == slot
        return self.above is None or slot not in self.above

    def take_next(self) -> int | None:
        """Occupy the first free slot after the cursor (wrapping); None when full."""
        if self.used >= self.hi - self.lo:
            return None
        freed = self.freed
        i = bisect_right(freed, self.cursor)
        if i < len(freed):
            slot = freed.pop(i)
        else:
            fresh = self._first_free_from_hwm()
            # Everything past the cursor is taken: wrap to the lowest released slot.
            slot = freed.pop(0) if fresh is None else fresh
        self.cursor = slot
        self.used += 1
        return slot

    def _first_free_from_hwm(self) -> int | None:
        slot = self.hwm
        above = self.above
        if above:
            while slot in above:
                above.discard(slot)
                slot += 1
        if slot >= self.hi:
            self.hwm = slot
            return None
        self.hwm = slot + 1
        return slot

    def occupy(self, slot: int) -> bool:
        """Mark a specific slot used (adoption, restore); False if it is not free."""
        if not self.is_free(slot):
            return False
        if slot < self.hwm:
            self.freed.remove(slot)
        elif slot == self.hwm and not self.above:
            self.hwm += 1
        else:
            if self.above is None:
                self.above = set()
            self.above.add(slot)
        self.used += 1
        return True

    def release(self, slot: int) -> bool:
        """Free a used slot; False if it was not in use. The cursor does not move."""
        if slot < self.lo or slot >= self.hi or self.is_free(slot):
            return False
        if slot < self.hwm:
            insort(self.freed, slot)
        else:
            assert self.above is not None
            self.above.discard(slot)
        self.used -= 1
        return True

    def restore_cursor(self, cursor: int) -> None:
        """Set the cursor of a rebuilt range (slots occupied first), keeping ``cursor < hwm``.

        Free slots between the high-water mark and the cursor move into ``freed``: they lie
        behind the cursor now and are only reached again after wrapping.
        """
        if cursor >= self.hwm:
            above = self.above or set()
            self.freed.extend(s for s in range(self.hwm, cursor + 1) if s not in above)
            self.freed.sort()
            if above:
                self.above = {s for s in above if s > cursor} or None
            self.hwm = cursor + 1
        self.cursor = cursor

    def used_slots(self) -> list[int]:
        """Every used slot, ascending. Costs O(hwm - lo): for canonical dumps, not hot paths."""
        freed = set(self.freed)
        out = [s for s in range(self.lo, self.hwm) if s not in freed]
        if self.above:
            out.extend(sorted(self.above))
        return out
