"""The pool map's body (``service.api.dashboard.pool_map``) from the read port's values.

Which cell each node CIDR falls in, the pod addresses used per family, the node flags, and a
pool larger than the drawn grid (an IPv6 element of 2**32 node CIDRs), where each cell stands
for several node CIDRs and the fullest colours it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json

import pytest

from service import ports
from service.api import dashboard, models

T = datetime.datetime(2026, 11, 17, tzinfo=datetime.UTC)


def _node(name: str, cidrs: list[str], v4: int = 0, v6: int = 0, **flags: object) -> ports.NodeAt:
    return ports.NodeAt(
        cluster="c",
        name=name,
        pod_cidrs=tuple(ipaddress.ip_network(cidr) for cidr in cidrs),
        error=flags.get("error"),  # type: ignore[arg-type]
        conflict=flags.get("conflict"),  # type: ignore[arg-type]
        addresses=(),
        waiting=bool(flags.get("waiting")),
        pinned=bool(flags.get("pinned")),
        ipv4_pod_ips=v4,
        ipv6_pod_ips=v6,
        changed_offset=1,
        changed_time=T,
        changed_event_id=None,
    )


def _cluster(*elements: ports.PoolElementUse) -> ports.ClusterAt:
    return ports.ClusterAt("c", 0, 9, 0, 24, 120, elements, 3, 2, 1, 1, 0)


def test_each_node_cidr_is_its_cell_with_its_use_and_flags() -> None:
    cluster = _cluster(
        ports.PoolElementUse(ipaddress.ip_network("10.0.0.0/8"), 24, 2**16, 2),
        ports.PoolElementUse(ipaddress.ip_network("fd00::/104"), 120, 2**16, 1),
    )
    nodes = [
        _node("a", ["10.0.3.0/24", "fd00::300/120"], v4=5, v6=7),
        _node("b", ["10.255.255.0/24"], v4=254, error="pool exhausted"),
        _node("c", [], waiting=True, pinned=True),
    ]
    body = dashboard.pool_map(cluster, nodes, models.Basis(partition=0, offset=9))
    v4, v6 = body.elements
    assert (v4.cells, v4.per_cell, v4.pod_capacity, v4.node_cidrs) == (65_536, 1, 254, 65_536)
    assert v4.held == [3, 0, 5, 65_535, 1, 254]
    assert (v6.cells, v6.held) == (65_536, [3, 0, 7])
    assert body.nodes.names == ["a", "b", "c"]
    assert body.nodes.flags == [0, dashboard.ERROR, dashboard.WAITING | dashboard.PINNED]


def test_a_pool_larger_than_the_grid_puts_several_node_cidrs_in_a_cell() -> None:
    huge = ports.PoolElementUse(ipaddress.ip_network("fd00::/32"), 64, 2**32, 2)
    nodes = [
        _node("a", ["fd00:0:1::/64"], v6=3),  # node CIDR 65,536: cell 1
        _node("b", ["fd00:0:1:1::/64"], v6=9),  # node CIDR 65,537: cell 1 too, fuller
        _node("c", ["fd00:0:ffff:ffff::/64"], v6=1),  # the last node CIDR: the last cell
    ]
    body = dashboard.pool_map(_cluster(huge), nodes, models.Basis(partition=0, offset=9))
    (element,) = body.elements
    assert (element.cells, element.per_cell) == (65_536, 65_536)
    assert element.held == [1, 1, 9, 65_535, 2, 1]


def _decision(
    offset: int, kind: str, ips: list[str], error: str | None = None
) -> ports.CommittedDecision:
    body = {"id": str(offset), "type": kind, "cluster": "c", "error": error, "ips": ips}
    return ports.CommittedDecision(
        0, offset, "c", str(offset), kind, error, json.dumps(body).encode(), None, None, T
    )


def test_pod_decisions_move_the_map_forward_and_node_decisions_do_not() -> None:
    cluster = _cluster(ports.PoolElementUse(ipaddress.ip_network("10.0.0.0/8"), 24, 2**16, 2))
    nodes = [_node("a", ["10.0.3.0/24"], v4=5), _node("b", ["10.0.9.0/24"], v4=1)]
    live = dashboard._Live(cluster, nodes, 9)
    moved = live.advance(
        [
            _decision(10, "ip.requested", ["10.0.3.7"]),
            _decision(11, "ip.requested", ["10.0.9.2"]),
            _decision(12, "ip.released", ["10.0.3.1", "10.0.3.2"]),
            _decision(13, "ip.requested", [], error="no address left"),
        ],
        13,
    )
    assert moved and live.basis == 13
    assert live.body(0).elements[0].held == [3, 0, 4, 9, 1, 2]
    assert not live.advance([_decision(14, "node.added", [])], 14)
    assert live.basis == 13 and live.body(0).elements[0].held == [3, 0, 4, 9, 1, 2]
    # An address in no held cell, or on a node in conflict: the map is built whole.
    assert not live.advance([_decision(15, "ip.requested", ["10.0.200.1"])], 15)
    live.flags[1] = dashboard.CONFLICT
    assert not live.advance([_decision(15, "ip.released", ["10.0.9.2"])], 15)
    assert live.basis == 13


class _Pages:
    """A read port's ``nodes_at`` over a sorted list, recording each page asked for."""

    def __init__(self, names: list[str]) -> None:
        self.nodes = [_node(name, []) for name in names]
        self.asked: list[tuple[str, int | None]] = []

    async def nodes_at(
        self, cluster: str, at: int, *, after: str = "", limit: int | None = None
    ) -> list[ports.NodeAt]:
        self.asked.append((after, limit))
        found = [node for node in self.nodes if node.name > after]
        return found if limit is None else found[:limit]


@pytest.mark.anyio
async def test_a_map_built_whole_reads_the_nodes_a_page_per_statement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dashboard, "NODE_PAGE", 2)
    reader = _Pages(["a", "b", "c", "d", "e"])
    nodes = await dashboard._all_nodes(reader, "c", 9)  # type: ignore[arg-type]
    assert [node.name for node in nodes] == ["a", "b", "c", "d", "e"]
    assert reader.asked == [("", 2), ("b", 2), ("d", 2)]
