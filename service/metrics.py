"""Prometheus metrics of ipledger's processes, exported with ``prometheus_client``.

The loops keep plain counters (``allocator.Metrics``, ``sync.SyncMetrics``) and know nothing of
Prometheus. Here a collector per kind of process reads those counters at scrape time into a
``CollectorRegistry`` made for that process (``allocator_registry``, ``sync_registry``), never the
library's global default registry: two processes in one interpreter (the tests) never share one,
and nothing is registered at import time. ``serving`` answers ``GET /metrics`` (the registry in
the Prometheus text format) and ``GET /healthz`` (``ok``) on 127.0.0.1, and nothing else.

Started by ``service.processes.allocator`` (``IPLEDGER_METRICS_PORT``) and
``service.processes.sync`` (``IPLEDGER_SYNC_METRICS_PORT``). The HTTP server runs in a thread of
its own, so a scrape never waits for the event loop, and answers from memory: the counters, and
for the allocator the pool gauges its writers' states give (``service.ipam_metrics``); it never
touches the database, the log or the Kubernetes API. Every metric, its labels and its meaning
are listed in docs/operations.md ("Metrics and alerts"); compose/prometheus/alerts.yaml alerts on
them.
"""

from __future__ import annotations

import contextlib
import logging
import socketserver
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from wsgiref import simple_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import anyio
import prometheus_client
from prometheus_client import core, registry

from service import allocator, errors, ipam_metrics, producers, sync
from service.allocator import reasons
from service.allocator.settings import Histogram
from service.domain import state

log = logging.getLogger("ipledger.metrics")
# A client that sends nothing for this long is dropped (each scrape is one short request).
REQUEST_TIMEOUT_S = 5.0


def allocator_registry(
    counters: allocator.Metrics,
    states: Callable[[], Iterable[state.State]] | None = None,
    *,
    forecast_window_s: float = ipam_metrics.FORECAST_WINDOW_S,
) -> registry.CollectorRegistry:
    """The registry of ``ipledger run``: the counters of every partition's allocator and, given
    ``states`` (the states its writers hold now), the pool gauges of their clusters."""
    collectors = registry.CollectorRegistry(auto_describe=False)
    collectors.register(_AllocatorCollector(counters))
    if states is not None:
        collectors.register(ipam_metrics.PoolCollector(states, forecast_window_s=forecast_window_s))
    return collectors


def sync_registry(clusters: Mapping[str, sync.SyncMetrics]) -> registry.CollectorRegistry:
    """The registry of ``ipledger sync``: each cluster's worker counters, labelled ``cluster``."""
    collectors = registry.CollectorRegistry(auto_describe=False)
    collectors.register(_SyncCollector(clusters))
    return collectors


def watch_nodes_registry(
    clusters: Mapping[str, producers.ProducerMetrics],
) -> registry.CollectorRegistry:
    """The registry of ``ipledger watch-nodes``: each cluster's producer counters."""
    collectors = registry.CollectorRegistry(auto_describe=False)
    collectors.register(_ProducerCollector(clusters))
    return collectors


def render(collectors: registry.CollectorRegistry) -> str:
    """What ``GET /metrics`` answers: the Prometheus text format (version 0.0.4)."""
    return prometheus_client.generate_latest(collectors).decode()


