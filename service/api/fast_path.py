"""The hot lookups answered below Litestar: an address, a node, an owner, ``as_of`` or not.

Wrapped around the Litestar application by ``service.api.app.build_app`` (what ``ipledger api``
serves). Litestar's request path (routing, the signature model, the ``Request``, the response
object) costs a lookup more than the lookup's own code; these four are what operators and
other services ask most, so they skip it (docs/benchmarks.md, Query API: what it saves).

A request is answered here only when it is, exactly, ``GET /v1/clusters/{cluster}/ips/{ip}``,
``.../nodes/{node}`` or ``.../owners/{owner}`` in its plain form (no empty segment, no trailing
slash, no root path), with no query string or ``as_of=<digits, letters, ':', '.', '-'>`` alone,
path parameters that pass the checks Litestar makes of them (``routes.CLUSTER_PATTERN`` and
the rest), one ``If-None-Match`` at most, and none of ``limits.refusal``'s reasons; anything
else goes to Litestar untouched. What it answers is byte for byte what Litestar answers (status,
headers in order, body; tests/integration/test_api_fast_path.py sends the same requests to
both): the same route code (``routes.ip_lookup``, ``node_lookup``, ``owner_lookup``), the
same problem bodies and logging (``problems.answer_for``), and the same child of the latency
histogram.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from service import ports
from service.api import limits, problems, routes

_PREFIX = "/v1/clusters/"
# Litestar's names of the routes, the latency histogram's ``route`` label.
_TEMPLATES = {
    "ips": "/v1/clusters/{cluster}/ips/{ip}",
    "nodes": "/v1/clusters/{cluster}/nodes/{node}",
    "owners": "/v1/clusters/{cluster}/owners/{owner}",
}
# A plain ``as_of`` value: one that reads the same percent-decoded or not.
_AS_OF = re.compile(rb"as_of=([0-9A-Za-z:.\-]{1,40})")
_CLUSTER = re.compile(routes.CLUSTER_PATTERN)
_NODE = re.compile(routes.NODE_PATTERN)
_OWNER = re.compile(routes.OWNER_PATTERN)
_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", problems.PROBLEM_JSON.encode())
_encode = msgspec.json.Encoder().encode


class FastPath:
    """The ASGI application in front of ``app`` (Litestar): the hot lookups, else ``app``."""

    def __init__(
        self,
        app: Any,
        reader: ports.ProjectionReader,
        partitions: dict[str, int],
        observe: Any,
    ) -> None:
        self.app = app
        self._reader = reader
        self._partitions = partitions
        self._observe = observe

    def __getattr__(self, name: str) -> Any:
        # The Litestar application's own attributes (its state, its OpenAPI document).
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            asked = _lookup(scope)
            if asked is not None:
                await self._answer(scope, send, *asked)
                return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        scope: Any,
        send: Any,
        kind: str,
        cluster: str,
        value: str,
        as_of: str | None,
        if_none_match: str | None,
    ) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        asked = routes.Asked(path, scope["query_string"].decode(), if_none_match)
        status = 500
        try:
            try:
                if kind == "ips":
                    lookup: routes.Lookup[Any] = await routes.ip_lookup(
                        self._reader, self._partitions, asked, cluster, value, as_of
                    )
                elif kind == "nodes":
                    lookup = await routes.node_lookup(
                        self._reader, self._partitions, asked, cluster, value, as_of
                    )
                else:
                    lookup = await routes.owner_lookup(
                        self._reader, self._partitions, asked, cluster, "/" + value, as_of
                    )
            except Exception as exc:  # answered as Litestar's handlers answer it
                status, extra, body = problems.answer_for("GET", path, exc)
                head = [(name.lower().encode(), text.encode()) for name, text in extra.items()]
                head += [_PROBLEM, (b"content-length", str(len(body)).encode())]
            else:
                answer, content = lookup
                head = [
                    (name.lower().encode(), text.encode())
                    for name, text in answer.headers().items()
                ]
                if content is None:
                    status, body = 304, b""
                else:
                    status, body = 200, _encode(content)
                    head += [_JSON, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            self._observe(_TEMPLATES[kind], "GET", status, time.perf_counter() - started)


def _lookup(scope: Any) -> tuple[str, str, str, str | None, str | None] | None:
    """(route, cluster, its parameter, ``as_of``, ``If-None-Match``) when this path answers
    the request, else None."""
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    cluster, _, rest = path[len(_PREFIX) :].partition("/")
    kind, _, value = rest.partition("/")
    if not value or not 1 <= len(cluster) <= routes.CLUSTER_MAX or not _CLUSTER.search(cluster):
        return None
    if kind == "ips":
        if "/" in value:
            return None
    elif kind == "nodes":
        if "/" in value or len(value) > routes.NODE_MAX or not _NODE.search(value):
            return None
    elif kind == "owners":
        # Litestar's ``path`` parameter is "/" and the rest, and it normalises repeated and
        # trailing slashes: those are left to it.
        owner = "/" + value
        if (
            value.endswith("/")
            or "//" in owner
            or len(owner) > routes.OWNER_MAX
            or not _OWNER.search(owner)
        ):
            return None
    else:
        return None
    query: bytes = scope["query_string"]
    if query:
        plain = _AS_OF.fullmatch(query)
        if plain is None:
            return None
        as_of: str | None = plain.group(1).decode()
    else:
        as_of = None
    if limits.refusal(scope) is not None:
        return None
    tags = [text for name, text in scope["headers"] if name == b"if-none-match"]
    if len(tags) > 1:
        return None
    return kind, cluster, value, as_of, tags[0].decode("latin-1") if tags else None
