"""RFC 9457 problem details for every error the query API answers, and never a stack trace.

Registered by ``service.api.app`` as Litestar's exception handlers: a parameter Litestar's own
validation refused, or ``errors.QueryInvalidError``, is a 400 naming the parameter and what was
wrong with it; ``errors.QueryNotFoundError`` and an unknown route a 404;
``errors.ProjectionError`` (the database cannot be reached, or a statement ran past its
timeout) and ``errors.LogError`` (the log's end cannot be read, for /readyz) a 503 with
``Retry-After``; any other exception a 500 whose body says only that, while the log gets the
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from service import errors
from service.api import models

log = logging.getLogger("ipledger.api")
PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before asking again when the database is unreachable.
RETRY_AFTER_S = 5
_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    414: "URI too long",
    431: "Request header fields too large",
    500: "Internal error",
    503: "Service unavailable",
}


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """The problem+json response for ``status`` with ``detail``."""
    body = models.Problem(
        type="about:blank",
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request.url.path,
    )
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    reasons = [
        f"{_source(item.get('source'))} parameter {item.get('key')!r}: {item.get('message')}"
        for item in extra
        if isinstance(item, dict)
    ]
    return problem(request, 400, "; ".join(reasons) or "the request is not valid")


def _source(source: object) -> str:
    # Litestar names it with its ParamType enum ("path", "query").
    return str(getattr(source, "value", source) or "request")


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status == 404:
        return problem(request, 404, f"no such resource: {request.url.path}")
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
        return problem(request, status, "the server could not answer; see its log")
    return problem(request, status, str(exc.detail))


def _invalid(request: Request[Any, Any, Any], exc: errors.QueryInvalidError) -> Response[bytes]:
    return problem(request, 400, str(exc))


def _not_found(request: Request[Any, Any, Any], exc: errors.QueryNotFoundError) -> Response[bytes]:
    return problem(request, 404, str(exc))


def _unavailable(request: Request[Any, Any, Any], exc: errors.ProjectionError) -> Response[bytes]:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return problem(
        request,
        503,
        f"the projection database cannot answer now; retry in {RETRY_AFTER_S} s",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _log_unavailable(request: Request[Any, Any, Any], exc: errors.LogError) -> Response[bytes]:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return problem(
        request,
        503,
        f"the event log's end cannot be read now; retry in {RETRY_AFTER_S} s",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem(request, 500, "the server failed to answer; see its log")


HANDLERS: Any = {
    ValidationException: _validation,
    errors.QueryInvalidError: _invalid,
    errors.QueryNotFoundError: _not_found,
    errors.ProjectionError: _unavailable,
    errors.LogError: _log_unavailable,
    HTTPException: _http,
    Exception: _internal,
}
