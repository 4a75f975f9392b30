"""The IPAM gauges of ``ipledger run``: how full each pool is, read from the allocator's memory.

``PoolCollector`` is registered by ``service.metrics.allocator_registry`` with a callable that
returns the states the process's writers hold (``PartitionAllocator.state``). At each scrape it
walks them: per cluster, family and pool element the node CIDRs used and free, the pod addresses
held and what the held node CIDRs can hand out, the nodes waiting for a CIDR (per family), in
error or in conflict, and the seconds until the element (and the whole family) runs out at the
net allocation rate seen over a recent window (``service.forecast``, the query API's
definition).

Why at scrape time: the allocator's hot path pays nothing for these gauges (no counter is kept
per element or per node while applying), and a scrape every 15 s of a 65,536-node cluster costs
one walk over its nodes (docs/benchmarks.md has the figure). The walk runs on the HTTP server's
thread while the loop mutates the state, so it only reads, and copies every dict it iterates in
one C call (``list(d.values())``, atomic under the GIL) so that a node added meanwhile cannot
break the iteration; the figures are those of a moment between two decisions, like any scrape.

The forecast keeps, per element, a few samples of its use taken at scrapes (at most one per
``window / 120``), so it needs two scrapes to say anything and forgets what it saw when the
process restarts or loses the lease. Names follow Cilium's operator (``cilium_operator_ipam_*``):
``ipledger_ipam_*`` with a ``state`` label for used and free.
"""

from __future__ import annotations

import collections
import datetime
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import core, registry

from service import forecast
from service.domain import state
from service.domain.addresses import ADDRESS_BITS
from service.domain.pool import FAMILIES, FAMILY_NAMES

# The recent window whose net allocation rate the forecast extends (default; settings may say
# otherwise).
FORECAST_WINDOW_S = 3600.0
# Samples kept per element over the window, at most: memory stays bounded with 1,024 elements.
_SAMPLES_PER_WINDOW = 120
NODE_CATEGORIES = ("total", "waiting", "in-error", "in-conflict")


@dataclass(frozen=True, slots=True)
class ElementUse:
    """One pool element of a cluster as the state holds it now."""

    family: str  # "ipv4" | "ipv6"
    cidr: str
    mask: int
    node_cidrs_total: int
    node_cidrs_used: int
    pod_ips_used: int  # pod addresses held in the element's node CIDRs (not node addresses)
    pod_ips_capacity: int  # what those node CIDRs can hand out: (2^(bits - mask) - 2) each

    @property
    def node_cidrs_free(self) -> int:
        return self.node_cidrs_total - self.node_cidrs_used


@dataclass(frozen=True, slots=True)
class ClusterUse:
    """The pool and node figures of one cluster."""

    cluster: str
    elements: tuple[ElementUse, ...]
    nodes: int
    waiting: dict[str, int] = field(default_factory=dict)  # family -> nodes lacking its CIDR
    waiting_nodes: int = 0  # nodes lacking a CIDR of any family (lacking both counts once)
    in_error: int = 0
    in_conflict: int = 0


