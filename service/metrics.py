"""Prometheus text exposition of the allocator's counters, on a small read-only HTTP endpoint.

Started by ``ipledger run --metrics-port N`` (``service.cli``); serves ``GET /metrics`` and
``GET /healthz`` and nothing else. Requests are size-limited and answered from in-memory
counters: scraping never touches the database or the log.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import anyio.abc

from service import allocator

log = logging.getLogger("ipledger.metrics")
MAX_REQUEST_BYTES = 8192


def render(metrics: allocator.Metrics) -> str:
    """The counters in the Prometheus text format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric(
        "ipledger_records_applied_total",
        "counter",
        "Log records committed with a decision.",
        [("", metrics.records_applied)],
    )
    metric(
        "ipledger_records_rejected_total",
        "counter",
        "Records rejected: not valid events, or not storable (kept raw in the rejections table).",
        [("", metrics.records_rejected)],
    )
    metric(
        "ipledger_records_unstorable_total",
        "counter",
        "Rejected records that PostgreSQL refused to store (reason in the rejections table).",
        [("", metrics.records_unstorable)],
    )
    metric(
        "ipledger_records_wrong_partition_total",
        "counter",
        "Rejected records that were on another partition than their cluster's home partition "
        "(the producer did not use Kafka's default partitioner).",
        [("", metrics.records_wrong_partition)],
    )
    metric(
        "ipledger_decisions_with_error_total",
        "counter",
        "Valid events whose decision carries an error (e.g. allocator full).",
        [("", metrics.decisions_with_error)],
    )
    metric(
        "ipledger_batches_committed_total",
        "counter",
        "Batches committed to PostgreSQL.",
        [("", metrics.batches_committed)],
    )
    metric(
        "ipledger_commit_seconds_total",
        "counter",
        "Time spent committing batches.",
        [("", metrics.commit_seconds)],
    )
    metric(
        "ipledger_takeovers_total",
        "counter",
        "Times this process became a writer.",
        [("", metrics.takeovers)],
    )
    metric(
        "ipledger_fenced_total",
        "counter",
        "Times this process lost the writer lease.",
        [("", metrics.fenced)],
    )
    metric(
        "ipledger_failures_total",
        "counter",
        "Log or database failures that made the allocator reload and retry.",
        [("", metrics.failures)],
    )
    metric(
        "ipledger_decisions_published_total",
        "counter",
        "Decisions published to the decisions topic.",
        [("", metrics.decisions_published)],
    )
    metric(
        "ipledger_next_offset",
        "gauge",
        "Next log offset to apply, per partition.",
        [(f'{{partition="{p}"}}', o) for p, o in sorted(metrics.next_offset.items())],
    )
    metric(
        "ipledger_leader",
        "gauge",
        "1 while this process is the partition's writer.",
        [(f'{{partition="{p}"}}', float(v)) for p, v in sorted(metrics.leader.items())],
    )
    return "\n".join(lines) + "\n"


async def serve(metrics: allocator.Metrics, port: int, host: str = "127.0.0.1") -> None:
    """Serve until cancelled."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    async with listener:
        await listener.serve(lambda stream: _answer(stream, metrics))


async def _answer(stream: anyio.abc.SocketStream, metrics: allocator.Metrics) -> None:
    async with stream:
        request = b""
        with anyio.move_on_after(5):
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                chunk = await stream.receive(4096)
                if not chunk:
                    break
                request += chunk
        first = request.split(b"\r\n", 1)[0].split()
        path = first[1] if len(first) >= 2 else b""
        if len(first) < 2 or first[0] != b"GET":
            status, body = "405 Method Not Allowed", "only GET\n"
        elif path == b"/metrics":
            status, body = "200 OK", render(metrics)
        elif path == b"/healthz":
            status, body = "200 OK", "ok\n"
        else:
            status, body = "404 Not Found", "not found\n"
        payload = body.encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(head + payload)
