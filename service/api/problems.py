"""RFC 9457 problem details for every error the query API answers, and never a stack trace.

Registered by ``service.api.app`` as Litestar's exception handlers: a parameter Litestar's own
validation refused, or ``errors.QueryInvalidError``, is a 400 naming the parameter and what was
wrong with it; ``errors.QueryNotFoundError`` and an unknown route a 404;
``errors.ProjectionError`` (the database cannot be reached, or a statement ran past its
timeout) and ``errors.LogError`` (the log's end cannot be read, for /readyz) a 503 with
``Retry-After``; any other exception a 500 whose body says only that, while the log gets the
traceback. ``answer_for`` is the same answer without Litestar, for ``service.api.fast_path``.
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


def body(path: str, status: int, detail: str) -> bytes:
    """The problem+json body for ``status`` with ``detail``, about ``path``."""
    return msgspec.json.encode(
        models.Problem(
            type="about:blank",
            title=_TITLES.get(status, "Error"),
            status=status,
            detail=detail,
            instance=path,
        )
    )


def headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A problem's headers, before its content type and length."""
    return {"Cache-Control": "no-store", **(extra or {})}


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    extra: dict[str, str] | None = None,
) -> Response[bytes]:
    """The problem+json response for ``status`` with ``detail``."""
    return Response(
        body(request.url.path, status, detail),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers(extra),
    )


def answer_for(method: str, path: str, exc: Exception) -> tuple[int, dict[str, str], bytes]:
    """What the handlers below answer for ``exc`` raised by a route (status, headers before
    the content type and length, body), logged as they log it; for the exceptions a route
    raises, not Litestar's own (``ValidationException``, ``HTTPException``)."""
    if isinstance(exc, errors.QueryInvalidError):
        status, detail, extra = 400, str(exc), None
    elif isinstance(exc, errors.QueryNotFoundError):
        status, detail, extra = 404, str(exc), None
    elif isinstance(exc, errors.ProjectionError):
        log.warning("%s %s: %s", method, path, exc)
        status = 503
        detail = f"the projection database cannot answer now; retry in {RETRY_AFTER_S} s"
        extra = {"Retry-After": str(RETRY_AFTER_S)}
    elif isinstance(exc, errors.LogError):
        log.warning("%s %s: %s", method, path, exc)
        status = 503
        detail = f"the event log's end cannot be read now; retry in {RETRY_AFTER_S} s"
        extra = {"Retry-After": str(RETRY_AFTER_S)}
    else:
        log.error("%s %s failed", method, path, exc_info=exc)
        status, detail, extra = 500, "the server failed to answer; see its log", None
    return status, headers(extra), body(path, status, detail)


def _answered(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    status, extra, content = answer_for(request.method, request.url.path, exc)
    return Response(content, status_code=status, media_type=PROBLEM_JSON, headers=extra)


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


HANDLERS: Any = {
    ValidationException: _validation,
    errors.QueryInvalidError: _answered,
    errors.QueryNotFoundError: _answered,
    errors.ProjectionError: _answered,
    errors.LogError: _answered,
    HTTPException: _http,
    Exception: _answered,
}
