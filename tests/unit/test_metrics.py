"""The metrics endpoint: each process's counters exported through its own prometheus registry.

The allocator's metric names, types, help texts and labels are the published ones (dashboards
and alerts read them); the sync worker's are labelled by cluster. ``serving`` answers
``/metrics`` and ``/healthz`` on 127.0.0.1 and nothing else, refuses a port in use before the
process starts work, and leaves nothing listening once it is done.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.error
import urllib.request

import anyio
import prometheus_client
import pytest
from prometheus_client import parser

from service import allocator, errors, metrics, sync

# The allocator's published metrics: (name as exposed, type, labels of its samples).
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
    )
    text = metrics.render(metrics.allocator_registry(counters))
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert list(types.items()) == [(name, kind) for name, kind, _ in PUBLISHED]
    for name, _, labels in PUBLISHED:
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
    west = sync.SyncMetrics(lock_waits=4)
    got = samples(metrics.render(metrics.sync_registry({"west": west, "east": east})))
    assert got["ipledger_sync_leader", (("cluster", "east"),)] == 1
    assert got["ipledger_sync_leader", (("cluster", "west"),)] == 0
    assert got["ipledger_sync_waiting", (("cluster", "east"),)] == 2
    assert got["ipledger_sync_nodes_mirrored_total", (("cluster", "east"),)] == 5
    assert got["ipledger_sync_lock_waits_total", (("cluster", "west"),)] == 4
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
