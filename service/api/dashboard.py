"""The read-only web dashboard: its static files, and the pool map's one aggregate route.

Mounted by ``service.api.app`` beside the /v1 routes. The page (``/dashboard``) is three files
built from ``service/dashboard/src`` into ``service/dashboard/static`` (``make dashboard``) and
shipped in the package; they are served from an allow-list, with a Content-Security-Policy that
lets the page load nothing but this server's files and talk to nothing but this server, so no
CDN is ever involved. Everything the page shows comes from the JSON routes of docs/api.md; the
one thing those cannot answer quickly is the map of a whole pool (65,536 node CIDRs of a /8 by
/24 would be 66 pages of nodes), so ``GET /v1/clusters/{cluster}/map`` answers it in one compact
body: per pool element the node CIDRs it has, and for each held one the node holding it and its
pod addresses used, as flat integer arrays.

The map follows the conventions of ``service.api.routes``: the basis (``as_of``) in the body and
in ``X-Ipledger-Offset``, the ETag of (path, query, basis) with 304 before any query, problem+json
errors. Its body for a basis never changes (history is insert-only), so the last few encoded
bodies are kept: every browser polling the map costs one query per new commit, not one per poll.
And the newest map of each cluster is kept in a form the next commits can move forward
(``_Live``): after pod-address decisions only those decisions are read, not every node again
(at 65,536 nodes the difference between a fraction of a second and tens of seconds on a loaded
machine; docs/benchmarks.md). Nothing here writes; the only reader is the port.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.params import PathParameter

from service import errors, ports
from service.api import models, reading, routes

# The drawn grid of one pool element has at most this many cells: a /8 by /24 (the issue's
# size) is drawn one node CIDR a cell; a larger element (an IPv6 pool of 2**40 node CIDRs) is
# drawn with 2**k node CIDRs a cell, coloured by the fullest of them.
MAX_CELLS = 65_536
# Encoded map bodies kept, by (cluster, basis, query): a few browsers at different as_of.
_CACHED_MAPS = 8
_STATIC = Path(__file__).resolve().parent.parent / "dashboard" / "static"
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads only this server's files and connects only to it; canvas images are data URLs
# only when an operator saves one. No inline script, no frame may embed it (clickjacking).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Node state bits in the map's ``nodes.flags``.
ERROR, CONFLICT, WAITING, PINNED = 1, 2, 4, 8


class MapElement(models.Struct, frozen=True):
    """One pool element drawn as a grid: ``cells`` cells of ``perCell`` node CIDRs each.

    ``held`` is flat triples ``[cell, node, used, ...]`` by cell: the cell's index in the
    element (node CIDR i is at cell ``i // perCell``), the index of the node holding it in
    ``nodes``, and the pod addresses used on it (of this family); a cell not listed is free.
    ``podCapacity``: the pod addresses of one node CIDR (its addresses but the first and last).
    """

    family: str
    cidr: str
    mask_size: int
    node_cidrs: int = msgspec.field(name="nodeCIDRs")
    cells: int
    per_cell: int
    pod_capacity: int
    held: list[int]


class MapNodes(models.Struct, frozen=True):
    """The cluster's live nodes by name, as columns: ``names[i]`` has ``flags[i]`` (bits:
    1 error, 2 conflict, 4 waiting for a CIDR, 8 pinned)."""

    names: list[str]
    flags: list[int]


class PoolMap(models.Struct, frozen=True):
    """The whole pool map of a cluster at a basis (``GET /v1/clusters/{cluster}/map``)."""

    basis: models.Basis
    elements: list[MapElement]
    nodes: MapNodes


@dataclass(frozen=True, slots=True)
class _Encoded:
    body: bytes
    gzipped: bytes


class _Maps:
    """The last few encoded map bodies; a body for a (path, query, basis) never changes."""

    def __init__(self) -> None:
        self._bodies: OrderedDict[str, _Encoded] = OrderedDict()

    def get(self, tag: str) -> _Encoded | None:
        found = self._bodies.get(tag)
        if found is not None:
            self._bodies.move_to_end(tag)
        return found

    def put(self, tag: str, body: bytes) -> _Encoded:
        encoded = _Encoded(body, gzip.compress(body, compresslevel=1, mtime=0))
        self._bodies[tag] = encoded
        while len(self._bodies) > _CACHED_MAPS:
            self._bodies.popitem(last=False)
        return encoded


@dataclass(frozen=True, slots=True)
class _Shape:
    """One pool element's grid: where its node CIDRs are, as integers."""

    use: ports.PoolElementUse
    version: int
    base: int
    size: int  # addresses in the element
    shift: int  # address bits of one node CIDR
    per_cell: int
    cells: int

    @classmethod
    def of(cls, use: ports.PoolElementUse) -> _Shape:
        cidr = use.cidr
        bits = max(use.mask - cidr.prefixlen, 0)
        per_cell = 1 << max(bits - MAX_CELLS.bit_length() + 1, 0)
        return cls(
            use,
            cidr.version,
            int(cidr.network_address),
            cidr.num_addresses,
            cidr.max_prefixlen - use.mask,
            per_cell,
            (1 << bits) // per_cell,
        )

    def cell(self, version: int, address: int) -> int | None:
        """The cell of an address (or a node CIDR's first one), None when not in the element."""
        if version != self.version or not self.base <= address < self.base + self.size:
            return None
        return ((address - self.base) >> self.shift) // self.per_cell


