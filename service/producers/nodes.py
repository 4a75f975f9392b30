"""``NodeProducer``: a cluster's v1 Nodes become ``node.added`` and ``node.deleted`` in the log.

Run by ``ipledger watch-nodes`` (``service.processes.watch_nodes``), one per ipledger cluster,
each on the Kubernetes cluster that cluster maps to. docs/operations.md says how to run it.

**Restarts append no duplicate.** The allocator does not de-duplicate by event id, and a
``node.deleted`` appended twice could delete the node that replaced the first one. So the
producer never trusts its own memory across a (re)start: each time it lists the Nodes (at start,
after a watch expired, after a failure) it first rebuilds what the log says of the cluster's
nodes — the projection's state, then the records appended after the projection's offset, applied
with the pure core exactly as the allocator will apply them — and appends only the difference:
``node.added`` for a Node the log does not have (or whose addresses differ), ``node.deleted`` for
a node the log has and the cluster does not. While it watches, each change is compared with that
view, kept up to date with what it appends. An event appended just before a crash is therefore
in the log's tail at the next start, and is not appended again.

**Event ids** are derived from the Node: ``k8s-node/<uid>/<resourceVersion>`` for a
``node.added``, ``.../deleted`` for the ``node.deleted`` of a watched deletion, so the decision
names the object version that caused it; a deletion found by a listing (the Node disappeared
while the producer was down, its UID unknown) is ``k8s-node-gone/<name>/<listing version>``.

**What is sent.** ``addresses`` are the Node's InternalIP then ExternalIP addresses, so that the
core's "node address inside the pod pool" conflict is found from real data; addresses the
contract refuses (an IPv4-mapped IPv6 address, say) are left out with a logged reason, as a
record with one would be refused whole. A Node name the contract refuses (not a DNS-1123
subdomain) is skipped with a logged reason and counted (``skipped``). Heartbeats and condition
changes (a Node is modified every few minutes) append nothing: only a change of addresses does.

**A listing with no Node at all** while the log holds nodes deletes nothing unless
``allow_deleting_all``: that is what a kubeconfig pointing at the wrong (or an empty) cluster
looks like, and deleting every node would release every CIDR of the cluster.

**Optionally** (``mirror_pod_cidrs``, for clusters that run Cilium with ``ipam.mode=kubernetes``,
where Cilium reads pod CIDRs from Node objects) it writes each node's CIDRs, as the projection
holds them, to the Node's ``spec.podCIDRs``. Kubernetes lets that field be set once: a Node that
already has other CIDRs is reported (logged once, counted in ``pod_cidrs_refused``), never
retried in a loop.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio

from service import backoff, errors, ports
from service.domain import addresses as domain_addresses
from service.domain import allocation, events, partitioning
from service.domain.state import State

log = logging.getLogger("ipledger.watch_nodes")

# Records per append and per read of the log's tail: one bounded round trip each.
CHUNK = 1000
_MAX_ADDRESSES = 64  # the contract's limit on ``addresses``
_MAX_ID = 128  # and on ``id``
# Empty reads of the log's tail in a row before giving up (a Kafka fetch may return nothing
# before its data arrives; the records below the end offset are there).
_EMPTY_READS = 20


@dataclass(slots=True)
class ProducerMetrics:
    """Counters of one cluster's producer (``ipledger_watch_nodes_*{cluster}``)."""

    added: int = 0  # node.added appended: new nodes and changed addresses
    deleted: int = 0  # node.deleted appended
    skipped: int = 0  # Node changes not sent: a name the contract refuses
    addresses_dropped: int = 0  # addresses left out: the contract refuses them
    reconciles: int = 0  # listings compared with the log
    deletions_held: int = 0  # deletions not sent: the listing was empty (allow_deleting_all)
    watch_events: int = 0
    failures: int = 0  # API server, log or projection failures (each retried)
    pod_cidrs_written: int = 0  # Nodes given spec.podCIDRs
    pod_cidrs_refused: int = 0  # Nodes whose spec.podCIDRs could not be set (already other)


