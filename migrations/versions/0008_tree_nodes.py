"""The roots of each partition's perfect subtrees, for proofs that read O(log n) hashes.

``tree_node`` keeps the root of every perfect subtree [start, start + 2^level) of a partition's
Merkle tree with ``level`` of ``merkle.STORED_LEVEL`` (8) or more, written by the allocator in
the transaction of the batch whose leaves completed it (about one row per 128 records). An
inclusion or consistency proof then reads O(log n) of them and the leaves of a few ranges
shorter than 256, instead of every leaf of the partition (docs/audits.md, "Proofs").

Trees recorded before this revision have no rows: their proofs read the leaves of the ranges
whose roots are not stored (what every proof read before), and ``replay --verify`` checks the
rows that are stored.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tree_node",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("partition", "level", "start", name=op.f("pk_tree_node")),
    )


def downgrade() -> None:
    op.drop_table("tree_node")
