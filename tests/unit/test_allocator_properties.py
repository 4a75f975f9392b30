"""Property-based tests: random event streams against the allocator's invariants.

A Hypothesis state machine drives several clusters through dual-stack pools small enough to run
out, node adds, deletes and adoptions, pool growth, pod address requests and releases, and
garbage records (the steps of ``tests.random_streams``, shared with the restart property in
tests/integration). After every step the invariants below must hold; at the end, replaying the same
records into a fresh state must give the same digest and the same decisions.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import HealthCheck, assume, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from service.domain import allocation, document, events, restore, state
from tests.random_streams import STEPS, Writer


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = state.State(track_changes=True)
        self.records: list[bytes] = []
        self.decisions: list[bytes] = []
        self.writer = Writer()

    def apply(self, record: bytes) -> dict[str, Any]:
        decision, _ = allocation.apply_record(self.state, record)
        encoded = events.encode_decision(decision)
        self.records.append(record)
        self.decisions.append(encoded)
        out: dict[str, Any] = json.loads(encoded)
        assert not (out["error"] or "").startswith("internal error"), out
        return out

    @rule(**STEPS["grow_pool"])
    def grow_pool(self, cluster: str) -> None:
        assert self.apply(self.writer.grow_pool(cluster))["error"] is None

    @rule(**STEPS["bad_pool"])
    def bad_pool(self, cluster: str, bad: dict[str, Any]) -> None:
        assume(self.writer.has_pool(cluster))
        before = document.digest(self.state)
        assert self.apply(self.writer.bad_pool(cluster, bad))["error"]
        assert document.digest(self.state) == before

    @rule(**STEPS["add_node"])
    def add_node(self, cluster: str, node: str, addresses: list[str]) -> None:
        self.apply(self.writer.add_node(cluster, node, addresses))

    @rule(**STEPS["adopt_node"])
    def adopt_node(self, cluster: str, node: str, cidrs: list[str]) -> None:
        self.apply(self.writer.adopt_node(cluster, node, cidrs))

    @rule(**STEPS["delete_node"])
    def delete_node(self, cluster: str, node: str) -> None:
        known = node in self.state.clusters.get(cluster, state.ClusterState("x", False)).nodes
        decision = self.apply(self.writer.delete_node(cluster, node))
        assert (decision["error"] is None) == known

    @rule(**STEPS["request_ip"])
    def request_ip(self, cluster: str, node: str, owner: str, family: str | None) -> None:
        first = self.apply(self.writer.request_ip(cluster, node, owner, family))
        if first["error"] is None:
            # Idempotent: asking again returns the same addresses and changes nothing.
            before = document.digest(self.state)
            again = self.apply(self.writer.request_ip(cluster, node, owner, family))
            assert again["ips"] == first["ips"]
            assert document.digest(self.state) == before

    @rule(**STEPS["release_ip"])
    def release_ip(self, cluster: str, node: str, owner: str, ip: str | None) -> None:
        before = document.digest(self.state)
        if self.apply(self.writer.release_ip(cluster, node, owner, ip))["error"] is not None:
            assert document.digest(self.state) == before

    @rule(**STEPS["garbage"])
    def garbage(self, junk: bytes) -> None:
        before = document.digest(self.state)
        decision = self.apply(self.writer.garbage(junk))
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
            # A node waits exactly when it is not pinned and lacks a CIDR of an enabled family.
            waiting = cluster.waiting.names()
            assert waiting == [
                n.name for n in cluster.by_arrival() if not n.pinned and cluster.missing(n)
            ]
            assert [cluster.nodes[name].seq for name in waiting] == sorted(
                cluster.nodes[name].seq for name in waiting
            )

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
            next_seq=row["next_seq"],
        )
        # Rows in another order than the nodes arrived in: the rebuilt state must not care.
        for name in sorted(cluster.nodes, reverse=True):
            nrow = restore.node_row(cluster, cluster.nodes[name])
            restore.restore_node(
                target,
                nrow["name"],
                seq=nrow["seq"],
                pod_cidrs=nrow["pod_cidrs"],
                error=nrow["error"],
                conflict=nrow["conflict"],
                addresses=nrow["addresses"],
                pinned=nrow["pinned"],
                cursors=nrow["cursors"],
            )
        for node in cluster.nodes.values():
            held = sorted(restore.pod_ips(node), reverse=True)
            if node.seq % 3 == 0:
                # One address at a time, in descending order.
                for family, value, _, owner in held:
                    restore.restore_pod_ip(target, node.name, family, value, owner)
                continue
            # In bulk, a node and family at a time as the projection loads them, in descending
            # order; every other node's in two pieces (a second piece is merged).
            for family in (4, 6):
                mine = [(value, owner) for f, value, _, owner in held if f == family]
                pieces = [mine] if node.seq % 3 == 1 else [mine[::2], mine[1::2]]
                for piece in pieces:
                    if piece:
                        values, owners = zip(*piece, strict=True)
                        restore.restore_pod_ips(target, node.name, family, values, owners)
        restore.finish(target)
    return rebuilt
