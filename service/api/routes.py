"""The query API's routes: every answer read through ``ports.ProjectionReader``, nothing written.

Registered by ``service.api.app``. Each cluster-scoped route checks its parameters
(``service.api.reading``), finds the cluster's partition, settles the basis (``as_of``, or the
cursor's), answers 304 when ``If-None-Match`` names the ETag of (path, query, basis), and only
then reads; the body names its basis and so do the ``X-Ipledger-Partition`` and
``X-Ipledger-Offset`` headers. Lists are pages of ``limit`` (default 50, at most 1000) in a
stable order, with the cursor of the next page or null. docs/api.md describes every route.
Over 400 lines on purpose: one handler per route of the issue, each short, kept together so
that the API's surface reads as one list.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from service import errors, forecast, ports
from service.api import models, problems, reading

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_T = TypeVar("_T")
_FAMILY = {4: "ipv4", 6: "ipv6"}

Limit = Annotated[
    int, QueryParameter(ge=1, le=MAX_LIMIT, description="items per page (default 50, at most 1000)")
]
After = Annotated[
    str | None,
    QueryParameter(
        max_length=512,
        pattern="^[A-Za-z0-9_-]*$",
        description="the `next` of the previous page",
    ),
]
AsOf = Annotated[
    str | None,
    QueryParameter(
        max_length=40,
        schema_extra={"anyOf": [{"pattern": "^[0-9]{1,19}$"}, {"format": "date-time"}]},
        description="a log offset of the cluster's partition, or an RFC 3339 time: answer as "
        "the projection stood right after that record",
    ),
]
# Path parameters as the contract spells them (service.domain.events; the server checks them
# with the contract's own types), described in /openapi.json for clients and fuzzers; the
# patterns and lengths are Litestar's checks, which ``service.api.fast_path`` makes too.
_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
CLUSTER_PATTERN = f"^{_LABEL}$"
CLUSTER_MAX = 63
NODE_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
NODE_MAX = 253
OWNER_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]+$"
OWNER_MAX = 512
ClusterPath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=CLUSTER_MAX,
        pattern=CLUSTER_PATTERN,
        description="a cluster's name",
    ),
]
NodePath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=NODE_MAX,
        pattern=NODE_PATTERN,
        description="a node's name",
    ),
]
IpPath = Annotated[
    str,
    PathParameter(
        description="a pod address, IPv4 or IPv6, as the allocator reads one",
        schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
]
OwnerPath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=OWNER_MAX,
        pattern=OWNER_PATTERN,
        description="the owner (namespace/pod, router, health), URL-encoded or not",
    ),
]
Flag = Annotated[
    bool | None, QueryParameter(description="with (true) or without (false); omit: both")
]

ERRORS: dict[int, ResponseSpec] = {
    status: ResponseSpec(
        data_container=models.Problem,
        media_type=problems.PROBLEM_JSON,
        description=description,
        generate_examples=False,
    )
    for status, description in (
        (400, "A parameter is not valid: the detail names it"),
        (404, "No such cluster, node, address or owner (as of the basis)"),
        (414, "The query string is longer than 2048 bytes"),
        (503, "The projection database cannot answer now (Retry-After)"),
    )
}


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """What the routes need besides the reader."""

    forecast_window: datetime.timedelta
    max_lag: int


def _reader(state: State) -> ports.ProjectionReader:
    reader: ports.ProjectionReader = state.reader
    return reader


async def _partition(state: State, cluster: str) -> int:
    return await partition_of(_reader(state), state.partitions, cluster)


async def partition_of(reader: ports.ProjectionReader, known: dict[str, int], cluster: str) -> int:
    """The cluster's partition (404 when it does not exist); cached in ``known`` (the
    application's one map), it never changes."""
    if cluster not in known:
        known.update(await reader.cluster_partitions())
    if cluster not in known:
        raise errors.QueryNotFoundError(f"no cluster {cluster}")
    return known[cluster]


@dataclass(frozen=True, slots=True)
class Asked:
    """What a lookup's answer depends on besides its parameters: the path and the query
    string as received (the ETag's), and ``If-None-Match``. Litestar's request gives them to
    the routes here, ``service.api.fast_path`` the ASGI scope."""

    path: str
    query: str
    if_none_match: str | None

    @classmethod
    def of(cls, request: Request[Any, Any, Any]) -> Asked:
        return cls(request.url.path, request.url.query, request.headers.get("if-none-match"))


