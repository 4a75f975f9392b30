"""The metrics endpoint: each process's counters exported through its own prometheus registry.

The allocator's metric names, types, help texts and labels are the published ones (dashboards
and alerts read them); the sync worker's are labelled by cluster. ``serving`` answers
``/metrics`` and ``/healthz`` on 127.0.0.1 and nothing else, refuses a port in use before the
process starts work, and leaves nothing listening once it is done.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import urllib.error
import urllib.request

import anyio
import prometheus_client
import pytest
from hypothesis import given, settings
from prometheus_client import parser

from service import allocator, errors, metrics, sync
from service.adapters import memory
from service.adapters.kubernetes.memory import MemoryClusterClient
from service.allocator import reasons
from service.domain import allocation, state
from tests import random_streams, waiting
from tests.fakes import intent
from tests.streams import key_of, mixed_stream

# The allocator's published metrics: (name as exposed, type, labels of its samples; None for
# histograms, whose samples are _bucket{le}, _sum and _count), labels sorted by name.
PUBLISHED = [
    ("ipledger_records_applied_total", "counter", []),
    ("ipledger_records_rejected_total", "counter", []),
    ("ipledger_records_unstorable_total", "counter", []),
    ("ipledger_records_wrong_partition_total", "counter", []),
    ("ipledger_decisions_with_error_total", "counter", []),
    ("ipledger_batches_committed_total", "counter", []),
    ("ipledger_commit_seconds_total", "counter", []),
    ("ipledger_takeovers_total", "counter", []),
    ("ipledger_fenced_total", "counter", []),
    ("ipledger_failures_total", "counter", []),
    ("ipledger_decisions_published_total", "counter", []),
    ("ipledger_next_offset", "gauge", ["partition"]),
    ("ipledger_leader", "gauge", ["partition"]),
    ("ipledger_events_applied_total", "counter", ["reason", "type"]),
    ("ipledger_events_rejected_total", "counter", ["reason", "type"]),
    ("ipledger_batch_records", "histogram", None),
    ("ipledger_commit_duration_seconds", "histogram", None),
    ("ipledger_log_lag", "gauge", ["partition"]),
    ("ipledger_log_end_offset", "gauge", ["partition"]),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.headers["Content-Type"], refused.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_allocators_metrics_keep_their_published_names_types_and_labels() -> None:
    counters = allocator.Metrics(
        records_applied=15,
        records_rejected=3,
        commit_seconds=0.25,
        next_offset={1: 7, 0: 12},
        leader={0: True, 1: False},
        log_end={0: 20, 1: 9},
        events_rejected={("unknown", "invalid_event"): 3},
    )
    text = metrics.render(metrics.allocator_registry(counters))
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert list(types.items()) == [(name, kind) for name, kind, _ in PUBLISHED]
    for name, _, labels in PUBLISHED:
        if labels is None:
            continue
        named = [labels_ for (sample, labels_) in samples(text) if sample == name]
        assert named, name
        assert all([key for key, _ in found] == labels for found in named), name
    assert "# HELP ipledger_records_applied_total Log records committed with a decision.\n" in text
    assert "# HELP ipledger_leader 1 while this process is the partition's writer.\n" in text
    got = samples(text)
    assert got["ipledger_records_applied_total", ()] == 15
    assert got["ipledger_commit_seconds_total", ()] == 0.25
    assert got["ipledger_next_offset", (("partition", "0"),)] == 12
    assert got["ipledger_leader", (("partition", "1"),)] == 0
    assert not any(name.endswith("_created") for name, _ in got)


def test_the_registry_reads_the_counters_when_scraped() -> None:
    counters = allocator.Metrics()
    registry = metrics.allocator_registry(counters)
    assert samples(metrics.render(registry))["ipledger_records_applied_total", ()] == 0
    counters.records_applied += 4
    counters.leader[2] = True
    got = samples(metrics.render(registry))
    assert got["ipledger_records_applied_total", ()] == 4
    assert got["ipledger_leader", (("partition", "2"),)] == 1


def test_each_process_has_its_own_registry_and_the_default_one_stays_empty() -> None:
    first, second = allocator.Metrics(records_applied=1), allocator.Metrics(records_applied=2)
    one, two = metrics.allocator_registry(first), metrics.allocator_registry(second)
    assert samples(metrics.render(one))["ipledger_records_applied_total", ()] == 1
    assert samples(metrics.render(two))["ipledger_records_applied_total", ()] == 2
    assert "ipledger_" not in prometheus_client.generate_latest().decode()


def test_the_sync_workers_counters_are_labelled_by_cluster() -> None:
    east = sync.SyncMetrics(
        leader=True, requests=6, applies=3, status_applies=1, deletes=1, gets=1, waiting=2
    )
    east.nodes_mirrored = 5
    east.queue_depth, east.in_flight = 7, 2
    east.request_errors.update({"429": 2, "none": 1})
    west = sync.SyncMetrics(lock_waits=4)
    got = samples(metrics.render(metrics.sync_registry({"west": west, "east": east})))
    assert got["ipledger_sync_leader", (("cluster", "east"),)] == 1
    assert got["ipledger_sync_leader", (("cluster", "west"),)] == 0
    assert got["ipledger_sync_waiting", (("cluster", "east"),)] == 2
    assert got["ipledger_sync_nodes_mirrored_total", (("cluster", "east"),)] == 5
    assert got["ipledger_sync_lock_waits_total", (("cluster", "west"),)] == 4
    assert got["ipledger_sync_queue_depth", (("cluster", "east"),)] == 7
    assert got["ipledger_sync_in_flight", (("cluster", "east"),)] == 2
    errors_by_code = {
        dict(labels)["code"]: value
        for (name, labels), value in got.items()
        if name == "ipledger_sync_request_errors_total"
    }
    assert errors_by_code == {"429": 2, "none": 1}
    by_verb = {
        dict(labels)["verb"]: value
        for (name, labels), value in got.items()
        if name == "ipledger_sync_requests_total" and dict(labels)["cluster"] == "east"
    }
    assert by_verb == {"apply": 3, "status": 1, "delete": 1, "get": 1, "owner": 0}
    assert sum(by_verb.values()) == east.requests
    # Every counter of SyncMetrics is exported (requests through its verbs).
    exported = {name.removeprefix("ipledger_sync_").removesuffix("_total") for name, _ in got}
    fields = {field.name for field in dataclasses.fields(sync.SyncMetrics)}
    assert fields - {"applies", "status_applies", "deletes", "gets", "owner_applies"} == exported


@pytest.mark.anyio
async def test_serving_answers_metrics_and_healthz_and_nothing_else() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    registry = metrics.allocator_registry(allocator.Metrics(records_applied=15))
    async with metrics.serving(registry, port):
        status, kind, body = await anyio.to_thread.run_sync(get, f"{base}/metrics")
        assert status == 200
        assert kind.startswith("text/plain; version=0.0.4")
        assert "ipledger_records_applied_total 15.0\n" in body
        assert await anyio.to_thread.run_sync(get, f"{base}/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )
        status, _, _ = await anyio.to_thread.run_sync(get, f"{base}/")
        assert status == 404
        refused = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as posted:
            await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(refused, timeout=10))
        with posted.value:
            assert posted.value.code == 405
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


@pytest.mark.anyio
async def test_a_port_in_use_is_refused_before_the_process_starts_work() -> None:
    registry = metrics.allocator_registry(allocator.Metrics())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(errors.ConfigurationError, match=f"cannot serve metrics on .*:{port}"):
            async with metrics.serving(registry, port):
                pytest.fail("the block must not run")


@pytest.mark.anyio
async def test_no_port_serves_nothing() -> None:
    entered = False
    async with metrics.serving(metrics.allocator_registry(allocator.Metrics()), None):
        entered = True
    assert entered


# --- what the allocator loop counts, as exposed ---------------------------------------------

CLUSTER_POOL = (
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/30"],'
    b'"clusterPoolIPv4MaskSize":30}'
)
# One record per reason class the loop can meet on partition 0 of 1, and how it is counted:
# (record, "applied" or "rejected", type label, reason class).
CLASSIFIED: list[tuple[bytes, str, str, str]] = [
    (CLUSTER_POOL, "applied", "pool.configured", "none"),
    (b'{"type":"node.added","id":"a","node":"a"}', "applied", "node.added", "none"),
    # The /30 pool holds one /30 node CIDR: the second node waits.
    (b'{"type":"node.added","id":"b","node":"b"}', "applied", "node.added", "allocator_full"),
    (
        b'{"type":"ip.requested","id":"r1","node":"a","owner":"ns/p1"}',
        "applied",
        "ip.requested",
        "none",
    ),
    (
        b'{"type":"ip.requested","id":"r2","node":"a","owner":"ns/p2"}',
        "applied",
        "ip.requested",
        "none",
    ),
    # A /30 has two pod addresses.
    (
        b'{"type":"ip.requested","id":"r3","node":"a","owner":"ns/p3"}',
        "applied",
        "ip.requested",
        "range_full",
    ),
    (
        b'{"type":"ip.requested","id":"r4","node":"b","owner":"ns/p4"}',
        "applied",
        "ip.requested",
        "no_pod_cidr",
    ),
    (
        b'{"type":"ip.requested","id":"r5","node":"a","owner":"ns/p5","family":"ipv6"}',
        "applied",
        "ip.requested",
        "family_not_enabled",
    ),
    (
        b'{"type":"ip.released","id":"x1","node":"a","owner":"ns/nobody"}',
        "applied",
        "ip.released",
        "not_held",
    ),
    (
        b'{"type":"ip.released","id":"x2","node":"a","owner":"ns/p1","ip":"10.0.0.9"}',
        "applied",
        "ip.released",
        "not_held",
    ),
    (
        b'{"type":"ip.released","id":"x3","node":"a","owner":"ns/p1","ip":"banana"}',
        "applied",
        "ip.released",
        "invalid_address",
    ),
    (b'{"type":"node.deleted","id":"d1","node":"zz"}', "applied", "node.deleted", "unknown_node"),
    (
        b'{"type":"node.added","id":"c","node":"c","addresses":["not-an-ip"]}',
        "applied",
        "node.added",
        "invalid_address",
    ),
    (
        b'{"type":"pool.configured","id":"shrink","clusterPoolIPv4PodCIDRList":["10.1.0.0/30"],'
        b'"clusterPoolIPv4MaskSize":30}',
        "applied",
        "pool.configured",
        "pool_refused",
    ),
    (
        b'{"type":"node.adopted","id":"ad","node":"e","podCIDRs":["192.168.0.0/30"]}',
        "applied",
        "node.adopted",
        "adoption_refused",
    ),
    (
        b'{"type":"ip.requested","id":"np","cluster":"bare","node":"a","owner":"ns/p"}',
        "applied",
        "ip.requested",
        "unknown_node",
    ),
    (
        b'{"type":"node.added","id":"nopool","cluster":"bare","node":"a"}',
        "applied",
        "node.added",
        "no_pool",
    ),
    (b"not json", "rejected", "unknown", "invalid_event"),
    (b'{"type":"node.added","id":"m"}', "rejected", "node.added", "invalid_event"),
    (b'{"type":"node.exploded","id":"u"}', "rejected", "unknown", "unknown_type"),
    (b"\xef\xbb\xbf{}", "rejected", "unknown", "not_utf8"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "rejected", "unknown", "too_deep"),
    (b'{"x":"' + b"y" * 70_000 + b'"}', "rejected", "unknown", "too_large"),
]


def test_every_reason_the_core_gives_has_a_class_of_its_own() -> None:
    """Each reason above lands in its class; none of the core's reasons falls into "other"."""
    oracle = state.State()
    for record, outcome, kind, reason in CLASSIFIED:
        decision, event = allocation.apply_record(oracle, record)
        if outcome == "rejected":
            assert event is None, record[:60]
            got = reasons.rejection_class(decision.error)
            assert (reasons.type_label(decision.type), got) == (kind, reason), decision.error
        else:
            assert event is not None, record[:60]
            assert reasons.decision_class(event.type, decision.error) == reason, decision.error
    assert reasons.rejection_class(None, wrong_partition=True) == "wrong_partition"
    assert reasons.rejection_class("record key 'x' does not match the event's cluster 'y'") == (
        "wrong_key"
    )
    assert reasons.rejection_class(allocator.UNSTORABLE + ": bad bytes") == "unstorable"
    assert reasons.decision_class("node.added", "internal error: KeyError: 'x'") == (
        "internal_error"
    )
    assert reasons.decision_class("node.added", "something new") == reasons.OTHER
    assert reasons.type_label("node.exploded") == reasons.UNKNOWN_TYPE


