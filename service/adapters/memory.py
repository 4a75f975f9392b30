"""In-memory adapters of the ports: the event log and the decision sink without any service.

``MemoryEventLog`` and ``MemoryDecisionSink`` are what unit tests of the allocator loop (and any
other test that needs a log but not its durability) wire in place of PostgreSQL and Kafka. They
pass the same contract suites as the real adapters (``tests/contract``), so code tested against
them behaves the same against the real ones, within the differences those suites document.

Everything lives in the process and dies with it: no I/O, no threads, only anyio primitives, so
they run on any anyio backend. A waiting ``read`` sleeps on a condition that ``append`` and
``close`` notify; nothing polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio

from service import errors, ports
from service.domain import partitioning


class MemoryLogError(errors.LogError):
    """The in-memory event log could not be read or written."""


class MemorySinkError(errors.LogError):
    """The in-memory decision sink could not publish."""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryEventLog:
    """``ports.EventLog`` held in lists, one per partition, for one event loop.

    Keys choose partitions as in Kafka and the table log (``partitioning.partition_for``). An
    append is atomic: every pair is checked before any is stored. ``clock_ms`` gives the records'
    timestamps (milliseconds since the epoch; the wall clock unless a test fixes it).
    """

    def __init__(
        self, partitions: int = 1, *, clock_ms: Callable[[], int] = _wall_clock_ms
    ) -> None:
        if partitions < 1:
            raise errors.ConfigurationError(f"the log needs at least 1 partition, not {partitions}")
        self._records: tuple[list[ports.Record], ...] = tuple([] for _ in range(partitions))
        self._clock_ms = clock_ms
        # One condition for all partitions: a woken reader of another partition re-checks its
        # own list and waits again, which costs less than the bookkeeping of one per partition.
        self._appended = anyio.Condition()
        self._closed = False

    async def partitions(self) -> Sequence[int]:
        """The partition numbers, ``0`` to ``partitions - 1``."""
        self._check_open()
        return range(len(self._records))

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[ports.Record]:
        """Append ``(key, value)`` pairs in order; return them with their positions.

        Raises ``MemoryLogError`` (and appends nothing) if a key is neither bytes nor None or a
        value is not bytes.
        """
        self._check_open()
        for key, value in items:
            if not (key is None or isinstance(key, bytes)) or not isinstance(value, bytes):
                raise MemoryLogError(
                    f"keys must be bytes or None and values bytes, not {type(key).__name__} "
                    f"and {type(value).__name__}"
                )
        if not items:
            return []
        async with self._appended:
            self._check_open()
            timestamp_ms = self._clock_ms()
            appended: list[ports.Record] = []
            for key, value in items:
                partition = partitioning.partition_for(key, len(self._records))
                records = self._records[partition]
                record = ports.Record(
                    partition=partition,
                    offset=len(records),
                    key=key,
                    value=value,
                    timestamp_ms=timestamp_ms,
                )
                records.append(record)
                appended.append(record)
            self._appended.notify_all()
        return appended

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[ports.Record]:
        """Records of ``partition`` from offset ``start`` on, in order, at most ``max_records``.

        When there are none yet (also when ``start`` is beyond the end), waits up to
        ``max_wait_s`` for an append, then returns what there is, possibly nothing. A reader
        waiting when the log is closed gets ``MemoryLogError``.
        """
        self._check_open()
        records = self._partition(partition)
        if start < 0 or max_records < 1 or max_wait_s < 0:
            raise MemoryLogError(
                f"cannot read {max_records} records from offset {start} waiting {max_wait_s} s"
            )
        deadline = anyio.current_time() + max_wait_s
        async with self._appended:
            while True:
                if self._closed:
                    raise MemoryLogError("the in-memory event log was closed while reading")
                found = records[start : start + max_records]
                remaining = deadline - anyio.current_time()
                if found or remaining <= 0:
                    return found
                with anyio.move_on_after(remaining):
                    await self._appended.wait()

    async def end_offset(self, partition: int) -> int:
        """The offset the next record appended to ``partition`` will get."""
        self._check_open()
        return len(self._partition(partition))

    async def close(self) -> None:
        """Refuse further use and wake waiting readers (they raise); safe to call twice."""
        async with self._appended:
            self._closed = True
            self._appended.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryLogError("the in-memory event log is closed")

    def _partition(self, partition: int) -> list[ports.Record]:
        if not 0 <= partition < len(self._records):
            raise MemoryLogError(
                f"no partition {partition}: the in-memory log has {len(self._records)} partition(s)"
            )
        return self._records[partition]


class MemoryDecisionSink:
    """``ports.DecisionSink`` that keeps what it publishes in a list, with injectable failures.

    ``published`` is everything published so far, in order; a test of the allocator loop waits
    for it with ``wait_for_published``. ``fail_next`` makes the next publishes fail the way a
    Kafka producer can: after delivering a prefix of the batch (none by default), so that tests
    can check that the caller republishes, and that the consumers' de-duplication is needed.
    """

    def __init__(self) -> None:
        self._published: list[tuple[bytes, bytes]] = []
        self._failures: list[tuple[int, errors.LogError | None]] = []
        self._changed = anyio.Condition()
        self._closed = False

    @property
    def published(self) -> Sequence[tuple[bytes, bytes]]:
        """Every ``(key, value)`` published so far, in order (a copy)."""
        return tuple(self._published)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def fail_next(
        self, count: int = 1, *, delivered: int = 0, error: errors.LogError | None = None
    ) -> None:
        """Make the next ``count`` calls of ``publish`` raise ``error`` (a ``MemorySinkError``).

        Each failing call first publishes the first ``delivered`` items of its batch, as a
        producer does when a later batch fails. Failures queue up behind earlier ones.
        """
        if count < 0 or delivered < 0:
            raise ValueError(f"cannot fail {count} publishes after {delivered} items")
        self._failures.extend([(delivered, error)] * count)

    async def publish(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish the items in order, or raise ``LogError`` if a failure was injected or closed."""
        if self._closed:
            raise MemorySinkError("the in-memory decision sink is closed")
        async with self._changed:
            if self._failures:
                delivered, error = self._failures.pop(0)
                self._published.extend(items[:delivered])
                self._changed.notify_all()
                raise error or MemorySinkError(
                    f"injected failure publishing {len(items)} items, {delivered} delivered"
                )
            self._published.extend(items)
            self._changed.notify_all()

    async def wait_for_published(self, count: int) -> Sequence[tuple[bytes, bytes]]:
        """Wait until at least ``count`` items were published; return them all.

        Waits without a limit: wrap it in ``anyio.fail_after`` to give it a deadline.
        """
        async with self._changed:
            while len(self._published) < count:
                await self._changed.wait()
            return tuple(self._published)

    async def close(self) -> None:
        """Refuse further publishes; the published items stay readable. Safe to call twice."""
        self._closed = True
