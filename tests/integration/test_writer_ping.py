"""The writer's pool pings a connection only when it has been idle (``driver.engine(ping_idle_s)``).

A commit is one round trip, so the three of SQLAlchemy's pre-ping before every one were most of
its wait; the writer pings only connections that were back in the pool for ``ping_idle_s`` or
more. Checked against a real server by terminating the pooled connection's backend: after the
idle time, the ping finds it gone and the pool hands out a new one, unseen by the caller; within
it, nothing is pinged and the caller's statement is the one that fails (as a connection that
dies between a ping and its use always did).
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import errors
from service.adapters.postgres import driver

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

IDLE_S = 60.0
_translate = driver.Translation(errors.ProjectionError)


async def _backend_pid(engine: AsyncEngine) -> int:
    async with driver.connection(engine, _translate, "asking", transaction=False) as db:
        pid: int = await db.fetchval("SELECT pg_backend_pid()")
    return pid


async def _terminate(dsn: str, pid: int) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()


async def test_an_idle_connection_is_pinged_and_replaced(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = driver.engine(pg_dsn, pool_size=1, ping_idle_s=IDLE_S)
    try:
        first = await _backend_pid(engine)
        await _terminate(pg_dsn, first)
        # Later than the idle time since the connection went back (the pool's clock is
        # time.monotonic, as driver reads it).
        now = driver.time.monotonic()
        monkeypatch.setattr(driver.time, "monotonic", lambda: now + IDLE_S + 1)
        second = await _backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_back_a_moment_ago_is_not_pinged(pg_dsn: str) -> None:
    engine = driver.engine(pg_dsn, pool_size=1, ping_idle_s=IDLE_S)
    try:
        first = await _backend_pid(engine)
        await _terminate(pg_dsn, first)
        with pytest.raises(errors.ProjectionError):
            await _backend_pid(engine)
        # That connection was discarded: the next one is new and works.
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()
