"""Which CIDRs an existing node can be adopted with: the rule behind ``ipledger adopt``.

Called by ``service.sync.adoption.plan_adoption``, which refuses a CiliumNode before anything is
appended when the core would not grant its podCIDRs as asked (it would pin the node with an
error instead, and the operator must decide first). The rule is the core's: CIDRs are parsed as
``node.adopted`` parses them (``addresses.parse_network``, at most one per family, with the same
reasons) and must each be one block of the family's pool as ``pool.FamilyPool.locate`` finds it;
the pool is built by the same ``plan_change`` / ``commit_change`` a ``pool.configured`` goes
through. What this adds is only the reason a block is not one (family off, outside, wrong size).

Pure: no I/O. It does not know which blocks other nodes hold (the allocator decides that when it
applies the event) and never touches a ``State``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.domain import addresses, pool
from service.domain.addresses import Network, format_network


def family_pools(
    lists: Mapping[int, Sequence[str]], masks: Mapping[int, int | None]
) -> dict[int, pool.FamilyPool]:
    """The pools of both families as the core holds them after this configuration.

    ``lists`` and ``masks`` are ``clusterPoolIPv{4,6}PodCIDRList`` and ``...MaskSize`` by
    family (a family left out is disabled). Raises ``pool.PoolConfigError`` for a configuration
    the core would refuse.
    """
    pools = {family: pool.FamilyPool(family) for family in pool.FAMILIES}
    change = pool.plan_change(
        pools,
        {family: lists.get(family, ()) for family in pool.FAMILIES},
        {family: masks.get(family) for family in pool.FAMILIES},
    )
    pool.commit_change(pools, change)
    return pools


def requested_cidrs(texts: Sequence[str]) -> dict[int, Network] | str:
    """The CIDRs ``texts`` ask for by family, in the order given, or why they cannot be asked for.

    The checks and reasons of the core's ``node.adopted``: each text a CIDR the contract accepts,
    at most one per family. An empty list is not refused here (callers say why it is empty).
    """
    requested: dict[int, Network] = {}
    for text in texts:
        try:
            network = addresses.parse_network(text)
        except ValueError as exc:
            return f"invalid CIDR {text!r}: {exc}"
        if network.version in requested:
            return f"more than one {pool.FAMILY_NAMES[network.version]} CIDR"
        requested[network.version] = network
    return requested


def block_refusal(network: Network, family_pool: pool.FamilyPool) -> str | None:
    """Why ``network`` is not one block of ``family_pool`` (its family's pool); None if it is."""
    if family_pool.locate(network) is not None:
        return None
    shown = format_network(network)
    if not family_pool.enabled:
        return f"{shown} is IPv{network.version}, which the pool does not enable"
    start = int(network.network_address)
    element = family_pool.element_at(start)
    if element is None or start + network.num_addresses > element.end:
        return f"{shown} is outside the pool ({', '.join(family_pool.texts)})"
    return f"{shown} is a /{network.prefixlen}; the pool hands out /{family_pool.mask}"


def adoptable(
    texts: Sequence[str], pools: Mapping[int, pool.FamilyPool]
) -> tuple[list[Network], str | None]:
    """The networks ``texts`` name, IPv4 first, if a node can be adopted with them; else a reason.

    ``pools`` as ``family_pools`` builds them. The first reason found is given: the request's
    (``requested_cidrs``), then each CIDR's in the order given (``block_refusal``).
    """
    requested = requested_cidrs(texts)
    if isinstance(requested, str):
        return [], requested
    for family, network in requested.items():
        reason = block_refusal(network, pools[family])
        if reason is not None:
            return [], reason
    return [requested[family] for family in sorted(requested)], None
