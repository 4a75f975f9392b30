"""Exponential backoff: how long a process pauses after failing some number of times in a row.

The one schedule of every retry in ipledger: the leader loop (``service.leadership``, for the
allocator retrying from the committed state and the sync worker starting over from
``node_sync``), the allocator's decisions relay, and the sync worker's requests and progress
writes (``service.sync.pacing.backoff_delay``, which adds the server's ``Retry-After``).
Arithmetic only: callers draw the jitter (``random.uniform(0.5, 1.0)``, so that many workers do
not retry in step) and do the waiting; nothing here sleeps, reads a clock or draws a number.
"""

from __future__ import annotations

import math


def delay(failures: int, *, initial_s: float, max_s: float, jitter: float = 1.0) -> float:
    """Seconds to pause after ``failures`` failures in a row (1 = the first).

    ``initial_s`` after the first, doubling with each one after it up to ``max_s``, then scaled
    by ``jitter``.
    """
    return min(max_s, initial_s * math.pow(2, max(0, failures - 1))) * jitter
