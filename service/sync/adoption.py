"""``ipledger adopt --from-kubernetes`` planned: existing CiliumNodes into ``node.adopted`` events.

``service.cli`` (``cmd_adopt``) lists the CiliumNodes, reads the pool and the nodes ipledger
already holds, and hands them to ``plan_adoption``, which decides what to append and what to
report. Pure: no I/O, no clock, no randomness; it never writes the projection or the log itself
(the cli appends the events, and the allocator decides them like any other).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service import ports
from service.domain import events


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
    family and lies inside one of the pool's CIDRs: the allocator would otherwise pin it with an
    error, and the operator must decide first. ``known`` maps the nodes ipledger already holds
    to their CIDRs.
    """
    plan = AdoptionPlan(cluster=cluster)
    for node in sorted(listed, key=lambda n: n.name):
        if not node.pod_cidrs:
            plan.empty.append(node.name)
            continue
        networks, reason = _adoptable(node.pod_cidrs, pool)
        if reason is not None:
            plan.refused.append((node.name, reason))
            continue
        texts = tuple(str(n) for n in networks)
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


def _adoptable(
    texts: Sequence[str], pool: ports.ClusterPool
) -> tuple[list[ports.Network], str | None]:
    by_family: dict[int, ports.Network] = {}
    for text in texts:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            return [], f"invalid CIDR {text!r}: {exc}"
        if network.version in by_family:
            return [], f"more than one IPv{network.version} CIDR"
        by_family[network.version] = network
        elements: Sequence[ports.Network] = (
            pool.ipv4_cidrs if network.version == 4 else pool.ipv6_cidrs
        )
        mask = pool.ipv4_mask if network.version == 4 else pool.ipv6_mask
        if not elements:
            return [], f"{network} is IPv{network.version}, which the pool does not enable"
        if not any(_inside(network, element) for element in elements):
            shown = ", ".join(str(e) for e in elements)
            return [], f"{network} is outside the pool ({shown})"
        if mask is not None and network.prefixlen != mask:
            return [], f"{network} is a /{network.prefixlen}; the pool hands out /{mask}"
    return [by_family[f] for f in sorted(by_family)], None


def _inside(network: ports.Network, element: ports.Network) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(element, ipaddress.IPv4Network):
        return network.subnet_of(element)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(element, ipaddress.IPv6Network):
        return network.subnet_of(element)
    return False
