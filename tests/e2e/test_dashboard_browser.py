"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

``ipledger api`` runs as a child process on a free loopback port over a database of this
module's own, connected as the read-only role, as in production; the projection is written the
way the allocator writes it (``allocator.apply_records`` batches committed by
``PostgresProjection``): the log of tests/integration/test_api.py (the scripted story of one
address in ``default``, a mixed stream in ``east``) and a cluster ``big`` with the issue's pool,
10.0.0.0/8 by /24 and an IPv6 element by /120, 65,536 node CIDRs each, holding nodes whose pod
use runs from empty to full.

What a user sees is what is checked, in the page itself: every pixel of every map canvas (one
pixel per cell) against the colour the API's own node listing implies for that cell
(``colour`` below restates the page's colour rule); the tooltip and the detail of the node
under the mouse; the history search finds; the map ``as_of`` an earlier offset; and a live
update after new commits, through the page's polling. Playwright's own browser download cannot
be reached: the browser is Debian's (``compose/debian-tools.sh``), and a missing one fails under
CI=true as every Debian tool does (tests/deployment.py). Screenshots of each view go to
``$IPLEDGER_ARTEFACTS`` (default build/test-artefacts/dashboard); with
``IPLEDGER_DOC_IMAGES=1`` also to docs/img/, where docs/dashboard.md shows them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service import allocator, bootstrap, ports
from service.adapters.postgres import embedded
from service.adapters.postgres import projection as pg_projection
from service.domain import state as domain_state
from service.settings import Settings
from tests.deployment import debian_tool
from tests.harness.postgres import _scratch_database
from tests.integration.test_api import LOG_TIME_MS, _log
from tests.streams import key_of
from tests.waiting import until_blocking

pytestmark = [pytest.mark.postgres]

REPOSITORY = Path(__file__).resolve().parents[2]
BIG_NODES = 40
PODS = (0, 254, 127, 64, 200, 10, 30, 1)
BATCH = 500

FREE = (226, 232, 240)
IN_ERROR = (147, 51, 234)
IN_CONFLICT = (17, 24, 39)
EMPTY = (134, 239, 172)
HALF = (250, 204, 21)
FULL = (220, 38, 38)


def colour(held: bool, error: bool, conflict: bool, used: int, capacity: int) -> tuple[int, ...]:
    """The page's colour rule (service/dashboard/src/poolmap.ts, cellColour), restated."""
    if not held:
        return FREE
    if conflict:
        return IN_CONFLICT
    if error:
        return IN_ERROR
    share = min(used / capacity, 1) if capacity > 0 else 1
    low, high, t = (EMPTY, HALF, share * 2) if share <= 0.5 else (HALF, FULL, share * 2 - 1)
    # JavaScript's Math.round: halves round up.
    return tuple(math.floor(low[i] + (high[i] - low[i]) * t + 0.5) for i in range(3))


def _big_log() -> list[bytes]:
    events: list[dict[str, Any]] = [
        {
            "type": "pool.configured",
            "id": "big-pool",
            "cluster": "big",
            "clusterPoolIPv4PodCIDRList": ["10.0.0.0/8"],
            "clusterPoolIPv4MaskSize": 24,
            "clusterPoolIPv6PodCIDRList": ["fd00:b16::/104"],
            "clusterPoolIPv6MaskSize": 120,
        }
    ]
    events += [
        {"type": "node.added", "id": f"big-n{n}", "cluster": "big", "node": f"big-{n:03d}"}
        for n in range(BIG_NODES)
    ]
    # Pods on the first nodes: empty, a little, half, full (254) and between; the rest none.
    for n, pods in enumerate(PODS):
        for pod in range(pods):
            events.append(
                {
                    "type": "ip.requested",
                    "id": f"big-{n}-{pod}",
                    "cluster": "big",
                    "node": f"big-{n:03d}",
                    "owner": f"big/pod-{n}-{pod}",
                    "family": "ipv4",
                }
            )
    return [json.dumps(event).encode() for event in events]


def _more_pods(count: int) -> list[bytes]:
    """``count`` new pods on the last big node (the live update)."""
    return [
        json.dumps(
            {
                "type": "ip.requested",
                "id": f"late-{n}",
                "cluster": "big",
                "node": "big-000",
                "owner": f"late/pod-{n}",
                "family": "ipv4",
            }
        ).encode()
        for n in range(count)
    ]


class Writer:
    """Commits records as the allocator does, batch by batch, and can go on later."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.state = domain_state.State(track_changes=True)
        self.next = 0

    async def commit(self, values: Sequence[bytes]) -> int:
        projection = pg_projection.PostgresProjection.from_dsn(
            # No allocator loop renews the lease here: one longer than all the batches.
            self.dsn,
            log_name="table",
            holder="dashboard-test",
            lease_ttl_s=600,
        )
        try:
            token = await projection.try_acquire(0)
            assert token is not None
            for start in range(0, len(values), BATCH):
                records = [
                    ports.Record(0, self.next + n, key_of(v), v, LOG_TIME_MS + self.next + n)
                    for n, v in enumerate(values[start : start + BATCH])
                ]
                batch = allocator.apply_records(self.state, records, 0, token, partitions=1)
                await projection.commit(batch)
                self.next = batch.next_offset
        finally:
            await projection.close()
        return self.next - 1


@dataclass
class Served:
    url: str
    writer: Writer
    big_pool_offset: int
    artefacts: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _prepare(dsn: str, writer: Writer, log: list[bytes]) -> None:
    await writer.commit(log)
    settings = Settings(database_url=dsn)
    await bootstrap.ensure_api_role(settings)
    event_log = await bootstrap.open_log(settings)  # the table log's partitions, for /readyz
    try:
        await event_log.end_offset(0)
    finally:
        await event_log.close()


def _start_api(dsn: str, output: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    env = {
        **os.environ,
        "IPLEDGER_DATABASE_URL": dsn,
        "IPLEDGER_API_ADDRESS": f"127.0.0.1:{port}",
        "IPLEDGER_LOG": "table",
    }
    # Its log goes to a file: a pipe nobody reads would fill and stop the server.
    with output.open("wb") as api_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api"],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=api_log,
        )
    return server, f"http://127.0.0.1:{port}", output


def _healthy(server: subprocess.Popen[bytes], url: str, output: Path) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"ipledger api exited: {output.read_text()}")
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(
    pg_server: embedded.EmbeddedPostgres, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``ipledger api`` over the module's database; stopped (SIGTERM) at the end."""
    debian_tool("chromium")
    first = _log()
    log = [*first, *_big_log()]
    artefacts = Path(
        os.environ.get("IPLEDGER_ARTEFACTS", REPOSITORY / "build" / "test-artefacts")
    ).joinpath("dashboard")
    artefacts.mkdir(parents=True, exist_ok=True)
    for dsn in _scratch_database(pg_server, pg_template):
        writer = Writer(dsn)
        anyio.run(_prepare, dsn, writer, log)
        server, url, output = _start_api(dsn, tmp_path_factory.mktemp("api") / "api.log")
        try:
            until_blocking(
                functools.partial(_healthy, server, url, output),
                timeout=60,
                what="ipledger api answers /healthz",
            )
            yield Served(url, writer, len(first), artefacts)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(debian_tool("chromium")),
            # Root in a container has no user namespaces for chromium's sandbox.
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    # Playwright's waits evaluate strings in the page, which the page's own policy forbids (no
    # eval); tests/integration/test_dashboard_api.py checks that policy.
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    # A 404 is an answer the page expects (search probes an address, a node and an owner);
    # any other console error, or an uncaught exception, fails the test.
    expected = "the server responded with a status of 404"
    opened.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and expected not in message.text
            else None
        ),
    )
    try:
        yield opened
    finally:
        context.close()
    assert not problems, problems