@given(stream=random_streams.streams())
@settings(max_examples=30, deadline=None)
def test_no_reason_of_a_random_stream_is_left_unclassified(stream: list[bytes]) -> None:
    oracle = state.State()
    for record in [*stream, *mixed_stream(200, seed=len(stream))]:
        decision, event = allocation.apply_record(oracle, record)
        if event is None:
            assert reasons.rejection_class(decision.error) != reasons.OTHER, decision.error
        else:
            got = reasons.decision_class(event.type, decision.error)
            assert got != reasons.OTHER, decision.error
            assert got in reasons.DECISION_CLASSES


@pytest.mark.anyio
async def test_the_loop_counts_events_by_type_and_reason_class_and_observes_its_batches() -> None:
    log_ = memory.MemoryEventLog()
    await log_.append([(key_of(record), record) for record, *_ in CLASSIFIED])
    # And one record on the wrong key: refused before it is applied.
    await log_.append([(b"other", b'{"type":"node.added","id":"k","node":"k"}')])
    counters = allocator.Metrics()
    worker = allocator.PartitionAllocator(
        log_,
        memory.MemoryProjection(memory.MemoryProjectionTables(), holder="test"),
        0,
        settings=allocator.LoopSettings(batch_max_records=10, batch_max_wait_s=0.01),
        metrics=counters,
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run, stop)
        end = len(CLASSIFIED) + 1
        await waiting.until(
            lambda: counters.next_offset.get(0, 0) >= end and counters.log_end.get(0) == end,
            timeout=20,
            what=lambda: f"offset {end} committed and seen as the log's end ({counters})",
        )
        assert worker.state is not None  # leading: the pool gauges have a state to read
        stop.set()
    assert worker.state is None
    applied = collections.Counter((k, r) for _, o, k, r in CLASSIFIED if o == "applied")
    rejected = collections.Counter((k, r) for _, o, k, r in CLASSIFIED if o == "rejected")
    rejected["node.added", "wrong_key"] += 1
    assert counters.events_applied == applied
    assert counters.events_rejected == rejected
    got = samples(metrics.render(metrics.allocator_registry(counters)))
    for (kind, reason), count in applied.items():
        assert got["ipledger_events_applied_total", (("reason", reason), ("type", kind))] == count
    for (kind, reason), count in rejected.items():
        assert got["ipledger_events_rejected_total", (("reason", reason), ("type", kind))] == count
    # Every type is there from the start with no error, so rate() sees its first events.
    assert got["ipledger_events_applied_total", (("reason", "none"), ("type", "node.deleted"))] == 0
    # 24 records in batches of at most 10: the sizes are bucketed, the count is the batches'.
    batches = counters.batches_committed
    assert got["ipledger_batch_records_count", ()] == batches >= 3
    assert got["ipledger_batch_records_sum", ()] == end
    assert got["ipledger_batch_records_bucket", (("le", "10.0"),)] == batches
    assert got["ipledger_batch_records_bucket", (("le", "1.0"),)] < batches
    assert got["ipledger_commit_duration_seconds_count", ()] == batches
    assert got["ipledger_commit_duration_seconds_sum", ()] == pytest.approx(counters.commit_seconds)
    # Stopped: no longer the writer, so no lag is claimed for the partition.
    assert ("ipledger_log_lag", (("partition", "0"),)) not in got
    assert got["ipledger_log_end_offset", (("partition", "0"),)] == end