def cluster_use(cluster: state.ClusterState) -> ClusterUse:
    """The figures of ``cluster``, read without changing anything (and safe beside the loop).

    A node waits when it is not pinned to the CIDRs it asked to be adopted with and lacks a CIDR
    of an enabled family: the core's own definition of its waiting queue.
    """
    elements = {family: list(cluster.pools[family].elements) for family in FAMILIES}
    enabled = [family for family in FAMILIES if elements[family]]
    # Per (element index << 3 | family): node CIDRs held by nodes, and pod addresses held in
    # them. Integer keys and plain dicts: this loop is the whole cost of a scrape.
    ranges: dict[int, int] = {}
    pods: dict[int, int] = {}
    waiting = dict.fromkeys(enabled, 0)
    waiting_any = in_error = in_conflict = 0
    families = len(enabled)
    nodes = list(cluster.nodes.values())
    for node in nodes:
        held = node.ranges
        for pod_range in list(held.values()):
            cidr = pod_range.cidr
            key = cidr.element << 3 | cidr.family
            ranges[key] = ranges.get(key, 0) + 1
            pods[key] = pods.get(key, 0) + pod_range.slots.used - len(pod_range.reserved)
        if node.error is not None:
            in_error += 1
        if node.conflict is not None:
            in_conflict += 1
        # Families are never disabled, so a node holding as many CIDRs as there are enabled
        # families lacks none (the usual case: no lookups).
        if len(held) < families and not node.pinned:
            waiting_any += 1
            for family in enabled:
                if family not in held:
                    waiting[family] += 1
    out: list[ElementUse] = []
    for family in FAMILIES:
        for element in elements[family]:
            key = element.index << 3 | family
            per_cidr = max((1 << (ADDRESS_BITS[family] - element.mask)) - 2, 0)
            out.append(
                ElementUse(
                    family=FAMILY_NAMES[family],
                    cidr=element.text,
                    mask=element.mask,
                    node_cidrs_total=element.slots.capacity,
                    node_cidrs_used=element.slots.used,
                    pod_ips_used=pods.get(key, 0),
                    pod_ips_capacity=ranges.get(key, 0) * per_cidr,
                )
            )
    return ClusterUse(
        cluster=cluster.name,
        elements=tuple(out),
        nodes=len(nodes),
        waiting={FAMILY_NAMES[f]: n for f, n in waiting.items()},
        waiting_nodes=waiting_any,
        in_error=in_error,
        in_conflict=in_conflict,
    )


