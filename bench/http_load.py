"""An HTTP/1.1 load generator in processes of its own, for the query API benchmark (bench/api.py).

The benchmark must offer load from a process other than the server's, and a generator that
shares a process (and an event loop) with the code that measures would also time its own
scheduling: the last session's in-process httpx generator measured 120-220 requests/s where
plain clients in other processes saw 300-480. So the load comes from ``processes`` child
processes, each a bare asyncio client (one GET per request on kept-alive connections, the
response read by its Content-Length: no HTTP library between the clock and the socket).

Two shapes of load:

- :func:`open_loop`: requests due at a fixed rate (request ``i`` at ``start + i / rate``),
  dealt round-robin to the processes; each process sends every request when it is due on an
  idle connection (opening another if none is idle, up to ``connections``), so a slow answer
  does not delay the requests behind it; a latency counts from when the request was *due*
  (coordinated omission would otherwise hide a stall behind the requests it held back). Each
  latency is also split in two: from the due time to the request's write (the client's own
  lateness: its process not scheduled in time, or waiting for a connection) and from the write
  to the end of the answer (the server's part, loopback included), so that a long tail can be
  told apart as the client's or the server's. Each process opens ``_WARM_CONNECTIONS`` before
  the first request is due: a kept-alive client does not pay a TCP connect in its tail.
- :func:`closed_loop`: ``connections`` requests always in flight (spread over the processes),
  for the saturation throughput.

Every process returns its latencies and counts through a pipe; the caller gets them merged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Outcome:
    """What the processes saw: latencies (seconds, sorted), answers by status, failures.

    Open loop only: ``late`` (due to write) and ``answered`` (write to answer) of each answered
    request, each list sorted on its own (their sums are the latencies, not their sorted
    pairs)."""

    latencies: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def not_ok(self) -> int:
        """Requests that failed or were not answered 200."""
        return self.failures + sum(n for status, n in self.statuses.items() if status != 200)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _connect(host: str, port: int) -> _Connection:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _Connection(reader, writer)


def _request(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()


# Connections each open-loop process has open before the first request is due.
_WARM_CONNECTIONS = 2
# An idle connection is not used again after this long: uvicorn closes a kept-alive connection
# idle for 5 s, and one taken as it closes fails a request the server never saw (the last
# session's runs counted 1-2 such failures per run).
_IDLE_S = 4.0


async def _open_loop(
    host: str, port: int, paths: list[str], dues: list[float], connections: int
) -> Outcome:
    outcome = Outcome()
    idle: list[_Connection] = [
        await _connect(host, port) for _ in range(min(_WARM_CONNECTIONS, connections))
    ]
    opened = len(idle)
    available = asyncio.Condition()
    requests = [_request(host, port, path) for path in paths]

    async def take() -> _Connection:
        nonlocal opened
        async with available:
            while True:
                # The stack's bottom is the least recently used: it goes stale first.
                while idle and time.monotonic() - idle[0].idle_since > _IDLE_S:
                    idle.pop(0).close()
                    opened -= 1
                if idle or opened < connections:
                    break
                await available.wait()
            if idle:
                return idle.pop()
            opened += 1
        return await _connect(host, port)

    async def give(connection: _Connection | None) -> None:
        nonlocal opened
        async with available:
            if connection is None:
                opened -= 1
            else:
                connection.idle_since = time.monotonic()
                idle.append(connection)
            available.notify()

    async def one(i: int) -> None:
        due = dues[i]
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        connection: _Connection | None = None
        try:
            connection = await take()
            sent = time.time()
            status = await connection.get(requests[i])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            outcome.failures += 1
            if connection is not None:
                connection.close()
            await give(None)
            return
        answered = time.time()
        outcome.latencies.append(answered - due)
        outcome.late.append(sent - due)
        outcome.answered.append(answered - sent)
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        await give(connection)

    began = time.time()
    await asyncio.gather(*(one(i) for i in range(len(paths))))
    outcome.seconds = time.time() - began
    for connection in idle:
        connection.close()
    return outcome


async def _closed_loop(
    host: str, port: int, paths: list[str], start: float, until: float, connections: int
) -> Outcome:
    outcome = Outcome()
    requests = [_request(host, port, path) for path in paths]

    async def worker(k: int) -> None:
        i = k
        connection = await _connect(host, port)
        await asyncio.sleep(max(start - time.time(), 0))
        try:
            while time.time() < until:
                sent = time.time()
                try:
                    status = await connection.get(requests[i % len(requests)])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    outcome.failures += 1
                    connection.close()
                    connection = await _connect(host, port)
                    continue
                outcome.latencies.append(time.time() - sent)
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                i += connections
        finally:
            connection.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    outcome.seconds = time.time() - start
    return outcome


def _child(
    pipe: multiprocessing.connection.Connection,
    shape: str,
    host: str,
    port: int,
    paths: list[str],
    timing: list[float],
    connections: int,
) -> None:
    # Ready (imported, running): the parent sends the moment everyone starts at.
    pipe.send("ready")
    start = float(pipe.recv())
    if shape == "open":
        dues = [start + due for due in timing]
        outcome = asyncio.run(_open_loop(host, port, paths, dues, connections))
    else:
        (seconds,) = timing
        outcome = asyncio.run(_closed_loop(host, port, paths, start, start + seconds, connections))
    pipe.send(
        (
            outcome.latencies,
            outcome.late,
            outcome.answered,
            outcome.statuses,
            outcome.failures,
            outcome.seconds,
        )
    )
    pipe.close()


_START_TIMEOUT_S = 120.0
_RUN_TIMEOUT_S = 600.0


def _receive(pipe: multiprocessing.connection.Connection, timeout: float) -> Any:
    """The next message of a load process; an error (not a hang) if it died or stalled."""
    if not pipe.poll(timeout):
        raise RuntimeError(f"a load process sent nothing within {timeout:.0f} s")
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError("a load process ended without its results") from None


# Between the last process's "ready" and the start: time for every process to read the start
# and open its first connections, so that no request is already late when it is due.
_LEAD_S = 0.5


def _run(jobs: list[tuple[str, list[str], list[float], int]], host: str, port: int) -> Outcome:
    context = multiprocessing.get_context("spawn")
    children = []
    for shape, paths, timing, connections in jobs:
        mine, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_child, args=(theirs, shape, host, port, paths, timing, connections)
        )
        process.start()
        theirs.close()
        children.append((process, mine))
    # A spawned process takes a second or more to import on a loaded machine: start the
    # schedule once every one is ready, not at a guessed time.
    try:
        for _, pipe in children:
            if _receive(pipe, _START_TIMEOUT_S) != "ready":
                raise RuntimeError("a load process did not start")
        start = time.time() + _LEAD_S
        for _, pipe in children:
            pipe.send(start)
        finished = [_receive(pipe, _RUN_TIMEOUT_S) for _, pipe in children]
    finally:
        for process, _ in children:
            if process.is_alive() and process.exitcode is None:
                process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join()
    merged = Outcome()
    for latencies, late, answered, statuses, failures, seconds in finished:
        merged.latencies += latencies
        merged.late += late
        merged.answered += answered
        for status, n in statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
        merged.failures += failures
        merged.seconds = max(merged.seconds, seconds)
    merged.latencies.sort()
    merged.late.sort()
    merged.answered.sort()
    return merged


def open_loop(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    *,
    processes: int = 2,
    connections: int = 16,
) -> Outcome:
    """Offer ``paths`` at ``rate`` requests/s from ``processes`` processes (``connections`` at
    most each); latencies count from each request's due time."""
    dues = [i / rate for i in range(len(paths))]
    jobs: list[tuple[str, list[str], list[float], int]] = [
        ("open", paths[k::processes], dues[k::processes], connections) for k in range(processes)
    ]
    return _run(jobs, host, port)


def closed_loop(
    host: str,
    port: int,
    paths: list[str],
    seconds: float,
    *,
    processes: int = 2,
    connections: int = 16,
) -> Outcome:
    """``connections`` requests always in flight (spread over ``processes``) for ``seconds``,
    every process starting together; ``Outcome.seconds`` is the longest process's time from
    that start (the last answers may come in after ``seconds``)."""
    per = max(connections // processes, 1)
    jobs: list[tuple[str, list[str], list[float], int]] = [
        ("closed", paths[k::processes], [seconds], per) for k in range(processes)
    ]
    return _run(jobs, host, port)