@contextlib.asynccontextmanager
async def serving(
    collectors: registry.CollectorRegistry, port: int | None, host: str = "127.0.0.1"
) -> AsyncIterator[None]:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` while the block runs (None: don't).

    The port is bound on entry, so a port in use is a ``ConfigurationError`` before the process
    starts work; on exit the server stops and closes its socket.
    """
    if port is None:
        yield
        return
    try:
        server = simple_server.make_server(host, port, _app(collectors), _Server, _QuietHandler)
    except (OSError, OverflowError) as exc:  # in use, not allowed; not a port number
        raise errors.ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics", daemon=True
    )
    thread.start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    try:
        yield
    finally:
        # shutdown() blocks until serve_forever notices (one poll interval): not on the loop,
        # and not skipped when the block was cancelled.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)
        server.server_close()


def _app(collectors: registry.CollectorRegistry) -> WSGIApplication:
    exposition = prometheus_client.make_wsgi_app(collectors)

    def answer(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET":
            return _plain(start_response, "405 Method Not Allowed", "only GET\n")
        if path == "/metrics":
            body: Iterable[bytes] = exposition(environ, start_response)
            return body
        if path == "/healthz":
            return _plain(start_response, "200 OK", "ok\n")
        return _plain(start_response, "404 Not Found", "not found\n")

    return answer


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    # A scrape still being answered does not keep the process alive once it is stopping.
    daemon_threads = True


class _QuietHandler(simple_server.WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged: one line every 15 s per scraper says nothing."""


def _counter(name: str, help_text: str, value: float) -> core.CounterMetricFamily:
    return core.CounterMetricFamily(name, help_text, value=value)


def _gauge(
    name: str, help_text: str, label: str, values: Iterable[tuple[str, float]]
) -> core.GaugeMetricFamily:
    family = core.GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values:
        family.add_metric([key], value)
    return family


def _histogram(name: str, help_text: str, observed: Histogram) -> core.Metric:
    buckets = observed.cumulative()
    return core.HistogramMetricFamily(
        name,
        help_text,
        buckets=[("+Inf" if b == float("inf") else str(b), n) for b, n in buckets],
        sum_value=observed.sum,
    )


def _event_families(c: allocator.Metrics) -> Iterator[core.Metric]:
    applied = core.CounterMetricFamily(
        "ipledger_events_applied_total",
        "Valid events the core applied, by type and the class of their decision's error "
        '(reason="none": no error).',
        labels=["type", "reason"],
    )
    # Every type with no error, from the start: rate() then sees the first events.
    counts = {(kind, reasons.NONE): 0 for kind in reasons.TYPES}
    counts.update(c.events_applied)
    for (kind, reason), count in sorted(counts.items()):
        applied.add_metric([kind, reason], count)
    yield applied
    rejected = core.CounterMetricFamily(
        "ipledger_events_rejected_total",
        "Records rejected without being applied (kept raw in the rejections table), by event "
        'type ("unknown" when not one of the contract\'s) and reason class.',
        labels=["type", "reason"],
    )
    for (kind, reason), count in sorted(c.events_rejected.items()):
        rejected.add_metric([kind, reason], count)
    yield rejected


class _AllocatorCollector(registry.Collector):
    """Reads ``allocator.Metrics`` when scraped; names and help texts are the published ones."""

    def __init__(self, counters: allocator.Metrics) -> None:
        self._counters = counters

    def collect(self) -> Iterator[core.Metric]:
        # Called on the server's thread while the loop updates the counters: each value is read
        # once, and the per-partition dicts are copied by sorted() in one step under the GIL.
        c = self._counters
        yield _counter(
            "ipledger_records_applied_total",
            "Log records committed with a decision.",
            c.records_applied,
        )
        yield _counter(
            "ipledger_records_rejected_total",
            "Records rejected: not valid events, or not storable (kept raw in the rejections "
            "table).",
            c.records_rejected,
        )
        yield _counter(
            "ipledger_records_unstorable_total",
            "Rejected records that PostgreSQL refused to store (reason in the rejections table).",
            c.records_unstorable,
        )
        yield _counter(
            "ipledger_records_wrong_partition_total",
            "Rejected records that were on another partition than their cluster's home partition "
            "(the producer did not use Kafka's default partitioner).",
            c.records_wrong_partition,
        )
        yield _counter(
            "ipledger_decisions_with_error_total",
            "Valid events whose decision carries an error (e.g. allocator full).",
            c.decisions_with_error,
        )
        yield _counter(
            "ipledger_batches_committed_total",
            "Batches committed to PostgreSQL.",
            c.batches_committed,
        )
        yield _counter(
            "ipledger_commit_seconds_total", "Time spent committing batches.", c.commit_seconds
        )
        yield _counter(
            "ipledger_takeovers_total", "Times this process became a writer.", c.takeovers
        )
        yield _counter(
            "ipledger_fenced_total", "Times this process lost the writer lease.", c.fenced
        )
        yield _counter(
            "ipledger_failures_total",
            "Log or database failures that made the allocator reload and retry.",
            c.failures,
        )
        yield _counter(
            "ipledger_decisions_published_total",
            "Decisions published to the decisions topic.",
            c.decisions_published,
        )
        yield _gauge(
            "ipledger_next_offset",
            "Next log offset to apply, per partition.",
            "partition",
            [(str(p), o) for p, o in sorted(c.next_offset.items())],
        )
        leader = sorted(c.leader.items())
        yield _gauge(
            "ipledger_leader",
            "1 while this process is the partition's writer.",
            "partition",
            [(str(p), float(v)) for p, v in leader],
        )
        yield from _event_families(c)
        yield _histogram(
            "ipledger_batch_records",
            "Records per committed batch.",
            c.batch_records,
        )
        yield _histogram(
            "ipledger_commit_duration_seconds",
            "Time one batch's commit took (its transaction, with the offset).",
            c.commit_latency,
        )
        # Only where this process writes: a standby's offsets are not the partition's.
        ends, offsets = dict(c.log_end), dict(c.next_offset)
        yield _gauge(
            "ipledger_log_lag",
            "Records in the log not yet applied and committed, per partition this process "
            "writes (the log's end offset, read every few seconds, minus the next offset).",
            "partition",
            [
                (str(p), float(max(ends[p] - offsets[p], 0)))
                for p, leads in leader
                if leads and p in ends and p in offsets
            ],
        )
        yield _gauge(
            "ipledger_log_end_offset",
            "The log's end offset per partition, as this process's writer last read it.",
            "partition",
            [(str(p), float(o)) for p, o in sorted(ends.items())],
        )


# SyncMetrics field -> (metric name, help). Counters first, in the order they read best.
_SYNC_COUNTERS = (
    (
        "nodes_mirrored",
        "ipledger_sync_nodes_mirrored_total",
        "Node outcomes recorded without error.",
    ),
    (
        "unchanged",
        "ipledger_sync_unchanged_total",
        "Node changes that needed no request: the CiliumNode already agreed.",
    ),
    (
        "coalesced",
        "ipledger_sync_coalesced_total",
        "Pending writes replaced by a newer state of their node before being sent.",
    ),
    (
        "request_seconds",
        "ipledger_sync_request_seconds_total",
        "Time spent in requests to the Kubernetes API server.",
    ),
    (
        "retries",
        "ipledger_sync_retries_total",
        "Writes retried after a failure (429, 5xx, timeout, object gone).",
    ),
    (
        "throttled",
        "ipledger_sync_throttled_total",
        "Of the retried: answered 429 Too Many Requests.",
    ),
    (
        "rejected",
        "ipledger_sync_rejected_total",
        "Writes the API server refused for good (the reason recorded in node_sync.error).",
    ),
    (
        "drift_repairs",
        "ipledger_sync_drift_repairs_total",
        "CiliumNodes a resync or the watch found changed behind ipledger's back, and put back.",
    ),
    (
        "owner_references",
        "ipledger_sync_owner_references_total",
        "ownerReferences to their v1 Node given to CiliumNodes ipledger created.",
    ),
    ("watch_events", "ipledger_sync_watch_events_total", "CiliumNode changes the watch saw."),
    (
        "watch_restarts",
        "ipledger_sync_watch_restarts_total",
        "CiliumNode watches started again after a failure or 410 Gone.",
    ),
    ("resyncs", "ipledger_sync_resyncs_total", "Full list-and-compare passes."),
    (
        "takeovers",
        "ipledger_sync_takeovers_total",
        "Times this process took the cluster's sync lock.",
    ),
    (
        "lock_waits",
        "ipledger_sync_lock_waits_total",
        "Lock attempts that found another instance holding the cluster.",
    ),
    ("fenced", "ipledger_sync_fenced_total", "Times this process lost the cluster's sync lock."),
)
# Mirror._request's verbs, as SyncMetrics counts them; `requests` is their sum.
_SYNC_VERBS = (
    ("apply", "applies"),
    ("status", "status_applies"),
    ("delete", "deletes"),
    ("get", "gets"),
    ("owner", "owner_applies"),
)


class _SyncCollector(registry.Collector):
    """Reads each cluster's ``sync.SyncMetrics`` when scraped."""

    def __init__(self, clusters: Mapping[str, sync.SyncMetrics]) -> None:
        self._clusters = dict(clusters)

    def collect(self) -> Iterator[core.Metric]:
        clusters = sorted(self._clusters.items())
        yield _gauge(
            "ipledger_sync_leader",
            "1 while this process holds the cluster's sync lock and mirrors it.",
            "cluster",
            [(name, float(m.leader)) for name, m in clusters],
        )
        yield _gauge(
            "ipledger_sync_waiting",
            "Nodes waiting for their CiliumNode to exist (create_missing off).",
            "cluster",
            [(name, float(m.waiting)) for name, m in clusters],
        )
        requests = core.CounterMetricFamily(
            "ipledger_sync_requests_total",
            "Requests sent to the Kubernetes API server, by verb.",
            labels=["cluster", "verb"],
        )
        for name, m in clusters:
            for verb, field in _SYNC_VERBS:
                requests.add_metric([name, verb], getattr(m, field))
        yield requests
        yield _gauge(
            "ipledger_sync_queue_depth",
            "CiliumNode writes pending, not yet taken by a writer (one per node at most).",
            "cluster",
            [(name, float(m.queue_depth)) for name, m in clusters],
        )
        yield _gauge(
            "ipledger_sync_in_flight",
            "CiliumNode writes being sent to the API server.",
            "cluster",
            [(name, float(m.in_flight)) for name, m in clusters],
        )
        failed = core.CounterMetricFamily(
            "ipledger_sync_request_errors_total",
            'Requests to the Kubernetes API server that failed, by HTTP status ("none": no '
            "answer came, a timeout or no connection).",
            labels=["cluster", "code"],
        )
        for name, m in clusters:
            for code, count in sorted(dict(m.request_errors).items()):
                failed.add_metric([name, code], count)
        yield failed
        for field, metric, help_text in _SYNC_COUNTERS:
            family = core.CounterMetricFamily(metric, help_text, labels=["cluster"])
            for name, m in clusters:
                family.add_metric([name], getattr(m, field))
            yield family


# ProducerMetrics field -> (metric name, help), for ``ipledger watch-nodes``.
_PRODUCER_COUNTERS = (
    ("added", "ipledger_watch_nodes_added_total", "node.added events appended."),
    ("deleted", "ipledger_watch_nodes_deleted_total", "node.deleted events appended."),
    (
        "skipped",
        "ipledger_watch_nodes_skipped_total",
        "Node changes not sent: the event contract refuses the Node's name.",
    ),
    (
        "addresses_dropped",
        "ipledger_watch_nodes_addresses_dropped_total",
        "Node addresses left out of a node.added: the event contract refuses them.",
    ),
    ("reconciles", "ipledger_watch_nodes_reconciles_total", "Listings compared with the log."),
    (
        "deletions_held",
        "ipledger_watch_nodes_deletions_held_total",
        "Deletions not sent because the API server listed no Node at all.",
    ),
    ("watch_events", "ipledger_watch_nodes_watch_events_total", "Node changes watched."),
    (
        "failures",
        "ipledger_watch_nodes_failures_total",
        "API server, log or projection failures (each retried).",
    ),
    (
        "pod_cidrs_written",
        "ipledger_watch_nodes_pod_cidrs_written_total",
        "Nodes given spec.podCIDRs (--mirror-node-podcidrs).",
    ),
    (
        "pod_cidrs_refused",
        "ipledger_watch_nodes_pod_cidrs_refused_total",
        "Nodes whose spec.podCIDRs could not be set (already set otherwise, or refused).",
    ),
)


class _ProducerCollector(registry.Collector):
    """Reads each cluster's ``producers.ProducerMetrics`` when scraped."""

    def __init__(self, clusters: Mapping[str, producers.ProducerMetrics]) -> None:
        self._clusters = dict(clusters)

    def collect(self) -> Iterator[core.Metric]:
        clusters = sorted(self._clusters.items())
        for field, metric, help_text in _PRODUCER_COUNTERS:
            family = core.CounterMetricFamily(metric, help_text, labels=["cluster"])
            for name, m in clusters:
                family.add_metric([name], getattr(m, field))
            yield family
