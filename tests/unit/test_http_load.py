"""The query API benchmark's load generator (``bench/http_load.py``): what it counts.

An open-loop process against a small HTTP server of this test's own on loopback, which closes a
kept-alive connection idle for ``IDLE`` seconds as uvicorn does (after 5 s): the generator does
not reuse a connection idle past its own bound, so the server closing it is no failure (the
runs of the issue-size benchmark counted 1-2 such per run); and every answered request's
latency is the sum of its two parts, the process's lateness and the answer's time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bench import http_load

pytestmark = pytest.mark.anyio
IDLE = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _serve() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("bound", "failures"), [(IDLE * 2 / 3, 0), (60.0, 2)])
async def test_a_connection_idle_past_the_bound_is_not_reused(
    monkeypatch: pytest.MonkeyPatch, bound: float, failures: int
) -> None:
    monkeypatch.setattr(http_load, "_IDLE_S", bound)
    server, port = await _serve()
    try:
        start = time.time() + 0.1
        # Two at once (both warm connections in use), then two more once both sat idle past
        # the server's bound: without the generator's own bound both fail.
        dues = [start, start, start + 3 * IDLE, start + 3 * IDLE]
        outcome = await http_load._open_loop("127.0.0.1", port, ["/"] * 4, dues, 16)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.failures == failures
    assert outcome.statuses == {200: 4 - failures}
    assert len(outcome.latencies) == len(outcome.late) == len(outcome.answered) == 4 - failures


async def test_each_latency_is_its_lateness_and_its_answer() -> None:
    server, port = await _serve()
    try:
        start = time.time() + 0.05
        dues = [start + i * 0.01 for i in range(10)]
        outcome = await http_load._open_loop("127.0.0.1", port, ["/"] * 10, dues, 4)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.statuses == {200: 10}
    assert sum(outcome.latencies) == pytest.approx(sum(outcome.late) + sum(outcome.answered))
    # Sent when due or after (asyncio's timers run on another clock than the due times: a
    # wake-up may come a hair early).
    assert min(outcome.late) > -0.01
