"""The leak check of ``ipledger check --kubernetes``: addresses whose owner pod no longer exists.

An address stays held until its ``ip.released`` is in the log; a CNI that crashed between a
pod's deletion and its release, or a producer that lost the event, leaves it held for ever
(Calico users know the report as ``calicoctl ipam check``). ``find_leaks`` compares every held
address of a cluster with the pods the API server lists: an owner of the form ``namespace/pod``
(Cilium's own form; anything after the first blank, as in ``ns/pod [restored]``, is ignored)
whose pod is not listed is a leak. Owners of another form are not pods and are reported apart,
unchecked.

It **releases nothing**: it returns, for each leak, the ``ip.released`` event an operator may
append (``ipledger append``) once satisfied that the pod is gone for good. Event ids are derived
from the holding (cluster, node, owner and address), so running
the check twice prints the same events, and appending one twice releases nothing more (the
second is refused: the owner holds no such address any more).

The holdings are read **before** the pods: a pod listed afterwards that holds an address read
before it existed cannot be, since an address is requested for a pod that exists, so no live
pod is reported. A pod deleted after the listing is simply found at the next check; one that
was recreated under the same name (a StatefulSet's ``web-0``) counts as existing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service import ports
from service.domain import addresses as domain_addresses
from service.domain import events


@dataclass(frozen=True, slots=True)
class Leak:
    """One held address whose owner pod the API server does not list."""

    cluster: str
    node: str
    owner: str
    address: str

    def release(self) -> events.IpReleased:
        """The ``ip.released`` an operator may append to give this address back."""
        digest = hashlib.sha256(
            f"{self.cluster}\0{self.node}\0{self.owner}\0{self.address}".encode()
        ).hexdigest()[:32]
        return events.IpReleased(
            id=f"leak-check/{digest}",
            cluster=self.cluster,
            node=self.node,
            owner=self.owner,
            ip=self.address,
        )


@dataclass(frozen=True, slots=True)
class LeakReport:
    """The outcome for one cluster: what was checked, the leaks, the owners that are no pods."""

    cluster: str
    held: int  # addresses held in the cluster
    pods: int  # pods the API server listed
    leaks: tuple[Leak, ...]
    not_pods: tuple[Leak, ...]  # owners not of the form namespace/pod: not checked


def pod_of(owner: str) -> str | None:
    """``namespace/pod`` of an owner, or None when the owner does not name a pod."""
    head = owner.split(maxsplit=1)[0] if owner.strip() else ""
    namespace, slash, pod = head.partition("/")
    if not slash or not namespace or not pod or "/" in pod:
        return None
    return head


async def find_leaks(
    cluster: str, reader: ports.ProjectionReader, client: ports.ClusterClient
) -> LeakReport:
    """Compare ``cluster``'s held addresses with its pods (holdings first: see above)."""
    state = await reader.state()
    held: list[Leak] = []
    cluster_state = state.clusters.get(cluster)
    for node in cluster_state.nodes.values() if cluster_state is not None else ():
        for pod_range in node.ranges.values():
            cidr = pod_range.cidr
            for offset, owner in sorted(pod_range.owner_of.items()):
                address = domain_addresses.format_ip(cidr.family, cidr.base + offset)
                held.append(Leak(cluster, node.name, owner, address))
    pods = await client.list_pods()
    leaks, not_pods = [], []
    for holding in held:
        pod = pod_of(holding.owner)
        if pod is None:
            not_pods.append(holding)
        elif pod not in pods:
            leaks.append(holding)
    return LeakReport(
        cluster=cluster,
        held=len(held),
        pods=len(pods),
        leaks=tuple(sorted(leaks, key=_order)),
        not_pods=tuple(sorted(not_pods, key=_order)),
    )


def _order(leak: Leak) -> tuple[str, str, str]:
    return leak.node, leak.owner, leak.address