@dataclass(slots=True)
class Answer:
    """A request's cluster, partition, basis and ETag; makes the responses."""

    asked: Asked
    cluster: str
    partition: int
    basis: int
    tag: str

    @property
    def fresh(self) -> bool:
        """Whether the client holds this answer already (``If-None-Match``)."""
        return reading.matches(self.asked.if_none_match, self.tag)

    def headers(self) -> dict[str, str]:
        return {
            "ETag": self.tag,
            "X-Ipledger-Partition": str(self.partition),
            "X-Ipledger-Offset": str(self.basis),
            "Cache-Control": "no-cache",
        }

    def not_modified(self) -> Response[Any]:
        return Response(b"", status_code=304, headers=self.headers())

    def ok(self, body: Any) -> Response[Any]:
        return Response(body, headers=self.headers())

    @property
    def stamp(self) -> models.Basis:
        return models.Basis(partition=self.partition, offset=self.basis)


async def _answer(
    request: Request[Any, Any, Any],
    state: State,
    cluster: str,
    as_of: str | None,
    after: reading.Cursor | None = None,
) -> Answer:
    name = reading.cluster_name(cluster)
    wanted = reading.as_of(as_of)
    partition = await _partition(state, name)
    if after is not None and isinstance(after.basis, int) and after.basis >= 0:
        at = await reading.basis(_reader(state), name, partition, after.basis)
    else:
        at = await reading.basis(_reader(state), name, partition, wanted)
    tag = reading.etag(request.url.path, request.url.query, [(partition, at)])
    return Answer(Asked.of(request), name, partition, at, tag)


async def _based(
    reader: ports.ProjectionReader,
    known: dict[str, int],
    asked: Asked,
    cluster: str,
    as_of: str | None,
    after: reading.Cursor | None,
    read: Callable[[ports.ProjectionReader, str, int, ports.Wanted], Awaitable[ports.Based[_T]]],
) -> tuple[Answer, _T]:
    """``_answer`` and the answer, read together (``ports.Based``: one statement): the basis
    and the ETag as ``_answer`` settles them, the 304 check left to the caller."""
    name = reading.cluster_name(cluster)
    wanted = reading.as_of(as_of)
    partition = await partition_of(reader, known, name)
    if after is not None and isinstance(after.basis, int) and after.basis >= 0:
        wanted = after.basis
    based = await read(reader, name, partition, wanted)
    at = reading.settled(name, partition, wanted, based.applied, based.basis)
    tag = reading.etag(asked.path, asked.query, [(partition, at)])
    return Answer(asked, name, partition, at, tag), based.value


# An answer of a lookup (``node_lookup``, ``ip_lookup``, ``owner_lookup``): the request's
# basis and ETag, and the body, or None when ``If-None-Match`` names the ETag (304). Both the
# Litestar routes and ``service.api.fast_path`` make their responses from it.
Lookup = tuple[Answer, _T | None]


def _reply(lookup: Lookup[Any]) -> Response[Any]:
    answer, body = lookup
    return answer.not_modified() if body is None else answer.ok(body)


