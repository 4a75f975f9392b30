"""The lightkube adapter's edge without a server: HTTP failures become ``ClusterApiError``s.

The real API server never answers 429 and cannot be made to answer 503 or a proxy's HTML page on
demand, so the translation of those answers (status code, ``Retry-After`` as seconds or as an HTTP
date, retryable or not) is checked here with httpx2's ``MockTransport`` under lightkube's
client. Everything the server does answer on its own (SSA, schema errors, 404, restarts) is
tested against the real one in tests/contract and tests/integration.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
from collections.abc import Callable

import httpx2
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

from service import errors
from service.adapters.kubernetes import client as kube_client

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx2.Request], httpx2.Response]


def answering(handler: Handler) -> kube_client.KubernetesClusterClient:
    config = KubeConfig.from_one(cluster=Cluster(server="https://k8s.test"), user=User(token="t"))
    transport = httpx2.MockTransport(handler)
    return kube_client.KubernetesClusterClient(
        AsyncClient(config=config, transport=transport, field_manager=kube_client.FIELD_MANAGER)
    )


def status(code: int, message: str = "", headers: dict[str, str] | None = None) -> Handler:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body["message"] = message
    return lambda request: httpx2.Response(code, json=body, headers=headers)


async def apply_error(handler: Handler) -> errors.ClusterApiError:
    client = answering(handler)
    try:
        with pytest.raises(errors.ClusterApiError) as info:
            await client.apply_pod_cidrs("node-a", [ipaddress.IPv4Network("10.0.1.0/24")])
    finally:
        await client.close()
    return info.value


async def test_429_is_throttling_with_the_servers_retry_after() -> None:
    error = await apply_error(status(429, "too many requests", {"Retry-After": "3"}))

    assert isinstance(error, errors.ClusterApiThrottledError)
    assert (error.status, error.retry_after) == (429, 3.0)


async def test_retry_after_may_be_an_http_date() -> None:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)

    error = await apply_error(status(503, "", {"Retry-After": header}))

    assert isinstance(error, errors.ClusterApiUnavailableError)
    assert error.retry_after is not None and 25 <= error.retry_after <= 30


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (500, "etcdserver: request timed out", errors.ClusterApiUnavailableError),
        (503, "", errors.ClusterApiUnavailableError),
        (408, "", errors.ClusterApiUnavailableError),
        (500, "failed to create typed patch object: .spec.ipam", errors.ClusterApiRejectedError),
        (422, "CiliumNode.cilium.io is invalid", errors.ClusterApiRejectedError),
        (403, "forbidden", errors.ClusterApiRejectedError),
        (409, "conflict", errors.ClusterApiConflictError),
        (404, "not found", errors.ClusterApiNotFoundError),
    ],
)
async def test_status_codes_say_whether_to_retry(
    code: int, message: str, kind: type[errors.ClusterApiError]
) -> None:
    error = await apply_error(status(code, message))

    assert type(error) is kind
    assert error.status == code
    assert error.retry_after is None


async def test_a_body_that_is_not_a_status_still_gives_the_status_code() -> None:
    page = httpx2.Response(502, text="<html>bad gateway</html>", headers={"Retry-After": "1"})

    error = await apply_error(lambda request: page)

    assert isinstance(error, errors.ClusterApiUnavailableError)
    assert (error.status, error.retry_after) == (502, 1.0)


async def test_no_connection_and_timeouts_are_retryable() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    def stall(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    refused, stalled = await apply_error(refuse), await apply_error(stall)

    assert isinstance(refused, errors.ClusterApiUnavailableError) and refused.status is None
    assert isinstance(stalled, errors.ClusterApiUnavailableError)
    assert "timed out" in str(stalled)


async def test_get_and_delete_report_a_missing_object_as_none_and_false() -> None:
    client = answering(status(404, "not found"))
    try:
        assert await client.get_node("ghost") is None
        assert await client.delete_node("ghost") is False
    finally:
        await client.close()


def test_the_apply_bodies_name_only_ipledgers_fields() -> None:
    spec = kube_client.spec_body(
        "node-a",
        [ipaddress.ip_network("10.0.1.0/24"), ipaddress.ip_network("fd00::/120")],
        {ipaddress.ip_address("10.0.1.9"): "ns/b", ipaddress.ip_address("10.0.1.2"): "ns/a"},
    )
    status_body = kube_client.status_body("node-a", "")

    assert spec == {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": "node-a"},
        "spec": {
            "ipam": {
                "podCIDRs": ["10.0.1.0/24", "fd00::/120"],
                "pool": {"10.0.1.2": {"owner": "ns/a"}, "10.0.1.9": {"owner": "ns/b"}},
            }
        },
    }
    assert status_body["status"] == {"ipam": {"operator-status": {"error": ""}}}


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        # What an API server answers while it restarts: found by the restart test, where the
        # streamed (unread) body of a watch's error made the translation itself fail.
        (httpx2.Response(503, text="starting"), errors.ClusterApiUnavailableError),
        (httpx2.Response(429, headers={"Retry-After": "2"}), errors.ClusterApiThrottledError),
        (status(410, "too old resource version"), errors.ClusterApiGoneError),
    ],
)
async def test_a_watch_refused_is_translated_like_any_request(
    answer: httpx2.Response | Handler, kind: type[errors.ClusterApiError]
) -> None:
    client = answering(answer if callable(answer) else lambda request: answer)
    try:
        with pytest.raises(errors.ClusterApiError) as info:
            async for _ in client.watch_nodes("7"):
                pass
    finally:
        await client.close()
    assert type(info.value) is kind


async def test_a_410_inside_the_watch_stream_is_gone() -> None:
    gone = (
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure",'
        b'"message":"too old resource version: 7 (90)","reason":"Expired","code":410}}\n'
    )
    client = answering(lambda request: httpx2.Response(200, content=gone))
    try:
        with pytest.raises(errors.ClusterApiGoneError):
            async for _ in client.watch_nodes("7"):
                pass
    finally:
        await client.close()
