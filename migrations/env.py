"""Alembic environment for ipledger's PostgreSQL schema, driven through asyncpg only.

Run by Alembic: by the ``alembic`` command (URL from ``-x dsn=...`` or ``sqlalchemy.url`` in
alembic.ini) and by ``service.adapters.postgres.migrate``, which hands over an open connection in
``config.attributes["connection"]``. ``target_metadata`` is the one schema MetaData, so
``alembic revision --autogenerate`` diffs against it. There is no synchronous driver: online
migrations run on an async engine through ``AsyncConnection.run_sync`` (Alembic's async recipe).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from service.adapters.postgres import schema

target_metadata = schema.metadata


def database_url() -> sa.URL:
    """The URL given with ``-x dsn=`` or as ``sqlalchemy.url``, with the asyncpg driver."""
    url = context.get_x_argument(as_dictionary=True).get("dsn") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("no database: pass -x dsn=postgresql://... or set sqlalchemy.url")
    return sa.make_url(url).set(drivername="postgresql+asyncpg")


def run_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_new_engine() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    config = context.config
    shared = config.attributes.get("connection")
    if shared is not None:
        run_on(shared)
        return
    # Only the command line configures logging; a service migrating itself keeps its own.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        run_offline()
    else:
        asyncio.run(run_on_new_engine())


main()