def _time(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else reading.rfc3339(moment)


def _event(offset: int, time: datetime.datetime, event_id: str | None) -> models.Event:
    return models.Event(offset=offset, time=reading.rfc3339(time), event_id=event_id)


def _index(start: reading.Cursor | None, default: int) -> int:
    """A cursor's position in a list (or offset): a whole number, else 400."""
    if start is None:
        return default
    if not isinstance(start.key, int) or start.key < 0:
        raise errors.QueryInvalidError("after is not a cursor of this list")
    return start.key


def _page(items: Sequence[Any], limit: int) -> tuple[list[Any], bool]:
    """The first ``limit`` of ``items`` (read with one more), and whether more follow."""
    return list(items[:limit]), len(items) > limit


# --- clusters -------------------------------------------------------------------------------------


def _cluster(view: ports.ClusterAt, pool_v4: list[str], pool_v6: list[str]) -> models.Cluster:
    return models.Cluster(
        name=view.name,
        partition=view.partition,
        basis=models.Basis(partition=view.partition, offset=view.offset),
        pool=models.Pool(
            ipv4_cidrs=pool_v4,
            ipv4_mask=view.ipv4_mask,
            ipv6_cidrs=pool_v6,
            ipv6_mask=view.ipv6_mask,
            configured_at=view.pool_offset,
        ),
        nodes=models.NodeCounts(
            total=view.nodes,
            with_cidr=view.nodes_with_cidrs,
            waiting=view.nodes_waiting,
            in_error=view.nodes_in_error,
            in_conflict=view.nodes_in_conflict,
        ),
    )


def _cluster_body(view: ports.ClusterAt) -> models.Cluster:
    elements = view.elements
    return _cluster(
        view,
        [reading.network(e.cidr) for e in elements if e.cidr.version == 4],
        [reading.network(e.cidr) for e in elements if e.cidr.version == 6],
    )


@get("/v1/clusters", responses=ERRORS, summary="Every cluster: pool in force, node counts")
async def list_clusters(
    request: Request[Any, Any, Any],
    state: State,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response[models.ClusterList]:
    """Clusters by name. ``as_of`` applies to each cluster's own partition."""
    wanted = reading.as_of(as_of)
    start = reading.read_cursor(after)
    reader = _reader(state)
    partitions = await reader.cluster_partitions()
    state.partitions.update(partitions)
    names = sorted(partitions, key=lambda name: name.encode())
    if start is not None:
        names = [name for name in names if name.encode() > str(start.key).encode()]
    bases: dict[int, int] = {}
    for partition in sorted({partitions[name] for name in names}):
        try:
            bases[partition] = await reading.basis(reader, "", partition, wanted)
        except errors.QueryNotFoundError:
            continue
    tag = reading.etag(request.url.path, request.url.query, sorted(bases.items()))
    headers = {
        "ETag": tag,
        "X-Ipledger-Offset": ", ".join(f"{p}={o}" for p, o in sorted(bases.items())),
        "Cache-Control": "no-cache",
    }
    if reading.matches(request.headers.get("if-none-match"), tag):
        not_modified: Response[Any] = Response(b"", status_code=304, headers=headers)
        return not_modified
    items: list[models.Cluster] = []
    more = False
    for name in names:
        partition = partitions[name]
        if partition not in bases:
            continue
        view = await reader.cluster_at(name, bases[partition])
        if view is None:
            continue
        if len(items) == limit:
            more = True
            break
        items.append(_cluster_body(view))
    body = models.ClusterList(
        items=items,
        next=reading.cursor(items[-1].name, -1) if more and items else None,
        basis=[models.Basis(partition=p, offset=o) for p, o in sorted(bases.items())],
    )
    return Response(body, headers=headers)


@get("/v1/clusters/{cluster:str}", responses=ERRORS, summary="One cluster")
async def get_cluster(
    request: Request[Any, Any, Any], state: State, cluster: ClusterPath, as_of: AsOf = None
) -> Response[models.Cluster]:
    """The pool in force and the node counts (total, with a CIDR, waiting, error, conflict)."""
    answer = await _answer(request, state, cluster, as_of)
    if answer.fresh:
        return answer.not_modified()
    view = await _cluster_at(state, answer)
    return answer.ok(_cluster_body(view))


async def _cluster_at(state: State, answer: Answer) -> ports.ClusterAt:
    view = await _reader(state).cluster_at(answer.cluster, answer.basis)
    if view is None:
        raise errors.QueryNotFoundError(
            f"cluster {answer.cluster} did not exist yet at offset {answer.basis}"
        )
    return view


@get("/v1/clusters/{cluster:str}/pools", responses=ERRORS, summary="Pool elements and their use")
async def list_pools(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response[models.PoolList]:
    """Each element: node CIDRs total/used/free, pod addresses, the exhaustion forecast."""
    start = reading.read_cursor(after)
    answer = await _answer(request, state, cluster, as_of, start)
    if answer.fresh:
        return answer.not_modified()
    view = await _cluster_at(state, answer)
    config: ApiConfig = state.config
    skip = _index(start, 0)
    elements = list(view.elements)[skip:]
    page, more = _page(elements, limit)
    outlooks = await forecast.pool_forecasts(
        _reader(state),
        cluster=answer.cluster,
        partition=answer.partition,
        at=answer.basis,
        elements=tuple(page),
        window=config.forecast_window,
    )
    if outlooks is None:
        raise errors.QueryNotFoundError(
            f"partition {answer.partition} has no record at offset {answer.basis}"
        )
    items = []
    for element, outlook in zip(page, outlooks, strict=True):
        items.append(
            models.PoolElement(
                family="ipv4" if element.cidr.version == 4 else "ipv6",
                cidr=reading.network(element.cidr),
                mask_size=element.mask,
                node_cidrs=models.NodeCidrs(
                    total=element.total, used=element.used, free=element.free
                ),
                pod_addresses=models.PodAddresses(
                    used=element.pod_ips, capacity=element.pod_ip_capacity
                ),
                forecast=models.Forecast(
                    window_seconds=config.forecast_window.total_seconds(),
                    node_cidrs_per_day=outlook.rate_per_s * 86_400,
                    seconds_left=outlook.seconds_left,
                    exhausts_at=(
                        None
                        if outlook.exhausted_at is None
                        else reading.rfc3339(outlook.exhausted_at)
                    ),
                ),
            )
        )
    body = models.PoolList(
        items=items,
        next=reading.cursor(skip + len(page), answer.basis) if more else None,
        basis=answer.stamp,
    )
    return answer.ok(body)


# --- nodes ----------------------------------------------------------------------------------------


def _node(view: ports.NodeAt) -> models.Node:
    use: dict[str, models.FamilyUse] = {}
    for cidr in view.pod_cidrs:
        used = view.ipv4_pod_ips if cidr.version == 4 else view.ipv6_pod_ips
        use[_FAMILY[cidr.version]] = models.FamilyUse(
            used=used, free=max(cidr.num_addresses - 2 - used, 0)
        )
    return models.Node(
        name=view.name,
        pod_cidrs=[reading.network(cidr) for cidr in view.pod_cidrs],
        error=view.error,
        conflict=view.conflict,
        addresses=[str(address) for address in view.addresses],
        waiting=view.waiting,
        pinned=view.pinned,
        pod_addresses=use,
        last_change=_event(view.changed_offset, view.changed_time, view.changed_event_id),
    )


@get("/v1/clusters/{cluster:str}/nodes", responses=ERRORS, summary="A cluster's nodes")
async def list_nodes(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
    error: Flag = None,
    conflict: Flag = None,
    waiting: Flag = None,
    prefix: Annotated[
        str, QueryParameter(max_length=253, description="names starting with this")
    ] = "",
) -> Response[models.NodeList]:
    """Live nodes by name (bytewise), filtered by error, conflict, waiting and name prefix."""
    start = reading.read_cursor(after)
    answer = await _answer(request, state, cluster, as_of, start)
    if answer.fresh:
        return answer.not_modified()
    views = await _reader(state).nodes_at(
        answer.cluster,
        answer.basis,
        error=error,
        conflict=conflict,
        waiting=waiting,
        prefix=prefix,
        after="" if start is None else str(start.key),
        limit=limit + 1,
    )
    page, more = _page(views, limit)
    body = models.NodeList(
        items=[_node(view) for view in page],
        next=reading.cursor(page[-1].name, answer.basis) if more else None,
        basis=answer.stamp,
    )
    return answer.ok(body)


@get("/v1/clusters/{cluster:str}/nodes/{node:str}", responses=ERRORS, summary="One node")
async def get_node(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    node: NodePath,
    as_of: AsOf = None,
) -> Response[models.NodeDetail]:
    """PodCIDRs, error, conflict, addresses, pod addresses used/free per family, last change."""
    return _reply(
        await node_lookup(_reader(state), state.partitions, Asked.of(request), cluster, node, as_of)
    )


async def node_lookup(
    reader: ports.ProjectionReader,
    known: dict[str, int],
    asked: Asked,
    cluster: str,
    node: str,
    as_of: str | None,
) -> Lookup[models.NodeDetail]:
    """``get_node``'s answer (``Lookup``)."""
    name = reading.node_name(node)
    answer, view = await _based(
        reader,
        known,
        asked,
        cluster,
        as_of,
        None,
        lambda reader, cluster, partition, wanted: reader.node_based(
            cluster, partition, name, wanted
        ),
    )
    if answer.fresh:
        return answer, None
    if view is None:
        raise errors.QueryNotFoundError(
            f"cluster {answer.cluster} has no node {name} at offset {answer.basis}"
        )
    return answer, models.NodeDetail(basis=answer.stamp, node=_node(view))


# --- addresses and owners -------------------------------------------------------------------------


def _as_of(holdings: Sequence[ports.Holding], at: int) -> list[models.Holding]:
    """The holdings that had begun at ``at``; one that ended after it is still held then."""
    shown = []
    for holding in holdings:
        if holding.from_offset > at:
            continue
        ended = holding.to_offset is not None and holding.to_offset <= at
        shown.append(
            models.Holding(
                address=str(holding.address),
                node=holding.node,
                owner=holding.owner,
                since=_event(holding.from_offset, holding.from_time, holding.from_event_id),
                until=(
                    _event(holding.to_offset, holding.to_time, holding.to_event_id)
                    if ended and holding.to_offset is not None and holding.to_time is not None
                    else None
                ),
            )
        )
    return shown


@get("/v1/clusters/{cluster:str}/ips/{ip:str}", responses=ERRORS, summary="Who holds an address")
async def get_ip(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    ip: IpPath,
    as_of: AsOf = None,
) -> Response[models.Holder]:
    """The current holder (node, owner, since); 404 when nobody holds it."""
    return _reply(
        await ip_lookup(_reader(state), state.partitions, Asked.of(request), cluster, ip, as_of)
    )


async def ip_lookup(
    reader: ports.ProjectionReader,
    known: dict[str, int],
    asked: Asked,
    cluster: str,
    ip: str,
    as_of: str | None,
) -> Lookup[models.Holder]:
    """``get_ip``'s answer (``Lookup``)."""
    value = reading.address(ip)
    answer, holdings = await _based(
        reader, known, asked, cluster, as_of, None, _address_history(value)
    )
    if answer.fresh:
        return answer, None
    history = _as_of(holdings, answer.basis)
    held = [holding for holding in history if holding.until is None]
    if not held:
        raise errors.QueryNotFoundError(
            f"nobody holds {value} in cluster {answer.cluster} at offset {answer.basis}"
        )
    return answer, models.Holder(basis=answer.stamp, address=str(value), holder=held[-1])


@get(
    "/v1/clusters/{cluster:str}/ips/{ip:str}/history",
    responses=ERRORS,
    summary="Every holding of an address",
)
async def get_ip_history(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    ip: IpPath,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response[models.HoldingList]:
    """Every holding, ended and current, in the order they started."""
    value = reading.address(ip)
    start = reading.read_cursor(after)
    answer, holdings = await _based(
        _reader(state),
        state.partitions,
        Asked.of(request),
        cluster,
        as_of,
        start,
        _address_history(value),
    )
    if answer.fresh:
        return answer.not_modified()
    history = _as_of(holdings, answer.basis)
    return answer.ok(_holding_page(history, start, limit, answer))


def _address_history(
    value: ports.Address,
) -> Callable[[ports.ProjectionReader, str, int, ports.Wanted], Awaitable[ports.Based[Any]]]:
    def read(
        reader: ports.ProjectionReader, cluster: str, partition: int, wanted: ports.Wanted
    ) -> Awaitable[ports.Based[list[ports.Holding]]]:
        return reader.address_history_based(cluster, partition, value, wanted)

    return read


def _holding_page(
    holdings: list[models.Holding], start: reading.Cursor | None, limit: int, answer: Answer
) -> models.HoldingList:
    skip = _index(start, 0)
    page, more = _page(holdings[skip:], limit)
    return models.HoldingList(
        items=page,
        next=reading.cursor(skip + len(page), answer.basis) if more else None,
        basis=answer.stamp,
    )


@get(
    "/v1/clusters/{cluster:str}/owners/{owner:path}",
    responses=ERRORS,
    summary="What an owner holds, and its history",
)
async def get_owner(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    owner: OwnerPath,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
    history: Annotated[
        bool, QueryParameter(description="every holding, ended too, in the order they started")
    ] = False,
) -> Response[models.HoldingList]:
    """The addresses ``owner`` (``namespace/pod``, URL-encoded or not) holds, by address; with
    ``history=true`` every holding it had."""
    return _reply(
        await owner_lookup(
            _reader(state),
            state.partitions,
            Asked.of(request),
            cluster,
            owner,
            as_of,
            after=after,
            limit=limit,
            history=history,
        )
    )


async def owner_lookup(
    reader: ports.ProjectionReader,
    known: dict[str, int],
    asked: Asked,
    cluster: str,
    owner: str,
    as_of: str | None,
    *,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
    history: bool = False,
) -> Lookup[models.HoldingList]:
    """``get_owner``'s answer (``Lookup``); ``owner`` as the route's path parameter gives it
    (a leading ``/`` is not part of the name)."""
    name = reading.owner_name(owner.removeprefix("/"))
    start = reading.read_cursor(after)
    answer, began = await _based(
        reader,
        known,
        asked,
        cluster,
        as_of,
        start,
        lambda reader, cluster, partition, wanted: reader.owner_history_based(
            cluster, partition, name, wanted
        ),
    )
    if answer.fresh:
        return answer, None
    holdings = _as_of(began, answer.basis)
    if not history:
        holdings = sorted(
            (holding for holding in holdings if holding.until is None),
            key=lambda holding: _address_key(holding.address),
        )
    return answer, _holding_page(holdings, start, limit, answer)


def _address_key(text: str) -> tuple[int, int]:
    value = reading.address(text)
    return value.version, int(value)


# --- the audit trail ------------------------------------------------------------------------------


def _decision(row: ports.CommittedDecision) -> models.Decision:
    return models.Decision(
        offset=row.offset,
        event_id=row.event_id,
        type=row.type,
        error=row.error,
        decision=json.loads(row.body),
        event_time=_time(row.event_time),
        log_time=_time(row.log_time),
        applied_at=reading.rfc3339(row.applied_at),
    )


def _text(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), False


def _rejection(row: ports.Rejection) -> models.Rejection:
    raw, utf8 = _text(row.raw)
    return models.Rejection(
        offset=row.offset,
        reason=row.reason,
        key=None if row.key is None else _text(row.key)[0],
        raw=raw,
        raw_encoding="utf-8" if utf8 else "base64",
        rejected_at=reading.rfc3339(row.rejected_at),
    )


# At most 2**53 - 1, the largest integer every JSON reader takes exactly (a client in JavaScript,
# or one that formats numbers as doubles: the fuzzer sent 2**62 as 4611686018427388000, which
# is above it); offsets are far below either.
FromOffset = Annotated[
    int,
    QueryParameter(ge=0, le=2**53 - 1, description="the first log offset wanted (default 0)"),
]


@get("/v1/clusters/{cluster:str}/decisions", responses=ERRORS, summary="A cluster's decisions")
async def list_decisions(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    from_offset: FromOffset = 0,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response[models.DecisionList]:
    """The decisions about the cluster, by offset, from ``from_offset`` up to the basis."""
    start = reading.read_cursor(after)
    answer = await _answer(request, state, cluster, as_of, start)
    if answer.fresh:
        return answer.not_modified()
    first = _index(start, from_offset)
    rows = await _reader(state).cluster_decisions(answer.cluster, first, answer.basis, limit + 1)
    page, more = _page(rows, limit)
    body = models.DecisionList(
        items=[_decision(row) for row in page],
        next=reading.cursor(page[-1].offset + 1, answer.basis) if more else None,
        basis=answer.stamp,
    )
    return answer.ok(body)


@get("/v1/clusters/{cluster:str}/rejections", responses=ERRORS, summary="A cluster's rejections")
async def list_rejections(
    request: Request[Any, Any, Any],
    state: State,
    cluster: ClusterPath,
    from_offset: FromOffset = 0,
    as_of: AsOf = None,
    after: After = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response[models.RejectionList]:
    """The records naming the cluster that were not applied, with the reason and the raw
    record, by offset."""
    start = reading.read_cursor(after)
    answer = await _answer(request, state, cluster, as_of, start)
    if answer.fresh:
        return answer.not_modified()
    first = _index(start, from_offset)
    rows = await _reader(state).cluster_rejections(answer.cluster, first, answer.basis, limit + 1)
    page, more = _page(rows, limit)
    body = models.RejectionList(
        items=[_rejection(row) for row in page],
        next=reading.cursor(page[-1].offset + 1, answer.basis) if more else None,
        basis=answer.stamp,
    )
    return answer.ok(body)


ROUTES = [
    list_clusters,
    get_cluster,
    list_pools,
    list_nodes,
    get_node,
    get_ip,
    get_ip_history,
    get_owner,
    list_decisions,
    list_rejections,
]
