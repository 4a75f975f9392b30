"""Property-based tests: random event streams against the allocator's invariants.

A Hypothesis state machine drives several clusters through dual-stack pools small enough to run
out, node adds, deletes and adoptions, pool growth, pod address requests and releases, and
garbage records. After every step the invariants below must hold; at the end, replaying the same
records into a fresh state must give the same digest and the same decisions.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from service.domain import allocation, document, events, restore, state

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
BAD_POOLS: list[dict[str, Any]] = [
    {"clusterPoolIPv4PodCIDRList": ["10.9.0.0/28"], "clusterPoolIPv4MaskSize": 30},
    {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/28"], "clusterPoolIPv4MaskSize": 29},
    {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/28", "10.0.0.8/29"], "clusterPoolIPv4MaskSize": 30},
]
ADDRESSES = ("10.0.0.5", "10.1.0.2", "192.168.0.1", "fd00::5", "2001:db8::1")
ADOPT_CIDRS = ("10.0.0.4/30", "10.0.0.12/30", "10.1.0.0/30", "10.5.0.0/30", "fd00::4/126")
IPS = ("10.0.0.1", "10.0.0.5", "10.1.0.2", "fd00::1", "fd00::6", "nonsense")


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = state.State(track_changes=True)
        self.records: list[bytes] = []
        self.decisions: list[bytes] = []
        self.pool_step = dict.fromkeys(CLUSTERS, -1)
        self.seq = 0

    def apply(self, body: dict[str, Any] | bytes) -> dict[str, Any]:
        self.seq += 1
        if isinstance(body, dict):
            body = json.dumps({"id": f"e{self.seq}", **body}).encode()
        decision, _ = allocation.apply_record(self.state, body)
        encoded = events.encode_decision(decision)
        self.records.append(body)
        self.decisions.append(encoded)
        out: dict[str, Any] = json.loads(encoded)
        assert not (out["error"] or "").startswith("internal error"), out
        return out

    @rule(cluster=st.sampled_from(CLUSTERS))
    def grow_pool(self, cluster: str) -> None:
        step = min(self.pool_step[cluster] + 1, len(POOLS) - 1)
        self.pool_step[cluster] = step
        assert (
            self.apply({"type": "pool.configured", "cluster": cluster, **POOLS[step]})["error"]
            is None
        )

    @rule(cluster=st.sampled_from(CLUSTERS), bad=st.sampled_from(BAD_POOLS))
    def bad_pool(self, cluster: str, bad: dict[str, Any]) -> None:
        # Each of these is only wrong as a successor of a configured pool.
        assume(self.pool_step[cluster] >= 0)
        before = document.digest(self.state)
        assert self.apply({"type": "pool.configured", "cluster": cluster, **bad})["error"]
        assert document.digest(self.state) == before

    @rule(
        cluster=st.sampled_from(CLUSTERS),
        node=st.sampled_from(NODES),
        addresses=st.lists(st.sampled_from(ADDRESSES), max_size=2),
    )
    def add_node(self, cluster: str, node: str, addresses: list[str]) -> None:
        self.apply({"type": "node.added", "cluster": cluster, "node": node, "addresses": addresses})

    @rule(
        cluster=st.sampled_from(CLUSTERS),
        node=st.sampled_from(NODES),
        cidrs=st.lists(st.sampled_from(ADOPT_CIDRS), min_size=1, max_size=2, unique=True),
    )
    def adopt_node(self, cluster: str, node: str, cidrs: list[str]) -> None:
        self.apply({"type": "node.adopted", "cluster": cluster, "node": node, "podCIDRs": cidrs})

    @rule(cluster=st.sampled_from(CLUSTERS), node=st.sampled_from(NODES))
    def delete_node(self, cluster: str, node: str) -> None:
        known = node in self.state.clusters.get(cluster, state.ClusterState("x", False)).nodes
        decision = self.apply({"type": "node.deleted", "cluster": cluster, "node": node})
        assert (decision["error"] is None) == known

    @rule(
        cluster=st.sampled_from(CLUSTERS),
        node=st.sampled_from(NODES),
        owner=st.sampled_from(OWNERS),
        family=st.sampled_from([None, "ipv4", "ipv6"]),
    )
    def request_ip(self, cluster: str, node: str, owner: str, family: str | None) -> None:
        body: dict[str, Any] = {
            "type": "ip.requested",
            "cluster": cluster,
            "node": node,
            "owner": owner,
        }
        if family is not None:
            body["family"] = family
        first = self.apply(body)
        if first["error"] is None:
            # Idempotent: asking again returns the same addresses and changes nothing.
            before = document.digest(self.state)
            assert self.apply(body)["ips"] == first["ips"]
            assert document.digest(self.state) == before

    @rule(
        cluster=st.sampled_from(CLUSTERS),
        node=st.sampled_from(NODES),
        owner=st.sampled_from(OWNERS),
        ip=st.sampled_from([None, *IPS]),
    )
    def release_ip(self, cluster: str, node: str, owner: str, ip: str | None) -> None:
        body: dict[str, Any] = {
            "type": "ip.released",
            "cluster": cluster,
            "node": node,
            "owner": owner,
        }
        if ip is not None:
            body["ip"] = ip
        before = document.digest(self.state)
        if self.apply(body)["error"] is not None:
            assert document.digest(self.state) == before

    @rule(junk=st.binary(max_size=64) | st.sampled_from([b"{}", b'{"type":"x","id":"y"}']))
    def garbage(self, junk: bytes) -> None:
        before = document.digest(self.state)
        decision = self.apply(junk)
        if decision["error"] is not None:
            assert document.digest(self.state) == before

    @invariant()
    def nothing_is_held_twice_and_everything_is_where_it_belongs(self) -> None:
        for cluster in self.state.clusters.values():
            seen_cidrs: set[Any] = set()
            for node in cluster.nodes.values():
                own = {int(a) for a in node.addresses}
                for family, pod_range in node.ranges.items():
                    network = pod_range.cidr.network
                    assert network not in seen_cidrs
                    seen_cidrs.add(network)
                    pool = cluster.pools[family]
                    assert any(network.subnet_of(e.network) for e in pool.elements)  # type: ignore[arg-type]
                    element = pool.elements[pod_range.cidr.element]
                    assert not element.slots.is_free(pod_range.cidr.slot)
                    assert set(pod_range.by_owner.values()) == set(pod_range.owner_of)
                    assert len(pod_range.by_owner) == len(pod_range.owner_of)
                    for offset in pod_range.owner_of:
                        address = pod_range.cidr.base + offset
                        assert 1 <= offset <= pod_range.cidr.size - 2
                        assert ipaddress.ip_address(address) in network
                        if address in own:
                            # Only when the node claimed a pod's address after it was handed out.
                            assert " is held by " in (node.conflict or ""), node.conflict
                        assert not pod_range.slots.is_free(offset)
                    # Used slots are exactly the pods plus the node's own reserved addresses.
                    assert pod_range.slots.used == len(pod_range.owner_of) + len(pod_range.reserved)
            for family, pool in cluster.pools.items():
                held = sum(1 for n in cluster.nodes.values() if family in n.ranges)
                assert sum(e.slots.used for e in pool.elements) == held
            for name in cluster.waiting:
                assert name in cluster.nodes
                assert not cluster.nodes[name].pinned

    def teardown(self) -> None:
        replayed = state.State()
        decisions = [
            events.encode_decision(allocation.apply_record(replayed, record)[0])
            for record in self.records
        ]
        assert decisions == self.decisions
        assert document.digest(replayed) == document.digest(self.state)
        assert document.state_document(replayed) == document.state_document(self.state)
        # What the projection stores is enough to go on deciding exactly alike.
        rebuilt = round_trip(self.state)
        assert document.digest(rebuilt) == document.digest(self.state)
        for record in self.records[-20:]:
            assert events.encode_decision(
                allocation.apply_record(rebuilt, record)[0]
            ) == events.encode_decision(allocation.apply_record(replayed, record)[0])


AllocatorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocatorProperties = AllocatorMachine.TestCase


def round_trip(original: state.State) -> state.State:
    """Persist every cluster as projection rows and rebuild a state from them."""
    rebuilt = state.State()
    for cluster in original.clusters.values():
        row = restore.cluster_row(cluster)
        target = restore.restore_cluster(
            rebuilt,
            row["name"],
            ipv4_cidrs=row["ipv4_cidrs"],
            ipv4_mask=row["ipv4_mask"],
            ipv6_cidrs=row["ipv6_cidrs"],
            ipv6_mask=row["ipv6_mask"],
            cursors=json.loads(json.dumps(row["cursors"])),
            waiting=row["waiting"],
        )
        for node in cluster.nodes.values():
            nrow = restore.node_row(node)
            restore.restore_node(
                target,
                nrow["name"],
                pod_cidrs=nrow["pod_cidrs"],
                error=nrow["error"],
                conflict=nrow["conflict"],
                addresses=nrow["addresses"],
                pinned=nrow["pinned"],
                cursors=nrow["cursors"],
            )
        for node in cluster.nodes.values():
            for family, value, _, owner in sorted(restore.pod_ips(node), reverse=True):
                restore.restore_pod_ip(target, node.name, family, value, owner)
        restore.finish(target)
    return rebuilt