def utc_now() -> str:
    """The event ``time``: now, RFC 3339 in UTC with milliseconds."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def added_id(node: ports.KubeNode) -> str:
    return f"k8s-node/{node.uid}/{node.resource_version}"


def deleted_id(node: ports.KubeNode) -> str:
    return f"k8s-node/{node.uid}/{node.resource_version}/deleted"


def gone_id(name: str, listing_version: str) -> str:
    ident = f"k8s-node-gone/{name}/{listing_version}"
    if len(ident) <= _MAX_ID:
        return ident
    # A long node name would not fit the contract's 128 characters: its digest does.
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"k8s-node-gone/{digest}/{listing_version}"


class NodeProducer:
    """The node-lifecycle producer of one ipledger cluster (see the module docstring)."""

    def __init__(
        self,
        cluster: str,
        client: ports.ClusterClient,
        event_log: ports.EventLog,
        reader: ports.ProjectionReader,
        partitions: int,
        *,
        mirror_pod_cidrs: bool = False,
        mirror_interval_s: float = 2.0,
        allow_deleting_all: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], str] = utc_now,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.event_log = event_log
        self.reader = reader
        self.partition = partitioning.home_partition(cluster, partitions)
        self.mirror_pod_cidrs = mirror_pod_cidrs
        self.mirror_interval_s = mirror_interval_s
        self.allow_deleting_all = allow_deleting_all
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.metrics = metrics or ProducerMetrics()
        # What the log says of each node (name -> addresses as sent), once reconciled.
        self.logged: dict[str, tuple[str, ...]] = {}
        # The v1 Nodes as last listed or watched (for the pod CIDR mirror).
        self.nodes: dict[str, ports.KubeNode] = {}
        self._skipped_names: set[str] = set()
        self._refused_pod_cidrs: set[str] = set()  # UIDs whose spec.podCIDRs is someone else's
        self._reconciled = anyio.Event()

    async def reconciled(self) -> None:
        """Wait for the end of the first reconciliation (tests and benchmarks wait for it)."""
        await self._reconciled.wait()

    async def run(self, stop: anyio.Event) -> None:
        """Produce until ``stop`` is set; failures back off and start over from a listing."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._produce)
            if self.mirror_pod_cidrs:
                tasks.start_soon(self._mirror_loop)
            await stop.wait()
            tasks.cancel_scope.cancel()

    # --- listing and reconciling ------------------------------------------------------------

    async def _produce(self) -> None:
        failures = 0
        while True:
            try:
                version = await self.reconcile()
                failures = 0
                await self._follow(version)
            except errors.ClusterApiGoneError:
                log.info("cluster %s: Node watch expired; listing again", self.cluster)
            except (errors.ClusterApiError, errors.LogError, errors.ProjectionError) as exc:
                failures += 1
                self.metrics.failures += 1
                delay = backoff.delay(
                    failures,
                    initial_s=self.backoff_initial_s,
                    max_s=self.backoff_max_s,
                    jitter=random.uniform(0.5, 1.0),
                )
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "cluster %s: %s (failure %d in a row); listing again in %.1fs",
                        self.cluster,
                        exc,
                        failures,
                        delay,
                    )
                await anyio.sleep(delay)

    async def reconcile(self) -> str:
        """List the Nodes, compare them with what the log says, append the difference.

        Returns the listing's resource version, from which the watch continues.
        """
        listing = await self.client.list_kube_nodes()
        self.logged = await self.logged_nodes()
        self.metrics.reconciles += 1
        listed: dict[str, ports.KubeNode] = {}
        pending: list[events.AnyEvent] = []
        for node in listing.items:
            self.nodes[node.name] = node
            if not self._valid_name(node.name):
                continue
            listed[node.name] = node
            if (event := self._added(node)) is not None:
                pending.append(event)
        for name in list(self.nodes):
            if name not in {node.name for node in listing.items}:
                del self.nodes[name]
        gone = sorted(name for name in self.logged if name not in listed)
        if gone and not listed and not self.allow_deleting_all:
            self.metrics.deletions_held += len(gone)
            log.error(
                "cluster %s: the API server lists no Node at all, the log holds %d: deleting "
                "none of them (a wrong kubeconfig or context?); start with --allow-deleting-all "
                "if the cluster really has no node left",
                self.cluster,
                len(gone),
            )
        else:
            for name in gone:
                pending.append(
                    events.NodeDeleted(
                        id=gone_id(name, listing.resource_version),
                        cluster=self.cluster,
                        time=self.clock(),
                        node=name,
                    )
                )
        await self._append(pending)
        log.info(
            "cluster %s: %d Nodes listed, %d nodes in the log; appended %d event(s)",
            self.cluster,
            len(listing.items),
            len(self.logged),
            len(pending),
        )
        self._reconciled.set()
        return listing.resource_version

    async def logged_nodes(self) -> dict[str, tuple[str, ...]]:
        """The cluster's nodes as the log says: the projection, then the log's unapplied tail.

        The position is read before the state, so the state is at least as new as it; the tail
        from there is applied on top with the pure core. Applying again a record the state
        already holds changes no node's presence or addresses (a repeated ``node.added`` keeps
        the node, a repeated ``node.deleted`` is refused), so the result is what the allocator
        will have once it has applied everything appended so far.
        """
        start = 0
        for position in await self.reader.positions():
            if position.partition == self.partition:
                start = position.next_offset
        state = await self.reader.state()
        await self._apply_tail(state, start)
        cluster = state.clusters.get(self.cluster)
        if cluster is None:
            return {}
        return {
            name: tuple(domain_addresses.format_address(a) for a in node.addresses)
            for name, node in cluster.nodes.items()
        }

    async def _apply_tail(self, state: State, start: int) -> None:
        end = await self.event_log.end_offset(self.partition)
        key = self.cluster.encode()
        offset, empty = start, 0
        while offset < end:
            records = await self.event_log.read(
                self.partition, offset, min(CHUNK, end - offset), 0.5
            )
            if not records:
                empty += 1
                if empty >= _EMPTY_READS:
                    raise errors.LogError(
                        f"partition {self.partition}: no record from offset {offset} although "
                        f"the log ends at {end}"
                    )
                continue
            empty = 0
            for record in records:
                # The allocator refuses a record whose key is not its cluster: so must this.
                if record.key == key:
                    allocation.apply_record(state, record.value)
            offset = records[-1].offset + 1

    # --- watching -----------------------------------------------------------------------------

    async def _follow(self, version: str) -> None:
        stream = self.client.watch_kube_nodes(version)
        try:
            await self._follow_stream(stream)
        finally:
            # Ended between two changes (while appending), the stream is suspended at its
            # yield: close it now, so its HTTP response is released here and not by the garbage
            # collector on some later turn of the loop.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await aclose()

    async def _follow_stream(self, stream: AsyncIterator[ports.Change[ports.KubeNode]]) -> None:
        async for change in stream:
            self.metrics.watch_events += 1
            node = change.item
            if change.type == "DELETED":
                self.nodes.pop(node.name, None)
                if node.name in self.logged:
                    await self._append(
                        [
                            events.NodeDeleted(
                                id=deleted_id(node),
                                cluster=self.cluster,
                                time=self.clock(),
                                node=node.name,
                            )
                        ]
                    )
                continue
            self.nodes[node.name] = node
            if self._valid_name(node.name) and (event := self._added(node)) is not None:
                await self._append([event])

    def _added(self, node: ports.KubeNode) -> events.NodeAdded | None:
        """The ``node.added`` the Node needs, or None when the log already says the same."""
        addresses = self._sendable_addresses(node)
        if self.logged.get(node.name) == addresses:
            return None
        return events.NodeAdded(
            id=added_id(node),
            cluster=self.cluster,
            time=self.clock(),
            node=node.name,
            addresses=addresses,
        )

    def _valid_name(self, name: str) -> bool:
        reason = name_refused(name)
        if reason is None:
            return True
        self.metrics.skipped += 1
        if name not in self._skipped_names:
            self._skipped_names.add(name)
            log.warning(
                "cluster %s: Node %r skipped: %s (node names must be DNS-1123 subdomains)",
                self.cluster,
                name,
                reason,
            )
        return False

    def _sendable_addresses(self, node: ports.KubeNode) -> tuple[str, ...]:
        kept: list[str] = []
        for text in node.addresses:
            try:
                spelt = domain_addresses.format_address(domain_addresses.parse_address(text))
            except ValueError as exc:
                self.metrics.addresses_dropped += 1
                log.warning(
                    "cluster %s: Node %s: address %r left out of its node.added: %s",
                    self.cluster,
                    node.name,
                    text,
                    exc,
                )
                continue
            if spelt not in kept:
                kept.append(spelt)
        return tuple(kept[:_MAX_ADDRESSES])

    async def _append(self, pending: Sequence[events.AnyEvent]) -> None:
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            await self.event_log.append(
                [(event.cluster.encode(), events.encode_event(event)) for event in chunk]
            )
            # Only what the log took counts as said: a failed append is listed again.
            for event in chunk:
                if isinstance(event, events.NodeAdded):
                    self.logged[event.node] = event.addresses
                    self.metrics.added += 1
                    log.info("cluster %s: node.added %s %s", self.cluster, event.node, event.id)
                elif isinstance(event, events.NodeDeleted):
                    self.logged.pop(event.node, None)
                    self.metrics.deleted += 1
                    log.info("cluster %s: node.deleted %s %s", self.cluster, event.node, event.id)

    # --- the pod CIDR mirror (ipam.mode=kubernetes) -------------------------------------------

    async def _mirror_loop(self) -> None:
        await self.reconciled()
        while True:
            try:
                await self.mirror_once()
            except (errors.ClusterApiError, errors.ProjectionError) as exc:
                self.metrics.failures += 1
                log.warning("cluster %s: Node spec.podCIDRs not written: %s", self.cluster, exc)
            await anyio.sleep(self.mirror_interval_s)

    async def mirror_once(self) -> int:
        """Write the projection's CIDRs to every Node that has none yet; how many were written."""
        written = 0
        after = ""
        while True:
            views = await self.reader.nodes(self.cluster, after=after, limit=CHUNK)
            for view in views:
                written += await self._mirror_node(view)
            if len(views) < CHUNK:
                return written
            after = views[-1].name

    async def _mirror_node(self, view: ports.NodeView) -> int:
        node = self.nodes.get(view.name)
        if node is None or not view.pod_cidrs or node.uid in self._refused_pod_cidrs:
            return 0
        wanted = tuple(domain_addresses.format_network(cidr) for cidr in view.pod_cidrs)
        if node.pod_cidrs == wanted:
            return 0
        if node.pod_cidrs:
            self._refuse(node, f"it already has spec.podCIDRs {list(node.pod_cidrs)}", wanted)
            return 0
        try:
            patched = await self.client.set_kube_node_pod_cidrs(node.name, node.uid, wanted)
        except errors.ClusterApiNotFoundError:
            return 0  # deleted meanwhile: its node.deleted follows
        except errors.ClusterApiRejectedError as exc:
            self._refuse(node, str(exc), wanted)
            return 0
        if self.nodes.get(node.name) == node:
            self.nodes[node.name] = patched
        self.metrics.pod_cidrs_written += 1
        log.info("cluster %s: Node %s spec.podCIDRs set to %s", self.cluster, node.name, wanted)
        return 1

    def _refuse(self, node: ports.KubeNode, reason: str, wanted: tuple[str, ...]) -> None:
        self._refused_pod_cidrs.add(node.uid)
        self.metrics.pod_cidrs_refused += 1
        log.error(
            "cluster %s: Node %s spec.podCIDRs not set to %s: %s (Kubernetes lets it be set "
            "once; with ipam.mode=kubernetes Cilium uses what the Node has)",
            self.cluster,
            node.name,
            list(wanted),
            reason,
        )


def name_refused(name: str) -> str | None:
    """Why the event contract refuses ``name`` as a node name, or None when it accepts it.

    Asked of the decoder itself (a struct built in Python is not validated), so the rule is the
    contract's, never a copy of it.
    """
    decoded = events.decode(events.encode_event(events.NodeDeleted(id="-", node=name)))
    return decoded.reason if isinstance(decoded, events.DecodeFailure) else None
