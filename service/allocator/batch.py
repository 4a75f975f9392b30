"""Applying records to the state, and the batches the projection commits.

``apply_records`` is the hot path of ``service.allocator.loop``: it applies a batch of log records
with the pure core and collects everything the projection must write in one transaction
(``ports.Batch``). The rest serves the loop's edges: the partition-count checks a writer makes
before it leads, the rejection of a record the projection cannot store, and how a batch the
database refused is split while the refused records are searched for. No I/O but the two reads
of ``check_partition_count`` (the log's partitions, the projection's offsets).
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Sequence

import msgspec

from service import errors, ports
from service.allocator import history
from service.allocator.settings import TreeSettings
from service.domain import allocation, document, events, merkle, partitioning, restore, state

UTC = datetime.UTC
# The time of a holding or node change whose event has no ``time`` and whose record none (a
# Kafka record with CreateTime -1): a constant, so that a replay gives the same rows. The clock
# would give every run its own.
NO_TIME = datetime.datetime(1970, 1, 1, tzinfo=UTC)
# The error of a record the projection could not store (followed by the database's reason).
UNSTORABLE = "the projection could not store this record"


def apply_records(
    current: state.State,
    records: Sequence[ports.Record],
    partition: int,
    token: int,
    *,
    partitions: int,
    tree: merkle.Tree | None = None,
    evidence: TreeSettings | None = None,
    rows: bool = True,
    head: bool = True,
    snapshots: dict[tuple[str, str], dict[str, object] | None] | None = None,
) -> ports.Batch:
    """Apply ``records`` of ``partition`` (of ``partitions``) in order to ``current``, and collect
    what the projection must write.

    With ``tree`` (the partition's Merkle tree, at ``records[0].offset`` leaves) each record's
    leaf is appended to it and heads are recorded as ``evidence`` says, the last one at the
    batch's end (``record_head``).

    Two kinds of valid event are refused without being applied, because the producer broke the
    contract that gives each cluster one total order: a record whose key is not the event's
    cluster, and a record on another partition than the cluster's home partition (Kafka's
    default partitioner on the key, ``partitioning.home_partition``). Applying the latter would
    build a second state of that cluster in another partition's writer.

    ``rows=False`` leaves ``cluster_rows`` and ``node_rows`` empty (the journal is drained into
    ``changes`` all the same): ``ipledger replay`` into memory takes them once, at its end.
    ``head=False`` records no head at the end (only those every ``head_every`` records): for a
    slice of records the caller goes on applying into the same batch (``extend``), so that the
    heads are those of applying all of them at once; and ``snapshots``, shared by those calls,
    the batch's latest snapshot of each node it changed, so that its history too is the same
    (a snapshot equal to the node's previous one in the batch is not written again).
    """
    batch = ports.Batch(
        partition=partition, token=token, next_offset=records[-1].offset + 1, state=current
    )
    # Home partitions met in this batch: murmur2 is cheap, but not free on the hot path.
    homes: dict[str, int] = {}
    seen_ips: dict[str, int] = {
        name: len(c.changes.ips) for name, c in current.clusters.items() if c.changes is not None
    }
    fallback_time = datetime.datetime.now(UTC)
    evidence = evidence or TreeSettings()
    head_every, digest_every = evidence.head_every, evidence.digest_every
    last_ms: int | None = None
    log_time: datetime.datetime | None = None
    # This batch's latest snapshot of each node it changed (history.after).
    if snapshots is None:
        snapshots = {}
    # Looked up once rather than per record: this loop is the allocator's per-event cost.
    decode, apply, encode = events.decode, allocation.apply, events.encode_decision
    watch_event, clusters = history.before, current.clusters
    applied_record, append_applied = ports.AppliedRecord, batch.applied.append
    for record in records:
        # Records appended together share a timestamp: convert each distinct one once.
        if record.timestamp_ms != last_ms:
            last_ms = record.timestamp_ms
            log_time = (
                None if last_ms is None else datetime.datetime.fromtimestamp(last_ms / 1000, UTC)
            )
        event = decode(record.value)
        rejected = wrong_partition = False
        if isinstance(event, events.DecodeFailure):
            decision = events.Decision(
                id=event.id, type=event.type, cluster=event.cluster, error=event.reason
            )
            rejected = True
            event_time = None
        elif record.key != event.cluster.encode():
            shown = record.key.decode("utf-8", "replace")[:64] if record.key is not None else None
            decision = events.Decision(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=f"record key {shown!r} does not match the event's cluster {event.cluster!r}",
            )
            rejected = True
            event_time = event.moment()
        elif partitions > 1 and (home := _home(homes, event.cluster, partitions)) != partition:
            decision = events.Decision(
                id=event.id,
                type=event.type,
                cluster=event.cluster,
                error=(
                    f"cluster {event.cluster!r} belongs to partition {home} of {partitions} "
                    f"(murmur2 of the key); this record is on partition {partition}: the "
                    "producer must use Kafka's default (murmur2) partitioner"
                ),
            )
            rejected = wrong_partition = True
            event_time = event.moment()
        else:
            watch = watch_event(current, event)
            decision = apply(current, event)
            event_time = event.moment()
            if watch is not None:
                when = event_time or log_time or NO_TIME
                history.after(batch, current, event, record.offset, when, watch, snapshots)
            cluster = clusters.get(event.cluster)
            if cluster is not None and cluster.changes is not None:
                held = len(cluster.changes.ips)
                before = seen_ips.get(cluster.name, 0)
                if held > before:
                    when = event_time or log_time or NO_TIME
                    batch.ip_times.setdefault(cluster.name, []).extend(
                        [(record.offset, when)] * (held - before)
                    )
                    seen_ips[cluster.name] = held
        body = encode(decision)
        leaf = None
        if tree is not None:
            # merkle.leaf_hash, inlined: the hot path.
            leaf = _sha256(b"\x00" + body + record.value).digest()
            tree.append(leaf)
            size = tree.size
            if (size % head_every == 0 or size % digest_every == 0) and (
                record is not records[-1] or not head
            ):
                batch.heads.append(record_head(tree, partition, current, evidence, fallback_time))
        # Positional: a slotted dataclass built with keywords cost ~1 µs more per record
        # (record, decision, body, event_time, log_time, rejected, wrong_partition, leaf).
        append_applied(
            applied_record(
                record, decision, body, event_time, log_time, rejected, wrong_partition, leaf
            )
        )
    if tree is not None:
        if head:
            batch.heads.append(record_head(tree, partition, current, evidence, fallback_time))
        batch.subtrees = tree.take_completed()
    for name, cluster in current.clusters.items():
        changes = cluster.changes
        if changes is not None and (changes.nodes or changes.pool or changes.ips):
            batch.changes[name] = cluster.take_changes()
            batch.ip_times.setdefault(name, [])
    if rows:
        take_rows(batch, current)
    return batch


def extend(batch: ports.Batch, more: ports.Batch) -> None:
    """Append ``more`` (applied right after ``batch``, from ``batch.next_offset`` on) to ``batch``,
    so that both are committed as one transaction.

    The loop groups what arrives while a commit is in flight into the next batch: a commit's
    cost per batch (each node it touched written once, an address held and given back within
    the batch never stored as current) then falls as the load rises. Nothing the core decided
    depends on where batches end, so the decisions and the state are the same either way.
    """
    if more.partition != batch.partition or more.applied[0].record.offset != batch.next_offset:
        raise ValueError("a batch can only be extended by the one applied right after it")
    batch.next_offset = more.next_offset
    batch.applied.extend(more.applied)
    for name, changes in more.changes.items():
        earlier = batch.changes.get(name)
        if earlier is None:
            batch.changes[name] = changes
        else:
            earlier.nodes |= changes.nodes
            earlier.pool = earlier.pool or changes.pool
            earlier.ips.extend(changes.ips)
        batch.ip_times.setdefault(name, []).extend(more.ip_times.get(name, []))
        if name in more.cluster_rows:  # applied with rows=False: take_rows comes later
            batch.cluster_rows[name] = more.cluster_rows[name]
            # The later snapshot of a node is the one that stands; kept in name order.
            rows = batch.node_rows.get(name, {}) | more.node_rows.get(name, {})
            batch.node_rows[name] = {node: rows[node] for node in sorted(rows)}
    batch.node_history.extend(more.node_history)
    batch.pool_history.extend(more.pool_history)
    batch.heads.extend(more.heads)
    batch.subtrees.extend(more.subtrees)


def take_rows(batch: ports.Batch, current: state.State) -> None:
    """Snapshot into ``batch`` the rows of every cluster and node its changes touched, as they
    are in ``current`` now (which must be the state after the batch's last record).

    For a batch extended by parts applied with ``rows=False``: one snapshot at the end instead
    of one per part, each of which the next would replace.
    """
    for name, changes in batch.changes.items():
        cluster = current.clusters[name]
        batch.cluster_rows[name] = restore.cluster_row(cluster)
        batch.node_rows[name] = {
            node: restore.node_row(cluster, cluster.nodes[node]) if node in cluster.nodes else None
            for node in sorted(changes.nodes)
        }


_sha256 = hashlib.sha256
_head_encoder = msgspec.json.Encoder()


def record_head(
    tree: merkle.Tree,
    partition: int,
    current: state.State,
    evidence: TreeSettings,
    now: datetime.datetime,
) -> ports.RecordedHead:
    """The head of ``tree`` as it is now, chained to the last one and signed if a key is set.

    Carries the state digest (of ``current``, which must be the state after the tree's last
    leaf) when the size is a multiple of ``evidence.digest_every``.
    """
    digest = document.digest(current) if tree.size % evidence.digest_every == 0 else None
    head = merkle.make_head(tree, partition, digest, rfc3339(now), tree.last_head)
    if evidence.sign is not None:
        signature, key_id = evidence.sign(head.signed_bytes())
        head = msgspec.structs.replace(head, signature=signature, key_id=key_id)
    hashed = head.hash()
    tree.last_head = hashed
    return ports.RecordedHead(
        head=head, body=_head_encoder.encode(head), hash=hashed, frontier=b"".join(tree.frontier)
    )


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _home(homes: dict[str, int], cluster: str, partitions: int) -> int:
    home = homes.get(cluster)
    if home is None:
        home = homes[cluster] = partitioning.home_partition(cluster, partitions)
    return home


async def check_partition_count(log_: ports.EventLog, projection: ports.Projection) -> int:
    """The log's partition count, once it is known to be the one the projection was built with.

    The count is fixed for a deployment: every cluster's home partition depends on it, so with
    another count clusters would move to partitions whose writers know nothing of them. Raises
    ``errors.ConfigurationError`` when the projection holds consumed offsets of a partition the
    log does not have (the count went down); a count that went up shows in the clusters instead,
    which ``check_homes`` finds when a partition's state is loaded.
    """
    partitions = list(await log_.partitions())
    if partitions != list(range(len(partitions))):
        raise errors.ConfigurationError(
            f"the log's partitions are {partitions}, not 0 to {len(partitions) - 1}"
        )
    consumed = await projection.consumed_offsets()
    beyond = sorted(p for p in consumed if p >= len(partitions))
    if beyond:
        raise errors.ConfigurationError(
            f"the projection has consumed partitions up to {beyond[-1]}, so it was built from a "
            f"log of at least {beyond[-1] + 1} partitions, but the log has {len(partitions)}; "
            "the partition count cannot change (clusters would move to other partitions)"
        )
    return len(partitions)


def check_homes(current: state.State, partition: int, partitions: int) -> None:
    """Refuse a loaded state of ``partition`` holding a cluster whose home is elsewhere.

    Clusters are only ever built on their home partition, so such a cluster means the partition
    count changed since it was built: raises ``errors.ConfigurationError``.
    """
    for name in current.clusters:
        home = partitioning.home_partition(name, partitions)
        if home != partition:
            raise errors.ConfigurationError(
                f"cluster {name!r} was built on partition {partition}, but with {partitions} "
                f"partitions its home is partition {home}: the partition count changed since; "
                "it cannot change (clusters would move to other partitions)"
            )


def unstorable_record(record: ports.Record, reason: str | None) -> ports.AppliedRecord:
    """``record`` rejected because the projection cannot store it, for ``reason`` (the
    database's, already storable; None: a fixed reason only).

    Nothing of the event goes into the decision: its id or type may hold the very text the
    database refused. The cluster is the one ``events.decode`` reads from it: a valid cluster
    name (the contract allows only storable ones), or None when the record names none.
    """
    decision = events.Decision(
        id=None,
        type=None,
        cluster=events.decode(record.value).cluster,
        error=UNSTORABLE if reason is None else f"{UNSTORABLE}: {reason}",
    )
    log_time = (
        None
        if record.timestamp_ms is None
        else datetime.datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
    )
    return ports.AppliedRecord(
        record=record,
        decision=decision,
        body=events.encode_decision(decision),
        event_time=None,
        log_time=log_time,
        rejected=True,
    )


def rejection_batch(
    current: state.State,
    token: int,
    record: ports.Record,
    applied: ports.AppliedRecord,
    *,
    tree: merkle.Tree | None = None,
    evidence: TreeSettings | None = None,
) -> ports.Batch:
    """A batch of one rejected record: its decision and rejection rows and the next offset,
    and with ``tree`` its leaf and the head after it (a batch boundary as any other)."""
    batch = ports.Batch(
        partition=record.partition,
        token=token,
        next_offset=record.offset + 1,
        state=current,
        applied=[applied],
    )
    if tree is not None:
        applied.leaf = merkle.leaf_hash(applied.body, record.value)
        tree.append(applied.leaf)
        batch.heads.append(
            record_head(
                tree,
                record.partition,
                current,
                evidence or TreeSettings(),
                datetime.datetime.now(UTC),
            )
        )
        batch.subtrees = tree.take_completed()
    return batch


def ways(size: int, reload_s: float, commit_s: float) -> int:
    """Into how many parts to split a failed part of ``size`` records.

    Every part that fails costs a reload of the partition's state, every part a commit.
    Bisecting costs the most reloads (one per halving), committing record by record the most
    commits; so split into as many parts as commits fit into one reload: with a small state
    that is about a bisection, with millions of addresses (a reload of ~30 s against commits
    of milliseconds) a 5,000-record batch is taken apart in two or three levels.
    """
    if commit_s <= 0:
        return 2
    return max(2, min(size, math.ceil(reload_s / commit_s)))


def split(records: Sequence[ports.Record], ways: int) -> list[Sequence[ports.Record]]:
    size = math.ceil(len(records) / ways)
    return [records[start : start + size] for start in range(0, len(records), size)]