class _Live:
    """The map of one cluster at ``basis`` in a form that later commits can update.

    Built whole from the read port (the cluster's pool at the basis and every live node), and
    then moved forward by the decisions committed since: a granted or released pod address only
    changes its node's count of that family, found by the address's cell, so 1,000 allocations
    cost a read of 1,000 decisions rather than of every node again. Any other decision (a node
    added, deleted or adopted, a new pool) may change which node holds which cell, or a flag:
    the map is then built whole again.
    """

    def __init__(self, view: ports.ClusterAt, nodes: list[ports.NodeAt], basis: int) -> None:
        self.basis = basis
        self.shapes = [_Shape.of(use) for use in view.elements]
        self.names = [node.name for node in nodes]
        self.flags = [
            (ERROR if node.error else 0)
            | (CONFLICT if node.conflict else 0)
            | (WAITING if node.waiting else 0)
            | (PINNED if node.pinned else 0)
            for node in nodes
        ]
        self.used = [[node.ipv4_pod_ips, node.ipv6_pod_ips] for node in nodes]
        self.holders: list[dict[int, int]] = [{} for _ in self.shapes]
        for index, node in enumerate(nodes):
            for cidr in node.pod_cidrs:
                for shape, holders in zip(self.shapes, self.holders, strict=True):
                    cell = shape.cell(cidr.version, int(cidr.network_address))
                    if cell is None:
                        continue
                    # Several node CIDRs in one cell: the fullest one colours it.
                    if cell not in holders or self._use(index, shape) > self._use(
                        holders[cell], shape
                    ):
                        holders[cell] = index
                    break
        # Moving forward by addresses needs one node per cell.
        self.movable = all(shape.per_cell == 1 for shape in self.shapes)

    def _use(self, node: int, shape: _Shape) -> int:
        return self.used[node][0 if shape.version == 4 else 1]

    def advance(self, decisions: list[ports.CommittedDecision], basis: int) -> bool:
        """Apply ``decisions`` (every one about the cluster after ``self.basis`` up to
        ``basis``); False, with the map unchanged, when one needs the map built whole."""
        if not self.movable:
            return False
        changes: list[tuple[int, int, int]] = []  # node, family index, +1 or -1
        for decision in decisions:
            if decision.type not in ("ip.requested", "ip.released"):
                return False
            if decision.error is not None:
                continue  # a refused request or release changes nothing
            step = 1 if decision.type == "ip.requested" else -1
            for text in msgspec.json.decode(decision.body).get("ips", ()):
                address = ipaddress.ip_address(text)
                found = self._holder(address.version, int(address))
                # A release on a node in conflict re-examines the conflict (allocation.py):
                # its flags may change, which only a read of the node tells.
                if found is None or self.flags[found] & (CONFLICT | ERROR):
                    return False
                changes.append((found, 0 if address.version == 4 else 1, step))
        for node, family, step in changes:
            self.used[node][family] += step
        self.basis = basis
        return True

    def _holder(self, version: int, address: int) -> int | None:
        for shape, holders in zip(self.shapes, self.holders, strict=True):
            cell = shape.cell(version, address)
            if cell is not None:
                return holders.get(cell)
        return None

    def body(self, partition: int) -> PoolMap:
        elements = []
        for shape, holders in zip(self.shapes, self.holders, strict=True):
            family = 0 if shape.version == 4 else 1
            used = self.used
            triples: list[int] = []
            for cell in sorted(holders):
                node = holders[cell]
                triples += (cell, node, used[node][family])
            use = shape.use
            elements.append(
                MapElement(
                    family="ipv4" if shape.version == 4 else "ipv6",
                    cidr=reading.network(use.cidr),
                    mask_size=use.mask,
                    node_cidrs=use.total,
                    cells=shape.cells,
                    per_cell=shape.per_cell,
                    pod_capacity=max((1 << shape.shift) - 2, 0),
                    held=triples,
                )
            )
        return PoolMap(
            basis=models.Basis(partition=partition, offset=self.basis),
            elements=elements,
            nodes=MapNodes(names=list(self.names), flags=list(self.flags)),
        )


