"""The class of a decision's error or a rejection's reason: a small fixed set, for metric labels.

Reasons are text made for people: they name nodes, CIDRs, offsets and whatever a malformed record
held, so as Prometheus label values they would make a new time series per node or per bad record
and no alert could name them. ``service.allocator.loop`` counts every committed record by its
event type and one of the classes below instead (``Metrics.events_applied`` and
``events_rejected``); the reason itself stays in the decision and rejection tables. The classes
are part of the published metrics (docs/operations.md): add to them, never rename one.

Classified by the wording of the core's and the allocator's reasons (``service.domain`` and
``service.allocator.batch``); ``tests/unit/test_metrics.py`` runs every rule of the core and
fails if one of its reasons falls into ``other``. Pure: no I/O.
"""

from __future__ import annotations

from service.allocator import batch
from service.domain import allocation, events

# Event types as labels: the six of the contract, and "unknown" for a record whose type could
# not be read or is not one of them (its text is the producer's, so it is never a label).
TYPES = tuple(sorted(str(t.__struct_config__.tag) for t in events.EVENT_TYPES))
UNKNOWN_TYPE = "unknown"
_TYPES = frozenset(TYPES)

# Reason classes of valid events applied by the core. "none": the decision has no error.
NONE = "none"
OTHER = "other"
DECISION_CLASSES = (
    NONE,
    "allocator_full",  # no pool element has a free node CIDR (Cilium's "allocator full")
    "range_full",  # the node's CIDR has no free pod address (Cilium's "range is full")
    "no_pool",  # the cluster has no pool configured
    "family_not_enabled",  # an ip.requested for a family the pool does not enable
    "no_pod_cidr",  # the node has no pod CIDR of the family (it waits for one)
    "unknown_node",  # the event names a node the cluster does not have
    "not_held",  # an ip.released for an address the owner does not hold
    "invalid_address",  # a node address or released ip that is not an address
    "pool_refused",  # a pool.configured that is not an append-only change, or invalid
    "adoption_refused",  # a node.adopted whose podCIDRs cannot be given to it
    "internal_error",  # the core raised: a bug, recorded instead of stopping the log
    OTHER,
)
# Reason classes of records rejected without being applied.
REJECTION_CLASSES = (
    "too_large",  # over the record size limit
    "not_utf8",  # not UTF-8, or starts with a byte order mark
    "too_deep",  # nests deeper than the depth limit
    "unknown_type",  # a "type" that is not one of the contract's
    "invalid_event",  # not JSON, or a field missing, of the wrong type or malformed
    "wrong_key",  # the record key is not the event's cluster
    "wrong_partition",  # on another partition than its cluster's home partition
    "unstorable",  # PostgreSQL refused to store it
    OTHER,
)

# (class, test) in order; the first that holds wins. Tests are on the wording, which the core's
# tests pin down (test_metrics checks that none of its reasons is left in "other").
_DECISION_PREFIXES = (
    ("internal error: ", "internal_error"),
    ("unknown node ", "unknown_node"),
    ("no pool configured for cluster ", "no_pool"),
    ("invalid address ", "invalid_address"),
    ("invalid ip ", "invalid_address"),
    # A node pinned by a refused adoption keeps the reason as its error: every later decision
    # about it (a repeated node.added, say) carries it.
    ("allocator not configured for the requested CIDR ", "adoption_refused"),
    ("requested CIDR (", "adoption_refused"),
    ("node has CIDRs allocated (", "adoption_refused"),
)
_BY_TYPE = {"pool.configured": "pool_refused", "node.adopted": "adoption_refused"}
_REJECTION_PREFIXES = (
    ("invalid event: unknown event type ", "unknown_type"),
    ("invalid event: ", "invalid_event"),
    ("record nests ", "too_deep"),
    ("record starts with a UTF-8 byte order mark", "not_utf8"),
    ("record is not valid UTF-8", "not_utf8"),
    ("record is ", "too_large"),
    ("record key ", "wrong_key"),
    (batch.UNSTORABLE, "unstorable"),
)


def type_label(event_type: str | None) -> str:
    """The event type as a label: one of ``TYPES``, else ``unknown``."""
    return event_type if event_type in _TYPES else UNKNOWN_TYPE


def decision_class(event_type: str, error: str | None) -> str:
    """The class of a decision's ``error`` (``none`` without one); one of ``DECISION_CLASSES``."""
    if error is None:
        return NONE
    if error == allocation.ALLOCATOR_FULL:
        return "allocator_full"
    if error == allocation.RANGE_FULL:
        return "range_full"
    for prefix, name in _DECISION_PREFIXES:
        if error.startswith(prefix):
            return name
    if error.endswith(" is not enabled in the pool"):
        return "family_not_enabled"
    if error.startswith("node ") and error.endswith(" pod CIDR") and " has no " in error:
        return "no_pod_cidr"
    if " is not held by " in error or " holds no address on node " in error:
        return "not_held"
    return _BY_TYPE.get(event_type, OTHER)


def rejection_class(reason: str | None, *, wrong_partition: bool = False) -> str:
    """The class of a rejected record's reason; one of ``REJECTION_CLASSES``."""
    if wrong_partition:
        return "wrong_partition"
    if reason is not None:
        for prefix, name in _REJECTION_PREFIXES:
            if reason.startswith(prefix):
                return name
    return OTHER
