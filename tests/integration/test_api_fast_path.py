"""The query API's fast path (``service.api.fast_path``) answers byte for byte as Litestar does.

Two applications over one read-only reader of the real PostgreSQL (the log of
``tests/integration/test_api.py`` committed by ``PostgresProjection``): ``build_app`` as
``ipledger api`` serves it (the hot lookups below Litestar) and ``build_app(fast_path=False)``
(Litestar answers everything). The same requests go to both, and each answer must be the same
status, the same headers in the same order, and the same body: addresses held now, ended, never
held and not addresses; nodes live, deleted, unknown and misnamed; owners URL-encoded or not;
``as_of`` offsets and times, valid and not; ``If-None-Match`` naming the tag or not (304);
unknown and misnamed clusters; and the database down (503). The requests the fast path must
leave to Litestar (another parameter, a trailing slash, a repeated parameter, ...) are checked
to reach it, the plain ones not to; and the latency histogram counts the same in both. Last,
the API's reader opens all its connections at ``warm_up`` (what ``ipledger api`` does before
it listens).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import asyncpg
import httpx
import pytest

from service import api, bootstrap
from service.adapters.postgres import reader as pg_reader
from service.api import fast_path
from service.settings import Settings
from tests.integration.test_api import _commit, _log

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


@dataclasses.dataclass
class Pair:
    fast: httpx.AsyncClient
    litestar: httpx.AsyncClient
    # The paths (and query strings) of the requests the fast application handed to Litestar.
    handed: list[str]


@dataclasses.dataclass
class Known:
    """What the committed log holds, read from the tables."""

    held: list[tuple[str, str, str]]  # (cluster, address, owner) held now
    ended: list[tuple[str, str, str]]  # ended holdings
    nodes: list[tuple[str, str]]  # (cluster, name), live and deleted
    last: int


def _clients(reader: Any) -> Pair:
    async def log_ends() -> Mapping[int, int]:
        return {0: 10_000}

    config = api.ApiConfig(forecast_window=datetime.timedelta(hours=6), max_lag=5)
    fast = api.build_app(reader, config, log_ends)
    assert isinstance(fast, fast_path.FastPath)
    handed: list[str] = []
    litestar = fast.app

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = scope["query_string"].decode()
            handed.append(scope["path"] + (f"?{query}" if query else ""))
        await litestar(scope, receive, send)

    fast.app = counted
    reference = api.build_app(reader, config, log_ends, fast_path=False)
    return Pair(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://api"),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=reference), base_url="http://api"),
        handed,
    )


@pytest.fixture
async def known(pg_dsn: str) -> Known:
    batch_ends = await _commit(pg_dsn, _log())
    db = await asyncpg.connect(pg_dsn)
    try:
        held = await db.fetch("SELECT cluster, host(address), owner FROM pod_ip ORDER BY 1, 2")
        ended = await db.fetch(
            "SELECT cluster, host(address), owner FROM ip_history ORDER BY 1, 2, from_offset"
        )
        nodes = await db.fetch("SELECT DISTINCT cluster, name FROM node_history ORDER BY 1, 2")
    finally:
        await db.close()
    return Known(
        [tuple(row) for row in held],
        [tuple(row) for row in ended],
        [tuple(row) for row in nodes],
        batch_ends[-1],
    )


@pytest.fixture
async def pair(pg_dsn: str, known: Known) -> AsyncIterator[Pair]:
    settings = dataclasses.replace(Settings(), database_url=pg_dsn)
    await bootstrap.ensure_api_role(settings)
    reader = bootstrap.open_api_reader(settings)
    clients = _clients(reader)
    try:
        yield clients
    finally:
        await clients.fast.aclose()
        await clients.litestar.aclose()
        await reader.close()


async def _same(pair: Pair, target: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """Both answers to ``target`` (a path and query string, sent as written), compared."""
    fast = await pair.fast.get(target, headers=headers)
    reference = await pair.litestar.get(target, headers=headers)
    assert (fast.status_code, fast.headers.raw, fast.content) == (
        reference.status_code,
        reference.headers.raw,
        reference.content,
    ), target
    return fast


def _quoted(owner: str) -> str:
    return urllib.parse.quote(owner, safe="")


def _lookups(known: Known) -> list[str]:
    """Requests the fast path answers itself."""
    out: list[str] = []
    for cluster, address, owner in known.held[:12] + known.ended[:8]:
        out += [
            f"/v1/clusters/{cluster}/ips/{address}",
            f"/v1/clusters/{cluster}/owners/{_quoted(owner)}",
            f"/v1/clusters/{cluster}/owners/{owner}",
        ]
    for cluster, name in known.nodes[:15]:
        out.append(f"/v1/clusters/{cluster}/nodes/{name}")
    ip = known.held[0][1]
    owner = _quoted(known.held[0][2])
    for as_of in ("0", "3", "5", "150", str(known.last), str(known.last + 500), "9" * 19):
        out += [
            f"/v1/clusters/default/ips/10.4.0.3?as_of={as_of}",
            f"/v1/clusters/east/ips/{ip}?as_of={as_of}",
            f"/v1/clusters/east/owners/{owner}?as_of={as_of}",
            f"/v1/clusters/default/nodes/w1?as_of={as_of}",
        ]
    for moment in (
        "2026-11-17T08:00:00Z",
        "2026-11-17T10:30:00Z",
        "2026-11-17T12:00:00Z",
        "2026-11-17T13:15:00.250Z",
        "2026-11-17T23:00:00Z",
        "2026-11-17T11:00:00-01:00",
        "2026-13-01T00:00:00Z",
        "yesterday",
        "9" * 20,
    ):
        out += [
            f"/v1/clusters/default/ips/10.4.0.3?as_of={moment}",
            f"/v1/clusters/default/owners/shop%2Fcart-1?as_of={moment}",
            f"/v1/clusters/default/nodes/w1?as_of={moment}",
        ]
    out += [
        # Not held, not addresses, unknown and misnamed nodes, owners and clusters.
        "/v1/clusters/default/ips/10.4.9.9",
        "/v1/clusters/default/ips/zz",
        "/v1/clusters/default/ips/10.4.0.256",
        "/v1/clusters/default/ips/::ffff:10.4.0.3",
        "/v1/clusters/default/ips/history",
        "/v1/clusters/east/nodes/nope",
        "/v1/clusters/east/owners/nobody%2Fhere",
        "/v1/clusters/east/owners/" + _quoted("ns/pöd-ß"),
        "/v1/clusters/east/owners/ns/pöd-ß",
        "/v1/clusters/default/ips/fd00::1",
        "/v1/clusters/default/ips/fd00::1?as_of=4",
        "/v1/clusters/default/nodes/w%31",
        "/v1/clusters/east/owners/" + "o" * 511,
        "/v1/clusters/west/ips/10.4.0.3",
        "/v1/clusters/west/owners/shop%2Fcart-2",
    ]
    return out


# Requests the fast path leaves to Litestar: they must still be answered the same.
HANDED = [
    "/v1/clusters/default/ips/10.4.0.3/",
    "/v1/clusters/default/ips/10.4.0.3?x=1",
    "/v1/clusters/default/ips/10.4.0.3?as_of=3&as_of=4",
    "/v1/clusters/default/ips/10.4.0.3?as_of=",
    "/v1/clusters/default/ips/10.4.0.3?as_of=2026-11-17T10:30:00%2B00:00",
    "/v1/clusters/default/ips/10.4.0.3?as_of=2026-11-17T10:30:00+00:00",
    "/v1/clusters/default/ips/10.4.0.3?as_of=" + "1" * 41,
    "/v1/clusters/default/owners/shop/cart-2/",
    "/v1/clusters/default/owners/shop%2Fcart-2?history=true",
    "/v1/clusters/default/owners/shop%2Fcart-2?limit=1",
    "/v1/clusters/default/owners//shop/cart-2",
    "/v1/clusters/default/nodes/w1?as_of=3&x=1",
    "/v1/clusters/Default/nodes/w1",
    "/v1/clusters/default/nodes/W1",
    "/v1/clusters/default/ips/10.4.0.3/history",
    "/v1/clusters/default/ips",
    # What Litestar's checks of the path parameters refuse.
    "/v1/clusters/east/nodes/Bad_Name",
    "/v1/clusters/east/nodes/" + "a" * 254,
    "/v1/clusters/east/owners/" + "o" * 512,
    "/v1/clusters/West/ips/10.4.0.3",
    "/v1/clusters/" + "c" * 64 + "/nodes/w1",
]


async def test_every_lookup_is_answered_as_litestar_answers_it(pair: Pair, known: Known) -> None:
    for target in _lookups(known):
        await _same(pair, target)
    assert pair.handed == []
    for target in HANDED:
        await _same(pair, target)
    assert pair.handed == [_scoped(target) for target in HANDED]


def _scoped(target: str) -> str:
    """``target`` as the ASGI scope has it: the path percent-decoded, the query string not."""
    path, mark, query = target.partition("?")
    return urllib.parse.unquote(path) + mark + query


async def test_if_none_match_and_304(pair: Pair, known: Known) -> None:
    cluster, address, owner = known.held[0]
    for target in (
        f"/v1/clusters/{cluster}/ips/{address}",
        f"/v1/clusters/{cluster}/ips/{address}?as_of={known.last}",
        f"/v1/clusters/{cluster}/owners/{_quoted(owner)}",
        "/v1/clusters/default/nodes/w1",
    ):
        tag = (await _same(pair, target)).headers["etag"]
        for offered in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            assert (await _same(pair, target, {"If-None-Match": offered})).status_code == 304
        assert (await _same(pair, target, {"If-None-Match": '"other"'})).status_code == 200
    # Two If-None-Match headers: left to Litestar.
    handed = len(pair.handed)
    repeated = await pair.fast.get(
        "/v1/clusters/default/nodes/w1",
        headers=[("If-None-Match", '"a"'), ("If-None-Match", '"b"')],
    )
    assert repeated.status_code == 200
    assert len(pair.handed) == handed + 1
    assert pair.handed[-1] == "/v1/clusters/default/nodes/w1"


async def test_refused_requests_are_refused_alike(pair: Pair) -> None:
    await _same(pair, "/v1/clusters/default/ips/10.4.0.3", {"X-Padding": "p" * 9000})
    await _same(pair, "/v1/clusters/default/ips/10.4.0.3?as_of=" + "1" * 3000)


def _counts(metrics: str) -> list[str]:
    return sorted(
        line.rsplit(" ", 1)[0] + " " + line.rsplit(" ", 1)[1]
        for line in metrics.splitlines()
        if line.startswith("ipledger_api_request_seconds_count")
    )


async def test_the_latency_histogram_counts_the_same(pair: Pair, known: Known) -> None:
    for target in [*_lookups(known)[:40], *HANDED]:
        await _same(pair, target)
    fast = (await pair.fast.get("/metrics")).text
    reference = (await pair.litestar.get("/metrics")).text
    assert _counts(fast) == _counts(reference)
    assert any('route="/v1/clusters/{cluster}/ips/{ip}"' in line for line in _counts(fast))


async def test_the_database_down_is_answered_alike(pg_dsn: str) -> None:
    # A reader whose server is not there: every lookup is a 503 with Retry-After, logged.
    with _refusing_port() as port:
        url = pg_dsn.rsplit("@", 1)[0] + f"@127.0.0.1:{port}/nothing"
        reader = pg_reader.PostgresProjectionReader.from_dsn(url, statement_timeout_ms=1000)
        clients = _clients(reader)
        try:
            for target in (
                "/v1/clusters/default/ips/10.4.0.3",
                "/v1/clusters/default/nodes/w1?as_of=3",
                "/v1/clusters/default/owners/shop%2Fcart-2",
            ):
                response = await _same(clients, target)
                assert response.status_code == 503
                assert response.headers["retry-after"] == "5"
            assert clients.handed == []
        finally:
            await clients.fast.aclose()
            await clients.litestar.aclose()
            await reader.close()


@contextlib.contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound and not listening, for as long as the block runs: a connection
    to it is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


async def test_warm_up_opens_every_connection_of_the_api_reader(pg_dsn: str, known: Known) -> None:
    settings = dataclasses.replace(Settings(), database_url=pg_dsn)
    role = await bootstrap.ensure_api_role(settings)
    reader = bootstrap.open_api_reader(settings)
    db = await asyncpg.connect(pg_dsn)

    async def opened() -> int:
        count: int = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = "
            "current_database()",
            role,
        )
        return count

    try:
        assert await opened() == 0
        await reader.warm_up()
        # open_api_reader's pool of 8, every one open (and kept: the API's reader keeps them).
        assert await opened() == 8
        # And each has the hot statements prepared: the lookups run on them as before.
        cluster, address, _ = known.held[0]
        pair = _clients(reader)
        try:
            assert (await pair.fast.get(f"/v1/clusters/{cluster}/ips/{address}")).status_code == 200
        finally:
            await pair.fast.aclose()
            await pair.litestar.aclose()
    finally:
        await db.close()
        await reader.close()
