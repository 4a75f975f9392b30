"""``ipledger status``: how full each pool is, who waits, what failed, and how far behind the log.

Called by ``service.cli``. ``gather`` reads one consistent picture per call through the read
port (``ports.ProjectionReader``: clusters and their pool use, the nodes waiting, in error or in
conflict, consumed offsets, writer leases, the last rejections) and the log's end offsets
through the ``EventLog`` port, both opened by ``service.bootstrap``; it writes nothing. The
lag of a partition is the log's end minus the consumed offset, as the read port prescribes.

``as_json`` is the document ``--json`` prints (its shape is documented in docs/operations.md
and is kept stable: fields are added, never renamed or removed; ``"version"`` changes if that
ever has to happen). ``render`` draws the tables for people with ``rich``, in the manner of
``calicoctl ipam show --show-blocks``. ``watch`` reads again every few seconds until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
from rich.console import Console
from rich.table import Table

from service import bootstrap, errors, forecast, ports
from service.settings import Settings

VERSION = 1
_Sources = tuple[ports.ProjectionReader, ports.EventLog]
_FAMILY = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """One cluster: its pool use and the nodes that need attention (all of them counted, the
    first ``limit`` named)."""

    view: ports.ClusterView
    # Per element of ``view.elements``: when it runs out at the recent rate (None: no window).
    forecasts: tuple[forecast.Forecast | None, ...]
    window: datetime.timedelta | None
    waiting: int
    waiting_nodes: tuple[ports.NodeView, ...]
    in_error: int
    error_nodes: tuple[ports.NodeView, ...]
    in_conflict: int
    conflict_nodes: tuple[ports.NodeView, ...]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One log partition: its end, what was consumed, the writer's lease, the last rejections."""

    partition: int
    end_offset: int | None  # None: the log did not say (another log's partition)
    position: ports.PartitionPosition | None
    lease: ports.Lease | None
    rejections: tuple[ports.Rejection, ...]

    @property
    def consumed(self) -> int:
        return 0 if self.position is None else self.position.next_offset

    @property
    def lag(self) -> int | None:
        return None if self.end_offset is None else max(self.end_offset - self.consumed, 0)


@dataclass(frozen=True, slots=True)
class Status:
    """What ``ipledger status`` shows, read at ``read_at``."""

    read_at: datetime.datetime
    log: str
    clusters: tuple[ClusterStatus, ...]
    partitions: tuple[PartitionStatus, ...]


async def gather(
    reader: ports.ProjectionReader,
    event_log: ports.EventLog,
    *,
    log_name: str,
    cluster: str | None = None,
    limit: int = 10,
    rejections: int = 5,
    window: datetime.timedelta | None = None,
) -> Status:
    """Read the status (of one ``cluster``, or all); ``limit`` nodes named per list, the last
    ``rejections`` rejected records per partition; with ``window``, each element's exhaustion
    forecast at the net allocation rate of that recent window, computed as the query API
    computes it (``service.forecast``; the window is the API's ``forecast_window_s``). An
    unknown ``cluster`` is a ``ConfigurationError`` saying how to list the known ones.
    """
    views = await reader.clusters()
    if cluster is not None:
        views = [view for view in views if view.name == cluster]
        if not views:
            raise errors.ConfigurationError(
                f"no cluster {cluster!r} in the projection: `ipledger status` without "
                "--cluster lists the clusters there are"
            )
    clusters = []
    for view in views:
        waiting = await reader.nodes(view.name, waiting=True)
        failed = await reader.nodes(view.name, error=True)
        conflicts = await reader.nodes(view.name, conflict=True)
        outlooks: tuple[forecast.Forecast | None, ...] = (None,) * len(view.elements)
        if window is not None:
            outlooks = await _forecasts(reader, view, window)
        clusters.append(
            ClusterStatus(
                view=view,
                forecasts=outlooks,
                window=window,
                waiting=len(waiting),
                waiting_nodes=tuple(waiting[:limit]),
                in_error=len(failed),
                error_nodes=tuple(failed[:limit]),
                in_conflict=len(conflicts),
                conflict_nodes=tuple(conflicts[:limit]),
            )
        )
    positions = {position.partition: position for position in await reader.positions()}
    leases = {lease.partition: lease for lease in await reader.leases()}
    ends = {p: await event_log.end_offset(p) for p in await event_log.partitions()}
    numbers = sorted(set(ends) | set(positions))
    if cluster is not None:
        numbers = [view.partition for view in views]
    partitions = [
        PartitionStatus(
            partition=number,
            end_offset=ends.get(number),
            position=positions.get(number),
            lease=leases.get(number),
            rejections=tuple(await reader.last_rejections(number, rejections)),
        )
        for number in numbers
    ]
    return Status(
        read_at=datetime.datetime.now(datetime.UTC),
        log=log_name,
        clusters=tuple(clusters),
        partitions=tuple(partitions),
    )


