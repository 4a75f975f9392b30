"""The table log: log_head (next offset per partition) and log_record (append-only records).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "log_head",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("partition >= 0", name=op.f("ck_log_head_partition_not_negative")),
        sa.CheckConstraint("next_offset >= 0", name=op.f("ck_log_head_next_offset_not_negative")),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_log_head")),
    )
    op.create_table(
        "log_record",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("appended_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"offset" >= 0', name=op.f("ck_log_record_offset_not_negative")),
        sa.ForeignKeyConstraint(
            ["partition"],
            ["log_head.partition"],
            name=op.f("fk_log_record_partition_log_head"),
        ),
        sa.PrimaryKeyConstraint("partition", "offset", name=op.f("pk_log_record")),
    )


def downgrade() -> None:
    op.drop_table("log_record")
    op.drop_table("log_head")
