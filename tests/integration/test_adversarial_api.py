"""The query API against hostile parameters: every answer a response, none a server error.

``as_of`` takes an RFC 3339 time; the reader binds it as a ``timestamptz``, which the driver
computes in UTC. The times at the ends of the range (the same ones the event contract must
refuse, tests/integration/test_adversarial_records.py) must be answered as any other time: a
400 naming the parameter when no instant can be stored, never a 500.
"""

from __future__ import annotations

import pytest

from tests.integration.test_api import World, _get, world  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio

PATHS = [
    "/v1/clusters",
    "/v1/clusters/default",
    "/v1/clusters/default/pools",
    "/v1/clusters/default/nodes",
    "/v1/clusters/default/ips/10.4.0.1",
    "/v1/clusters/default/ips/10.4.0.1/history",
    "/v1/clusters/default/owners/shop/cart-1",
]
EDGE_TIMES = [
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+00:01",  # year 0 in UTC
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
]


@pytest.mark.parametrize("when", EDGE_TIMES)
async def test_as_of_at_the_ends_of_time_is_answered_not_a_server_error(
    world: World,  # noqa: F811
    when: str,
) -> None:
    for path in PATHS:
        response = await world.client.get(path, params={"as_of": when})
        assert response.status_code < 500, (path, response.status_code, response.text)
        if response.status_code == 400:
            assert "as_of" in response.text, response.text


async def test_as_of_just_inside_the_ends_is_answered(world: World) -> None:  # noqa: F811
    for path in PATHS[:3]:
        await _get(world, path, as_of="9999-12-31T22:00:00Z")
        await _get(
            world, path, 404 if path != "/v1/clusters" else 200, as_of="0001-01-02T00:00:00Z"
        )
