"""The allocator loop's settings and counters: plain values, shared by its modules and callers.

``LoopSettings`` is built from ``Settings`` where the allocator process is wired; ``Metrics`` is
read by the metrics endpoint. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Signs a tree head's signed bytes: (signature as hex, key id). Built by ``service.bootstrap``
# from IPLEDGER_SIGNING_KEY (``service.audit.signing``).
Signer = Callable[[bytes], tuple[str, str]]


@dataclass(frozen=True, slots=True)
class TreeSettings:
    """The Merkle tree of each partition's decisions and its heads (docs/audits.md).

    A head is recorded every ``head_every`` records and at every batch boundary; the heads at
    multiples of ``digest_every`` records also carry the state digest, which costs about 2 us
    per held address (a full pass over the state), so it is not taken at every head.
    """

    head_every: int = 10_000
    digest_every: int = 1_000_000
    sign: Signer | None = None


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop batches, leases and retries; ``tree`` None turns the Merkle tree off."""

    batch_max_records: int = 5000
    batch_max_wait_s: float = 0.05
    lease_poll_s: float = 1.0
    renew_every_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    relay_batch: int = 2000
    tree: TreeSettings | None = field(default_factory=TreeSettings)


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
