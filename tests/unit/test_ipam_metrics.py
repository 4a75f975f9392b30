"""The pool gauges of ``ipledger run`` (``service.ipam_metrics``) against states built by the core.

Each state is made by applying events with the pure core, so the figures are checked against
what the core decided: node CIDRs used and free per pool element, pod addresses held and what
the held CIDRs can hand out, nodes waiting (per family), in error and in conflict, and the
exhaustion forecast, with a clock the test moves. The collector reads a live state from the
metrics server's thread while the loop changes it: a scrape beside a writer must never fail.
"""

from __future__ import annotations

import math
import threading

import prometheus_client
import pytest
from prometheus_client import parser, registry

from service import allocator, metrics
from service.domain import allocation, state
from service.ipam_metrics import ClusterUse, ElementUse, Forecasts, PoolCollector, cluster_use

EAST = [
    # IPv4: two /30 node CIDRs in the first element, one in the second; IPv6: two /126.
    b'{"type":"pool.configured","id":"p","cluster":"east",'
    b'"clusterPoolIPv4PodCIDRList":["10.0.0.0/29","10.0.1.0/30"],"clusterPoolIPv4MaskSize":30,'
    b'"clusterPoolIPv6PodCIDRList":["fd00::/125"],"clusterPoolIPv6MaskSize":126}',
    b'{"type":"node.added","id":"1","cluster":"east","node":"n1"}',
    # n2's own address falls inside the pod CIDR it gets: reserved, and a conflict.
    b'{"type":"node.added","id":"2","cluster":"east","node":"n2","addresses":["10.0.0.5"]}',
    # IPv6 is full now: n3 gets nothing (its IPv4 CIDR is given back) and waits for both.
    b'{"type":"node.added","id":"3","cluster":"east","node":"n3"}',
    # Adopted with CIDRs outside the pool: pinned to them, in error, not waiting.
    b'{"type":"node.adopted","id":"4","cluster":"east","node":"p","podCIDRs":["192.168.0.0/30"]}',
    b'{"type":"ip.requested","id":"5","cluster":"east","node":"n1","owner":"ns/a","family":"ipv4"}',
    b'{"type":"ip.requested","id":"6","cluster":"east","node":"n1","owner":"ns/b","family":"ipv4"}',
    b'{"type":"ip.requested","id":"7","cluster":"east","node":"n2","owner":"ns/c","family":"ipv6"}',
    # A cluster with a node and no pool: the node is in error, nothing waits for a family.
    b'{"type":"node.added","id":"8","cluster":"west","node":"w1"}',
]


def built(records: list[bytes]) -> state.State:
    current = state.State()
    for record in records:
        allocation.apply_record(current, record)
    return current


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_figures_of_a_cluster_are_what_the_core_decided() -> None:
    current = built(EAST)
    assert cluster_use(current.clusters["east"]) == ClusterUse(
        cluster="east",
        elements=(
            ElementUse("ipv4", "10.0.0.0/29", 30, 2, 2, pod_ips_used=2, pod_ips_capacity=4),
            ElementUse("ipv4", "10.0.1.0/30", 30, 1, 0, pod_ips_used=0, pod_ips_capacity=0),
            ElementUse("ipv6", "fd00::/125", 126, 2, 2, pod_ips_used=1, pod_ips_capacity=4),
        ),
        nodes=4,
        waiting={"ipv4": 1, "ipv6": 1},
        waiting_nodes=1,
        in_error=2,
        in_conflict=1,
    )
    assert cluster_use(current.clusters["west"]) == ClusterUse(
        cluster="west", elements=(), nodes=1, waiting={}, waiting_nodes=0, in_error=1
    )
    # The core's own waiting queue agrees.
    assert current.clusters["east"].waiting.names() == ["n3"]


def test_the_gauges_are_exposed_per_cluster_family_and_element() -> None:
    current = built(EAST)
    clock = [1000.0]
    collectors = registry.CollectorRegistry(auto_describe=False)
    collectors.register(PoolCollector(lambda: [current], clock=lambda: clock[0]))
    got = samples(prometheus_client.generate_latest(collectors).decode())
    first = ("cidr", "10.0.0.0/29"), ("cluster", "east"), ("family", "ipv4")
    second = ("cidr", "10.0.1.0/30"), ("cluster", "east"), ("family", "ipv4")
    six = ("cidr", "fd00::/125"), ("cluster", "east"), ("family", "ipv6")
    assert got["ipledger_ipam_node_cidrs", (*first, ("state", "used"))] == 2
    assert got["ipledger_ipam_node_cidrs", (*first, ("state", "free"))] == 0
    assert got["ipledger_ipam_node_cidrs", (*second, ("state", "free"))] == 1
    assert got["ipledger_ipam_node_cidrs_capacity", first] == 2
    assert got["ipledger_ipam_node_cidrs_capacity", six] == 2
    assert got["ipledger_ipam_pod_ips", (*first, ("state", "used"))] == 2
    assert got["ipledger_ipam_pod_ips", (*first, ("state", "free"))] == 2
    assert got["ipledger_ipam_pod_ips", (*six, ("state", "used"))] == 1
    assert got["ipledger_ipam_pod_ips_capacity", six] == 4
    assert got["ipledger_ipam_pod_ips_capacity", second] == 0
    east = ("cluster", "east")
    assert got["ipledger_ipam_nodes", (("category", "total"), east)] == 4
    assert got["ipledger_ipam_nodes", (("category", "waiting"), east)] == 1
    assert got["ipledger_ipam_nodes", (("category", "in-error"), east)] == 2
    assert got["ipledger_ipam_nodes", (("category", "in-conflict"), east)] == 1
    assert got["ipledger_ipam_nodes", (("category", "in-error"), ("cluster", "west"))] == 1
    assert got["ipledger_ipam_nodes_waiting", (east, ("family", "ipv4"))] == 1
    assert got["ipledger_ipam_nodes_waiting", (east, ("family", "ipv6"))] == 1
    # First scrape: a full element has run out (0); the others need a second observation.
    assert got["ipledger_ipam_seconds_to_exhaustion", first] == 0
    assert ("ipledger_ipam_seconds_to_exhaustion", second) not in got
    assert got["ipledger_ipam_family_seconds_to_exhaustion", (east, ("family", "ipv6"))] == 0
    assert ("ipledger_ipam_family_seconds_to_exhaustion", (east, ("family", "ipv4"))) not in got
    # West has no pool: nodes, but no element and no family.
    assert not [key for key in got if ("cluster", "west") in key[1] and "cidr" in dict(key[1])]

    # 100 s later n1 has gone: one CIDR of each family is free, and the waiting n3 gets them.
    deleted = b'{"type":"node.deleted","id":"9","cluster":"east","node":"n1"}'
    allocation.apply_record(current, deleted)
    clock[0] += 100.0
    got = samples(prometheus_client.generate_latest(collectors).decode())
    # The same node CIDRs in use as 100 s ago: not running out. n1's pods went with it.
    assert got["ipledger_ipam_node_cidrs", (*first, ("state", "used"))] == 2
    assert got["ipledger_ipam_pod_ips", (*first, ("state", "used"))] == 0
    assert got["ipledger_ipam_seconds_to_exhaustion", second] == math.inf
    assert got["ipledger_ipam_family_seconds_to_exhaustion", (east, ("family", "ipv4"))] == (
        math.inf
    )
    assert got["ipledger_ipam_nodes", (("category", "waiting"), east)] == 0


