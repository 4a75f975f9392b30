"""The query API (``ipledger api``) against the real PostgreSQL, read through its read-only role.

What the API reads is written the way production writes it: the allocator's batches
(``allocator.apply_records``) committed by ``PostgresProjection``; the API is the application of
``service.api`` over ``bootstrap.open_api_reader`` (the role ``ipledger init`` creates, a
statement timeout on every query), called in-process through Litestar's ASGI test client.
Expected answers come from the pure core: ``simulate`` over the log (or over its prefix up to an
``as_of`` offset), and a scripted story of one address whose holdings are known.

Covered: every route with its fields, filters and pagination (cursors pin the basis), ETags and
304, ``as_of`` by offset (agreeing with ``simulate`` over the prefix, at several offsets inside
and at the ends of batches) and by time, problem+json errors (400 naming the parameter, 404,
503 with Retry-After when the server is stopped, never a stack trace), /healthz, /readyz (the
lag), /metrics, /openapi.json and the docs served without a CDN, and the read-only role: its
INSERT fails, and the API refuses to start with a role that can write.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg
import httpx
import pytest

from service import allocator, api, bootstrap, errors, ports
from service.adapters.postgres import embedded
from service.adapters.postgres import projection as pg_projection
from service.domain import allocation, restore, state
from service.domain.pool import FAMILIES
from service.processes import api as api_process
from service.settings import Settings
from tests.streams import key_of, mixed_stream

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

BATCH = 23
LOG_TIME_MS = 1_795_000_000_000


def _timed(body: dict[str, object], at: str) -> bytes:
    return json.dumps({**body, "time": f"2026-11-17T{at}Z"}).encode()


STORY = [
    _timed(
        {
            "type": "pool.configured",
            "id": "p",
            "clusterPoolIPv4PodCIDRList": ["10.4.0.0/16"],
            "clusterPoolIPv4MaskSize": 24,
        },
        "09:00:00",
    ),
    _timed({"type": "node.added", "id": "n", "node": "w1"}, "09:00:01"),
    _timed({"type": "ip.requested", "id": "a", "node": "w1", "owner": "shop/cart-1"}, "10:00:00"),
    _timed({"type": "ip.released", "id": "b", "node": "w1", "owner": "shop/cart-1"}, "12:00:00"),
    _timed({"type": "ip.requested", "id": "c", "node": "w1", "owner": "ops/probe"}, "13:00:00"),
    _timed({"type": "ip.released", "id": "d", "node": "w1", "owner": "ops/probe"}, "13:30:00"),
    _timed({"type": "ip.requested", "id": "e", "node": "w1", "owner": "shop/cart-2"}, "14:00:00"),
]
OFFSET = {event_id: n for n, event_id in enumerate("pnabcde")}


def _log() -> list[bytes]:
    east = mixed_stream(300, seed=5, clusters=("east",))
    spares = [
        json.dumps({"type": "node.added", "id": f"s{n}", "cluster": "east", "node": f"spare-{n}"})
        for n in range(20)
    ]
    return [*STORY, *east, *(spare.encode() for spare in spares)]


@dataclasses.dataclass
class World:
    client: httpx.AsyncClient
    log: list[bytes]
    dsn: str
    settings: Settings
    batch_ends: list[int]
    ends: dict[int, int]


async def _commit(dsn: str, log: Sequence[bytes]) -> list[int]:
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="table", holder="t")
    ends = []
    try:
        token = await projection.try_acquire(0)
        assert token is not None
        current = state.State(track_changes=True)
        for start in range(0, len(log), BATCH):
            values = log[start : start + BATCH]
            records = [
                ports.Record(0, start + n, key_of(value), value, LOG_TIME_MS + start + n)
                for n, value in enumerate(values)
            ]
            batch = allocator.apply_records(current, records, 0, token, partitions=1)
            await projection.commit(batch)
            ends.append(batch.next_offset - 1)
    finally:
        await projection.close()
    return ends


@pytest.fixture
async def world(pg_dsn: str) -> AsyncIterator[World]:
    log = _log()
    batch_ends = await _commit(pg_dsn, log)
    settings = dataclasses.replace(Settings(), database_url=pg_dsn, api_max_lag=5)
    await bootstrap.ensure_api_role(settings)
    await bootstrap.check_api_role(settings)
    reader = bootstrap.open_api_reader(settings)
    ends = {0: len(log)}

    async def log_ends() -> Mapping[int, int]:
        return ends

    app = api.build_app(
        reader,
        api.ApiConfig(forecast_window=datetime.timedelta(hours=6), max_lag=5),
        log_ends,
    )
    try:
        # The application on this test's event loop (Litestar's own test client runs it on a
        # loop of its own, in another thread, where the reader's connections would be left).
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield World(client, log, pg_dsn, settings, batch_ends, ends)
    finally:
        await reader.close()


def simulate(values: Sequence[bytes]) -> state.State:
    oracle = state.State()
    for value in values:
        allocation.apply_record(oracle, value)
    return oracle


async def _get(world: World, path: str, status: int = 200, **params: Any) -> httpx.Response:
    response = await world.client.get(path, params=params)
    assert response.status_code == status, response.text
    return response


async def _all(world: World, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        body = (await _get(world, path, **query)).json()
        items.extend(body["items"])
        after = body["next"]
        if after is None:
            return items


# --- clusters and pools ---------------------------------------------------------------------------


def _expected_cluster(oracle: state.State, name: str, at: int) -> dict[str, Any]:
    cluster = oracle.clusters[name]
    row = restore.cluster_row(cluster)
    nodes = list(cluster.nodes.values())
    return {
        "name": name,
        "partition": 0,
        "basis": {"partition": 0, "offset": at},
        "pool": {
            "clusterPoolIPv4PodCIDRList": row["ipv4_cidrs"],
            "clusterPoolIPv4MaskSize": row["ipv4_mask"],
            "clusterPoolIPv6PodCIDRList": row["ipv6_cidrs"],
            "clusterPoolIPv6MaskSize": row["ipv6_mask"],
        },
        "nodes": {
            "total": len(nodes),
            "withCIDR": sum(1 for node in nodes if node.ranges),
            "waiting": len(cluster.waiting),
            "inError": sum(1 for node in nodes if node.error is not None),
            "inConflict": sum(1 for node in nodes if node.conflict is not None),
        },
    }


def _without_configured_at(body: dict[str, Any]) -> dict[str, Any]:
    pool = dict(body["pool"])
    assert isinstance(pool.pop("configuredAt"), int)
    return {**body, "pool": pool}


async def test_clusters_and_one_cluster(world: World) -> None:
    oracle = simulate(world.log)
    last = len(world.log) - 1
    response = await _get(world, "/v1/clusters")
    body = response.json()
    assert body["basis"] == [{"partition": 0, "offset": last}]
    assert response.headers["x-ipledger-offset"] == f"0={last}"
    assert [_without_configured_at(item) for item in body["items"]] == [
        _expected_cluster(oracle, name, last) for name in ("default", "east")
    ]
    assert body["next"] is None
    east = await _get(world, "/v1/clusters/east")
    assert _without_configured_at(east.json()) == _expected_cluster(oracle, "east", last)
    assert east.headers["x-ipledger-offset"] == str(last)
    assert east.headers["x-ipledger-partition"] == "0"
    # Waiting, error and the rest are there, or the counts tested nothing.
    assert east.json()["nodes"]["waiting"] > 0
    page = (await _get(world, "/v1/clusters", limit=1)).json()
    assert [item["name"] for item in page["items"]] == ["default"]
    second = (await _get(world, "/v1/clusters", limit=1, after=page["next"])).json()
    assert [item["name"] for item in second["items"]] == ["east"]
    assert second["next"] is None


async def test_pools_with_use_pod_addresses_and_forecast(world: World) -> None:
    oracle = simulate(world.log)
    cluster = oracle.clusters["east"]
    items = await _all(world, "/v1/clusters/east/pools", limit=1)
    expected = []
    for family in FAMILIES:
        pool = cluster.pools[family]
        for element in pool.elements:
            held = 0
            for node in cluster.nodes.values():
                pod_range = node.ranges.get(family)
                if pod_range is not None and element.network.supernet_of(
                    ipaddress.ip_network(str(pod_range.cidr))
                ):
                    held += len(pod_range.owner_of)
            per_cidr = (1 << (element.network.max_prefixlen - element.mask)) - 2
            expected.append(
                {
                    "family": "ipv4" if family == 4 else "ipv6",
                    "cidr": str(element.network),
                    "maskSize": element.mask,
                    "nodeCIDRs": {
                        "total": element.slots.capacity,
                        "used": element.slots.used,
                        "free": element.slots.capacity - element.slots.used,
                    },
                    "podAddresses": {"used": held, "capacity": element.slots.used * per_cidr},
                }
            )
    assert [{k: v for k, v in item.items() if k != "forecast"} for item in items] == expected
    assert len(items) >= 2
    for item in items:
        outlook = item["forecast"]
        assert outlook["windowSeconds"] == 6 * 3600
        # The mixed stream's events carry no time: their log times, a millisecond apart, are
        # the whole window; whatever the rate, the free node CIDRs last free / rate.
        rate = outlook["nodeCIDRsPerDay"] / 86_400
        if rate > 0:
            assert outlook["secondsLeft"] == pytest.approx(item["nodeCIDRs"]["free"] / rate)
            assert outlook["exhaustsAt"].startswith("2026-")
        else:
            assert (outlook["secondsLeft"], outlook["exhaustsAt"]) == (None, None)
    assert any(item["forecast"]["nodeCIDRsPerDay"] > 0 for item in items)


async def test_the_forecast_of_a_growing_element(world: World) -> None:
    # In the story, w1 took the only node CIDR used at 09:00:01: within six hours of the last
    # event (14:00) the use went from 0 to 1, so the element runs out at that rate.
    body = (await _get(world, "/v1/clusters/default/pools", as_of=str(OFFSET["e"]))).json()
    (element,) = body["items"]
    assert element["nodeCIDRs"] == {"total": 256, "used": 1, "free": 255}
    outlook = element["forecast"]
    elapsed = datetime.timedelta(hours=14) - datetime.timedelta(hours=9)
    assert outlook["nodeCIDRsPerDay"] == pytest.approx(86_400 / elapsed.total_seconds())
    assert outlook["secondsLeft"] == pytest.approx(255 * elapsed.total_seconds())
    assert outlook["exhaustsAt"] is not None


# --- nodes ----------------------------------------------------------------------------------------


def _expected_nodes(oracle: state.State, name: str) -> list[dict[str, Any]]:
    cluster = oracle.clusters[name]
    views = []
    for node_name in sorted(cluster.nodes, key=str.encode):
        node = cluster.nodes[node_name]
        row = restore.node_row(cluster, node)
        use = {}
        for family in FAMILIES:
            pod_range = node.ranges.get(family)
            if pod_range is not None:
                held = len(pod_range.owner_of)
                use["ipv4" if family == 4 else "ipv6"] = {
                    "used": held,
                    "free": pod_range.cidr.size - 2 - held,
                }
        views.append(
            {
                "name": node_name,
                "podCIDRs": row["pod_cidrs"],
                "error": node.error,
                "conflict": node.conflict,
                "addresses": row["addresses"],
                "waiting": node_name in cluster.waiting,
                "pinned": node.pinned,
                "podAddresses": use,
            }
        )
    return views


def _fields(node: dict[str, Any]) -> dict[str, Any]:
    change = node["lastChange"]
    assert isinstance(change["offset"], int) and change["time"].endswith("Z")
    return {k: v for k, v in node.items() if k != "lastChange"}


async def test_nodes_every_field_filters_and_pages(world: World) -> None:
    oracle = simulate(world.log)
    expected = _expected_nodes(oracle, "east")
    nodes = await _all(world, "/v1/clusters/east/nodes", limit=7)
    assert [_fields(node) for node in nodes] == expected
    for flag in ("true", "false"):
        want = flag == "true"
        waiting = await _all(world, "/v1/clusters/east/nodes", waiting=flag, limit=1000)
        assert [n["name"] for n in waiting] == [n["name"] for n in expected if n["waiting"] is want]
        with_error = await _all(world, "/v1/clusters/east/nodes", error=flag, limit=1000)
        assert [n["name"] for n in with_error] == [
            n["name"] for n in expected if (n["error"] is not None) is want
        ]
        conflict = await _all(world, "/v1/clusters/east/nodes", conflict=flag, limit=1000)
        assert [n["name"] for n in conflict] == [
            n["name"] for n in expected if (n["conflict"] is not None) is want
        ]
    spares = await _all(world, "/v1/clusters/east/nodes", prefix="spare-1")
    assert [n["name"] for n in spares] == [
        n["name"] for n in expected if n["name"].startswith("spare-1")
    ]
    assert {n["waiting"] for n in expected} == {True, False}
    one = nodes[0]
    detail = (await _get(world, f"/v1/clusters/east/nodes/{one['name']}")).json()
    assert detail == {"basis": {"partition": 0, "offset": len(world.log) - 1}, "node": one}


async def test_a_node_names_the_event_that_last_changed_it(world: World) -> None:
    node = (await _get(world, "/v1/clusters/default/nodes/w1")).json()["node"]
    # Pod address events do not change a node's fields: its last change is its node.added.
    assert node["lastChange"] == {
        "offset": OFFSET["n"],
        "time": "2026-11-17T09:00:01Z",
        "eventId": "n",
    }
    assert node["podAddresses"] == {"ipv4": {"used": 1, "free": 253}}


# --- addresses and owners -------------------------------------------------------------------------


def _holding(address: str, owner: str, start: str, end: str | None) -> dict[str, Any]:
    def event(event_id: str) -> dict[str, Any]:
        return {
            "offset": OFFSET[event_id],
            "time": json.loads(STORY[OFFSET[event_id]])["time"],
            "eventId": event_id,
        }

    return {
        "address": address,
        "node": "w1",
        "owner": owner,
        "since": event(start),
        "until": None if end is None else event(end),
    }


CART_1 = _holding("10.4.0.1", "shop/cart-1", "a", "b")
PROBE = _holding("10.4.0.2", "ops/probe", "c", "d")
CART_2 = _holding("10.4.0.3", "shop/cart-2", "e", None)


async def test_who_holds_an_address_and_its_history(world: World) -> None:
    body = (await _get(world, "/v1/clusters/default/ips/10.4.0.3")).json()
    assert body["holder"] == CART_2 and body["address"] == "10.4.0.3"
    problem = (await _get(world, "/v1/clusters/default/ips/10.4.0.1", 404)).json()
    assert "nobody holds 10.4.0.1" in problem["detail"]
    history = (await _get(world, "/v1/clusters/default/ips/10.4.0.1/history")).json()
    assert history["items"] == [CART_1] and history["next"] is None
    # As of a record between the request and the release, cart-1 holds it still.
    then = (await _get(world, "/v1/clusters/default/ips/10.4.0.1", as_of=str(OFFSET["a"]))).json()
    assert then["holder"] == {**CART_1, "until": None}
    at_noon_thirty = await _get(
        world, "/v1/clusters/default/ips/10.4.0.1", 404, as_of="2026-11-17T12:30:00Z"
    )
    assert at_noon_thirty.json()["status"] == 404
    at_eleven = await _get(
        world, "/v1/clusters/default/ips/10.4.0.1", as_of="2026-11-17T11:00:00+00:00"
    )
    assert at_eleven.json()["holder"]["owner"] == "shop/cart-1"
    assert at_eleven.json()["basis"] == {"partition": 0, "offset": OFFSET["a"]}


async def test_an_owner_now_and_its_history(world: World) -> None:
    held = (await _get(world, "/v1/clusters/default/owners/shop%2Fcart-2")).json()
    assert held["items"] == [CART_2]
    unencoded = (await _get(world, "/v1/clusters/default/owners/shop/cart-2")).json()
    assert unencoded["items"] == [CART_2]
    gone = (await _get(world, "/v1/clusters/default/owners/shop%2Fcart-1")).json()
    assert gone["items"] == []
    history = await _all(world, "/v1/clusters/default/owners/shop%2Fcart-1", history="true")
    assert history == [CART_1]
    busy = await _all(world, "/v1/clusters/east/owners/ns%2Fpod-3", history="true", limit=2)
    assert busy and [h["since"]["offset"] for h in busy] == sorted(
        h["since"]["offset"] for h in busy
    )


# --- the audit trail ------------------------------------------------------------------------------


async def test_decisions_and_rejections_with_the_raw_record(world: World) -> None:
    decisions = await _all(world, "/v1/clusters/default/decisions", limit=3)
    # The story, then the mixed stream's records that name no cluster (so "default").
    assert [d["offset"] for d in decisions][: len(STORY)] == list(range(len(STORY)))
    assert all(
        json.loads(world.log[d["offset"]]).get("cluster", "default") == "default"
        for d in decisions
        if d["type"] is not None
    )
    decisions = decisions[: len(STORY)]
    assert [d["eventId"] for d in decisions] == list("pnabcde")
    assert decisions[OFFSET["a"]]["decision"]["ips"] == ["10.4.0.1"]
    assert decisions[OFFSET["a"]]["eventTime"] == "2026-11-17T10:00:00Z"
    later = (await _get(world, "/v1/clusters/default/decisions", from_offset=5, limit=2)).json()
    assert [d["offset"] for d in later["items"]] == [5, 6]
    assert later["next"] is not None
    rejections = await _all(world, "/v1/clusters/east/rejections", limit=2)
    assert rejections
    for rejection in rejections:
        raw = world.log[rejection["offset"]]
        if rejection["rawEncoding"] == "utf-8":
            assert rejection["raw"].encode() == raw
        assert rejection["reason"]
    east = await _all(world, "/v1/clusters/east/decisions", limit=1000)
    rejected = {d["offset"] for d in east if d["error"] is not None and d["type"] is None}
    assert rejected <= {r["offset"] for r in rejections} | rejected


# --- as_of ----------------------------------------------------------------------------------------


async def test_as_of_an_offset_agrees_with_simulate_over_the_prefix(world: World) -> None:
    inside = [end - BATCH // 2 for end in world.batch_ends[1:4]]
    for at in [OFFSET["n"], *world.batch_ends[:3], *inside, len(world.log) - 1]:
        oracle = simulate(world.log[: at + 1])
        for name in sorted(oracle.clusters):
            cluster = await _get(world, f"/v1/clusters/{name}", as_of=str(at))
            assert _without_configured_at(cluster.json()) == _expected_cluster(oracle, name, at)
            assert cluster.headers["x-ipledger-offset"] == str(at)
            nodes = await _all(world, f"/v1/clusters/{name}/nodes", as_of=str(at), limit=1000)
            assert [_fields(node) for node in nodes] == _expected_nodes(oracle, name)
    # Before "east" had its first record, it did not exist.
    first_east = len(STORY)
    missing = await _get(world, "/v1/clusters/east", 404, as_of=str(first_east - 1))
    assert "did not exist" in missing.json()["detail"]
    # Beyond the log: the last applied record, and the basis says so.
    beyond = await _get(world, "/v1/clusters/east", as_of=str(10**9))
    assert beyond.json()["basis"]["offset"] == len(world.log) - 1


async def test_a_cursor_keeps_the_basis_of_its_first_page(world: World) -> None:
    first = (await _get(world, "/v1/clusters/east/nodes", limit=2, as_of="200")).json()
    second = (await _get(world, "/v1/clusters/east/nodes", limit=2, after=first["next"])).json()
    assert second["basis"] == first["basis"] == {"partition": 0, "offset": 200}


# --- ETags ----------------------------------------------------------------------------------------


async def test_etag_and_if_none_match(world: World) -> None:
    for path in (
        "/v1/clusters",
        "/v1/clusters/east",
        "/v1/clusters/east/pools",
        "/v1/clusters/east/nodes",
        "/v1/clusters/default/nodes/w1",
        "/v1/clusters/default/ips/10.4.0.3",
        "/v1/clusters/default/ips/10.4.0.3/history",
        "/v1/clusters/default/owners/shop%2Fcart-2",
        "/v1/clusters/east/decisions",
        "/v1/clusters/east/rejections",
    ):
        first = await _get(world, path)
        tag = first.headers["etag"]
        again = await world.client.get(path, headers={"If-None-Match": tag})
        assert again.status_code == 304, path
        assert again.content == b""
        assert again.headers["etag"] == tag
        other = await world.client.get(path, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200
    # Another basis is another answer.
    then = await _get(world, "/v1/clusters/east", as_of="200")
    assert then.headers["etag"] != (await _get(world, "/v1/clusters/east")).headers["etag"]


async def test_a_new_commit_changes_the_etag(world: World, pg_dsn: str) -> None:
    before = (await _get(world, "/v1/clusters/east")).headers["etag"]
    extra = json.dumps({"type": "node.added", "id": "late", "cluster": "east", "node": "late"})
    projection = pg_projection.PostgresProjection.from_dsn(pg_dsn, log_name="table", holder="t")
    try:
        loaded = await projection.load([0])
        token = await projection.try_acquire(0)
        assert token is not None
        offset = loaded.next_offset
        record = ports.Record(0, offset, b"east", extra.encode(), LOG_TIME_MS + offset)
        batch = allocator.apply_records(loaded.state, [record], 0, token, partitions=1)
        await projection.commit(batch)
    finally:
        await projection.close()
    response = await world.client.get("/v1/clusters/east", headers={"If-None-Match": before})
    assert response.status_code == 200
    assert (
        response.json()["nodes"]["total"]
        == simulate([*world.log, extra.encode()]).clusters["east"].nodes.__len__()
    )


# --- errors ---------------------------------------------------------------------------------------


async def test_bad_parameters_are_400_problems_naming_them(world: World) -> None:
    cases = {
        "/v1/clusters/East": "cluster",
        "/v1/clusters/east/nodes/Not_A_Node": "node",
        "/v1/clusters/east/ips/10.0.0.256": "ip",
        "/v1/clusters/east/ips/10.0.0.01": "ip",
        "/v1/clusters/east?as_of=yesterday": "as_of",
        "/v1/clusters/east/nodes?limit=1001": "limit",
        "/v1/clusters/east/nodes?limit=0": "limit",
        "/v1/clusters/east/nodes?after=garbage!": "after",
        "/v1/clusters/east/nodes?waiting=perhaps": "waiting",
        "/v1/clusters/east/decisions?from_offset=-1": "from_offset",
    }
    for path, name in cases.items():
        response = await world.client.get(path)
        assert response.status_code == 400, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 400 and problem["title"] == "Bad request"
        assert name in problem["detail"], (path, problem)
        assert "Traceback" not in response.text


async def test_unknown_things_are_404_problems(world: World) -> None:
    for path in (
        "/v1/clusters/nowhere",
        "/v1/clusters/nowhere/nodes",
        "/v1/clusters/east/nodes/nobody",
        "/v1/clusters/default/ips/10.9.9.9",
        "/v1/nothing-here",
    ):
        response = await world.client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 404


async def test_a_long_query_string_is_refused(world: World) -> None:
    response = await world.client.get("/v1/clusters", params={"prefix": "x" * 3000})
    assert response.status_code == 414
    assert response.json()["status"] == 414


async def test_readiness_follows_the_lag(world: World) -> None:
    ready = await _get(world, "/readyz")
    assert ready.json() == {
        "ready": True,
        "maxLag": 5,
        "partitions": [
            {"partition": 0, "applied": len(world.log), "end": len(world.log), "lag": 0}
        ],
    }
    world.ends[0] = len(world.log) + 6
    lagging = await _get(world, "/readyz", 503)
    assert lagging.json()["ready"] is False
    assert lagging.json()["partitions"][0]["lag"] == 6
    assert (await _get(world, "/healthz")).json() == {"status": "ok"}


async def test_metrics_time_requests_by_route(world: World) -> None:
    await _get(world, "/v1/clusters/east/nodes/spare-1")
    text = (await _get(world, "/metrics")).text
    assert (
        'ipledger_api_request_seconds_count{method="GET",'
        'route="/v1/clusters/{cluster}/nodes/{node}",status="200"}'
    ) in text or 'route="/v1/clusters/{cluster:str}/nodes/{node:str}"' in text


async def test_openapi_and_docs_load_nothing_from_elsewhere(world: World) -> None:
    document = (await _get(world, "/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    paths = set(document["paths"])
    assert {
        "/v1/clusters",
        "/v1/clusters/{cluster}",
        "/v1/clusters/{cluster}/pools",
        "/v1/clusters/{cluster}/nodes",
        "/v1/clusters/{cluster}/nodes/{node}",
        "/v1/clusters/{cluster}/ips/{ip}",
        "/v1/clusters/{cluster}/ips/{ip}/history",
        "/v1/clusters/{cluster}/owners/{owner}",
        "/v1/clusters/{cluster}/decisions",
        "/v1/clusters/{cluster}/rejections",
        "/healthz",
        "/readyz",
    } <= paths
    page = (await _get(world, "/docs")).text
    assert "http://" not in page and "https://" not in page
    for asset in ("/docs/static/swagger-ui.css", "/docs/static/swagger-ui-bundle.js"):
        assert asset in page
        assert len((await _get(world, asset)).content) > 10_000
    assert "SwaggerUIBundle" in (await _get(world, "/docs/static/docs.js")).text


async def test_the_database_down_is_503_with_retry_after(
    world: World, pg_server: embedded.EmbeddedPostgres
) -> None:
    await _get(world, "/v1/clusters/east")
    pg_server.stop()
    try:
        response = await world.client.get("/v1/clusters/east/nodes/spare-1")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Traceback" not in response.text
    finally:
        pg_server.start()
    await _get(world, "/v1/clusters/east/nodes/spare-1")


# --- the read-only role ---------------------------------------------------------------------------


async def test_the_api_role_cannot_write(world: World) -> None:
    db = await asyncpg.connect(bootstrap.api_database_url(world.settings))
    try:
        assert await db.fetchval("SELECT count(*) FROM node") > 0
        for statement in (
            'INSERT INTO decision (partition, "offset", body, applied_at) '
            "VALUES (0, 999999, '\\x00', now())",
            "UPDATE node SET error = 'x'",
            "DELETE FROM pod_ip",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.fetch("SELECT * FROM log_record")
    finally:
        await db.close()


async def test_the_api_refuses_a_role_that_can_write(pg_dsn: str) -> None:
    # The owner of the database (the harness's superuser) can write everything.
    settings = dataclasses.replace(Settings(), database_url=pg_dsn, api_database_url=pg_dsn)
    with pytest.raises(errors.ConfigurationError, match="can write"):
        await api_process.run(settings)
    # A read-only role given INSERT by hand is refused too, until init takes it back.
    settings = dataclasses.replace(Settings(), database_url=pg_dsn)
    await bootstrap.ensure_api_role(settings)
    db = await asyncpg.connect(pg_dsn)
    try:
        await db.execute("GRANT INSERT ON node_sync TO ipledger_api")
    finally:
        await db.close()
    with pytest.raises(errors.ConfigurationError, match="node_sync"):
        await bootstrap.check_api_role(settings)
    await bootstrap.ensure_api_role(settings)
    await bootstrap.check_api_role(settings)
