"""Test doubles that more than one test file uses: one copy each, found in one place.

A double only one file needs stays in that file, next to the test that explains it; once a
second file needs it, it moves here. The in-memory adapters that ship in the package
(``service.adapters.memory``, ``memory_projection``, ``kubernetes.memory``) are not doubles:
they pass the contract suites like every other adapter, and the tests use them as they are.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

import anyio

from service import ports
from service.adapters.postgres import projection as pg_projection


class ManualClock:
    """A database clock that moves only when the test moves it (``clock.now += ...``).

    Given to ``memory.MemoryProjectionTables(clock=...)``, it makes a lease expire when the
    test says so, not after a sleep.
    """

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 11, 17, 9, 0, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


class SlowLoadingProjection(pg_projection.PostgresProjection):
    """A PostgreSQL projection whose load outlasts its lease, as loading millions of addresses
    does; ``loads`` counts the loads begun."""

    loads = 0

    async def load(self, partitions: Sequence[int] | None = None) -> ports.Loaded:
        self.loads += 1
        # Stands for work that takes this long, not for waiting on anything.
        await anyio.sleep(3 * self.lease_ttl_s)
        return await super().load(partitions)


def intent(
    name: str,
    version: int,
    *cidrs: str,
    error: str | None = None,
    deleted: bool = False,
    pod_ips: dict[str, str] | None = None,
) -> ports.NodeIntent:
    """A node as the projection hands it to the sync side, from plain strings."""
    return ports.NodeIntent(
        name=name,
        version=version,
        deleted=deleted,
        pod_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
        error=error,
        pod_ips=(
            {ipaddress.ip_address(a): o for a, o in pod_ips.items()}
            if pod_ips is not None
            else None
        ),
    )