def test_the_forecast_is_the_net_rate_over_the_window_extended_to_the_free_part() -> None:
    forecasts = Forecasts(window_s=300.0)
    key = ("east", "ipv4", "10.0.0.0/8")
    assert forecasts.seconds_left(key, used=10, free=90, now=0.0) is None
    assert forecasts.seconds_left(key, used=20, free=80, now=100.0) == pytest.approx(800.0)
    assert forecasts.seconds_left(key, used=20, free=80, now=200.0) == pytest.approx(1600.0)
    # The window is 300 s: the oldest sample kept is the last one at or before t=700.
    assert forecasts.seconds_left(key, used=40, free=60, now=1000.0) == pytest.approx(2400.0)
    # Use shrank over the window: not running out.
    assert forecasts.seconds_left(key, used=10, free=90, now=1100.0) == math.inf
    assert forecasts.seconds_left(key, used=100, free=0, now=1200.0) == 0.0
    other = ("east", "ipv4")
    assert forecasts.seconds_left(other, used=1, free=9, now=1200.0) is None
    forecasts.forget_except({other})
    assert forecasts.seconds_left(key, used=100, free=5, now=1300.0) is None
    with pytest.raises(ValueError, match="positive"):
        Forecasts(window_s=0)


def test_samples_are_kept_at_most_every_window_over_120() -> None:
    forecasts = Forecasts(window_s=120.0)
    key = ("c", "ipv4", "10.0.0.0/8")
    for second in range(0, 600):
        forecasts.seconds_left(key, used=second, free=10_000, now=float(second))
    kept = forecasts._samples[key]
    assert len(kept) <= 122
    assert kept[0][0] <= 600 - 1 - 120 < kept[1][0]


def test_the_allocator_registry_reads_its_writers_states_and_nothing_without_them() -> None:
    current = built(EAST)
    leading: list[state.State] = []
    collectors = metrics.allocator_registry(allocator.Metrics(), lambda: leading)
    text = metrics.render(collectors)
    assert "# TYPE ipledger_ipam_node_cidrs gauge" in text
    assert "ipledger_ipam_node_cidrs{" not in text
    leading.append(current)
    got = samples(metrics.render(collectors))
    assert got["ipledger_ipam_nodes", (("category", "total"), ("cluster", "east"))] == 4
    # Without a state source, no pool families at all (the sync worker, old callers).
    assert "ipledger_ipam_" not in metrics.render(metrics.allocator_registry(allocator.Metrics()))


def test_a_scrape_beside_a_writer_changing_the_state_never_fails() -> None:
    current = built(EAST[:1])
    collectors = metrics.allocator_registry(allocator.Metrics(), lambda: [current])
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                metrics.render(collectors)
            except BaseException as exc:  # recorded for the assertion below
                failures.append(exc)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        big = (
            b'{"type":"pool.configured","id":"q","cluster":"east",'
            b'"clusterPoolIPv4PodCIDRList":["10.0.0.0/29","10.0.1.0/30","10.8.0.0/16"],'
            b'"clusterPoolIPv4MaskSize":30,"clusterPoolIPv6PodCIDRList":["fd00::/125",'
            b'"fd08::/112"],"clusterPoolIPv6MaskSize":126}'
        )
        allocation.apply_record(current, big)
        for i in range(3000):
            allocation.apply_record(
                current, b'{"type":"node.added","id":"a%d","cluster":"east","node":"n%d"}' % (i, i)
            )
            if i % 3 == 0:
                allocation.apply_record(
                    current,
                    b'{"type":"node.deleted","id":"d%d","cluster":"east","node":"n%d"}' % (i, i),
                )
    finally:
        done.set()
        scraper.join(timeout=30)
    assert not failures
    assert cluster_use(current.clusters["east"]).nodes == 2000
