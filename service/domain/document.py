"""The state document and its digest: the canonical, comparable form of the allocation state.

``ipledger simulate`` prints ``state_document``; ``ipledger state`` prints the same document built
from the PostgreSQL projection; replay compares digests to prove they agree. The digest covers
everything that influences future decisions (next-fit cursors, the nodes' arrival order, the
waiting queue, pinned nodes), not just what the document shows, so two
states with equal digests decide alike from then on. Every text in it is spelt by
``service.domain.addresses``, never by ``str()`` of an ``ipaddress`` object, so the digest is the
same on every Python version.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from service.domain.addresses import format_address
from service.domain.pool import FAMILY_NAMES, IPV4, IPV6
from service.domain.state import ClusterState, Node, State

_encoder = msgspec.json.Encoder()


def pool_document(cluster: ClusterState) -> dict[str, Any]:
    """The four ``pool.configured`` fields as in force."""
    v4, v6 = cluster.pools[IPV4], cluster.pools[IPV6]
    return {
        "clusterPoolIPv4PodCIDRList": list(v4.texts),
        "clusterPoolIPv4MaskSize": v4.mask,
        "clusterPoolIPv6PodCIDRList": list(v6.texts),
        "clusterPoolIPv6MaskSize": v6.mask,
    }


def node_document(node: Node) -> dict[str, Any]:
    ips: dict[str, str] = {}
    for family in (IPV4, IPV6):
        pod_range = node.ranges.get(family)
        if pod_range is not None:
            for offset in sorted(pod_range.owner_of):
                ips[pod_range.address_text(offset)] = pod_range.owner_of[offset]
    return {
        "podCIDRs": list(node.pod_cidr_texts()),
        "error": node.error,
        "conflict": node.conflict,
        "addresses": [format_address(a) for a in node.addresses],
        "ips": ips,
    }


def _allocator_document(cluster: ClusterState) -> dict[str, Any]:
    """What drives future decisions beyond the visible state."""
    return {
        "cursors": {
            FAMILY_NAMES[f]: [e.slots.cursor for e in cluster.pools[f].elements]
            for f in (IPV4, IPV6)
        },
        "nodeCursors": {
            name: [cluster.nodes[name].ranges[f].slots.cursor for f in sorted(node.ranges)]
            for name, node in sorted(cluster.nodes.items())
        },
        # The order, not the numbers: states whose nodes arrived in the same order decide
        # alike, whatever numbers a deleted node used up.
        "arrival": [node.name for node in cluster.by_arrival()],
        "waiting": cluster.waiting.names(),
        "pinned": sorted(n for n, node in cluster.nodes.items() if node.pinned),
    }


def cluster_digest(cluster: ClusterState, nodes: dict[str, Any] | None = None) -> str:
    if nodes is None:
        nodes = {name: node_document(cluster.nodes[name]) for name in sorted(cluster.nodes)}
    canonical = {
        "pool": pool_document(cluster),
        "nodes": nodes,
        "allocator": _allocator_document(cluster),
    }
    return "sha256:" + hashlib.sha256(_encoder.encode(canonical)).hexdigest()


def cluster_document(cluster: ClusterState) -> dict[str, Any]:
    nodes = {name: node_document(cluster.nodes[name]) for name in sorted(cluster.nodes)}
    return {
        "digest": cluster_digest(cluster, nodes),
        "pool": pool_document(cluster),
        "nodes": nodes,
    }


def state_document(state: State) -> dict[str, Any]:
    """``{"clusters": {name: {"digest", "pool", "nodes"}}}``, keys in a stable order."""
    return {
        "clusters": {
            name: cluster_document(state.clusters[name]) for name in sorted(state.clusters)
        }
    }


def digest(state: State) -> str:
    """A stable hash of the whole canonical state: equal digests mean equal states."""
    parts = [f"{name}={cluster_digest(state.clusters[name])}" for name in sorted(state.clusters)]
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def encode_document(document: dict[str, Any]) -> bytes:
    return _encoder.encode(document)