def _open(page: Any, served: Served, cluster: str, query: str = "") -> int:
    """The dashboard on ``cluster``'s map, once drawn; the basis it shows."""
    page.goto(f"{served.url}/dashboard?cluster={cluster}&poll=200{query}")
    page.wait_for_function("document.body.dataset.basis !== undefined", timeout=15_000)
    return int(page.evaluate("document.body.dataset.basis"))


def _api(served: Served, path: str, **params: str) -> Any:
    response = httpx.get(f"{served.url}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _nodes(served: Served, cluster: str, basis: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {"as_of": str(basis), "limit": "1000", **({"after": after} if after else {})}
        body = _api(served, f"/v1/clusters/{cluster}/nodes", **params)
        items += body["items"]
        after = body["next"]
        if after is None:
            return items


def _expected(
    served: Served, cluster: str, basis: int
) -> list[tuple[str, int, dict[int, tuple[int, ...]]]]:
    """Per pool element at ``basis``: its CIDR, its cells, and the colour of each held one."""
    pools = _api(served, f"/v1/clusters/{cluster}/pools", as_of=str(basis))["items"]
    nodes = _nodes(served, cluster, basis)
    shapes = []
    for pool in pools:
        network = ipaddress.ip_network(pool["cidr"])
        capacity = 2 ** (network.max_prefixlen - pool["maskSize"]) - 2
        held: dict[int, tuple[int, ...]] = {}
        for node in nodes:
            for text in node["podCIDRs"]:
                cidr = ipaddress.ip_network(text)
                if cidr.version != network.version or not cidr.subnet_of(network):  # type: ignore[arg-type]
                    continue
                cell = (int(cidr.network_address) - int(network.network_address)) >> (
                    network.max_prefixlen - pool["maskSize"]
                )
                used = node["podAddresses"][pool["family"]]["used"]
                held[cell] = colour(
                    True, bool(node["error"]), bool(node["conflict"]), used, capacity
                )
        shapes.append((pool["cidr"], pool["nodeCIDRs"]["total"], held))
    return shapes


_PIXELS = """() => Array.from(document.querySelectorAll('canvas.grid')).map((canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const cells = Number(canvas.dataset.cells);
  const packed = new Array(cells);
  for (let i = 0; i < cells; i++) packed[i] = (data[4*i] << 16) | (data[4*i+1] << 8) | data[4*i+2];
  return {cidr: canvas.dataset.cidr, cells, size: canvas.width * canvas.height, packed};
})"""


def _check_pixels(page: Any, served: Served, cluster: str, basis: int) -> int:
    """Every cell of every canvas has the colour the node listing implies; the held count."""
    drawn = page.evaluate(_PIXELS)
    expected = _expected(served, cluster, basis)
    assert [(g["cidr"], g["cells"]) for g in drawn] == [(c, n) for c, n, _ in expected]
    held = 0
    for grid, (_, cells, colours) in zip(drawn, expected, strict=True):
        assert grid["size"] >= cells
        free = (FREE[0] << 16) | (FREE[1] << 8) | FREE[2]
        wrong = []
        for cell, value in enumerate(grid["packed"]):
            rgb = colours.get(cell, FREE)
            if value != (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]:
                wrong.append((cell, hex(value), rgb))
        assert not wrong, f"{grid['cidr']}: {len(wrong)} cells wrong, first {wrong[:5]}"
        held += sum(1 for value in grid["packed"] if value != free)
    return held


def _shoot(page: Any, served: Served, name: str) -> None:
    path = served.artefacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("IPLEDGER_DOC_IMAGES") == "1":
        shutil.copy(path, REPOSITORY / "docs" / "img" / f"dashboard-{name}.png")


def _cell_point(page: Any, element: int, cell: int) -> tuple[float, float]:
    box = page.evaluate(
        """([element, cell]) => {
      const canvas = document.querySelectorAll('canvas.grid')[element];
      const r = canvas.getBoundingClientRect();
      const x = cell % canvas.width, y = Math.floor(cell / canvas.width);
      return [r.left + (x + 0.5) * r.width / canvas.width,
              r.top + (y + 0.5) * r.height / canvas.height];
    }""",
        [element, cell],
    )
    return float(box[0]), float(box[1])


def test_the_map_draws_every_cell_in_its_colour(page: Any, served: Served) -> None:
    basis = _open(page, served, "big")
    held = _check_pixels(page, served, "big", basis)
    assert held == 2 * BIG_NODES  # each node holds a /24 and a /120
    counts = page.evaluate(
        "Array.from(document.querySelectorAll('canvas.grid'))"
        ".map(c => [c.width * c.height, c.dataset.held])"
    )
    assert counts == [[65_536, str(BIG_NODES)], [65_536, str(BIG_NODES)]]
    _shoot(page, served, "map")
    # The mixed stream's cluster has waiting nodes and nodes in error: marked and listed.
    east = _open(page, served, "east")
    _check_pixels(page, served, "east", east)
    waiting = [n["name"] for n in _nodes(served, "east", east) if n["waiting"]]
    assert page.locator("#marked h3").first.inner_text() == f"Waiting for a CIDR: {len(waiting)}"


def test_hover_and_click_show_the_node(page: Any, served: Served) -> None:
    basis = _open(page, served, "big")
    node = _api(served, "/v1/clusters/big/nodes/big-004", as_of=str(basis))["node"]
    v4 = ipaddress.ip_network(node["podCIDRs"][0])
    cell = (int(v4.network_address) - int(ipaddress.ip_address("10.0.0.0"))) >> 8
    x, y = _cell_point(page, 0, cell)
    page.mouse.move(x, y)
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible", timeout=5000)
    used = node["podAddresses"]["ipv4"]["used"]
    assert tooltip.inner_text() == f"big-004 — {v4} — {used} of 254 pod addresses"
    page.mouse.click(x, y)
    page.locator("#detail .node-name").wait_for(timeout=5000)
    assert page.locator("#detail .node-name").inner_text() == "big-004"
    assert page.locator("#detail .pod-cidrs").inner_text() == ", ".join(node["podCIDRs"])
    change = page.locator("#detail .last-change").inner_text()
    assert f"@{node['lastChange']['offset']}" in change and "node.added" in change
    _shoot(page, served, "node")
    # A free cell says so.
    x, y = _cell_point(page, 0, 60_000)
    page.mouse.move(x, y)
    page.wait_for_function("document.getElementById('tooltip').dataset.node === ''")
    assert page.locator("#tooltip").inner_text() == "10.234.96.0/24: free"


def test_search_finds_an_address_and_its_history(page: Any, served: Served) -> None:
    _open(page, served, "default")
    page.click("nav button[data-view=search]")
    page.fill("#query", "10.4.0.1")
    page.click("#search-form button")
    page.locator("table.history").wait_for(timeout=5000)
    rows = page.locator("table.history tr").all_inner_texts()
    assert len(rows) == 2  # the header and cart-1's one holding, ended by its release
    assert rows[1].split("\t")[:3] == ["10.4.0.1", "w1", "shop/cart-1"]
    assert "@2" in rows[1] and "@3" in rows[1]
    page.fill("#query", "shop/cart-2")
    page.click("#search-form button")
    page.get_by_text("Owner shop/cart-2: 1 holdings").wait_for(timeout=5000)
    held = page.locator("table.history tr.held").all_inner_texts()
    assert len(held) == 1 and held[0].startswith("10.4.0.3\tw1\tshop/cart-2")
    page.fill("#query", "10.4.0.3")
    page.click("#search-form button")
    page.get_by_text("10.4.0.3 is held by shop/cart-2 on w1").wait_for(timeout=5000)
    _shoot(page, served, "search")
    # An offset in the history is a link into time travel.
    page.locator("table.history a.offset").first.click()
    page.wait_for_function("document.body.dataset.basis === '6'", timeout=5000)


def test_time_travel_shows_the_map_as_it_stood(page: Any, served: Served) -> None:
    now = _open(page, served, "big")
    then = served.big_pool_offset + 10  # the pool and the first ten nodes
    page.fill("#asof", str(then))
    page.click("#travel button[type=submit]")
    page.wait_for_function(f"document.body.dataset.basis === '{then}'", timeout=10_000)
    assert _check_pixels(page, served, "big", then) == 2 * 10
    assert "as of" in page.locator("#basis").inner_text()
    _shoot(page, served, "time-travel")
    page.click("#live")
    page.wait_for_function(f"document.body.dataset.basis === '{now}'", timeout=10_000)
    assert _check_pixels(page, served, "big", now) == 2 * BIG_NODES


def test_the_use_and_forecast_view(page: Any, served: Served) -> None:
    basis = _open(page, served, "east", "&view=cluster")
    page.locator("#pools tr").nth(1).wait_for(timeout=10_000)
    pools = _api(served, "/v1/clusters/east/pools", as_of=str(basis))["items"]
    rows = page.locator("#pools tr").all_inner_texts()
    assert [row.split("\t")[0] for row in rows[1:]] == [
        f"{p['family']} {p['cidr']} /{p['maskSize']}" for p in pools
    ]
    rejected = _api(served, "/v1/clusters/east/rejections", limit="1000", as_of=str(basis))
    shown = page.locator("#rejections tr").all_inner_texts()
    assert len(shown) - 1 == min(len(rejected["items"]), 20)
    if rejected["items"]:
        assert shown[1].split("\t")[0] == str(rejected["items"][-1]["offset"])
    _shoot(page, served, "use-and-forecast")


def test_a_live_update_is_drawn(page: Any, served: Served) -> None:
    before = _open(page, served, "big")
    # Committed from a thread of its own: Playwright's client runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        last = pool.submit(anyio.run, served.writer.commit, _more_pods(40)).result(timeout=60)
    page.wait_for_function(f"document.body.dataset.basis === '{last}'", timeout=10_000)
    assert last > before
    _check_pixels(page, served, "big", last)
