"""In-memory ``ports.AuditReader`` over ``MemoryProjectionTables``, in PostgreSQL's shapes.

What ``ipledger replay`` compares the database with: the replayed log is committed into memory
tables by the allocator's own batch code and ``MemoryProjection.commit``, then read here in the
same plain form ``postgres.audit`` reads the database in. No I/O.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from service import ports
from service.adapters.memory_projection import MemoryProjectionTables


class MemoryAuditReader:
    """Audit queries over one in-memory projection's tables."""

    def __init__(self, tables: MemoryProjectionTables) -> None:
        self.tables = tables

    async def heads(self, partition: int) -> list[ports.RecordedHead]:
        return list(self.tables.heads.get(partition, []))

    async def head(self, partition: int, size: int | None = None) -> ports.RecordedHead | None:
        heads = self.tables.heads.get(partition, [])
        if size is None:
            return heads[-1] if heads else None
        return next((h for h in heads if h.head.size == size), None)

    async def leaves(self, partition: int, end: int, start: int = 0) -> list[bytes | None]:
        found: list[bytes | None] = [None] * max(0, end - start)
        for row in self.tables.decisions.get(partition, []):
            if start <= row.offset < end:
                found[row.offset - start] = row.leaf
        return found

    async def subtrees(
        self, partition: int, wanted: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        stored = self.tables.subtrees.get(partition, {})
        return {
            (start, level): stored[(level, start)]
            for start, level in wanted
            if (level, start) in stored
        }

    async def decisions(self, partition: int, start: int, limit: int) -> list[ports.StoredDecision]:
        rows = [r for r in self.tables.decisions.get(partition, []) if r.offset >= start]
        return [ports.StoredDecision(r.offset, r.body, r.leaf) for r in rows[:limit]]

    async def decision_digest(self, partition: int, start: int, end: int) -> tuple[int, bytes]:
        rows = [r for r in self.tables.decisions.get(partition, []) if start <= r.offset < end]
        return len(rows), ports.decision_digest((r.offset, r.body, r.leaf) for r in rows)

    async def partitions(self) -> dict[int, int]:
        return {p: row.next_offset for p, row in self.tables.offsets.items()}

    async def rows(self, partitions: Sequence[int] | None = None) -> ports.ProjectionRows:
        tables = self.tables
        wanted = None if not partitions else set(partitions)
        found = ports.ProjectionRows()
        for c in tables.clusters.values():
            if wanted is not None and c.partition not in wanted:
                continue
            found.clusters[c.name] = (
                c.partition,
                c.ipv4_cidrs,
                c.ipv4_mask,
                c.ipv6_cidrs,
                c.ipv6_mask,
                json.dumps(json.loads(c.cursors), sort_keys=True),
                c.next_seq,
            )
            for n in tables.nodes.get(c.name, {}).values():
                found.nodes[(c.name, n.name)] = (
                    n.seq,
                    n.pod_cidrs,
                    n.error,
                    n.conflict,
                    n.addresses,
                    n.pinned,
                    n.waiting,
                    n.cursors,
                    n.deleted,
                )
            for ip in tables.pod_ips.get(c.name, {}).values():
                found.pod_ips[(c.name, _text(ip.family, ip.address))] = (
                    ip.node,
                    ip.owner,
                    ip.partition,
                    ip.since_offset,
                    ip.since_time,
                )
            for nh in tables.node_history.get(c.name, []):
                found.node_history[(c.name, nh.name, nh.offset)] = (
                    nh.partition,
                    nh.time,
                    nh.deleted,
                    nh.pod_cidrs,
                    nh.error,
                    nh.conflict,
                    nh.addresses,
                    nh.pinned,
                    nh.waiting,
                )
            for ch in tables.cluster_history.get(c.name, []):
                found.cluster_history[(c.name, ch.offset)] = (
                    ch.partition,
                    ch.time,
                    ch.ipv4_cidrs,
                    ch.ipv4_mask,
                    ch.ipv6_cidrs,
                    ch.ipv6_mask,
                )
            for h in tables.history.get(c.name, []):
                found.history[(c.name, _text(h.family, h.address), h.from_offset)] = (
                    h.node,
                    h.owner,
                    h.partition,
                    h.from_time,
                    h.to_offset,
                    h.to_time,
                )
        for partition, subtrees in tables.subtrees.items():
            if wanted is None or partition in wanted:
                for (level, start), hashed in subtrees.items():
                    found.tree_nodes[(partition, level, start)] = (hashed.hex(),)
        for partition, rejections in tables.rejections.items():
            if wanted is not None and partition not in wanted:
                continue
            for r in rejections:
                found.rejections[(partition, r.offset)] = (r.reason, r.key, r.raw)
        return found

    async def node_history(self, cluster: str, name: str) -> dict[tuple[str, str, int], Any]:
        return {
            key: value
            for key, value in (await self.rows()).node_history.items()
            if key[:2] == (cluster, name)
        }

    async def close(self) -> None:
        return None


def _text(family: int, value: int) -> str:
    address = ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
    return str(address)
