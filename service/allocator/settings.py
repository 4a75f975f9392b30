"""The allocator loop's settings and counters: plain values, shared by its modules and callers.

``LoopSettings`` is built from ``Settings`` where the allocator process is wired; ``Metrics`` is
read by the metrics endpoint (``service.metrics``), which turns these plain values into Prometheus
families when scraped: the loop only adds to them and knows nothing of Prometheus. Nothing here
does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
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
    # While a commit runs, the next batch goes on taking what the log already holds, up to this
    # many records (group commit: the loop's ``_group``).
    batch_group_max_records: int = 40_000
    batch_max_wait_s: float = 0.05
    lease_poll_s: float = 1.0
    renew_every_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    relay_batch: int = 2000
    # How often a writer asks the log for its end offset (the lag metric; monitoring only).
    lag_poll_s: float = 5.0
    # At most one consumer group position report (Kafka's own lag, monitoring only) this often:
    # one per commit was a broker request per commit, 100 a second at 5,000 events/s.
    position_every_s: float = 1.0
    tree: TreeSettings | None = field(default_factory=TreeSettings)


class Histogram:
    """Observations counted into fixed buckets (upper bounds, ascending), with their sum.

    What a Prometheus histogram needs, kept as plain numbers so the loop stays free of
    Prometheus: ``observe`` is one bisection and two additions. ``counts[i]`` holds the
    observations above ``bounds[i-1]`` and up to ``bounds[i]``; the last one those above every
    bound (``+Inf``).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be ascending and distinct")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for every bound and ``+Inf``, as exposed."""
        counts = list(self.counts)  # one copy: the loop may add while a scrape reads
        out: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            out.append((bound, total))
        return out


# Records per committed batch: 1 up to IPLEDGER_BATCH_MAX_RECORDS' ceiling.
BATCH_RECORDS_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000)
# Seconds a batch's commit took, from handing it to the projection to its transaction's end.
COMMIT_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
    # The log's end offset per partition, as its writer last saw it (lag = end - next_offset).
    log_end: dict[int, int] = field(default_factory=dict)
    # Committed records by (event type, reason class): valid events the core applied (class
    # "none" when the decision carries no error), and records rejected without being applied.
    # Both keys come from small fixed sets (``service.allocator.reasons``), never raw text.
    events_applied: dict[tuple[str, str], int] = field(default_factory=dict)
    events_rejected: dict[tuple[str, str], int] = field(default_factory=dict)
    batch_records: Histogram = field(default_factory=lambda: Histogram(BATCH_RECORDS_BUCKETS))
    commit_latency: Histogram = field(default_factory=lambda: Histogram(COMMIT_SECONDS_BUCKETS))