def test_histograms_count_into_fixed_buckets_as_prometheus_exposes_them() -> None:
    counters = allocator.Metrics()
    for value in (1, 7, 10, 11, 5000, 250_000):
        counters.batch_records.observe(value)
    for seconds in (0.004, 0.2, 31.0):
        counters.commit_latency.observe(seconds)
    got = samples(metrics.render(metrics.allocator_registry(counters)))
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in got.items()
        if name == "ipledger_batch_records_bucket"
    }
    assert buckets == {
        "1.0": 1,
        "10.0": 3,  # le is inclusive: 10 counts in 10
        "100.0": 4,
        "500.0": 4,
        "1000.0": 4,
        "2000.0": 4,
        "5000.0": 5,
        "10000.0": 5,
        "50000.0": 5,
        "100000.0": 5,
        "+Inf": 6,
    }
    assert got["ipledger_batch_records_sum", ()] == 255_029
    assert got["ipledger_commit_duration_seconds_bucket", (("le", "0.005"),)] == 1
    assert got["ipledger_commit_duration_seconds_bucket", (("le", "0.25"),)] == 2
    assert got["ipledger_commit_duration_seconds_bucket", (("le", "30.0"),)] == 2
    assert got["ipledger_commit_duration_seconds_bucket", (("le", "+Inf"),)] == 3
    with pytest.raises(ValueError, match="ascending"):
        allocator.settings.Histogram([2, 1])