class Forecasts:
    """The use of each element (or family) sampled at scrapes, and the forecast from it.

    Thread-safe: scrapes may run at once. Each key keeps its samples over about one window: the
    oldest is the newest one taken at or before the window's start, so the rate is the net one
    over (nearly) the whole window once the process has seen that much of it.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("the forecast window must be positive")
        self._window_s = window_s
        self._spacing_s = window_s / _SAMPLES_PER_WINDOW
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, ...], collections.deque[tuple[float, int]]] = {}

    def seconds_left(self, key: tuple[str, ...], used: int, free: int, now: float) -> float | None:
        """Seconds until ``free`` is used up at the window's rate: 0 once nothing is free,
        ``inf`` when use is not growing, None until a sample earlier than ``now`` exists."""
        with self._lock:
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = collections.deque()
            if not samples or now - samples[-1][0] >= self._spacing_s:
                samples.append((now, used))
            while len(samples) > 1 and samples[1][0] <= now - self._window_s:
                samples.popleft()
            then, used_then = samples[0]
        if free <= 0:
            return 0.0
        if now <= then:
            return None
        result = forecast.forecast(
            used_then=used_then,
            used_now=used,
            free_now=free,
            elapsed=datetime.timedelta(seconds=now - then),
            now=datetime.datetime.now(datetime.UTC),
        )
        return math.inf if result.seconds_left is None else result.seconds_left

    def forget_except(self, keys: set[tuple[str, ...]]) -> None:
        """Drop the samples of elements no longer seen (a lost lease, a cluster gone)."""
        with self._lock:
            for key in [k for k in self._samples if k not in keys]:
                del self._samples[key]

    def now(self) -> float:
        return self._clock()


class PoolCollector(registry.Collector):
    """The ``ipledger_ipam_*`` families, computed from the states ``states()`` returns."""

    def __init__(
        self,
        states: Callable[[], Iterable[state.State]],
        *,
        forecast_window_s: float = FORECAST_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = states
        self._forecasts = Forecasts(forecast_window_s, clock)

    def collect(self) -> Iterator[core.Metric]:
        uses = sorted(
            (cluster_use(c) for s in self._states() for c in list(s.clusters.values())),
            key=lambda use: use.cluster,
        )
        now = self._forecasts.now()
        labels = ["cluster", "family", "cidr"]
        node_cidrs = core.GaugeMetricFamily(
            "ipledger_ipam_node_cidrs",
            "Node CIDRs of a pool element, by state: used (held by a node) or free.",
            labels=[*labels, "state"],
        )
        node_capacity = core.GaugeMetricFamily(
            "ipledger_ipam_node_cidrs_capacity",
            "Node CIDRs of the pool's mask size that fit in a pool element (used + free).",
            labels=labels,
        )
        pod_ips = core.GaugeMetricFamily(
            "ipledger_ipam_pod_ips",
            "Pod addresses in a pool element's held node CIDRs, by state: used (held by a pod) "
            "or free.",
            labels=[*labels, "state"],
        )
        pod_capacity = core.GaugeMetricFamily(
            "ipledger_ipam_pod_ips_capacity",
            "Pod addresses the element's held node CIDRs can hand out (all but the first and "
            "last address of each).",
            labels=labels,
        )
        element_left = core.GaugeMetricFamily(
            "ipledger_ipam_seconds_to_exhaustion",
            "Seconds until the element has no free node CIDR at the net allocation rate of the "
            "recent window (+Inf: use is not growing; absent until two scrapes have been seen).",
            labels=labels,
        )
        family_left = core.GaugeMetricFamily(
            "ipledger_ipam_family_seconds_to_exhaustion",
            "Seconds until no element of the family has a free node CIDR, at the family's net "
            "allocation rate of the recent window (+Inf: use is not growing).",
            labels=["cluster", "family"],
        )
        nodes = core.GaugeMetricFamily(
            "ipledger_ipam_nodes",
            "Nodes of a cluster by category: total, waiting for a CIDR of any family, in error "
            "(their CiliumNode's operator-status error), in conflict (an own address in the pool).",
            labels=["cluster", "category"],
        )
        waiting = core.GaugeMetricFamily(
            "ipledger_ipam_nodes_waiting",
            "Nodes that lack a CIDR of the family and wait for one (the family's pool is full).",
            labels=["cluster", "family"],
        )
        seen: set[tuple[str, ...]] = set()
        for use in uses:
            families: dict[str, list[int]] = {}
            for element in use.elements:
                key = [use.cluster, element.family, element.cidr]
                node_cidrs.add_metric([*key, "used"], element.node_cidrs_used)
                node_cidrs.add_metric([*key, "free"], element.node_cidrs_free)
                node_capacity.add_metric(key, element.node_cidrs_total)
                pod_ips.add_metric([*key, "used"], element.pod_ips_used)
                pod_ips.add_metric([*key, "free"], element.pod_ips_capacity - element.pod_ips_used)
                pod_capacity.add_metric(key, element.pod_ips_capacity)
                seen.add(tuple(key))
                left = self._forecasts.seconds_left(
                    tuple(key), element.node_cidrs_used, element.node_cidrs_free, now
                )
                if left is not None:
                    element_left.add_metric(key, left)
                totals = families.setdefault(element.family, [0, 0])
                totals[0] += element.node_cidrs_used
                totals[1] += element.node_cidrs_free
            for family, (used, free) in families.items():
                key = [use.cluster, family]
                seen.add(tuple(key))
                left = self._forecasts.seconds_left(tuple(key), used, free, now)
                if left is not None:
                    family_left.add_metric(key, left)
                waiting.add_metric(key, use.waiting.get(family, 0))
            for category, count in zip(
                NODE_CATEGORIES,
                (use.nodes, use.waiting_nodes, use.in_error, use.in_conflict),
                strict=True,
            ):
                nodes.add_metric([use.cluster, category], count)
        self._forecasts.forget_except(seen)
        yield from (
            node_cidrs,
            node_capacity,
            pod_ips,
            pod_capacity,
            element_left,
            family_left,
            nodes,
            waiting,
        )
