"""History of nodes and pools for the readers' ``as_of``: ``node_history``, ``cluster_history``.

The projection kept every holding of every address, but nodes and pools only as they are now,
so "the cluster as it stood after record N" could not be answered. From this revision on, each
batch's commit also inserts what each of its events changed of a node a reader sees (one row
per event and node, pod address events aside) and each pool a cluster was given
(``service.allocator.history``). Both are insert-only.

Projections written before this revision get one row per node at its version (the last offset
of the batch that last changed it) and one per cluster, its pool, at the first of those: as-of
answers are exact from then on and show what was known for earlier offsets. Rebuild the
projection from the log for full history.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_history",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("pod_cidrs", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("conflict", sa.Text(), nullable=True),
        sa.Column("addresses", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("waiting", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "name", "offset", name=op.f("pk_node_history")),
    )
    op.create_table(
        "cluster_history",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ipv4_cidrs", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("ipv4_mask", sa.Integer(), nullable=True),
        sa.Column("ipv6_cidrs", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("ipv6_mask", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("cluster", "offset", name=op.f("pk_cluster_history")),
    )
    op.execute(
        'INSERT INTO node_history (cluster, name, "offset", partition, time, deleted, pod_cidrs, '
        "error, conflict, addresses, pinned, waiting) "
        "SELECT n.cluster, n.name, n.version, c.partition, n.updated_at, n.deleted, n.pod_cidrs, "
        "n.error, n.conflict, n.addresses, n.pinned, n.waiting "
        "FROM node n JOIN cluster c ON c.name = n.cluster"
    )
    op.execute(
        'INSERT INTO cluster_history (cluster, "offset", partition, time, ipv4_cidrs, ipv4_mask, '
        "ipv6_cidrs, ipv6_mask) "
        "SELECT c.name, least(c.version, coalesce((SELECT min(n.version) FROM node n "
        "WHERE n.cluster = c.name), c.version)), c.partition, coalesce(o.updated_at, now()), "
        "c.ipv4_cidrs, c.ipv4_mask, c.ipv6_cidrs, c.ipv6_mask "
        "FROM cluster c LEFT JOIN consumer_offset o ON o.partition = c.partition"
    )


def downgrade() -> None:
    op.drop_table("cluster_history")
    op.drop_table("node_history")
