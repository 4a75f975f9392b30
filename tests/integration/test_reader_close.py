"""Closing the reader ends even when one of its connections never comes back (real PostgreSQL).

asyncpg's ``Pool.close`` waits for every acquired connection with no bound of its own; the
reader's close bounds that wait (``reader.CLOSE_TIMEOUT_S``) and then terminates the pool, so
that Ctrl-C in ``ipledger status --watch`` or the API's shutdown cannot hang on a statement
cancelled at the wrong moment.
"""

from __future__ import annotations

import logging

import anyio
import asyncpg
import pytest

from service.adapters.postgres import reader as pg_reader

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


async def test_close_terminates_a_connection_that_is_not_released(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pg_reader, "CLOSE_TIMEOUT_S", 0.5)
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    assert reader._statements is not None
    pool = await reader._statements.pool()
    held = await pool.acquire()  # never released, as a leaked connection would be
    assert await held.fetchval("SELECT 1") == 1
    with caplog.at_level(logging.WARNING), anyio.fail_after(10):
        await reader.close()
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # terminated with the pool
        await held.fetchval("SELECT 1")
    assert "closed by force" in caplog.text


async def test_close_of_released_connections_is_quiet(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    reader = pg_reader.PostgresProjectionReader.from_dsn(pg_dsn)
    assert reader._statements is not None
    pool = await reader._statements.pool()
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT 1") == 1
    with caplog.at_level(logging.WARNING), anyio.fail_after(10):
        await reader.close()
    assert "closed by force" not in caplog.text
