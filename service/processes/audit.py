"""``ipledger audit``: proofs from the projection's tree, and the story of an address, owner, node.

``proof`` builds the inclusion proof of one decision against the latest (or a given) tree head;
``consistency`` the proof that one head's tree extends another's, checked against the stored
tree before it is printed; ``verify-proof`` (in ``service.cli``) checks either offline. ``ip``,
``owner`` and ``node`` tell what happened from the history, each change with the event and
decision that caused it, and with ``prove`` each decision's inclusion proof. Reads only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from service import bootstrap, errors, ports
from service.audit import proofs, replay
from service.domain import merkle
from service.settings import Settings

# How long a read waits for records known to be there (a Kafka consumer fetches on first ask).
READ_WAIT_S = 5.0


class _Evidence:
    """The live database's audit reader, read side and log, opened together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = bootstrap.open_audit_reader(bootstrap.database_url(settings))
        self.reader = bootstrap.open_reader(settings)
        self.log: ports.EventLog | None = None

    async def event_log(self) -> ports.EventLog:
        if self.log is None:
            self.log = await bootstrap.open_log(self.settings)
        return self.log

    async def close(self) -> None:
        await self.audit.close()
        await self.reader.close()
        if self.log is not None:
            await self.log.close()

    async def head(self, partition: int, size: int | None) -> merkle.TreeHead:
        recorded = await self.audit.head(partition, size)
        if recorded is not None:
            return recorded.head
        if size is None:
            raise errors.AuditError(f"partition {partition} has no tree head yet")
        raise errors.AuditError(f"partition {partition} has no tree head of size {size}")

    async def record(self, partition: int, offset: int) -> ports.Record:
        records = await (await self.event_log()).read(partition, offset, 1, READ_WAIT_S)
        if not records or records[0].offset != offset:
            raise errors.AuditError(f"partition {partition}: the log has no record at {offset}")
        return records[0]

    async def leaves(self, partition: int, end: int, start: int = 0) -> list[bytes]:
        """The leaves of offsets [start, end); those stored as NULL (before the tree)
        computed."""
        stored = await self.audit.leaves(partition, end, start)
        missing = [start + i for i, leaf in enumerate(stored) if leaf is None]
        leaves: list[bytes | None] = list(stored)
        for offset in missing:
            found = await self.audit.decisions(partition, offset, 1)
            if not found or found[0].offset != offset:
                raise errors.AuditError(f"partition {partition}: no decision at offset {offset}")
            record = await self.record(partition, offset)
            leaves[offset - start] = merkle.leaf_hash(found[0].body, record.value)
        return [leaf for leaf in leaves if leaf is not None]

    def readers(self, partition: int) -> tuple[proofs.NodeReader, proofs.LeafReader]:
        """The stored subtree roots and the leaves of ``partition``, for ``proofs``."""

        async def nodes(wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
            return await self.audit.subtrees(partition, wanted)

        async def leaves(start: int, end: int) -> list[bytes]:
            found = await self.leaves(partition, end, start)
            if len(found) != end - start:
                raise errors.AuditError(
                    f"partition {partition} has no decision at some offset from {start} to "
                    f"{end - 1}, below the head's size"
                )
            return found

        return nodes, leaves

    async def inclusion(self, partition: int, offset: int, head: merkle.TreeHead) -> dict[str, Any]:
        if not 0 <= offset < head.size:
            raise errors.AuditError(
                f"offset {offset} is not covered by the tree head of size {head.size}"
            )
        found = await self.audit.decisions(partition, offset, 1)
        if not found or found[0].offset != offset:
            raise errors.AuditError(f"partition {partition}: no decision at offset {offset}")
        record = await self.record(partition, offset)
        return await proofs.inclusion_from_store(
            head, offset, found[0].body, record.value, *self.readers(partition)
        )


async def proof(
    settings: Settings, partition: int, offset: int, size: int | None
) -> dict[str, Any]:
    """The inclusion proof of the decision at ``offset`` against the head of ``size`` (latest)."""
    evidence = _Evidence(settings)
    try:
        head = await evidence.head(partition, size)
        return await evidence.inclusion(partition, offset, head)
    finally:
        await evidence.close()


async def consistency(
    settings: Settings,
    old: merkle.TreeHead | tuple[int, int],
    new: merkle.TreeHead | tuple[int, int],
) -> dict[str, Any]:
    """The proof that ``new`` extends ``old`` (each a head, or ``(partition, size)`` of a stored
    one), computed from the stored leaves; ``AuditError`` if it does not check out."""
    evidence = _Evidence(settings)
    try:
        old_head = old if isinstance(old, merkle.TreeHead) else await evidence.head(*old)
        new_head = new if isinstance(new, merkle.TreeHead) else await evidence.head(*new)
        if old_head.partition != new_head.partition:
            raise errors.AuditError("the two heads are of different partitions")
        if old_head.size > new_head.size:
            old_head, new_head = new_head, old_head
        return await proofs.consistency_from_store(
            old_head, new_head, *evidence.readers(new_head.partition)
        )
    finally:
        await evidence.close()


# --- the story of an address, an owner, a node ------------------------------------------------


async def story(
    settings: Settings,
    kind: str,
    subject: str,
    *,
    cluster: str,
    at: datetime.datetime | None,
    prove: bool,
) -> dict[str, Any]:
    """What happened to ``subject`` (an address, an owner, a node): every change, in order.

    Each change names the event (partition, offset, id, time) and carries its decision; with
    ``prove``, its inclusion proof against the partition's latest head. ``at``: only the
    holding in force at that time (an address) or the changes up to it.
    """
    evidence = _Evidence(settings)
    try:
        changes: list[dict[str, Any]] = []
        if kind == "ip":
            address = ipaddress.ip_address(subject)
            if at is not None:
                holding = await evidence.reader.holder(cluster, address, at=at)
                holdings = [] if holding is None else [holding]
            else:
                holdings = await evidence.reader.address_history(cluster, address)
            changes = _holding_changes(holdings)
        elif kind == "owner":
            changes = _holding_changes(await evidence.reader.owner_history(cluster, subject))
        else:
            changes = await _node_changes(evidence, cluster, subject)
        if at is not None:
            # Times are UTC ISO texts of one form: their order is the times' order.
            cutoff = at.astimezone(datetime.UTC).isoformat()
            changes = [c for c in changes if c["time"] is None or c["time"] <= cutoff]
        heads: dict[int, merkle.TreeHead] = {}
        for change in changes:
            partition, offset = change["partition"], change["offset"]
            found = await evidence.reader.decisions(partition, offset, 1)
            if found and found[0].offset == offset:
                change["event"] = found[0].event_id
                change["decision"] = json.loads(found[0].body)
            if prove:
                if partition not in heads:
                    heads[partition] = await evidence.head(partition, None)
                if offset < heads[partition].size:
                    change["proof"] = await evidence.inclusion(partition, offset, heads[partition])
        return {kind: subject, "cluster": cluster, "changes": changes}
    finally:
        await evidence.close()


def _holding_changes(holdings: list[ports.Holding]) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    for h in holdings:
        common = {"address": str(h.address), "node": h.node, "owner": h.owner}
        changes.append(
            {
                "change": "held",
                **common,
                "partition": h.partition,
                "offset": h.from_offset,
                "time": h.from_time.isoformat(),
            }
        )
        if h.to_offset is not None:
            changes.append(
                {
                    "change": "released",
                    **common,
                    "partition": h.partition,
                    "offset": h.to_offset,
                    "time": None if h.to_time is None else h.to_time.isoformat(),
                }
            )
    changes.sort(key=lambda c: (c["partition"], c["offset"]))
    return changes


async def _node_changes(evidence: _Evidence, cluster: str, node: str) -> list[dict[str, Any]]:
    """Every change of ``node`` a reader sees, from the node history: where it appeared, each
    change of its CIDRs, error, conflict, addresses, pinning or waiting, and its deletion.

    One indexed read of the node's rows (not a scan of the log); a row that repeats the node's
    previous one (the allocator writes one at the start of a batch that touches the node
    again) is left out. Pod address events do not change a node row: ``audit ip`` and ``audit
    owner`` tell those.
    """
    rows = replay.changes_only(await evidence.audit.node_history(cluster, node))
    changes: list[dict[str, Any]] = []
    present = False
    for (_, _, offset), value in sorted(rows.items()):
        partition, moment, deleted, pod_cidrs, error, conflict, addresses, pinned, waiting = value
        change = "deleted" if deleted else "changed" if present else "added"
        present = not deleted
        entry: dict[str, Any] = {
            "change": change,
            "node": node,
            "partition": partition,
            "offset": offset,
            "time": moment.isoformat(),
        }
        if not deleted:
            entry.update(
                podCIDRs=list(pod_cidrs),
                error=error,
                conflict=conflict,
                addresses=list(addresses),
                pinned=pinned,
                waiting=waiting,
            )
        changes.append(entry)
    return changes
