"""The Merkle tree of each partition's decisions: a leaf hash per decision, the tree heads.

``decision.leaf`` is the record's leaf (SHA-256 of 0x00, the decision's bytes and the record's
bytes); ``tree_head`` keeps the heads the allocator records every N records and at every batch
boundary, with the tree's right edge so that a restarted writer extends the same tree
(docs/audits.md). Decisions written before this revision have no leaf: the allocator computes
them from the decisions and the log the first time it leads a partition without a head.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decision", sa.Column("leaf", sa.LargeBinary(), nullable=True))
    op.create_table(
        "tree_head",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("partition", "size", name=op.f("pk_tree_head")),
    )


def downgrade() -> None:
    op.drop_table("tree_head")
    op.drop_column("decision", "leaf")
