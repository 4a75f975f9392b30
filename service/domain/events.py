"""The public wire contract: events producers write to the log, and the decisions ipledger emits.

One JSON object per log record, UTF-8, tagged by ``type``. Producers in any language write these;
``ipledger schema`` prints the JSON Schema generated from the types below, so this module is the
single source of the contract. Decoding happens once, at the edge (``decode``); a record that does
not decode becomes a rejected decision with a reason, never an exception out of the core.

Field names on the wire are Cilium's Helm names where one exists (``clusterPoolIPv4PodCIDRList``,
``podCIDRs``); Python attribute names are snake_case. Unknown fields are ignored so that older
allocators can read newer producers' events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

# Size limits: every string and list on the wire is bounded so one record cannot exhaust memory.
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ClusterName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
]
NodeName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
Owner = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
CidrList = Annotated[tuple[Text, ...], msgspec.Meta(max_length=1024)]
AddressList = Annotated[tuple[Text, ...], msgspec.Meta(max_length=64)]
PodCidrs = Annotated[tuple[Text, ...], msgspec.Meta(max_length=2)]
MaskSize = Annotated[int, msgspec.Meta(ge=0, le=128)]
Family = Literal["ipv4", "ipv6"]

DEFAULT_CLUSTER = "default"
MAX_RECORD_BYTES = 64 * 1024


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Fields every event carries.

    ``gc=False`` (inherited): events hold only strings, numbers, times and tuples of strings, so
    they cannot be part of a reference cycle, and the collector need not count or visit one per
    record.
    """

    # The event's ``type`` tag, as on the wire: a plain class attribute (set below for every
    # event type), read for every decision, where a property costs three times as much.
    type: ClassVar[str]

    id: EventId
    cluster: ClusterName = DEFAULT_CLUSTER
    time: datetime | None = None


class PoolConfigured(Event, frozen=True, tag="pool.configured"):
    """Sets the cluster pool. An enabled family keeps its elements; new ones may be appended."""

    ipv4_cidrs: CidrList = msgspec.field(default=(), name="clusterPoolIPv4PodCIDRList")
    ipv4_mask: MaskSize | None = msgspec.field(default=None, name="clusterPoolIPv4MaskSize")
    ipv6_cidrs: CidrList = msgspec.field(default=(), name="clusterPoolIPv6PodCIDRList")
    ipv6_mask: MaskSize | None = msgspec.field(default=None, name="clusterPoolIPv6MaskSize")


class NodeAdded(Event, frozen=True, tag="node.added"):
    """A node joined: it gets one pod CIDR per enabled family, or waits with an error."""

    node: NodeName
    addresses: AddressList = ()


class NodeAdopted(Event, frozen=True, tag="node.adopted"):
    """Take over the exact CIDRs a node already has (migration from Cilium's operator, restore)."""

    node: NodeName
    pod_cidrs: PodCidrs = msgspec.field(name="podCIDRs")
    addresses: AddressList = ()


class NodeDeleted(Event, frozen=True, tag="node.deleted"):
    """A node left: its CIDRs and every pod address on it are released."""

    node: NodeName


class IpRequested(Event, frozen=True, tag="ip.requested"):
    """A pod address for ``owner`` on ``node``; no family means every enabled family."""

    node: NodeName
    owner: Owner
    family: Family | None = None


class IpReleased(Event, frozen=True, tag="ip.released"):
    """Give back ``owner``'s addresses on ``node`` (only ``ip`` when given)."""

    node: NodeName
    owner: Owner
    ip: Text | None = None


AnyEvent = PoolConfigured | NodeAdded | NodeAdopted | NodeDeleted | IpRequested | IpReleased
EVENT_TYPES: tuple[type[Event], ...] = (
    PoolConfigured,
    NodeAdded,
    NodeAdopted,
    NodeDeleted,
    IpRequested,
    IpReleased,
)
for _event_type in EVENT_TYPES:
    _event_type.type = str(_event_type.__struct_config__.tag)


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What applying one event did. ``error`` is None on success, else the reason.

    ``podCIDRs`` and ``conflict`` are present for node events, ``ips`` for ip events.
    """

    id: str | None
    type: str | None
    cluster: str
    error: str | None
    pod_cidrs: tuple[str, ...] | msgspec.UnsetType = msgspec.field(
        default=msgspec.UNSET, name="podCIDRs"
    )
    conflict: str | msgspec.UnsetType | None = msgspec.UNSET
    ips: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET


class _Envelope(msgspec.Struct):
    """Lenient view of a record that failed to decode, to echo what it can."""

    id: Any = None
    type: Any = None
    cluster: Any = None


_TAGS = frozenset(str(t.__struct_config__.tag) for t in EVENT_TYPES)
_decoder = msgspec.json.Decoder(AnyEvent)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


class DecodeFailure(msgspec.Struct, frozen=True):
    """A record that is not a valid event: what could be read of it, and why it was refused."""

    id: str | None
    type: str | None
    cluster: str
    reason: str


def decode(raw: bytes | str) -> AnyEvent | DecodeFailure:
    """Decode one record; never raises."""
    if len(raw) > MAX_RECORD_BYTES:
        return DecodeFailure(
            id=None,
            type=None,
            cluster=DEFAULT_CLUSTER,
            reason=f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES}-byte limit",
        )
    try:
        event: AnyEvent = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        reason = str(exc)
    else:
        return event
    try:
        envelope = _envelope_decoder.decode(raw)
    except msgspec.DecodeError:
        envelope = _Envelope()
    if isinstance(envelope.type, str) and envelope.type not in _TAGS:
        reason = f"unknown event type {envelope.type!r}"
    cluster = envelope.cluster if isinstance(envelope.cluster, str) else DEFAULT_CLUSTER
    return DecodeFailure(
        id=envelope.id if isinstance(envelope.id, str) else None,
        type=envelope.type if isinstance(envelope.type, str) else None,
        cluster=cluster[:63],
        reason=f"invalid event: {reason}",
    )


def encode_event(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def encode_decision(decision: Decision) -> bytes:
    """The decision as the JSON object of the contract; unset parts are left out."""
    return _encoder.encode(decision)


def json_schema() -> dict[str, Any]:
    """JSON Schema of one log record (any event), generated from the types above."""
    schema: dict[str, Any] = msgspec.json.schema(AnyEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ipledger event"
    return schema
