"""The read-only database role of the query API: created by ``ipledger init``, checked at start.

``ensure_read_only_role`` (called through ``service.bootstrap`` by ``ipledger init``, as the
owner of the schema) creates the role if it is missing, sets its password, and grants it
``CONNECT``, ``USAGE`` on the schema and ``SELECT`` on the projection's tables and views and the
table log's ``log_head`` (the log's end, for readiness), never on the raw records, and nothing
that writes. ``writable_tables`` is what the API asks, connected as that role, before it
serves: the tables it could write (``has_table_privilege``), which must be none. Driver errors
become ``errors.ProjectionError``.
"""

from __future__ import annotations

import asyncpg
import sqlalchemy as sa

from service import errors
from service.adapters.postgres import driver

_translate = driver.Translation(errors.ProjectionError)
# The projection and the sync worker's progress, as the read side reads them (reader.py).
READABLE = (
    "cluster",
    "node",
    "pod_ip",
    "ip_history",
    "ip_holding",
    "node_history",
    "cluster_history",
    "decision",
    "rejection",
    "consumer_offset",
    "outbox_offset",
    "writer_lease",
    "node_sync",
    "log_head",
)
_WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _plain(dsn: str) -> str:
    return sa.make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)


def role_of(dsn: str) -> tuple[str, str | None]:
    """The user name and password a URL connects with."""
    url = sa.make_url(dsn)
    if not url.username:
        raise errors.ConfigurationError(f"{url.render_as_string()} names no user")
    return url.username, url.password


def with_user(dsn: str, user: str) -> str:
    """``dsn`` connecting as ``user``, without a password."""
    url = sa.make_url(dsn).set(username=user, password=None)
    return url.render_as_string(hide_password=False)


async def ensure_read_only_role(admin_dsn: str, role: str, password: str | None) -> None:
    """Create ``role`` (LOGIN) if missing, set its password, grant it reading and nothing else.

    Idempotent; a role that could write already (granted by hand) is stripped of it.
    """
    with _translate(f"creating the read-only role {role}"):
        db = await asyncpg.connect(_plain(admin_dsn))
        try:
            quoted = _identifier(role)
            exists = await db.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await db.execute(f"CREATE ROLE {quoted} LOGIN")
            if password is not None:
                literal = await db.fetchval("SELECT quote_literal($1)", password)
                await db.execute(f"ALTER ROLE {quoted} LOGIN PASSWORD {literal}")
            database = await db.fetchval("SELECT current_database()")
            await db.execute(f"GRANT CONNECT ON DATABASE {_identifier(database)} TO {quoted}")
            await db.execute(f"GRANT USAGE ON SCHEMA public TO {quoted}")
            await db.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}")
            present = {
                row["relname"]
                for row in await db.fetch(
                    "SELECT c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v')"
                )
            }
            for table in READABLE:
                if table in present:
                    await db.execute(f"GRANT SELECT ON {_identifier(table)} TO {quoted}")
        finally:
            await db.close()


async def writable_tables(dsn: str) -> list[str]:
    """The tables of the public schema the connecting role may write in any way, by name."""
    with _translate("checking the API role's privileges"):
        db = await asyncpg.connect(_plain(dsn))
        try:
            rows = await db.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' AND ("
                + " OR ".join(f"has_table_privilege(c.oid, '{w}')" for w in _WRITES)
                + ") ORDER BY c.relname"
            )
        finally:
            await db.close()
    return [row["relname"] for row in rows]


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
