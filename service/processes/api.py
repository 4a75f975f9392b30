"""``ipledger api``: the read-only query API, served by uvicorn until SIGINT or SIGTERM.

Called by ``service.cli`` (``cmd_api``) and by whatever runs it in its own process tree (``make
run``): ``run(settings)`` is the whole process. In order: refuse a database role that can write
(``bootstrap.check_api_role``), open the read side as that role with a statement timeout on every
query (``bootstrap.open_api_reader``) and the log for its end offsets (readiness), build the
application (``service.api``), bind ``IPLEDGER_API_ADDRESS`` (default 127.0.0.1:8080), open
and warm the reader's connections (``warm_up``: a cold start's first answers were 4-10 times
slower), serve, and close everything on the way out. uvicorn bounds the number of connections,
its protocol here (``_Protocol``: httptools, each answer written in one ``send``) the request
line and headers (``MAX_HEADER_BYTES``); the application bounds the query string.
``service.cli`` runs this on uvloop's event loop (docs/benchmarks.md, Query API: what each of
these saves).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import anyio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import api, bootstrap, errors, ports
from service.processes import signals
from service.settings import Settings

log = logging.getLogger("ipledger.api")
# The request line and all headers together, at most, as received (``_Protocol``): a larger
# request is refused before the application sees it.
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 1000
# Called with the host and the port once the API listens.
Ready = Callable[[str, int], None]


class _Coalescing:
    """A connection's transport whose writes within one turn of the event loop go out as one.

    uvicorn writes an answer's head and its body in two ``transport.write`` calls, and on an
    idle socket each is a ``send`` of its own: two system calls and two TCP segments per
    answer, where a quarter of the API's samples fell in its profile (docs/benchmarks.md).
    Writes here are joined and handed to the transport once, at the loop's next turn (the
    head and body of an answer are written in one turn: nothing awaits between them). Every
    other call goes to the transport; closing writes what is pending first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its parser costs less CPU than h11's) over a coalescing
    transport, bounding what it buffers of a request line and headers as h11's
    incomplete-event limit did: httptools keeps however much a client sends of an unfinished
    head, so past ``MAX_HEADER_BYTES`` the request is answered 400 and the connection closed,
    as uvicorn answers a request h11 refuses, before the application sees it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_bytes = 0
        self._in_head = True
        coalescing: Any = _Coalescing(
            cast(asyncio.Transport, transport), asyncio.get_running_loop()
        )
        super().connection_made(coalescing)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self.send_400_response("Invalid HTTP request received.")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()


def bind(settings: Settings) -> tuple[str, int]:
    """``IPLEDGER_API_ADDRESS`` as (host, port); ``[::1]:8080`` spells an IPv6 host."""
    host, _, port = settings.api_address.rpartition(":")
    return host.strip("[]"), int(port)


async def run(
    settings: Settings, *, ready: Ready | None = None, stop: anyio.Event | None = None
) -> None:
    """Serve the query API until SIGINT or SIGTERM, or until ``stop`` is set.

    ``ready(host, port)`` is called once it listens (the port the system chose for port 0). A
    role that can write, or an address that cannot be bound, raises ``ConfigurationError``
    before anything is served.
    """
    await bootstrap.check_api_role(settings)
    reader = bootstrap.open_api_reader(settings)
    try:
        event_log = await bootstrap.open_log_end(settings)
        try:
            await serve(settings, reader, event_log, ready=ready, stop=stop)
        finally:
            await event_log.close()
    finally:
        await reader.close()


async def serve(
    settings: Settings,
    reader: ports.ProjectionReader,
    event_log: ports.EventLog,
    *,
    ready: Ready | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Serve ``reader`` on the configured address until a signal or ``stop``."""

    async def log_ends() -> dict[int, int]:
        return {p: await event_log.end_offset(p) for p in await event_log.partitions()}

    app = api.build_app(
        reader,
        api.ApiConfig(
            forecast_window=datetime.timedelta(seconds=settings.api_forecast_window_s),
            max_lag=settings.api_max_lag,
        ),
        log_ends,
    )
    host, port = bind(settings)
    listening = _listen(host, port)
    try:
        await reader.warm_up()
    except errors.ProjectionError as exc:
        # Served all the same: each request answers 503 until the database is back.
        log.warning("the reader's connections could not be opened in advance: %s", exc)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=_Protocol,
            limit_concurrency=MAX_CONNECTIONS,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
        )
    )
    stop = stop or anyio.Event()
    bound = listening.getsockname()[1]
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(signals.stop_on_signal, stop)
            tasks.start_soon(_until, stop, server)
            log.info("query API on http://%s:%d/ (docs: /docs)", host, bound)
            if ready is not None:
                ready(host, bound)
            # Not server.serve(): it installs uvicorn's own signal handlers over the process's
            # (signals.stop_on_signal) and raises the signals again when it ends.
            await server._serve(sockets=[listening])
            tasks.cancel_scope.cancel()
    finally:
        listening.close()


async def _until(stop: anyio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listening = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise errors.ConfigurationError(
            f"cannot serve the API on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    # asyncio turns Nagle off only on sockets whose protocol number says TCP, and
    # create_server's says 0: without this, each answer after the first on a kept-alive
    # connection waited ~40 ms for the client's delayed ACK. Accepted sockets inherit it.
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listening.setblocking(False)
    return listening
