"""The allocator loop's settings and counters: plain values, shared by its modules and callers.

``LoopSettings`` is built from ``Settings`` where the allocator process is wired; ``Metrics`` is
read by the metrics endpoint. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop batches, leases and retries."""

    batch_max_records: int = 5000
    batch_max_wait_s: float = 0.05
    lease_poll_s: float = 1.0
    renew_every_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    relay_batch: int = 2000


@dataclass(slots=True)
class Metrics:
    """Counters of one allocator process (exported by the metrics endpoint)."""

    records_applied: int = 0
    records_rejected: int = 0
    # Of the rejected: records on another partition than their cluster's home partition.
    records_wrong_partition: int = 0
    records_unstorable: int = 0
    decisions_with_error: int = 0
    batches_committed: int = 0
    commit_seconds: float = 0.0
    takeovers: int = 0
    fenced: int = 0
    failures: int = 0
    decisions_published: int = 0
    next_offset: dict[int, int] = field(default_factory=dict)
    leader: dict[int, bool] = field(default_factory=dict)
