"""``ipledger adopt --from-kubernetes`` planned: existing CiliumNodes into ``node.adopted`` events.

``service.processes.jobs.adopt`` lists the CiliumNodes, reads the pool and the nodes ipledger
already holds, and hands them to ``plan_adoption``, which decides what to append and what to
report. Pure: no I/O, no clock, no randomness; it never writes the projection or the log itself
(``jobs.adopt`` appends the events, and the allocator decides them like any other).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service import errors, ports
from service.domain import adoption as domain_adoption
from service.domain import events
from service.domain import pool as domain_pool
from service.domain.addresses import format_network


@dataclass(slots=True)
class AdoptionPlan:
    """What ``ipledger adopt`` found in one Kubernetes cluster.

    ``events`` are the ``node.adopted`` events to append; ``refused`` the CiliumNodes whose
    CIDRs cannot be adopted, with the reason (outside the pool, invalid, already allocated
    differently); ``already`` the nodes ipledger holds with exactly these CIDRs; ``empty`` the
    CiliumNodes without podCIDRs (they get CIDRs when their ``node.added`` arrives).
    """

    cluster: str
    events: list[events.NodeAdopted] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def plan_adoption(
    cluster: str,
    listed: Sequence[ports.ObservedNode],
    pool: ports.ClusterPool,
    known: Mapping[str, Sequence[str]],
) -> AdoptionPlan:
    """Turn CiliumNodes into ``node.adopted`` events for ``cluster``; pure.

    A node is adopted only if each of its CIDRs is valid, has the pool's mask size for its
    family and lies inside one of the pool's CIDRs (``service.domain.adoption``, the core's own
    checks): the allocator would otherwise pin it with an error, and the operator must decide
    first. ``known`` maps the nodes ipledger already holds to their CIDRs. Raises
    ``errors.ConfigurationError`` for a pool the core would not hold.
    """
    pools = _family_pools(cluster, pool)
    plan = AdoptionPlan(cluster=cluster)
    for node in sorted(listed, key=lambda n: n.name):
        if not node.pod_cidrs:
            plan.empty.append(node.name)
            continue
        networks, reason = domain_adoption.adoptable(node.pod_cidrs, pools)
        if reason is not None:
            plan.refused.append((node.name, reason))
            continue
        texts = tuple(format_network(n) for n in networks)
        held = known.get(node.name)
        if held is not None:
            if tuple(held) == texts:
                plan.already.append(node.name)
            else:
                plan.refused.append(
                    (node.name, f"ipledger already allocated it {list(held)}, not {list(texts)}")
                )
            continue
        digest = hashlib.sha256(f"{cluster}/{node.name}/{','.join(texts)}".encode()).hexdigest()
        event = events.NodeAdopted(
            id=f"adopt-{digest[:32]}",
            cluster=cluster,
            node=node.name,
            pod_cidrs=texts,
            addresses=tuple(node.addresses[:64]),
        )
        checked = events.decode(events.encode_event(event))
        if isinstance(checked, events.DecodeFailure):
            plan.refused.append((node.name, checked.reason))
            continue
        plan.events.append(event)
    return plan


def _family_pools(cluster: str, pool: ports.ClusterPool) -> dict[int, domain_pool.FamilyPool]:
    """``pool`` as the core holds it, built the way a ``pool.configured`` builds it."""
    lists = {
        domain_pool.IPV4: [format_network(n) for n in pool.ipv4_cidrs],
        domain_pool.IPV6: [format_network(n) for n in pool.ipv6_cidrs],
    }
    masks = {domain_pool.IPV4: pool.ipv4_mask, domain_pool.IPV6: pool.ipv6_mask}
    try:
        return domain_adoption.family_pools(lists, masks)
    except domain_pool.PoolConfigError as exc:
        raise errors.ConfigurationError(
            f"cluster {cluster}: the pool the projection holds is not one the core accepts: {exc}"
        ) from exc