def test_the_lag_is_the_log_end_minus_the_next_offset_where_this_process_writes() -> None:
    counters = allocator.Metrics(
        next_offset={0: 90, 1: 40, 2: 10},
        leader={0: True, 1: False, 2: True},
        # Partition 2's end was read before its last commits: never a negative lag.
        log_end={0: 100, 1: 70, 2: 8},
    )
    got = samples(metrics.render(metrics.allocator_registry(counters)))
    lags = {
        dict(labels)["partition"]: value
        for (name, labels), value in got.items()
        if name == "ipledger_log_lag"
    }
    assert lags == {"0": 10, "2": 0}


@pytest.mark.anyio
async def test_the_sync_worker_counts_its_queue_and_failed_requests_by_code() -> None:
    client = MemoryClusterClient()
    client.faults.extend(
        [
            errors.ClusterApiThrottledError("slow down", status=429, retry_after=0.01),
            errors.ClusterApiUnavailableError("timed out"),  # no answer: no status
            errors.ClusterApiUnavailableError("503", status=503),
            errors.ClusterApiRejectedError("422 Invalid", status=422),
            errors.ClusterApiError("strange", status=999),
        ]
    )
    done: list[str] = []
    mirror = sync.Mirror(
        "east",
        client,
        sync.SyncSettings(qps=0, concurrency=1, backoff_initial_s=0.001, backoff_max_s=0.01),
        on_outcome=lambda name, version, error: done.append(name),
    )
    for name in ("a", "b", "c"):
        mirror.offer(intent(name, 1, "10.0.1.0/24"))
    assert (mirror.metrics.queue_depth, mirror.metrics.in_flight) == (3, 0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(mirror.run_writers)
        await waiting.until(
            lambda: len(done) == 3 and mirror.idle(), timeout=10, what="three outcomes"
        )
        tasks.cancel_scope.cancel()
    assert mirror.metrics.request_errors == {"429": 1, "none": 1, "503": 1, "422": 1, "other": 1}
    assert (mirror.metrics.queue_depth, mirror.metrics.in_flight) == (0, 0)
    got = samples(metrics.render(metrics.sync_registry({"east": mirror.metrics})))
    assert got["ipledger_sync_request_errors_total", (("cluster", "east"), ("code", "429"))] == 1
    assert got["ipledger_sync_queue_depth", (("cluster", "east"),)] == 0
