"""The Alembic migrations build exactly the schema declared in ``schema.py``, and undo it.

Runs ``alembic upgrade head`` on an empty database of the real server and diffs the result
against the one ``MetaData`` with Alembic's autogenerate comparison: a table, column, index or
constraint added on one side only fails here, before it can reach a deployment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from service.adapters.postgres import migrate, schema

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

REPOSITORY = Path(__file__).resolve().parents[2]


async def _schema_diff(dsn: str, metadata: sa.MetaData) -> list[Any]:
    engine = create_async_engine(sa.make_url(dsn).set(drivername="postgresql+asyncpg"))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: list(compare_metadata(MigrationContext.configure(sync), metadata))
            )
    finally:
        await engine.dispose()


async def _table_names(dsn: str) -> set[str]:
    engine = create_async_engine(sa.make_url(dsn).set(drivername="postgresql+asyncpg"))
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_head_builds_exactly_the_declared_schema(pg_empty_dsn: str) -> None:
    await migrate.upgrade(pg_empty_dsn)

    assert await _schema_diff(pg_empty_dsn, schema.metadata) == []
    assert set(schema.metadata.tables) <= await _table_names(pg_empty_dsn)


async def test_the_comparison_notices_a_schema_the_migrations_lack(pg_empty_dsn: str) -> None:
    # Guards the test above against passing vacuously (say, if the comparison saw no tables).
    await migrate.upgrade(pg_empty_dsn)
    drifted = sa.MetaData(naming_convention=schema.NAMING_CONVENTION)
    for table in schema.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["log_head"].append_column(sa.Column("undeclared", sa.Text))

    diff = await _schema_diff(pg_empty_dsn, drifted)

    assert [(op[0], op[3].name) for op in diff] == [("add_column", "undeclared")]


async def test_downgrade_base_removes_every_table_and_upgrade_rebuilds_them(
    pg_empty_dsn: str,
) -> None:
    await migrate.upgrade(pg_empty_dsn)

    await migrate.downgrade(pg_empty_dsn, "base")
    assert await _table_names(pg_empty_dsn) == {"alembic_version"}

    await migrate.upgrade(pg_empty_dsn)
    assert await _schema_diff(pg_empty_dsn, schema.metadata) == []


def test_the_alembic_command_line_migrates_and_finds_nothing_to_generate(
    pg_empty_dsn: str,
) -> None:
    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"dsn={pg_empty_dsn}", *args],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    upgraded = alembic("upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    checked = alembic("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout
