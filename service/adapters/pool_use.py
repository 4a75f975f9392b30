"""How full each element of a cluster's pool is: the one computation both read adapters share.

Called by ``service.adapters.postgres.reader`` and ``service.adapters.memory_reader`` with a
cluster's stored pool (its texts and masks) and the pod CIDRs of its live nodes, each with the
pod addresses held in it. The pool is
built by the core's own ``plan_change``/``commit_change`` and each CIDR found with
``FamilyPool.element_at``, so "which element holds this CIDR" is answered as the allocator
answers it. Pure: no I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from service import ports
from service.domain import addresses
from service.domain.pool import FAMILIES, IPV4, IPV6, FamilyPool, commit_change, plan_change


def element_use(
    *,
    ipv4_cidrs: Sequence[str],
    ipv4_mask: int | None,
    ipv6_cidrs: Sequence[str],
    ipv6_mask: int | None,
    node_cidrs: Iterable[tuple[str, int]],
) -> tuple[ports.PoolElementUse, ...]:
    """Every pool element, IPv4 first in list order, with the node CIDRs it holds of its total.

    ``node_cidrs``: ``(pod CIDR text, pod addresses held in it)`` of every live node's CIDRs.
    """
    pools = {family: FamilyPool(family) for family in FAMILIES}
    commit_change(
        pools,
        plan_change(
            pools, {IPV4: ipv4_cidrs, IPV6: ipv6_cidrs}, {IPV4: ipv4_mask, IPV6: ipv6_mask}
        ),
    )
    used: collections.Counter[tuple[int, int]] = collections.Counter()
    pod_ips: collections.Counter[tuple[int, int]] = collections.Counter()
    for text, held in node_cidrs:
        network = addresses.parse_network(text)
        element = pools[network.version].element_at(int(network.network_address))
        if element is not None:
            used[element.family, element.index] += 1
            pod_ips[element.family, element.index] += held
    return tuple(
        ports.PoolElementUse(
            cidr=element.network,
            mask=element.mask,
            total=element.slots.capacity,
            used=used[element.family, element.index],
            pod_ips=pod_ips[element.family, element.index],
        )
        for family in FAMILIES
        for element in pools[family].elements
    )
