"""The replay's own apply loop: ``batch.apply_records`` less what only a commit of it needs.

Called by ``service.audit.replay`` when it replays into memory (``--verify``, ``--until``); a
replay ``--into`` a database commits real batches and goes through ``apply_records`` itself.
The allocator's loop builds, per record, an ``AppliedRecord`` (the decision, its body, its
times) that its commit writes as a decision row, and records a tree head at every batch end.
The replay writes no decision rows and records no heads (it checks the committed ones): what
it keeps of a record is the decision's body and leaf, to compare with the committed ones, and
a rejected record's row. Everything the state, the histories and the pod address rows are
built from is what ``apply_records`` makes, by the same calls in the same order: the core's
``allocation.apply``, ``history.before``/``after``, the change journal drained per batch into
``ports.Batch.changes`` with each address change's offset and time.

The rejection decisions (a record that does not decode, a key that is not its event's cluster,
a cluster on another partition) are ``apply_records``' own, written out again here:
``tests/unit/test_replay_apply.py`` checks both give the same batch, record for record, over
streams with every kind of rejection. Had they drifted apart, every replay would report the
decision at its offset as a divergence, never pass over it.

Not I/O, but async: it gives the event loop a turn every ``TURN_EVERY`` records, so that the
replay's read ahead (the next chunk of the log, the committed decisions' digest: a handful of
round trips each) advances while the records are applied rather than in the applier's waits.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import operator
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import anyio.lowlevel

from service import ports
from service.allocator import batch as batches
from service.allocator import history
from service.domain import allocation, events, merkle, state

# Records applied between two turns of the event loop: a turn costs ~10 us, a record ~10.
TURN_EVERY = 128
_sha256 = hashlib.sha256
_FRAME = struct.Struct(">qi").pack
_IP_EVENTS = frozenset({events.IpRequested, events.IpReleased})
_PACK4 = struct.Struct(">I").pack
_FIRST, _SECOND, _THIRD = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


@dataclass(slots=True)
class Addresses:
    """The ``pod_ip`` and ``ip_history`` rows of a replay, kept over the whole log.

    What ``memory_rows.Writes`` does per batch, done once: the address changes in log order
    over the holdings open before them. A batch's holdings replace the touched addresses' rows
    and every holding that ended is a history row, so one dict carried across batches leaves
    the same rows. Rows are plain tuples keyed by (cluster, family, address as an integer);
    ``rows`` makes the texts, once per address.
    """

    # (cluster, family, address) -> (node, owner, partition, since offset, since time)
    holding: dict[tuple[str, int, int], tuple[Any, ...]] = field(default_factory=dict)
    # (key, from offset, (node, owner, partition, from time, to offset, to time))
    finished: list[tuple[Any, ...]] = field(default_factory=list)

    def rows(
        self,
    ) -> tuple[dict[tuple[str, str], tuple[Any, ...]], dict[tuple[str, str, int], tuple[Any, ...]]]:
        """The ``pod_ip`` and ``ip_history`` rows in ``ports.ProjectionRows``' form."""
        # Column at a time, in C (map, zip, dict): a comprehension over 600,000 rows of a
        # million-event log took twice as long.
        held = list(self.holding)
        pod_ips = dict(
            zip(
                zip(map(_FIRST, held), _texts(held), strict=True),
                self.holding.values(),
                strict=True,
            )
        )
        finished = self.finished
        keys = list(map(_FIRST, finished))
        history = dict(
            zip(
                zip(map(_FIRST, keys), _texts(keys), map(_SECOND, finished), strict=True),
                map(_THIRD, finished),
                strict=True,
            )
        )
        return pod_ips, history


def _texts(keys: list[tuple[str, int, int]]) -> list[str]:
    """The address texts of (cluster, family, address) keys."""
    if set(map(_SECOND, keys)) <= {4}:
        return list(map(socket.inet_ntoa, map(_PACK4, map(_THIRD, keys))))
    return [address_text(family, address) for _, family, address in keys]


def address_text(family: int, address: int) -> str:
    """``ipaddress``'s text of an address (``ports.ProjectionRows``' keys); IPv4's in C."""
    if family == 4:
        return socket.inet_ntoa(address.to_bytes(4, "big"))
    return str(ipaddress.IPv6Address(address))


@dataclass(slots=True)
class Decided:
    """What a span of records decided, for comparing with the committed decisions: the records,
    each decision's body and leaf, in offset order, and their ``ports.decision_digest``."""

    records: list[ports.Record] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    leaves: list[bytes | None] = field(default_factory=list)
    hashed: hashlib._Hash = field(default_factory=_sha256)

    def digest(self) -> bytes:
        """``ports.decision_digest`` over the decisions so far."""
        return self.hashed.copy().digest()

    def extend(self, applied: Sequence[ports.AppliedRecord]) -> None:
        """Add the decisions ``apply_records`` made (the path ``--into`` takes)."""
        for item in applied:
            record, body, leaf = item.record, item.body, item.leaf
            self.records.append(record)
            self.bodies.append(body)
            self.leaves.append(leaf)
            self.hashed.update(
                _FRAME(record.offset, len(body))
                + body
                + (b"\x00" if leaf is None else b"\x01" + leaf)
            )


