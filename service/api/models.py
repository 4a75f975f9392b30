"""The query API's response bodies: msgspec structs, from which the OpenAPI document is generated.

Used by ``service.api.routes`` (which fills them from the read port's values) and by Litestar
(which encodes them and describes them in ``/openapi.json``). Field names on the wire are
camelCase, and Cilium's where Cilium has one (``podCIDRs``, ``clusterPoolIPv4PodCIDRList``,
``maskSize``). Nothing here reads anything.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Struct(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Every body: immutable, camelCase on the wire."""


class Basis(Struct, frozen=True):
    """The log position an answer reflects: right after the record at ``offset`` of
    ``partition`` was applied (``as_of`` moves it back; without it, the last applied)."""

    partition: int
    offset: int


class Event(Struct, frozen=True):
    """The record that did something: its log offset, time (the event's, else the log's) and
    event id (null for a record that had none)."""

    offset: int
    time: str
    event_id: str | None


class NodeCounts(Struct, frozen=True):
    """A cluster's live nodes: all, holding a CIDR, waiting for one, in error, in conflict."""

    total: int
    with_cidr: int = msgspec.field(name="withCIDR")
    waiting: int
    in_error: int
    in_conflict: int


class Pool(Struct, frozen=True):
    """The pool in force (Cilium's Helm names), and the event that configured it."""

    ipv4_cidrs: list[str] = msgspec.field(name="clusterPoolIPv4PodCIDRList")
    ipv4_mask: int | None = msgspec.field(name="clusterPoolIPv4MaskSize")
    ipv6_cidrs: list[str] = msgspec.field(name="clusterPoolIPv6PodCIDRList")
    ipv6_mask: int | None = msgspec.field(name="clusterPoolIPv6MaskSize")
    configured_at: int


class Cluster(Struct, frozen=True):
    """One cluster: its partition, its pool in force and its node counts."""

    name: str
    partition: int
    basis: Basis
    pool: Pool
    nodes: NodeCounts


class ClusterList(Struct, frozen=True):
    """A page of clusters by name; ``basis``: one per partition the page's clusters are on."""

    items: list[Cluster]
    next: str | None
    basis: list[Basis]


class NodeCidrs(Struct, frozen=True):
    """Node CIDRs of an element: how many fit, how many nodes hold, how many are free."""

    total: int
    used: int
    free: int


class PodAddresses(Struct, frozen=True):
    """Pod addresses: held, and what the held node CIDRs can hand out in all."""

    used: int
    capacity: int


class Forecast(Struct, frozen=True):
    """When the element runs out of node CIDRs at the net allocation rate of the window.

    ``exhaustsAt`` and ``secondsLeft`` are null when use did not grow over the window (the
    element is not running out); ``nodeCIDRsPerDay`` is the net rate (negative: shrinking).
    The window ends at the basis's record.
    """

    window_seconds: float
    node_cidrs_per_day: float = msgspec.field(name="nodeCIDRsPerDay")
    seconds_left: float | None
    exhausts_at: str | None


class PoolElement(Struct, frozen=True):
    """One element of a cluster's pool (IPv4 first, each family in list order) and its use."""

    family: Literal["ipv4", "ipv6"]
    cidr: str
    mask_size: int
    node_cidrs: NodeCidrs = msgspec.field(name="nodeCIDRs")
    pod_addresses: PodAddresses
    forecast: Forecast


class PoolList(Struct, frozen=True):
    """A page of a cluster's pool elements."""

    items: list[PoolElement]
    next: str | None
    basis: Basis


class FamilyUse(Struct, frozen=True):
    """Pod addresses of one family on a node: held, and still free in its CIDR."""

    used: int
    free: int


class Node(Struct, frozen=True):
    """One node: its CIDRs, error and conflict, own addresses, pod addresses, last change."""

    name: str
    pod_cidrs: list[str] = msgspec.field(name="podCIDRs")
    error: str | None
    conflict: str | None
    addresses: list[str]
    waiting: bool
    pinned: bool
    pod_addresses: dict[str, FamilyUse]
    last_change: Event


class NodeDetail(Struct, frozen=True):
    """One node, with the basis of the answer."""

    basis: Basis
    node: Node


class NodeList(Struct, frozen=True):
    """A page of a cluster's live nodes by name."""

    items: list[Node]
    next: str | None
    basis: Basis


class Holding(Struct, frozen=True):
    """One holding of a pod address: who, from which record on, until which (null: held)."""

    address: str
    node: str
    owner: str
    since: Event
    until: Event | None


class Holder(Struct, frozen=True):
    """Who holds an address (as of the basis)."""

    basis: Basis
    address: str
    holder: Holding


class HoldingList(Struct, frozen=True):
    """A page of holdings, in the order they started (addresses of an owner held now: by
    address)."""

    items: list[Holding]
    next: str | None
    basis: Basis


class Decision(Struct, frozen=True):
    """The committed decision for one record (``decision``: as published, parsed)."""

    offset: int
    event_id: str | None
    type: str | None
    error: str | None
    decision: dict[str, Any]
    event_time: str | None
    log_time: str | None
    applied_at: str


class DecisionList(Struct, frozen=True):
    """A page of a cluster's decisions by offset."""

    items: list[Decision]
    next: str | None
    basis: Basis


class Rejection(Struct, frozen=True):
    """A record that was not applied, as it was read: ``raw`` is its text when it is UTF-8,
    else base64 (``rawEncoding`` says which); the key likewise."""

    offset: int
    reason: str
    key: str | None
    raw: str
    raw_encoding: Literal["utf-8", "base64"]
    rejected_at: str


class RejectionList(Struct, frozen=True):
    """A page of the records naming a cluster that were rejected, by offset."""

    items: list[Rejection]
    next: str | None
    basis: Basis


class Health(Struct, frozen=True):
    """``/healthz``: the process serves."""

    status: Literal["ok"]


class PartitionLag(Struct, frozen=True):
    """How far one partition's projection is behind its log."""

    partition: int
    applied: int
    end: int
    lag: int


class Readiness(Struct, frozen=True):
    """``/readyz``: ready when every partition is within ``maxLag`` records of its log."""

    ready: bool
    max_lag: int
    partitions: list[PartitionLag]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 problem: ``type``, ``title``, ``status``, ``detail`` (what to do next),
    ``instance`` (the request's path)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
