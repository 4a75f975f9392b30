"""The dashboard's server side against the real PostgreSQL: the pool map route and the page files.

The projection and the API are those of tests/integration/test_api.py (its ``world``: the
allocator's batches committed by ``PostgresProjection``, read through the read-only role). The
map is checked against the API's own node listing at the same basis, cell by cell (which node
CIDR each node holds, its pod addresses used, its flags), now and ``as_of`` several offsets; the
conventions of docs/api.md (basis header, ETag and 304, problem+json, gzip); and the page's
files: an allow-list, a Content-Security-Policy that loads nothing from elsewhere.
"""

from __future__ import annotations

import gzip
import ipaddress
from typing import Any

import pytest

from service.api import dashboard
from tests.integration.test_api import World, _all, _get, world

__all__ = ["world"]
pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


def _expected_cells(element: dict[str, Any], nodes: list[dict[str, Any]]) -> list[int]:
    """The map's ``held`` triples of one element, from the node listing."""
    pool = ipaddress.ip_network(element["cidr"])
    names = sorted(node["name"] for node in nodes)
    index = {name: n for n, name in enumerate(names)}
    held: dict[int, tuple[int, int]] = {}
    for node in nodes:
        for text in node["podCIDRs"]:
            cidr = ipaddress.ip_network(text)
            if cidr.version != pool.version or not cidr.subnet_of(pool):  # type: ignore[arg-type]
                continue
            cell = (int(cidr.network_address) - int(pool.network_address)) >> (
                pool.max_prefixlen - element["maskSize"]
            )
            family = "ipv4" if cidr.version == 4 else "ipv6"
            held[cell // element["perCell"]] = (
                index[node["name"]],
                node["podAddresses"][family]["used"],
            )
    return [value for cell in sorted(held) for value in (cell, *held[cell])]


def _flags(node: dict[str, Any]) -> int:
    return (
        (dashboard.ERROR if node["error"] else 0)
        | (dashboard.CONFLICT if node["conflict"] else 0)
        | (dashboard.WAITING if node["waiting"] else 0)
        | (dashboard.PINNED if node["pinned"] else 0)
    )


async def _check_map(world: World, cluster: str, as_of: int | None) -> dict[str, Any]:
    params = {} if as_of is None else {"as_of": str(as_of)}
    response = await _get(world, f"/v1/clusters/{cluster}/map", **params)
    body: dict[str, Any] = response.json()
    basis = body["basis"]["offset"]
    assert response.headers["X-Ipledger-Offset"] == str(basis)
    nodes = await _all(world, f"/v1/clusters/{cluster}/nodes", as_of=str(basis), limit=1000)
    pools = await _all(world, f"/v1/clusters/{cluster}/pools", as_of=str(basis))
    assert body["nodes"]["names"] == [node["name"] for node in nodes]
    assert body["nodes"]["flags"] == [_flags(node) for node in nodes]
    assert [(e["family"], e["cidr"], e["maskSize"]) for e in body["elements"]] == [
        (p["family"], p["cidr"], p["maskSize"]) for p in pools
    ]
    for element, pool in zip(body["elements"], pools, strict=True):
        assert element["nodeCIDRs"] == pool["nodeCIDRs"]["total"]
        assert element["cells"] * element["perCell"] == element["nodeCIDRs"]
        assert element["held"] == _expected_cells(element, nodes)
        assert len(element["held"]) // 3 == pool["nodeCIDRs"]["used"]
    return body


async def test_the_map_is_the_node_listing_cell_by_cell(world: World) -> None:
    east = await _check_map(world, "east", None)
    # The mixed stream's pool: 10.0.0.0/22 by /26 and fd00::/118 by /122, 16 cells each.
    assert [(e["cidr"], e["cells"], e["podCapacity"]) for e in east["elements"]] == [
        ("10.0.0.0/22", 16, 62),
        ("fd00::/118", 16, 62),
    ]
    assert any(element["held"] for element in east["elements"])
    assert any(flags & dashboard.WAITING for flags in east["nodes"]["flags"])
    default = await _check_map(world, "default", None)
    assert default["elements"][0]["cells"] == 256
    assert default["elements"][0]["held"] == [0, 0, 1]  # w1 on 10.4.0.0/24 with shop/cart-2


async def test_the_map_as_of_an_offset_is_the_listing_then(world: World) -> None:
    for offset in (7, 40, world.batch_ends[3], world.batch_ends[-2]):
        body = await _check_map(world, "east", offset)
        assert body["basis"]["offset"] == offset
    story = await _check_map(world, "default", 2)  # after cart-1's request
    assert story["elements"][0]["held"] == [0, 0, 1]
    before = await _check_map(world, "default", 3)  # after its release
    assert before["elements"][0]["held"] == [0, 0, 0]


async def test_a_map_moved_forward_by_pod_decisions_is_the_listing_then(world: World) -> None:
    """The story's offsets 2 to 6 are pod requests and releases only: each map from the one
    before (moved by those decisions), and each the same as the listing at its basis."""
    first = await _check_map(world, "default", 1)
    assert first["elements"][0]["held"] == [0, 0, 0]
    uses = []
    for offset in range(2, 7):
        body = await _check_map(world, "default", offset)
        uses.append(body["elements"][0]["held"][2])
    assert uses == [1, 0, 1, 0, 1]
    # Back in time is built whole again, and still right.
    assert (await _check_map(world, "default", 2))["elements"][0]["held"] == [0, 0, 1]


async def test_the_map_follows_the_api_conventions(world: World) -> None:
    path = "/v1/clusters/east/map"
    first = await _get(world, path)
    tag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await world.client.get(path, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    then = await _get(world, path, as_of="40")
    assert then.headers["ETag"] != tag
    zipped = await world.client.get(path, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.json() == first.json()  # httpx undoes the gzip
    raw = await world.client.get(path, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in raw.headers and raw.json() == first.json()
    assert gzip.decompress(dashboard._Maps().put("t", raw.content).gzipped) == raw.content
    missing = await _get(world, "/v1/clusters/nowhere/map", 404)
    assert missing.headers["content-type"] == "application/problem+json"
    bad = await _get(world, "/v1/clusters/east/map", 400, as_of="yesterday")
    assert "as_of" in bad.json()["detail"]
    before = await _get(world, "/v1/clusters/east/map", 404, as_of="2020-01-01T00:00:00Z")
    assert before.json()["status"] == 404


async def test_the_page_and_its_files_load_nothing_from_elsewhere(world: World) -> None:
    page = await _get(world, "/dashboard")
    assert (await _get(world, "/dashboard/")).text == page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == dashboard.CSP
    assert "default-src 'none'" in dashboard.CSP and "connect-src 'self'" in dashboard.CSP
    assert 'src="/dashboard/app.js"' in page.text and "http" not in page.text.replace('"http', "")
    script = await _get(world, "/dashboard/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "https://" not in script.text and "http://" not in script.text
    style = await _get(world, "/dashboard/style.css")
    assert "@import" not in style.text and "url(" not in style.text
    again = await world.client.get("/dashboard/app.js", headers={"If-None-Match": "x"})
    assert again.status_code == 200 and again.headers["ETag"] == script.headers["ETag"]
    for name in ("package.json", "..%2F__init__.py", "index.html", "main.ts"):
        refused = await world.client.get(f"/dashboard/{name}")
        assert refused.status_code == 404, name
    # Nothing but GET (and HEAD) anywhere on the dashboard's routes.
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/dashboard/", "/v1/clusters/east/map"):
            refused = await world.client.request(method, path)
            assert refused.status_code in (405, 413), (method, path, refused.status_code)