@contextlib.asynccontextmanager
async def sources(
    settings: Settings,
) -> AsyncIterator[tuple[ports.ProjectionReader, ports.EventLog]]:
    """The read side and the log the settings name, closed again afterwards."""
    reader = bootstrap.open_reader(settings)
    try:
        # In no consumer group (a Kafka log): status reads end offsets, it is no consumer.
        event_log = await bootstrap.open_replay_log(settings)
        try:
            yield reader, event_log
        finally:
            await event_log.close()
    finally:
        await reader.close()


async def _forecasts(
    reader: ports.ProjectionReader, view: ports.ClusterView, window: datetime.timedelta
) -> tuple[forecast.Forecast | None, ...]:
    """Each element's forecast as the query API gives it for "now" (``forecast.pool_forecasts``
    at the partition's last applied record); none before the partition's first record."""
    last = await reader.applied_offset(view.partition)
    outlooks = (
        None
        if last is None
        else await forecast.pool_forecasts(
            reader,
            cluster=view.name,
            partition=view.partition,
            at=last,
            elements=view.elements,
            window=window,
        )
    )
    if outlooks is None:
        return (None,) * len(view.elements)
    return outlooks


async def read(settings: Settings, *, cluster: str | None, limit: int, rejections: int) -> Status:
    """``gather`` once over the adapters the settings name."""
    async with sources(settings) as (reader, event_log):
        return await gather(
            reader,
            event_log,
            log_name=settings.log_name,
            cluster=cluster,
            limit=limit,
            rejections=rejections,
            window=datetime.timedelta(seconds=settings.api_forecast_window_s),
        )


# --- JSON ----------------------------------------------------------------------------------------


def as_json(status: Status) -> dict[str, object]:
    """The ``--json`` document (docs/operations.md, "ipledger status"): stable, additive."""
    return {
        "version": VERSION,
        "read_at": _time(status.read_at),
        "log": status.log,
        "clusters": [_cluster_json(c) for c in status.clusters],
        "partitions": [_partition_json(p) for p in status.partitions],
    }


def _cluster_json(cluster: ClusterStatus) -> dict[str, object]:
    view = cluster.view
    return {
        "name": view.name,
        "partition": view.partition,
        "version": view.version,
        "nodes": view.nodes,
        "pool": [
            {
                "family": _FAMILY[element.cidr.version],
                "cidr": str(element.cidr),
                "mask_size": element.mask,
                "node_cidrs": {
                    "total": element.total,
                    "used": element.used,
                    "free": element.free,
                    "used_percent": _percent(element.used, element.total),
                },
                "pod_addresses": {"used": element.pod_ips, "capacity": element.pod_ip_capacity},
                "forecast": _forecast_json(outlook, cluster.window),
            }
            for element, outlook in zip(view.elements, cluster.forecasts, strict=True)
        ],
        "waiting": {
            "count": cluster.waiting,
            "nodes": [node.name for node in cluster.waiting_nodes],
        },
        "in_error": {
            "count": cluster.in_error,
            "nodes": [{"name": n.name, "error": n.error} for n in cluster.error_nodes],
        },
        "in_conflict": {
            "count": cluster.in_conflict,
            "nodes": [{"name": n.name, "conflict": n.conflict} for n in cluster.conflict_nodes],
        },
    }


def _forecast_json(
    outlook: forecast.Forecast | None, window: datetime.timedelta | None
) -> dict[str, object] | None:
    """The query API's ``forecast`` of a pool element, field for field (docs/api.md)."""
    if outlook is None or window is None:
        return None
    return {
        "window_seconds": window.total_seconds(),
        "node_cidrs_per_day": outlook.rate_per_s * 86_400,
        "seconds_left": outlook.seconds_left,
        "exhausts_at": None if outlook.exhausted_at is None else _time(outlook.exhausted_at),
    }


def _partition_json(partition: PartitionStatus) -> dict[str, object]:
    lease = partition.lease
    position = partition.position
    return {
        "partition": partition.partition,
        "end_offset": partition.end_offset,
        "consumed_offset": partition.consumed,
        "lag": partition.lag,
        "published_offset": None if position is None else position.published,
        "committed_at": None if position is None else _time(position.updated_at),
        "writer": None
        if lease is None
        else {
            "holder": lease.holder,
            "token": lease.token,
            "expires_at": _expiry(lease),
            "expired": lease.expired,
        },
        "last_rejections": [
            {
                "offset": r.offset,
                "reason": r.reason,
                "key": None if r.key is None else r.key.decode("utf-8", "replace"),
                "rejected_at": _time(r.rejected_at),
            }
            for r in partition.rejections
        ],
    }


