"""The query API's connections: Nagle's algorithm off on every one it accepts, and an answer's
head and body written to the socket together.

asyncio sets TCP_NODELAY only on sockets whose protocol number says TCP, which
``socket.create_server``'s does not; without the option an answer on a kept-alive connection
waits for the client's delayed ACK (~40 ms on Linux), measured by bench/api.py.
"""

from __future__ import annotations

import asyncio
import socket

from service.processes import api


def test_accepted_connections_have_nagle_off() -> None:
    listening = api._listen("127.0.0.1", 0)
    try:
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        listening.setblocking(True)
        port = listening.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = listening.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()


class _Recording:
    """A transport that keeps what it is given (the real one is a socket's)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_an_answer_written_in_one_turn_goes_out_in_one_write() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], str]:
        transport = _Recording()
        coalescing = api._Coalescing(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.write(b"")
        coalescing.write(b"{}")
        before_turn = list(transport.written)
        await asyncio.sleep(0)
        return before_turn, transport.written, coalescing.get_extra_info("socket")

    before_turn, written, info = asyncio.run(scenario())
    assert before_turn == []
    assert written == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert info == "info socket"


def test_closing_writes_what_is_pending_first() -> None:
    async def scenario() -> _Recording:
        transport = _Recording()
        coalescing = api._Coalescing(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        coalescing.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        coalescing.close()
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.written == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and transport.closed
