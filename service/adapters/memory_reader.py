"""In-memory ``ports.ProjectionReader``: the read side over the rows of the memory projection.

Reads ``MemoryProjectionTables`` (what ``MemoryProjection`` committed) and, for the sync
worker's progress, the ``MemorySyncTables`` of ``MemorySyncStore``; writes neither. Answers as
``service.adapters.postgres.reader`` answers from PostgreSQL: the same rebuild of the state
(``memory_projection.restore_clusters``), the same pool-use computation (``pool_use``), the same
orders. Passes ``tests/contract/test_projection_reader_contract.py``. No I/O; every method
completes without awaiting, so an answer sees whole commits only.
"""

from __future__ import annotations

import bisect
import datetime
import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from service import errors, ports
from service.adapters import memory_projection, memory_rows, pool_use
from service.domain import document, state
from service.domain.pool import IPV4, IPV6

if TYPE_CHECKING:
    from service.adapters.memory import MemorySyncTables

_Row = TypeVar("_Row", memory_rows.DecisionRow, memory_rows.RejectionRow)
# Whether a holding is wanted, from its address (family, integer) and its owner.
_Wanted = Callable[[int, int, str], bool]


class MemoryProjectionReader:
    """``ports.ProjectionReader`` over one in-memory projection "database" (and its sync tables)."""

    def __init__(
        self,
        tables: memory_projection.MemoryProjectionTables,
        sync_tables: MemorySyncTables | None = None,
    ) -> None:
        self.tables = tables
        self.sync_tables = sync_tables
        self._closed = False

    async def state(self) -> state.State:
        """Every cluster's state, rebuilt from the rows as ``MemoryProjection.load`` does."""
        self._check_open()
        current = state.State()
        memory_projection.restore_clusters(self.tables, current, None)
        return current

    async def state_document(self) -> dict[str, Any]:
        """The state document ``ipledger state`` prints."""
        return document.state_document(await self.state())

    async def clusters(self) -> list[ports.ClusterView]:
        """Every cluster by name, with its pool and the use of each element."""
        self._check_open()
        return [self._cluster(row) for _, row in sorted(self.tables.clusters.items())]

    def _cluster(self, row: memory_rows.ClusterRow) -> ports.ClusterView:
        live = [node for node in self._rows(row.name) if not node.deleted]
        counts = self._pod_ip_counts(row.name)
        return ports.ClusterView(
            name=row.name,
            partition=row.partition,
            version=row.version,
            ipv4_mask=row.ipv4_mask,
            ipv6_mask=row.ipv6_mask,
            elements=pool_use.element_use(
                ipv4_cidrs=row.ipv4_cidrs,
                ipv4_mask=row.ipv4_mask,
                ipv6_cidrs=row.ipv6_cidrs,
                ipv6_mask=row.ipv6_mask,
                # A node holds one CIDR per family: its pod addresses of that family are in it.
                node_cidrs=(
                    (cidr, counts.get(node.name, (0, 0))[0 if ":" not in cidr else 1])
                    for node in live
                    for cidr in node.pod_cidrs
                ),
            ),
            nodes=len(live),
        )

    async def nodes(
        self,
        cluster: str,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[ports.NodeView]:
        """``cluster``'s live nodes by name, filtered, after ``after``, at most ``limit``."""
        self._check_open()
        rows = sorted(
            (
                row
                for row in self._rows(cluster)
                if not row.deleted
                and row.name > after
                and row.name.startswith(prefix)
                and (error is None or (row.error is not None) == error)
                and (conflict is None or (row.conflict is not None) == conflict)
                and (waiting is None or row.waiting == waiting)
            ),
            key=lambda row: row.name,
        )
        if limit is not None:
            rows = rows[: max(limit, 0)]
        counts = self._pod_ip_counts(cluster)
        return [_node_view(row, counts.get(row.name, (0, 0))) for row in rows]

    async def node(self, cluster: str, name: str) -> ports.NodeView | None:
        """One live node, or None."""
        self._check_open()
        row = self.tables.nodes.get(cluster, {}).get(name)
        if row is None or row.deleted:
            return None
        return _node_view(row, self._pod_ip_counts(cluster).get(name, (0, 0)))

    def _pod_ip_counts(self, cluster: str) -> dict[str, tuple[int, int]]:
        counts: dict[str, list[int]] = {}
        for ip in self.tables.pod_ips.get(cluster, {}).values():
            count = counts.setdefault(ip.node, [0, 0])
            count[0 if ip.family == IPV4 else 1] += 1
        return {node: (v4, v6) for node, (v4, v6) in counts.items()}

    async def holder(
        self, cluster: str, address: ports.Address, *, at: datetime.datetime | None = None
    ) -> ports.Holding | None:
        """Who holds ``address`` now, or held it at ``at``; None if nobody."""
        self._check_open()
        key = (address.version, int(address))
        if at is None:
            row = self.tables.pod_ips.get(cluster, {}).get(key)
            return None if row is None else self._current(row)
        matching = [
            holding
            for holding in self._holdings(cluster, lambda family, value, _: (family, value) == key)
            if holding.from_time <= at and (holding.to_time is None or holding.to_time > at)
        ]
        return matching[-1] if matching else None

    async def address_history(self, cluster: str, address: ports.Address) -> list[ports.Holding]:
        """Every holding of ``address``, in the order they started."""
        self._check_open()
        key = (address.version, int(address))
        return self._holdings(cluster, lambda family, value, _: (family, value) == key)

    async def owner_addresses(self, cluster: str, owner: str) -> list[ports.Holding]:
        """The addresses ``owner`` holds now, by address."""
        self._check_open()
        rows = sorted(
            (row for row in self.tables.pod_ips.get(cluster, {}).values() if row.owner == owner),
            key=lambda row: (row.family, row.address),
        )
        return [self._current(row) for row in rows]

    async def owner_history(self, cluster: str, owner: str) -> list[ports.Holding]:
        """Every holding of ``owner``, in the order they started."""
        self._check_open()
        return self._holdings(cluster, lambda _family, _value, held_by: held_by == owner)

    def _holdings(self, cluster: str, wanted: _Wanted) -> list[ports.Holding]:
        """Ended and current holdings of ``cluster`` for which ``wanted(family, address, owner)``,
        by the offset that started them (then by address)."""
        ended = [
            self._ended(row)
            for row in self.tables.history.get(cluster, [])
            if wanted(row.family, row.address, row.owner)
        ]
        current = [
            self._current(row)
            for row in self.tables.pod_ips.get(cluster, {}).values()
            if wanted(row.family, row.address, row.owner)
        ]
        return sorted(
            [*ended, *current],
            key=lambda h: (h.from_offset, h.address.version, int(h.address)),
        )

    def _current(self, row: memory_rows.PodIpRow) -> ports.Holding:
        return ports.Holding(
            cluster=row.cluster,
            address=_address(row.family, row.address),
            node=row.node,
            owner=row.owner,
            partition=row.partition,
            from_offset=row.since_offset,
            from_time=row.since_time,
            from_event_id=self._event_id(row.partition, row.since_offset),
            to_offset=None,
            to_time=None,
            to_event_id=None,
        )

    def _ended(self, row: memory_rows.HistoryRow) -> ports.Holding:
        return ports.Holding(
            cluster=row.cluster,
            address=_address(row.family, row.address),
            node=row.node,
            owner=row.owner,
            partition=row.partition,
            from_offset=row.from_offset,
            from_time=row.from_time,
            from_event_id=self._event_id(row.partition, row.from_offset),
            to_offset=row.to_offset,
            to_time=row.to_time,
            to_event_id=self._event_id(row.partition, row.to_offset),
        )

    def _event_id(self, partition: int, offset: int) -> str | None:
        rows = self.tables.decisions.get(partition, [])
        found = _at_offset(rows, offset)
        return None if found is None else found.event_id

    async def decisions(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[ports.CommittedDecision]:
        """Committed decisions of ``partition`` from offset ``start`` on, at most ``limit``."""
        self._check_open()
        return [
            ports.CommittedDecision(
                partition=row.partition,
                offset=row.offset,
                cluster=row.cluster,
                event_id=row.event_id,
                type=row.type,
                error=row.error,
                body=row.body,
                event_time=row.event_time,
                log_time=row.log_time,
                applied_at=row.applied_at,
            )
            for row in _from(self.tables.decisions.get(partition, []), start, limit)
        ]

    async def rejections(
        self, partition: int, start: int = 0, limit: int | None = None
    ) -> list[ports.Rejection]:
        """Rejected records of ``partition`` from offset ``start`` on, at most ``limit``."""
        self._check_open()
        return [
            ports.Rejection(
                partition=row.partition,
                offset=row.offset,
                reason=row.reason,
                key=row.key,
                raw=row.raw,
                rejected_at=row.rejected_at,
            )
            for row in _from(self.tables.rejections.get(partition, []), start, limit)
        ]

    async def last_rejections(self, partition: int, limit: int) -> list[ports.Rejection]:
        """The last ``limit`` rejected records of ``partition``, by offset."""
        self._check_open()
        rows = self.tables.rejections.get(partition, [])
        start = rows[-limit].offset if 0 < limit <= len(rows) else 0
        return [] if limit <= 0 else await self.rejections(partition, start)

    async def positions(self) -> list[ports.PartitionPosition]:
        """Every partition that has a commit: consumed and published offsets."""
        self._check_open()
        return [
            ports.PartitionPosition(
                partition=row.partition,
                log=row.log,
                next_offset=row.next_offset,
                updated_at=row.updated_at,
                published=self.tables.outbox.get(row.partition),
            )
            for _, row in sorted(self.tables.offsets.items())
        ]

    async def leases(self) -> list[ports.Lease]:
        """Every partition's writer lease ever taken, expired or not on the tables' clock."""
        self._check_open()
        now = self.tables.clock()
        return [
            ports.Lease(
                partition=row.partition,
                holder=row.holder,
                token=row.token,
                expires_at=row.expires_at,
                expired=row.expires_at < now,
            )
            for _, row in sorted(self.tables.leases.items())
        ]

    async def sync_progress(self, cluster: str) -> list[ports.NodeSync]:
        """Every node of ``cluster`` (tombstones too) by name, with what the worker recorded."""
        self._check_open()
        progress = {} if self.sync_tables is None else self.sync_tables.progress(cluster)
        result = []
        for row in sorted(self._rows(cluster), key=lambda row: row.name):
            synced_version, error = progress.get(row.name, (None, None))
            result.append(
                ports.NodeSync(
                    name=row.name,
                    version=row.version,
                    deleted=row.deleted,
                    synced_version=synced_version,
                    error=error,
                )
            )
        return result

    # --- as of a log offset ----------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Nothing to open or prepare in memory."""
        self._check_open()

    async def cluster_partitions(self) -> dict[str, int]:
        """Every cluster's name and partition."""
        self._check_open()
        return {name: row.partition for name, row in self.tables.clusters.items()}

    async def applied_offset(
        self, partition: int, *, at_time: datetime.datetime | None = None
    ) -> int | None:
        """The last applied offset of ``partition``, or the last one at or before ``at_time``."""
        self._check_open()
        if at_time is None:
            row = self.tables.offsets.get(partition)
            return None if row is None or row.next_offset < 1 else row.next_offset - 1
        found = [
            (time, row.offset)
            for row in self.tables.decisions.get(partition, [])
            if (time := row.event_time or row.log_time or row.applied_at) <= at_time
        ]
        return max(found)[1] if found else None

    async def _basis(self, partition: int, wanted: ports.Wanted) -> tuple[int | None, int | None]:
        applied = await self.applied_offset(partition)
        if applied is None or wanted is None:
            return applied, applied
        if isinstance(wanted, int):
            return applied, min(wanted, applied)
        found = await self.applied_offset(partition, at_time=wanted)
        return applied, None if found is None else min(found, applied)

    async def address_history_based(
        self, cluster: str, partition: int, address: ports.Address, wanted: ports.Wanted
    ) -> ports.Based[list[ports.Holding]]:
        """``address_history`` begun at the basis (ports.Based), from one state of the rows."""
        applied, basis = await self._basis(partition, wanted)
        if basis is None:
            return ports.Based(applied, basis, [])
        history = await self.address_history(cluster, address)
        return ports.Based(applied, basis, [h for h in history if h.from_offset <= basis])

    async def owner_history_based(
        self, cluster: str, partition: int, owner: str, wanted: ports.Wanted
    ) -> ports.Based[list[ports.Holding]]:
        """``owner_history`` begun at the basis (ports.Based), from one state of the rows."""
        applied, basis = await self._basis(partition, wanted)
        if basis is None:
            return ports.Based(applied, basis, [])
        history = await self.owner_history(cluster, owner)
        return ports.Based(applied, basis, [h for h in history if h.from_offset <= basis])

    async def node_based(
        self, cluster: str, partition: int, name: str, wanted: ports.Wanted
    ) -> ports.Based[ports.NodeAt | None]:
        """``node_at`` at the basis (ports.Based), from one state of the rows."""
        applied, basis = await self._basis(partition, wanted)
        if basis is None:
            return ports.Based(applied, basis, None)
        return ports.Based(applied, basis, await self.node_at(cluster, name, basis))

    async def cluster_at(self, cluster: str, at: int) -> ports.ClusterAt | None:
        """``cluster`` with its pool, pool use and node counts right after offset ``at``."""
        self._check_open()
        pools = [row for row in self.tables.cluster_history.get(cluster, []) if row.offset <= at]
        if not pools:
            return None
        pool = max(pools, key=lambda row: row.offset)
        nodes = self._nodes_at(cluster, at)
        counts = self._pod_ip_counts_at(cluster, at)
        cidrs = [
            (cidr, counts.get(node.name, (0, 0))[1 if ":" in cidr else 0])
            for node in nodes
            for cidr in node.pod_cidrs
        ]
        return ports.ClusterAt(
            name=cluster,
            partition=pool.partition,
            offset=at,
            pool_offset=pool.offset,
            ipv4_mask=pool.ipv4_mask,
            ipv6_mask=pool.ipv6_mask,
            elements=pool_use.element_use(
                ipv4_cidrs=pool.ipv4_cidrs,
                ipv4_mask=pool.ipv4_mask,
                ipv6_cidrs=pool.ipv6_cidrs,
                ipv6_mask=pool.ipv6_mask,
                node_cidrs=cidrs,
            ),
            nodes=len(nodes),
            nodes_with_cidrs=sum(1 for node in nodes if node.pod_cidrs),
            nodes_waiting=sum(1 for node in nodes if node.waiting),
            nodes_in_error=sum(1 for node in nodes if node.error is not None),
            nodes_in_conflict=sum(1 for node in nodes if node.conflict is not None),
        )

    async def nodes_at(
        self,
        cluster: str,
        at: int,
        *,
        error: bool | None = None,
        conflict: bool | None = None,
        waiting: bool | None = None,
        prefix: str = "",
        after: str = "",
        limit: int | None = None,
    ) -> list[ports.NodeAt]:
        """``cluster``'s live nodes right after offset ``at``, by name, filtered and paged."""
        self._check_open()
        rows = [
            row
            for row in self._nodes_at(cluster, at)
            if _bytewise(row.name) > _bytewise(after)
            and row.name.startswith(prefix)
            and (error is None or (row.error is not None) == error)
            and (conflict is None or (row.conflict is not None) == conflict)
            and (waiting is None or row.waiting == waiting)
        ]
        if limit is not None:
            rows = rows[: max(limit, 0)]
        counts = self._pod_ip_counts_at(cluster, at)
        return [self._node_at(row, counts.get(row.name, (0, 0))) for row in rows]

    async def node_at(self, cluster: str, name: str, at: int) -> ports.NodeAt | None:
        """One node right after offset ``at``, or None."""
        self._check_open()
        rows = [
            row
            for row in self.tables.node_history.get(cluster, [])
            if row.name == name and row.offset <= at
        ]
        if not rows:
            return None
        row = max(rows, key=lambda row: row.offset)
        if row.deleted:
            return None
        return self._node_at(row, self._pod_ip_counts_at(cluster, at).get(name, (0, 0)))

    def _nodes_at(self, cluster: str, at: int) -> list[memory_rows.NodeHistoryRow]:
        latest: dict[str, memory_rows.NodeHistoryRow] = {}
        for row in self.tables.node_history.get(cluster, []):
            if row.offset <= at and (
                row.name not in latest or latest[row.name].offset < row.offset
            ):
                latest[row.name] = row
        return sorted(
            (row for row in latest.values() if not row.deleted),
            key=lambda row: _bytewise(row.name),
        )

    def _pod_ip_counts_at(self, cluster: str, at: int) -> dict[str, tuple[int, int]]:
        counts: dict[str, list[int]] = {}
        for holding in self._holdings(cluster, lambda _family, _value, _owner: True):
            if holding.from_offset <= at and (holding.to_offset is None or holding.to_offset > at):
                count = counts.setdefault(holding.node, [0, 0])
                count[0 if holding.address.version == IPV4 else 1] += 1
        return {node: (v4, v6) for node, (v4, v6) in counts.items()}

    def _node_at(self, row: memory_rows.NodeHistoryRow, pod_ips: tuple[int, int]) -> ports.NodeAt:
        return ports.NodeAt(
            cluster=row.cluster,
            name=row.name,
            pod_cidrs=tuple(ipaddress.ip_network(cidr) for cidr in row.pod_cidrs),
            error=row.error,
            conflict=row.conflict,
            addresses=tuple(ipaddress.ip_address(address) for address in row.addresses),
            waiting=row.waiting,
            pinned=row.pinned,
            ipv4_pod_ips=pod_ips[0],
            ipv6_pod_ips=pod_ips[1],
            changed_offset=row.offset,
            changed_time=row.time,
            changed_event_id=self._event_id(row.partition, row.offset),
        )

    async def cluster_decisions(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[ports.CommittedDecision]:
        """Decisions about ``cluster`` on its partition with ``start <= offset <= upto``."""
        self._check_open()
        home = self.tables.clusters.get(cluster)
        if home is None:
            return []
        found = [
            decision
            for decision in await self.decisions(home.partition, start)
            if decision.offset <= upto and decision.cluster == cluster
        ]
        return found[: max(limit, 0)]

    async def cluster_rejections(
        self, cluster: str, start: int, upto: int, limit: int
    ) -> list[ports.Rejection]:
        """Rejected records naming ``cluster`` on its partition, ``start <= offset <= upto``."""
        self._check_open()
        home = self.tables.clusters.get(cluster)
        if home is None:
            return []
        decisions = self.tables.decisions.get(home.partition, [])
        found = [
            rejection
            for rejection in await self.rejections(home.partition, start)
            if rejection.offset <= upto
            and (decided := _at_offset(decisions, rejection.offset)) is not None
            and decided.cluster == cluster
        ]
        return found[: max(limit, 0)]

    async def close(self) -> None:
        """Refuse further use; the tables stay."""
        self._closed = True

    def _rows(self, cluster: str) -> Iterable[memory_rows.NodeRow]:
        return self.tables.nodes.get(cluster, {}).values()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ProjectionError("the in-memory projection reader is closed")


def _node_view(row: memory_rows.NodeRow, pod_ips: tuple[int, int]) -> ports.NodeView:
    return ports.NodeView(
        cluster=row.cluster,
        name=row.name,
        pod_cidrs=tuple(ipaddress.ip_network(cidr) for cidr in row.pod_cidrs),
        error=row.error,
        conflict=row.conflict,
        addresses=tuple(ipaddress.ip_address(address) for address in row.addresses),
        waiting=row.waiting,
        pinned=row.pinned,
        ipv4_pod_ips=pod_ips[0],
        ipv6_pod_ips=pod_ips[1],
        version=row.version,
        updated_at=row.updated_at,
    )


def _bytewise(text: str) -> bytes:
    # PostgreSQL's C collation: UTF-8 bytes, which orders like code points.
    return text.encode("utf-8", "surrogatepass")


def _address(family: int, value: int) -> ports.Address:
    if family == IPV6:
        return ipaddress.IPv6Address(value)
    return ipaddress.IPv4Address(value)


def _at_offset(rows: list[memory_rows.DecisionRow], offset: int) -> memory_rows.DecisionRow | None:
    found = _from(rows, offset, 1)
    return found[0] if found and found[0].offset == offset else None


def _from(rows: list[_Row], start: int, limit: int | None) -> list[_Row]:
    at = bisect.bisect_left(rows, start, key=lambda row: row.offset)
    return rows[at:] if limit is None else rows[at : at + max(limit, 0)]


if TYPE_CHECKING:
    # mypy checks here that the adapter implements its port.
    _port: type[ports.ProjectionReader] = MemoryProjectionReader
