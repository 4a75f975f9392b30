"""Random event streams for the property tests: the steps, the strategies of their arguments, and
a strategy of whole streams.

Two clusters, dual-stack pools small enough to run out, node adds, deletes and adoptions, pool
growth (and successors that must be refused), pod address requests and releases, garbage records.
The allocator state machine (tests/unit/test_allocator_properties.py) draws one step at a time
and checks invariants between steps; the restart property (tests/integration/
test_projection_restart.py) draws a whole stream at once with :func:`streams`. Both write their
records with the same :class:`Writer` from the same :data:`STEPS`, so they explore the same
inputs.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

CLUSTERS = ("east", "west")
NODES = ("n1", "n2", "n3", "n4")
OWNERS = ("ns/a", "ns/b", "ns/c", "router", "health")
# Append-only growth steps; each is a valid successor of the one before.
POOLS: list[dict[str, Any]] = [
    {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/28"], "clusterPoolIPv4MaskSize": 30},
    {
        "clusterPoolIPv4PodCIDRList": ["10.0.0.0/28"],
        "clusterPoolIPv4MaskSize": 30,
        "clusterPoolIPv6PodCIDRList": ["fd00::/124"],
        "clusterPoolIPv6MaskSize": 126,
    },
    {
        "clusterPoolIPv4PodCIDRList": ["10.0.0.0/28", "10.1.0.0/29"],
        "clusterPoolIPv4MaskSize": 30,
        "clusterPoolIPv6PodCIDRList": ["fd00::/124", "fd00:1::/125"],
        "clusterPoolIPv6MaskSize": 126,
    },
]
# Each of these is only wrong as a successor of a configured pool.
BAD_POOLS: list[dict[str, Any]] = [
    {"clusterPoolIPv4PodCIDRList": ["10.9.0.0/28"], "clusterPoolIPv4MaskSize": 30},
    {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/28"], "clusterPoolIPv4MaskSize": 29},
    {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/28", "10.0.0.8/29"], "clusterPoolIPv4MaskSize": 30},
]
ADDRESSES = ("10.0.0.5", "10.1.0.2", "192.168.0.1", "fd00::5", "2001:db8::1")
ADOPT_CIDRS = ("10.0.0.4/30", "10.0.0.12/30", "10.1.0.0/30", "10.5.0.0/30", "fd00::4/126")
IPS = ("10.0.0.1", "10.0.0.5", "10.1.0.2", "fd00::1", "fd00::6", "nonsense")

# The arguments of each step of :class:`Writer`, by name: the state machine's rules take these
# as they are, :func:`streams` draws them the same way.
STEPS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "grow_pool": {"cluster": st.sampled_from(CLUSTERS)},
    "bad_pool": {"cluster": st.sampled_from(CLUSTERS), "bad": st.sampled_from(BAD_POOLS)},
    "add_node": {
        "cluster": st.sampled_from(CLUSTERS),
        "node": st.sampled_from(NODES),
        "addresses": st.lists(st.sampled_from(ADDRESSES), max_size=2),
    },
    "adopt_node": {
        "cluster": st.sampled_from(CLUSTERS),
        "node": st.sampled_from(NODES),
        "cidrs": st.lists(st.sampled_from(ADOPT_CIDRS), min_size=1, max_size=2, unique=True),
    },
    "delete_node": {"cluster": st.sampled_from(CLUSTERS), "node": st.sampled_from(NODES)},
    "request_ip": {
        "cluster": st.sampled_from(CLUSTERS),
        "node": st.sampled_from(NODES),
        "owner": st.sampled_from(OWNERS),
        "family": st.sampled_from([None, "ipv4", "ipv6"]),
    },
    "release_ip": {
        "cluster": st.sampled_from(CLUSTERS),
        "node": st.sampled_from(NODES),
        "owner": st.sampled_from(OWNERS),
        "ip": st.sampled_from([None, *IPS]),
    },
    "garbage": {
        "junk": st.binary(max_size=64) | st.sampled_from([b"{}", b'{"type":"x","id":"y"}'])
    },
}


class Writer:
    """Writes the records of a stream: numbers event ids, remembers each cluster's pool step."""

    def __init__(self) -> None:
        self.seq = 0
        self.pool_step = dict.fromkeys(CLUSTERS, -1)

    def has_pool(self, cluster: str) -> bool:
        return self.pool_step[cluster] >= 0

    def event(self, body: dict[str, Any]) -> bytes:
        self.seq += 1
        return json.dumps({"id": f"e{self.seq}", **body}).encode()

    def grow_pool(self, cluster: str) -> bytes:
        """The next growth step of the cluster's pool (the last one again once all are used)."""
        step = min(self.pool_step[cluster] + 1, len(POOLS) - 1)
        self.pool_step[cluster] = step
        return self.event({"type": "pool.configured", "cluster": cluster, **POOLS[step]})

    def bad_pool(self, cluster: str, bad: dict[str, Any]) -> bytes:
        return self.event({"type": "pool.configured", "cluster": cluster, **bad})

    def add_node(self, cluster: str, node: str, addresses: list[str]) -> bytes:
        return self.event(
            {"type": "node.added", "cluster": cluster, "node": node, "addresses": addresses}
        )

    def adopt_node(self, cluster: str, node: str, cidrs: list[str]) -> bytes:
        return self.event(
            {"type": "node.adopted", "cluster": cluster, "node": node, "podCIDRs": cidrs}
        )

    def delete_node(self, cluster: str, node: str) -> bytes:
        return self.event({"type": "node.deleted", "cluster": cluster, "node": node})

    def request_ip(self, cluster: str, node: str, owner: str, family: str | None) -> bytes:
        body: dict[str, Any] = {
            "type": "ip.requested",
            "cluster": cluster,
            "node": node,
            "owner": owner,
        }
        if family is not None:
            body["family"] = family
        return self.event(body)

    def release_ip(self, cluster: str, node: str, owner: str, ip: str | None) -> bytes:
        body: dict[str, Any] = {
            "type": "ip.released",
            "cluster": cluster,
            "node": node,
            "owner": owner,
        }
        if ip is not None:
            body["ip"] = ip
        return self.event(body)

    def garbage(self, junk: bytes) -> bytes:
        self.seq += 1
        return junk


_STEP = st.one_of(
    *(st.tuples(st.just(name), st.fixed_dictionaries(args)) for name, args in STEPS.items())
)


@st.composite
def streams(draw: st.DrawFn, *, min_steps: int = 1, max_steps: int = 80) -> list[bytes]:
    """A whole stream of records, written as the state machine's rules write them.

    A refused pool successor is only drawn once its cluster has a pool (as the rule assumes);
    a pod address request is sometimes asked twice, as the rule does to check idempotency.
    """
    steps = draw(st.lists(st.tuples(_STEP, st.booleans()), min_size=min_steps, max_size=max_steps))
    writer = Writer()
    records: list[bytes] = []
    for (name, args), again in steps:
        if name == "bad_pool" and not writer.has_pool(args["cluster"]):
            continue
        records.append(getattr(writer, name)(**args))
        if name == "request_ip" and again:
            records.append(writer.request_ip(**args))
    return records
