"""The one-shot commands: ``ipledger init``, ``append`` and ``adopt``, composed of adapters.

Called by ``service.cli``, which reads and checks the input and prints the outcome. Each function
here opens what it needs through ``service.bootstrap``, does one thing, and closes it again,
whatever happened; none of them decides anything (``adopt``'s plan is ``sync.plan_adoption``'s).
"""

from __future__ import annotations

from collections.abc import Sequence

from service import bootstrap, errors, ports, sync
from service.domain import events
from service.settings import Settings

# Records per append call: one round trip each, and no unbounded request.
APPEND_CHUNK = 1000


async def init(settings: Settings) -> None:
    """Create or upgrade the database schema, the query API's read-only role and, with Kafka,
    the topics."""
    await bootstrap.migrate_database(settings)
    await bootstrap.ensure_api_role(settings)
    await bootstrap.ensure_topics(settings)


async def append(settings: Settings, records: Sequence[tuple[bytes | None, bytes]]) -> int:
    """Append ``(key, value)`` records to the log in order; how many were appended."""
    event_log = await bootstrap.open_log(settings)
    try:
        await _append(event_log, records)
    finally:
        await event_log.close()
    return len(records)


async def adopt(settings: Settings, *, dry_run: bool) -> list[sync.AdoptionPlan]:
    """Plan ``node.adopted`` events for every cluster's existing CiliumNodes; append them
    unless ``dry_run``. A cluster without a pool yet is a ``ConfigurationError``."""
    clients = bootstrap.open_cluster_clients(settings)
    store = bootstrap.open_sync_store(settings)
    plans = []
    try:
        for cluster, client in clients.items():
            pool = await store.pool(cluster)
            if pool is None:
                raise errors.ConfigurationError(
                    f"cluster {cluster} has no pool yet: append its pool.configured event "
                    "and let the allocator apply it before adopting"
                )
            listed = await client.list_nodes()
            known = await store.node_pod_cidrs(cluster)
            plans.append(sync.plan_adoption(cluster, listed, pool, known))
    finally:
        for client in clients.values():
            await client.close()
        await store.close()
    adopted = [e for plan in plans for e in plan.events]
    if adopted and not dry_run:
        event_log = await bootstrap.open_log(settings)
        try:
            records = [(e.cluster.encode(), events.encode_event(e)) for e in adopted]
            await _append(event_log, records)
        finally:
            await event_log.close()
    return plans


async def _append(event_log: ports.EventLog, records: Sequence[tuple[bytes | None, bytes]]) -> None:
    for start in range(0, len(records), APPEND_CHUNK):
        await event_log.append(records[start : start + APPEND_CHUNK])
