"""Run the partition workers a membership assigns to this process, and only those.

``ipledger run`` makes a ``PartitionAllocator`` for every partition of the log, but N processes
on P partitions must not all chase every lease: the first one up would lead them all while the
others idle. A ``ports.PartitionMembership`` (Kafka's consumer group, or member rows in
PostgreSQL for the table log) says which partitions this process should lead; ``lead_assigned``
runs the worker of each of those (``PartitionAllocator.run``: lease, load, apply, commit) and
stops the worker of a partition that is no longer assigned (it finishes its batch in flight and
releases the lease, so the new owner, standing by for it, takes over at its next try).

The writer lease is still what makes a partition single-writer: a process assigned a partition
another one still holds stands by until the lease is released or expires, exactly as a hot
standby always has (``service.leadership``), and a paused process that wakes up after its
partitions moved is fenced as before. The membership only spreads the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio

from service import ports
from service.allocator.loop import PartitionAllocator

log = logging.getLogger("ipledger.allocator")


class Assignment:
    """The partitions this process is to lead now, with a way to wait for them to change."""

    def __init__(self) -> None:
        self.partitions: frozenset[int] = frozenset()
        self.closed = False
        self._changed = anyio.Event()

    def assign(self, partitions: frozenset[int]) -> None:
        if partitions != self.partitions:
            log.info("leading partitions %s", sorted(partitions) or "none")
            self.partitions = partitions
            self._wake()

    def close(self) -> None:
        """Stop every worker (the process is stopping)."""
        self.closed = True
        self._wake()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


async def lead_assigned(
    workers: Sequence[PartitionAllocator],
    membership: ports.PartitionMembership,
    stop: anyio.Event,
    on_assignment: Callable[[frozenset[int]], None] | None = None,
) -> None:
    """Lead the partitions ``membership`` assigns until ``stop`` is set; then stop every worker
    (each finishes its batch and releases its lease) and only then leave the group."""
    assignment = Assignment()

    def assigned(partitions: frozenset[int]) -> None:
        assignment.assign(partitions)
        if on_assignment is not None:
            on_assignment(partitions)

    async with anyio.create_task_group() as group:
        group.start_soon(membership.run, assigned)
        async with anyio.create_task_group() as slots:
            for worker in workers:
                slots.start_soon(_slot, worker, assignment)
            await stop.wait()
            assignment.close()
        group.cancel_scope.cancel()


async def _slot(worker: PartitionAllocator, assignment: Assignment) -> None:
    """Run ``worker`` whenever its partition is assigned; one run at a time."""
    partition = worker.partition
    while True:
        await assignment.wait_until(lambda: assignment.closed or partition in assignment.partitions)
        if assignment.closed:
            return
        mine = anyio.Event()
        async with anyio.create_task_group() as running:
            running.start_soon(worker.run, mine)
            await assignment.wait_until(
                lambda: assignment.closed or partition not in assignment.partitions
            )
            if not assignment.closed:
                log.info("partition %d: assigned elsewhere; handing it over", partition)
            mine.set()
