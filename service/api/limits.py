"""The query API's bounds on a request, checked before it is routed: headers, path, query string.

Used by ``service.api.app`` (its middleware refuses such a request with a problem+json) and by
``service.api.fast_path`` (which leaves such a request to that middleware). uvicorn's protocol
also bounds what it buffers of an unfinished request line and headers
(``service.processes.api``). No I/O.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

MAX_QUERY_BYTES = 2048
MAX_PATH_BYTES = 2048
MAX_HEADER_BYTES = 8192  # names and values of all headers together


def refusal(scope: Any) -> tuple[int, str] | None:
    """Why the request of the ASGI ``scope`` is refused before it is routed (status and
    detail), if it is: headers, path or query string too long, or a parameter given twice
    (every parameter of this API is single)."""
    headers = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
    if headers > MAX_HEADER_BYTES:
        return 431, f"the headers exceed {MAX_HEADER_BYTES} bytes"
    if len(scope.get("raw_path") or b"") > MAX_PATH_BYTES:
        return 414, f"the path exceeds {MAX_PATH_BYTES} bytes"
    query = scope.get("query_string", b"")
    if len(query) > MAX_QUERY_BYTES:
        return 414, f"the query string exceeds {MAX_QUERY_BYTES} bytes"
    repeated = _repeated(query) if b"&" in query else None
    if repeated is not None:
        return 400, f"query parameter {repeated!r} is given more than once"
    return None


def _repeated(query: bytes) -> str | None:
    seen: set[str] = set()
    for name, _ in urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return name
        seen.add(name)
    return None
