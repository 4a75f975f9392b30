"""What each event did to the nodes and the pool a reader sees: the history behind ``as_of``.

Called by ``batch.apply_records`` around each ``allocation.apply``: ``before`` and ``after``
find exactly which nodes one event changed (and whether it changed the cluster's pool) by
giving the cluster's change journal an empty node set for the one event and merging it back
afterwards, then append a snapshot of each to the batch (``ports.Batch.node_history`` and
``pool_history``), with the event's offset and time. The projection writes them, insert-only, in
the batch's transaction (``node_history``, ``cluster_history``), so that the query API can
answer "as the projection stood after record N" exactly for any N, not only at batch ends.

Cheap on purpose: pod address events, nearly all of the log, change no field a reader sees
(only the node's next-fit cursor), except the conflict of a node that has one; for them
``before`` returns None after two dictionary look-ups and nothing is recorded. A snapshot equal
to the node's previous one in the same batch is not repeated. Nothing here decides anything:
the journal gets back exactly what the event put into it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from service import ports
from service.domain import events, restore, state
from service.domain.pool import IPV4, IPV6

# The fields of a node row a reader sees (not its arrival number or its cursors).
VISIBLE = ("pod_cidrs", "error", "conflict", "addresses", "pinned", "waiting")


@dataclass(slots=True)
class Watch:
    """The cluster's journal as it was before the event (``nodes``: its node set, set aside)."""

    existed: bool
    nodes: set[str] | None
    pool: bool
    # The pool as a reader sees it (each family's elements and mask), before the event: most
    # events that touch the pool only move its next-fit cursors, which no reader sees.
    config: tuple[object, ...] = ()


# A tuple, not ``IpRequested | IpReleased``: that expression built a union object per event.
_POD_ADDRESS_EVENTS = (events.IpRequested, events.IpReleased)


def before(current: state.State, event: events.AnyEvent) -> Watch | None:
    """Set the cluster's journal up to see what ``event`` alone changes; None: nothing to see."""
    cluster = current.clusters.get(event.cluster)
    if isinstance(event, _POD_ADDRESS_EVENTS):
        node = cluster.nodes.get(event.node) if cluster is not None else None
        if node is None or node.conflict is None:
            return None
    if cluster is None:
        return Watch(existed=False, nodes=None, pool=False)
    changes = cluster.changes
    if changes is None:
        return None
    watch = Watch(existed=True, nodes=changes.nodes, pool=changes.pool, config=_config(cluster))
    changes.nodes = set()
    changes.pool = False
    return watch


def after(
    batch: ports.Batch,
    current: state.State,
    event: events.AnyEvent,
    offset: int,
    when: datetime.datetime,
    watch: Watch,
    last: dict[tuple[str, str], dict[str, object] | None],
) -> None:
    """Merge the event's changes back into the journal and snapshot what it changed.

    ``last`` holds this batch's latest snapshot of each node, so that an unchanged one is not
    written twice.
    """
    cluster = current.clusters.get(event.cluster)
    if cluster is None or cluster.changes is None:
        return
    changes = cluster.changes
    touched = changes.nodes
    pool = changes.pool
    if watch.existed and watch.nodes is not None:
        watch.nodes.update(touched)
        changes.nodes = watch.nodes
        changes.pool = watch.pool or pool
    name = cluster.name
    for node_name in sorted(touched):
        node = cluster.nodes.get(node_name)
        snapshot: dict[str, object] | None = None
        if node is not None:
            row = restore.node_row(cluster, node)
            snapshot = {key: row[key] for key in VISIBLE}
        key = (name, node_name)
        if key in last and last[key] == snapshot:
            continue
        last[key] = snapshot
        batch.node_history.append(
            ports.NodeSnapshot(
                cluster=name, node=node_name, offset=offset, time=when, fields=snapshot
            )
        )
    # A node taking or giving back a CIDR marks the pool changed (its cursors, for the cluster
    # row), but only a new configuration is a new snapshot: with a snapshot per node event, a
    # 1,024-element pool wrote 2,048 CIDR texts per event to cluster_history (and built the
    # cursors of the cluster row each time), 20 times the core's time for that scenario.
    if not watch.existed or (pool and _config(cluster) != watch.config):
        row = restore.cluster_row(cluster)
        batch.pool_history.append(
            ports.PoolSnapshot(
                cluster=name,
                offset=offset,
                time=when,
                ipv4_cidrs=tuple(row["ipv4_cidrs"]),
                ipv4_mask=row["ipv4_mask"],
                ipv6_cidrs=tuple(row["ipv6_cidrs"]),
                ipv6_mask=row["ipv6_mask"],
            )
        )


def _config(cluster: state.ClusterState) -> tuple[object, ...]:
    """What a pool snapshot records, to compare (the element tuples are the pool's own, so a
    pool that did not change compares by identity, element by element)."""
    v4, v6 = cluster.pools[IPV4], cluster.pools[IPV6]
    return (v4.texts, v4.mask, v6.texts, v6.mask)
