"""The PostgreSQL schema of ipledger: the one SQLAlchemy ``MetaData`` every table registers into.

Alembic's ``migrations/env.py`` uses :data:`metadata` as ``target_metadata``, and
``tests/integration/test_migrations.py`` fails when the migrations and this module differ. Other
modules that own tables (the projection) import :data:`metadata` from here and add their tables
to it; nothing else defines a ``MetaData``. This module only declares: it opens no connection.
"""

from __future__ import annotations

import sqlalchemy as sa

# Constraint and index names are part of the schema that migrations must reproduce exactly, so
# they are derived from a convention instead of left to the database's defaults.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# --- The table log (service.adapters.postgres.table_log) -----------------------------------------
#
# ``log_head`` holds, per partition, the offset the next appended record gets. An appender
# increments it with ``UPDATE ... RETURNING`` and keeps that row lock until it commits, so the
# appenders of one partition commit one after another, in offset order: a reader never sees
# offset n + 1 before offset n. The number of rows is the number of partitions.

log_head = sa.Table(
    "log_head",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.CheckConstraint("partition >= 0", name="partition_not_negative"),
    sa.CheckConstraint("next_offset >= 0", name="next_offset_not_negative"),
)

# Append-only: rows are inserted with the offsets reserved in ``log_head`` and never updated.
log_record = sa.Table(
    "log_record",
    metadata,
    sa.Column(
        "partition",
        sa.Integer,
        sa.ForeignKey(log_head.c.partition),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("appended_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('"offset" >= 0', name="offset_not_negative"),
)
