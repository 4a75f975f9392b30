"""The query API's listening socket: Nagle's algorithm off on every connection it accepts.

asyncio sets TCP_NODELAY only on sockets whose protocol number says TCP, which
``socket.create_server``'s does not; without the option an answer on a kept-alive connection
waits for the client's delayed ACK (~40 ms on Linux), measured by bench/api.py.
"""

from __future__ import annotations

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