def pool_map(view: ports.ClusterAt, nodes: list[ports.NodeAt], basis: models.Basis) -> PoolMap:
    """The map of ``view``'s pool with ``nodes`` (all live nodes at the basis) on it."""
    return _Live(view, nodes, basis.offset).body(basis.partition)


# Decisions read to move a map forward at most; more, and it is built whole again.
MAX_STEPS = 20_000
# Clusters whose newest map is kept (tens of MB each at 65,536 nodes), the last built first out.
_KEPT_CLUSTERS = 16


# Nodes read per statement when the map is built whole: each statement stays well inside the
# API's statement timeout (IPLEDGER_API_STATEMENT_TIMEOUT_MS) however large the cluster.
NODE_PAGE = 4096


async def _all_nodes(reader: ports.ProjectionReader, cluster: str, at: int) -> list[ports.NodeAt]:
    """Every live node of ``cluster`` at ``at``, by name, a page per statement."""
    nodes: list[ports.NodeAt] = []
    while True:
        page = await reader.nodes_at(
            cluster, at, after=nodes[-1].name if nodes else "", limit=NODE_PAGE
        )
        nodes += page
        if len(page) < NODE_PAGE:
            return nodes


class _Lives:
    """The newest map of each cluster, and a lock that lets one request at a time build it."""

    def __init__(self) -> None:
        self.maps: dict[str, _Live] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    async def body(
        self, reader: ports.ProjectionReader, state: State, answer: routes.Answer
    ) -> PoolMap:
        lock = self.locks.setdefault(answer.cluster, asyncio.Lock())
        async with lock:
            live = self.maps.get(answer.cluster)
            if live is not None and live.basis < answer.basis:
                decisions = await reader.cluster_decisions(
                    answer.cluster, live.basis + 1, answer.basis, MAX_STEPS + 1
                )
                if len(decisions) > MAX_STEPS or not live.advance(decisions, answer.basis):
                    live = None
            if live is None or live.basis > answer.basis:
                view = await routes._cluster_at(state, answer)
                nodes = await _all_nodes(reader, answer.cluster, answer.basis)
                built = _Live(view, nodes, answer.basis)
                current = self.maps.get(answer.cluster)
                if current is None or current.basis <= answer.basis:
                    self.maps.pop(answer.cluster, None)
                    self.maps[answer.cluster] = built  # the newest last
                    while len(self.maps) > _KEPT_CLUSTERS:
                        del self.maps[next(iter(self.maps))]
                live = built
            return live.body(answer.partition)


@get(
    "/v1/clusters/{cluster:str}/map",
    responses=routes.ERRORS,
    summary="The pool map: every node CIDR of every pool element, held or free",
)
async def get_map(
    request: Request[Any, Any, Any],
    state: State,
    cluster: routes.ClusterPath,
    as_of: routes.AsOf = None,
) -> Response[PoolMap]:
    """The dashboard's pool map in one compact body (docs/api.md): per element its grid of node
    CIDRs with the holder and pod addresses used of each held one, and every live node's flags."""
    answer = await routes._answer(request, state, cluster, as_of)
    headers = answer.headers()
    headers["Vary"] = "Accept-Encoding"
    response: Response[Any]
    if answer.fresh:
        response = Response(b"", status_code=304, headers=headers)
        return response
    maps: _Maps = state.setdefault("dashboard_maps", _Maps())
    encoded = maps.get(answer.tag)
    if encoded is None:
        lives: _Lives = state.setdefault("dashboard_lives", _Lives())
        body = await lives.body(state.reader, state, answer)
        encoded = maps.put(answer.tag, msgspec.json.encode(body))
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        response = Response(encoded.gzipped, media_type=MediaType.JSON, headers=headers)
    else:
        response = Response(encoded.body, media_type=MediaType.JSON, headers=headers)
    return response


def _file(name: str) -> Response[bytes]:
    content = (_STATIC / name).read_bytes()
    tag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    return Response(
        content,
        media_type=_FILES[name],
        headers={
            "ETag": tag,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response[bytes]:
    """The dashboard's page (also at /dashboard/: Litestar takes the two paths as one)."""
    return _file("index.html")


@get("/dashboard/{name:str}", include_in_schema=False)
async def dashboard_file(
    name: Annotated[str, PathParameter(max_length=64, description="a file of the page")],
) -> Response[bytes]:
    """One of the page's files, from the allow-list only (nothing else on disk is reachable)."""
    if name not in _FILES or name == "index.html":
        raise errors.QueryNotFoundError(f"no dashboard file {name}")
    return _file(name)


ROUTES = [get_map, dashboard_page, dashboard_file]
