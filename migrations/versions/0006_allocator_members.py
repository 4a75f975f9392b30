"""The members of the table log's allocator group: ``allocator_member``.

With the table log there is no broker to hold a consumer group, so the ``ipledger run``
processes that share the partitions keep one row each here, renewed by a heartbeat, and compute
their fair shares from the live rows and the live writer leases (service/shares.py,
service/adapters/postgres/members.py). Nothing else reads it; an empty table is a group with no
members.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "allocator_member",
        sa.Column("member", sa.Text(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member", name=op.f("pk_allocator_member")),
    )


def downgrade() -> None:
    op.drop_table("allocator_member")
