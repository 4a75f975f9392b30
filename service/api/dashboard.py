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
Nothing here writes; the only reader is the port.
"""

from __future__ import annotations

import gzip
import hashlib
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
        encoded = _Encoded(body, gzip.compress(body, compresslevel=5, mtime=0))
        self._bodies[tag] = encoded
        while len(self._bodies) > _CACHED_MAPS:
            self._bodies.popitem(last=False)
        return encoded


def _element(use: ports.PoolElementUse) -> tuple[Any, int, int, int]:
    cidr = use.cidr
    bits = max(use.mask - cidr.prefixlen, 0)
    per_cell = 1 << max(bits - MAX_CELLS.bit_length() + 1, 0)
    return cidr, bits, per_cell, (1 << bits) // per_cell


def pool_map(view: ports.ClusterAt, nodes: list[ports.NodeAt], basis: models.Basis) -> PoolMap:
    """The map of ``view``'s pool with ``nodes`` (all live nodes at the basis) on it."""
    shapes = [_element(use) for use in view.elements]
    held: list[dict[int, tuple[int, int]]] = [{} for _ in shapes]
    names: list[str] = []
    flags: list[int] = []
    for index, node in enumerate(nodes):
        names.append(node.name)
        flags.append(
            (ERROR if node.error else 0)
            | (CONFLICT if node.conflict else 0)
            | (WAITING if node.waiting else 0)
            | (PINNED if node.pinned else 0)
        )
        for cidr in node.pod_cidrs:
            used = node.ipv4_pod_ips if cidr.version == 4 else node.ipv6_pod_ips
            for number, (element, bits, per_cell, _) in enumerate(shapes):
                if cidr.version != element.version or not cidr.subnet_of(element):
                    continue
                position = int(cidr.network_address) - int(element.network_address)
                cell = (position >> (element.max_prefixlen - element.prefixlen - bits)) // per_cell
                # Several node CIDRs in one cell: the fullest one colours it.
                if cell not in held[number] or used > held[number][cell][1]:
                    held[number][cell] = (index, used)
                break
    elements = []
    for use, (element, _bits, per_cell, cells), taken in zip(
        view.elements, shapes, held, strict=True
    ):
        triples: list[int] = []
        for cell in sorted(taken):
            triples.extend((cell, *taken[cell]))
        elements.append(
            MapElement(
                family="ipv4" if element.version == 4 else "ipv6",
                cidr=reading.network(element),
                mask_size=use.mask,
                node_cidrs=use.total,
                cells=cells,
                per_cell=per_cell,
                pod_capacity=max((1 << (element.max_prefixlen - use.mask)) - 2, 0),
                held=triples,
            )
        )
    return PoolMap(basis=basis, elements=elements, nodes=MapNodes(names=names, flags=flags))


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
        reader: ports.ProjectionReader = state.reader
        view = await routes._cluster_at(state, answer)
        nodes = await reader.nodes_at(answer.cluster, answer.basis)
        body = msgspec.json.encode(pool_map(view, nodes, answer.stamp))
        encoded = maps.put(answer.tag, body)
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