async def apply_batch(
    current: state.State,
    records: Sequence[ports.Record],
    partition: int,
    token: int,
    *,
    partitions: int,
    tree: merkle.Tree,
    decided: Decided,
    addresses: Addresses,
) -> ports.Batch:
    """Apply ``records`` to ``current`` as ``batch.apply_records(..., rows=False)`` does, each
    leaf appended to ``tree``; the decisions' bodies and leaves go to ``decided``.

    The batch returned has what ``apply_records``' has but the accepted records' ``applied``
    entries (only the rejected ones, for their rows), the heads and the address changes' times
    (``ip_times``): the address changes are in ``addresses`` already, with their offsets and
    times (the journal's ``changes.ips`` are still drained into the batch, as ever).
    """
    batch = ports.Batch(
        partition=partition, token=token, next_offset=records[-1].offset + 1, state=current
    )
    homes: dict[str, int] = {}
    seen_ips: dict[str, int] = {
        name: len(c.changes.ips) for name, c in current.clusters.items() if c.changes is not None
    }
    last_ms: int | None = None
    log_time: datetime.datetime | None = None
    snapshots: dict[tuple[str, str], dict[str, object] | None] = {}
    decode, apply, encode = events.decode, allocation.apply, events.encode_decision
    watch_event, after, clusters = history.before, history.after, current.clusters
    failure, decision_of, home_of = events.DecodeFailure, events.Decision, batches._home
    append_leaf, add_record = tree.append, decided.records.append
    add_body, add_leaf = decided.bodies.append, decided.leaves.append
    update, frame, join = decided.hashed.update, _FRAME, b"".join
    rejected_ones = batch.applied
    holding, finished = addresses.holding, addresses.finished
    ip_events = _IP_EVENTS
    turn = anyio.lowlevel.checkpoint
    for index, record in enumerate(records):
        if not index & (TURN_EVERY - 1) and index:
            await turn()
        if record.timestamp_ms != last_ms:
            last_ms = record.timestamp_ms
            log_time = (
                None if last_ms is None else datetime.datetime.fromtimestamp(last_ms / 1000, UTC)
            )
        event = decode(record.value)
        accepted = wrong_partition = False
        if isinstance(event, failure):
            decision = decision_of(
                id=event.id, type=event.type, cluster=event.cluster, error=event.reason
            )
            event_time = None
        elif record.key != event.cluster.encode():
            shown = record.key.decode("utf-8", "replace")[:64] if record.key is not None else None
            decision = decision_of(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=f"record key {shown!r} does not match the event's cluster {event.cluster!r}",
            )
            event_time = event.moment()
        elif partitions > 1 and (home := home_of(homes, event.cluster, partitions)) != partition:
            decision = decision_of(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=(
                    f"cluster {event.cluster!r} belongs to partition {home} of {partitions} "
                    f"(murmur2 of the key); this record is on partition {partition}: the "
                    "producer must use Kafka's default (murmur2) partitioner"
                ),
            )
            event_time = event.moment()
            wrong_partition = True
        else:
            accepted = True
            cluster = None
            watch = None
            if type(event) in ip_events:
                # history.before's own test for a pod address event, first (nearly every
                # record is one): only a node with a conflict has a history row to watch for.
                # Such an event changes no cluster but its nodes, so the cluster is looked up
                # once.
                cluster = clusters.get(event.cluster)
                node = None if cluster is None else cluster.nodes.get(event.node)  # type: ignore[union-attr]
                if node is not None and node.conflict is not None:
                    watch = watch_event(current, event)
            else:
                watch = watch_event(current, event)
            decision = apply(current, event)
            event_time = event.moment()
            if watch is not None:
                when = event_time or log_time or batches.NO_TIME
                after(batch, current, event, record.offset, when, watch, snapshots)
            if cluster is None:
                cluster = clusters.get(event.cluster)
            if cluster is not None and cluster.changes is not None:
                ips = cluster.changes.ips
                held = len(ips)
                name = cluster.name
                before = seen_ips.get(name, 0)
                if held > before:
                    when = event_time or log_time or batches.NO_TIME
                    offset = record.offset
                    for change in ips[before:held]:
                        key = (name, change.family, change.address)
                        if change.held:
                            holding[key] = (change.node, change.owner, partition, offset, when)
                            continue
                        ended = holding.pop(key, None)
                        if ended is not None:
                            finished.append(
                                (
                                    key,
                                    ended[3],
                                    (ended[0], ended[1], ended[2], ended[4], offset, when),
                                )
                            )
                    seen_ips[name] = held
        body = encode(decision)
        # One join, not two concatenations, each of which copied the bytes so far.
        leaf = _sha256(join((b"\x00", body, record.value))).digest()
        append_leaf(leaf)
        add_record(record)
        add_body(body)
        add_leaf(leaf)
        update(join((frame(record.offset, len(body)), body, b"\x01", leaf)))
        if not accepted:
            rejected_ones.append(
                ports.AppliedRecord(
                    record, decision, body, event_time, log_time, True, wrong_partition, leaf
                )
            )
    batch.subtrees = tree.take_completed()
    for name, cluster in current.clusters.items():
        changes = cluster.changes
        if changes is not None and (changes.nodes or changes.pool or changes.ips):
            batch.changes[name] = cluster.take_changes()
    return batch
