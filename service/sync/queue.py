"""The pending CiliumNode writes of one cluster: coalescing, one flight per node, stale offers.

Used by ``service.sync.mirror``, whose writers take from it. A plain data structure: no I/O, no
event loop, no clock, not thread-safe; waking writers is the mirror's business.
"""

from __future__ import annotations

from collections import deque

from service import ports


class NodeQueue:
    """Pending CiliumNode writes: one per node, the latest state winning, one in flight per node.

    ``offer`` stores a node's intent (replacing an older pending one: that is the coalescing);
    ``take`` hands the oldest ready node to a writer and marks it in flight; ``done`` or
    ``retry`` end the flight. A node offered while in flight is held back until the flight
    ends, so two writes of one node never race. Versions only grow, so an offer older than what
    was last written (or is pending, or in flight) is stale and dropped. Not thread-safe; no I/O.
    """

    def __init__(self) -> None:
        self._pending: dict[str, ports.NodeIntent] = {}
        self._ready: deque[str] = deque()
        self._in_flight: dict[str, ports.NodeIntent] = {}
        self._written: dict[str, int] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def offer(self, intent: ports.NodeIntent, *, repair: bool = False) -> bool:
        """Queue ``intent``; False when it was dropped as stale or redundant.

        A ``repair`` (from a resync) may rewrite the version already written, but is dropped
        when a write of the node is pending or in flight anyway.
        """
        name = intent.name
        written = self._written.get(name, -1)
        if intent.version < written or (intent.version == written and not repair):
            return False
        flying = self._in_flight.get(name)
        if repair and (flying is not None or name in self._pending):
            return False
        # The version in flight is being written already: the same one again would be a
        # second write of the same state (the feed and the first resync both offer new nodes).
        if flying is not None and intent.version <= flying.version:
            return False
        current = self._pending.get(name)
        if current is not None:
            if intent.version < current.version:
                return False
            self._pending[name] = intent
            self.coalesced += 1
            return True
        self._pending[name] = intent
        if flying is None:
            self._ready.append(name)
        return True

    def take(self) -> ports.NodeIntent | None:
        """The next node to write (now in flight), or None when none is ready."""
        while self._ready:
            name = self._ready.popleft()
            intent = self._pending.pop(name, None)
            if intent is not None and name not in self._in_flight:
                self._in_flight[name] = intent
                return intent
        return None

    def done(self, intent: ports.NodeIntent) -> None:
        """The flight of ``intent`` ended with its state made true (or recorded as failed)."""
        name = intent.name
        self._in_flight.pop(name, None)
        self._written[name] = max(self._written.get(name, -1), intent.version)
        if name in self._pending:
            self._ready.append(name)

    def retry(self, intent: ports.NodeIntent) -> None:
        """The flight of ``intent`` failed and must be tried again (first in line)."""
        name = intent.name
        self._in_flight.pop(name, None)
        if name not in self._pending:
            self._pending[name] = intent
        self._ready.appendleft(name)
