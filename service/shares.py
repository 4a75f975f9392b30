"""Fair shares of the log's partitions among the live ``ipledger run`` processes, without a broker.

With the Kafka log, Kafka's group coordinator decides which process leads which partition
(``adapters.kafka.membership``). The table log has no broker, so its processes share the
partitions through PostgreSQL (``adapters.postgres.members``): each one heartbeats a member
row, reads the live members and the live writer leases in one statement, and computes the whole
assignment with ``assign`` below. Every process runs the same pure function over the same rows,
so they agree once their reads agree (a heartbeat or two); while they briefly disagree, two
processes may both want a partition, and the writer lease lets only one of them write.

The assignment is balanced and sticky:

- quotas: with P partitions and N members, every member leads P // N partitions, and P % N of
  them one more. The extra ones go to the members leading the most right now (then by name), so
  a process that is doing well is not made to hand a partition over for nothing;
- a partition whose live lease is held by a member within its quota stays with it (no reload of
  its state, no pause of its clusters);
- every other partition goes, in order, to the member with room that ranks it highest by
  rendezvous hashing (a hash of partition and member name), so which member gets a free
  partition does not depend on the order members joined in. A member that leaves moves only
  its own partitions; one that joins takes only what the others lead beyond their new quotas.

Pure: no I/O, no clock, no randomness (the hash is BLAKE2b, the same in every process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence


def assign(
    partitions: Sequence[int],
    members: Collection[str],
    holders: Mapping[int, str],
) -> dict[str, frozenset[int]]:
    """Every member's partitions: each partition to exactly one member, balanced within one.

    ``holders`` maps a partition to the member holding its live writer lease (holders that are
    not members are ignored). No members: an empty assignment.
    """
    if not members:
        return {}
    ordered = sorted(set(members))
    held: dict[str, list[int]] = {member: [] for member in ordered}
    for partition in sorted(partitions):
        holder = holders.get(partition)
        if holder in held:
            held[holder].append(partition)
    base, extra = divmod(len(partitions), len(ordered))
    ranked = sorted(ordered, key=lambda member: (-len(held[member]), member))
    quota = {member: base + (1 if rank < extra else 0) for rank, member in enumerate(ranked)}
    mine: dict[str, set[int]] = {member: set() for member in ordered}
    free: list[int] = []
    for partition in sorted(partitions):
        holder = holders.get(partition)
        if holder in mine and len(mine[holder]) < quota[holder]:
            mine[holder].add(partition)
        else:
            free.append(partition)
    for partition in free:
        room = [member for member in ordered if len(mine[member]) < quota[member]]
        best = max(room, key=lambda member: (_weight(partition, member), member))
        mine[best].add(partition)
    return {member: frozenset(parts) for member, parts in mine.items()}


def _weight(partition: int, member: str) -> int:
    digest = hashlib.blake2b(f"{partition}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
