"""A real ``ipledger run`` over the table log in real PostgreSQL, scraped on /metrics.

The process is started as an operator starts it (``python -m service.cli --log-format json
run``), with a database URL that carries a password, and fed through the table log. Its
/metrics answers the pool gauges the core's decisions imply (exact values), the events by type
and reason class, the lag and the writer flag; every metric an alert of
compose/prometheus/alerts.yaml reads is there. Its log is JSON lines only, the rejected record's
line names its cluster, partition, offset and event id, and the password appears nowhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client import parser

from service.adapters.postgres import table_log
from tests import waiting
from tests.unit.test_alert_rules import RULES, alert_metrics

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SECRET = "m3trics-Secr3t"
EVENTS = [
    # Five /30 node CIDRs in two elements: six nodes, so the sixth waits.
    b'{"type":"pool.configured","id":"pool","clusterPoolIPv4PodCIDRList":["10.0.0.0/28",'
    b'"10.0.1.0/30"],"clusterPoolIPv4MaskSize":30}',
    *(b'{"type":"node.added","id":"a%d","node":"n%d"}' % (i, i) for i in range(1, 7)),
    # A /30 holds two pod addresses: the third request is refused (range is full).
    *(
        b'{"type":"ip.requested","id":"r%d","node":"n1","owner":"ns/p%d","family":"ipv4"}' % (i, i)
        for i in range(1, 4)
    ),
    b"not json",
]
REJECTED_AT = len(EVENTS) - 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def allocator_process(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``ipledger run`` on ``pg_dsn`` (with a password in its URL): its metrics port and log."""
    port = free_port()
    url = sa.make_url(pg_dsn).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in url
    log_path = tmp_path / "allocator.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--log-format", "json", "run"],
            env={
                **os.environ,
                "IPLEDGER_DATABASE_URL": url,
                "IPLEDGER_LOG": "table",
                "IPLEDGER_METRICS_PORT": str(port),
                "IPLEDGER_LOG_FORMAT": "human",  # the flag wins
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    assert process.returncode == 0, log_path.read_text(errors="replace")[-3000:]


async def test_a_live_allocator_exports_the_pool_the_events_and_every_metric_alerts_read(
    pg_dsn: str, allocator_process: tuple[int, Path]
) -> None:
    port, log_path = allocator_process
    event_log = table_log.PostgresTableLog.from_dsn(pg_dsn)
    try:
        await event_log.append([(b"default", record) for record in EVENTS])
    finally:
        await event_log.close()
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    part = (("partition", "0"),)

    async def caught_up() -> bool:
        nonlocal got
        try:
            got = await anyio.to_thread.run_sync(scrape, port)
        except OSError:
            return False  # not serving yet
        return got.get(("ipledger_next_offset", part)) == len(EVENTS) and (
            ("ipledger_log_lag", part) in got
        )

    await waiting.until(
        caught_up,
        timeout=90,
        what=lambda: f"every record committed and scraped\n{log_path.read_text()[-3000:]}",
        interval=0.2,
    )
    first = ("cidr", "10.0.0.0/28"), ("cluster", "default"), ("family", "ipv4")
    second = ("cidr", "10.0.1.0/30"), ("cluster", "default"), ("family", "ipv4")
    default = ("cluster", "default")
    assert got["ipledger_leader", part] == 1
    assert got["ipledger_log_lag", part] == 0
    assert got["ipledger_ipam_node_cidrs", (*first, ("state", "used"))] == 4
    assert got["ipledger_ipam_node_cidrs", (*first, ("state", "free"))] == 0
    assert got["ipledger_ipam_node_cidrs", (*second, ("state", "used"))] == 1
    assert got["ipledger_ipam_node_cidrs_capacity", first] == 4
    assert got["ipledger_ipam_pod_ips", (*first, ("state", "used"))] == 2
    assert got["ipledger_ipam_pod_ips_capacity", first] == 8
    assert got["ipledger_ipam_nodes_waiting", (default, ("family", "ipv4"))] == 1
    assert got["ipledger_ipam_nodes", (("category", "total"), default)] == 6
    # Both elements are full: the family has run out.
    assert got["ipledger_ipam_family_seconds_to_exhaustion", (default, ("family", "ipv4"))] == 0
    events = {
        (name.removeprefix("ipledger_events_"), dict(labels)["type"], dict(labels)["reason"]): value
        for (name, labels), value in got.items()
        if name.startswith("ipledger_events_") and value
    }
    assert events == {
        ("applied_total", "pool.configured", "none"): 1,
        ("applied_total", "node.added", "none"): 5,
        ("applied_total", "node.added", "allocator_full"): 1,
        ("applied_total", "ip.requested", "none"): 2,
        ("applied_total", "ip.requested", "range_full"): 1,
        ("rejected_total", "unknown", "invalid_event"): 1,
    }
    assert got["ipledger_batch_records_sum", ()] == len(EVENTS)

    names = {name for name, _ in got} | {
        name.removesuffix(suffix)
        for name, _ in got
        for suffix in ("_bucket", "_sum", "_count")
        if name.endswith(suffix)
    }
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            for metric in alert_metrics(rule["expr"]):
                assert metric in names, f"{rule['alert']} reads {metric}, absent from /metrics"

    # The log: JSON lines only, the rejected record found by its fields, no password anywhere.
    text = log_path.read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    (rejected,) = [line for line in lines if line.get("offset") == REJECTED_AT]
    assert (rejected["cluster"], rejected["partition"], rejected["event_id"]) == (
        "default",
        0,
        None,
    )
    assert rejected["level"] == "WARNING" and "(invalid_event)" in rejected["message"]
    assert any("***" in line["message"] for line in lines), "the URL is logged, redacted"