def _time(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _expiry(lease: ports.Lease) -> str | None:
    # A lease given up cleanly ends at minus infinity (the driver's datetime.min): no time.
    return None if lease.expires_at.year == 1 else _time(lease.expires_at)


def _percent(part: int, whole: int) -> float:
    return 0.0 if whole == 0 else round(100 * part / whole, 1)


# --- for people ----------------------------------------------------------------------------------


def render(status: Status, console: Console) -> None:
    """Draw ``status`` on the console."""
    if not status.clusters:
        console.print(
            "No cluster yet: append a pool.configured event (`ipledger append`) and run the "
            "allocator (`ipledger run`)."
        )
    for cluster in status.clusters:
        view = cluster.view
        console.print(
            f"[bold]Cluster {view.name}[/bold]  partition {view.partition}, at offset "
            f"{view.version}: {view.nodes} node(s), {cluster.waiting} waiting for a CIDR, "
            f"{cluster.in_error} in error, {cluster.in_conflict} in conflict"
        )
        pools = Table(box=None, pad_edge=False, header_style="bold")
        headings = ("CIDR", "mask", "node CIDRs used / total", "free", "used", "pod IPs")
        for heading in (*headings, "runs out"):
            pools.add_column(heading, justify="right" if heading in headings[1:] else "left")
        if not view.elements:
            console.print("  no pool configured: append a pool.configured event")
        for element, outlook in zip(view.elements, cluster.forecasts, strict=True):
            pools.add_row(
                str(element.cidr),
                f"/{element.mask}",
                f"{element.used:,} / {element.total:,}",
                f"{element.free:,}",
                f"{_percent(element.used, element.total):.1f}%",
                f"{element.pod_ips:,} / {element.pod_ip_capacity:,}",
                _runs_out(outlook),
            )
        if view.elements:
            console.print(pools)
        _names(console, "Waiting for a CIDR", cluster.waiting, cluster.waiting_nodes, None)
        _names(console, "In error", cluster.in_error, cluster.error_nodes, "error")
        _names(console, "In conflict", cluster.in_conflict, cluster.conflict_nodes, "conflict")
        console.print()
    log = Table(title=f"Log ({status.log})", title_justify="left", box=None, header_style="bold")
    for heading in ("partition", "end", "consumed", "lag", "writer", "lease"):
        log.add_column(heading, justify="left" if heading in ("writer", "lease") else "right")
    for partition in status.partitions:
        lease = partition.lease
        log.add_row(
            str(partition.partition),
            "?" if partition.end_offset is None else f"{partition.end_offset:,}",
            f"{partition.consumed:,}",
            "?" if partition.lag is None else f"{partition.lag:,}",
            "none" if lease is None else f"{lease.holder} (token {lease.token})",
            "" if lease is None else _lease_text(lease, status.read_at),
        )
    console.print(log)
    for partition in status.partitions:
        if partition.rejections:
            console.print(f"\n[bold]Last rejections, partition {partition.partition}[/bold]")
            for rejection in partition.rejections:
                console.print(
                    f"  offset {rejection.offset}  {_time(rejection.rejected_at)}  "
                    f"{rejection.reason}",
                    markup=False,
                    highlight=False,
                )


def _runs_out(outlook: forecast.Forecast | None) -> str:
    """When the element runs out at the recent rate: ``now``, ``in 3.2 days (2026-12-06)``,
    ``not growing``; ``—`` without a forecast."""
    if outlook is None:
        return "—"
    left = outlook.seconds_left
    if left is None:
        return "not growing"
    if left == 0:
        return "now"
    if left < 3600:
        text = f"in {left / 60:.0f} min"
    elif left < 2 * 86_400:
        text = f"in {left / 3600:.1f} h"
    else:
        text = f"in {left / 86_400:,.1f} days"
    at = outlook.exhausted_at
    return text if at is None else f"{text} ({at:%Y-%m-%d})"


def _names(
    console: Console,
    title: str,
    count: int,
    nodes: Sequence[ports.NodeView],
    reason: str | None,
) -> None:
    if not count:
        return
    console.print(f"  {title}: {count}")
    for node in nodes:
        why = "" if reason is None else f"  {getattr(node, reason)}"
        console.print(f"    {node.name}{why}", markup=False, highlight=False)
    if count > len(nodes):
        console.print(f"    ... and {count - len(nodes)} more (--limit, or --json)")


def _lease_text(lease: ports.Lease, now: datetime.datetime) -> str:
    if lease.expired:
        return "expired: no writer (is `ipledger run` running?)"
    expires = lease.expires_at
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=datetime.UTC)
    left = (expires - now).total_seconds()
    return f"expires in {max(left, 0):.1f}s"


async def watch(
    settings: Settings,
    *,
    every_s: float,
    cluster: str | None,
    limit: int,
    rejections: int,
    show: Callable[[Status], None],
    until: anyio.CancelScope | None = None,
) -> None:
    """Read the status and ``show`` it every ``every_s`` seconds until ``until`` is cancelled
    (Ctrl-C, ``service.cli``) or the task is. The sources are closed outside ``until``: their
    close is not cancelled with the refreshing."""
    async with sources(settings) as (reader, event_log):
        with anyio.CancelScope() if until is None else until:
            while True:
                show(
                    await gather(
                        reader,
                        event_log,
                        log_name=settings.log_name,
                        cluster=cluster,
                        limit=limit,
                        rejections=rejections,
                        window=datetime.timedelta(seconds=settings.api_forecast_window_s),
                    )
                )
                await anyio.sleep(every_s)
