"""The in-memory ``PartitionMembership``: members of one ``MemoryGroup`` in one process.

For tests and for running several allocators in one process without a broker: the group holds
its live members and computes their shares with ``service.shares.assign`` (as the table log's
members do, without leases: a memory group knows no holders), telling every member its new
partitions as soon as one joins or leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from service import shares


class MemoryGroup:
    """The live members of one log's allocator group, and their shares of ``partitions``."""

    def __init__(self, partitions: Sequence[int]) -> None:
        self.partitions = tuple(partitions)
        self._members: dict[str, Callable[[frozenset[int]], None]] = {}
        self._told: dict[str, frozenset[int]] = {}

    def member(self, name: str) -> MemoryMembership:
        return MemoryMembership(self, name)

    def join(self, name: str, assigned: Callable[[frozenset[int]], None]) -> None:
        self._members[name] = assigned
        self._rebalance()

    def leave(self, name: str) -> None:
        self._members.pop(name, None)
        self._told.pop(name, None)
        self._rebalance()

    def _rebalance(self) -> None:
        shared = shares.assign(self.partitions, list(self._members), {})
        for name, assigned in list(self._members.items()):
            mine = shared.get(name, frozenset())
            if self._told.get(name) != mine:
                self._told[name] = mine
                assigned(mine)


class MemoryMembership:
    """One member of a ``MemoryGroup``: joined while ``run`` runs."""

    def __init__(self, group: MemoryGroup, name: str) -> None:
        self._group = group
        self.name = name

    async def run(self, assigned: Callable[[frozenset[int]], None]) -> None:
        self._group.join(self.name, assigned)
        try:
            await anyio.sleep_forever()
        finally:
            self._group.leave(self.name)
