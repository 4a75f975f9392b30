"""The single-writer allocator: read a batch from the log, apply it, commit it with its offset.

A package of four modules, imported downwards only (``.importlinter``):

- ``assignment``: ``lead_assigned``, which runs the workers of the partitions a
  ``ports.PartitionMembership`` gives this process (N processes sharing P partitions);

- ``loop``: ``PartitionAllocator``, the writer (or hot standby) of one log partition: the lease,
  the read-apply-commit loop with one commit in flight, reloading after failures, isolating the
  records a refused batch cannot store, and the decisions outbox relay;
- ``batch``: ``apply_records`` (the pure core over a batch of records, collecting what the
  projection writes), the partition-count checks, the rejection of an unstorable record, and
  how a refused batch is split;
- ``settings``: ``LoopSettings`` and ``Metrics``, plain values.

Callers use the names re-exported here: ``allocator.PartitionAllocator``,
``allocator.apply_records``, ``allocator.LoopSettings``, ``allocator.Metrics``,
``allocator.lead_assigned``.
"""

from service.allocator.assignment import lead_assigned
from service.allocator.batch import (
    UNSTORABLE,
    apply_records,
    check_homes,
    check_partition_count,
    unstorable_record,
)
from service.allocator.loop import PartitionAllocator
from service.allocator.settings import LoopSettings, Metrics, TreeSettings

__all__ = [
    "UNSTORABLE",
    "LoopSettings",
    "Metrics",
    "PartitionAllocator",
    "TreeSettings",
    "apply_records",
    "check_homes",
    "check_partition_count",
    "lead_assigned",
    "unstorable_record",
]
