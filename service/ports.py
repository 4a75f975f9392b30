"""Ports: the protocols the allocator, sync worker and API depend on.

Every port has an in-memory adapter in ``service.adapters.memory`` and one contract test suite in
``tests/contract`` that each adapter (memory, PostgreSQL, Kafka) must pass. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.domain import events
from service.domain import state as domain


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the append-only event log, as read back.

    ``offset`` is dense and strictly increasing within a partition: a reader that has consumed
    offset ``n`` continues at ``n + 1`` and never skips a record that was committed before it.
    """

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None


class EventLog(Protocol):
    """The append-only log of events, the source of truth.

    Records with the same key (the event's cluster) go to the same partition, so each cluster's
    events have one total order.
    """

    async def partitions(self) -> Sequence[int]:
        """The partition numbers of the log."""
        ...

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[Record]:
        """Durably append ``(key, value)`` pairs in order; return them with their positions."""
        ...

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[Record]:
        """Records of ``partition`` with offset >= ``start``, in order, at most ``max_records``.

        Waits up to ``max_wait_s`` for the first record when none is available yet, then
        returns what it has (possibly nothing).
        """
        ...

    async def end_offset(self, partition: int) -> int:
        """The offset the next appended record of ``partition`` will get."""
        ...

    async def close(self) -> None:
        """Release connections; the log object is unusable afterwards."""
        ...


class DecisionSink(Protocol):
    """Where committed decisions are published (the decisions topic), in order, at least once.

    Each item is ``(key, value)``: key = the event id, value = the decision JSON carrying its log
    partition and offset, so consumers can de-duplicate redeliveries.
    """

    async def publish(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Durably publish the items in order; raise ``LogError`` if that cannot be done."""
        ...

    async def close(self) -> None:
        """Flush and release connections."""
        ...


@dataclass(slots=True)
class AppliedRecord:
    """One log record and what applying it decided.

    ``body`` is the decision as published (JSON); ``rejected`` is set when the record was not a
    valid event at all (it is then kept raw with the reason in the rejections table).
    """

    record: Record
    decision: events.Decision
    body: bytes
    event_time: datetime.datetime | None
    rejected: bool


@dataclass(slots=True)
class Batch:
    """Everything one allocator batch did to one partition, committed as one transaction.

    ``changes`` are the clusters' change journals for the batch; ``ip_times`` gives, for each
    entry of a cluster's ``changes.ips``, the log offset and time of the event that caused it.
    """

    partition: int
    token: int
    next_offset: int
    state: domain.State
    applied: list[AppliedRecord] = field(default_factory=list)
    changes: dict[str, domain.Changes] = field(default_factory=dict)
    ip_times: dict[str, list[tuple[int, datetime.datetime]]] = field(default_factory=dict)


class Projection(Protocol):
    """The allocator's durable state, its log position and its single-writer lease."""

    async def try_acquire(self, partition: int) -> int | None: ...

    async def renew(self, partition: int, token: int) -> None: ...

    async def release(self, partition: int, token: int) -> None: ...

    async def next_offset(self, partition: int) -> int: ...

    async def commit(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...
