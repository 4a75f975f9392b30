"""Bring a PostgreSQL database to the schema of ``schema.py`` by running the Alembic migrations.

Called by the composition root before the service uses a database, and by the test harness to
build its template database. It drives Alembic programmatically over an asyncpg connection (there
is no synchronous driver) and configures Alembic in code, so it neither reads alembic.ini nor
touches logging. The migration scripts live in ``migrations/`` at the repository root, next to
the ``service`` package they import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic import util as alembic_util
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from service import errors

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(script_location: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic ``Config`` for the migrations, built without reading alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    return config


async def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` to the database at ``dsn`` (``postgresql://``)."""
    await _run(dsn, command.upgrade, revision)


async def downgrade(dsn: str, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``"base"``: an empty schema)."""
    await _run(dsn, command.downgrade, revision)


async def _run(dsn: str, alembic_command: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config()

    def run(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        alembic_command(config, revision)

    engine = create_async_engine(sa.make_url(dsn).set(drivername="postgresql+asyncpg"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    except (sa.exc.SQLAlchemyError, alembic_util.CommandError, OSError) as exc:
        raise errors.MigrationError(
            f"migrating {_without_password(dsn)} to {revision}: {exc}"
        ) from exc
    finally:
        await engine.dispose()


def _without_password(dsn: str) -> str:
    return sa.make_url(dsn).render_as_string(hide_password=True)
