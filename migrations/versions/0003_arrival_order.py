"""Nodes' arrival order as explicit state; the waiting queue derived from the nodes.

Also: a decision's cluster may be NULL (a rejected record that names no valid cluster is no
longer filed under a cut-down name, which could be another cluster's).

The core serves nodes in the order they joined their cluster. That order was held only by the
order of a dict in memory, and the projection restored nodes by name, so a restart could change
later decisions (issue 7.1). Each node now stores its arrival number (``node.seq``), each
cluster the next one (``cluster.next_seq``); the waiting queue, which follows from the nodes
(not pinned, lacking a CIDR of an enabled family), is no longer stored per cluster but flagged
per node for readers (``node.waiting``).

Rows written before this revision carry no arrival order; they are numbered by name, which is
the order the previous allocator restored them in. Rebuild such a projection from the log to
get the arrival order the log implies.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("node", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("node", sa.Column("waiting", sa.Boolean(), nullable=True))
    op.execute("UPDATE node SET seq = -1, waiting = false WHERE deleted")
    op.execute(
        "UPDATE node SET seq = numbered.seq - 1, waiting = false FROM ("
        "  SELECT cluster, name, row_number() OVER (PARTITION BY cluster ORDER BY name) AS seq"
        "  FROM node WHERE NOT deleted) AS numbered "
        "WHERE node.cluster = numbered.cluster AND node.name = numbered.name"
    )
    op.execute(
        "UPDATE node SET waiting = true FROM cluster "
        "WHERE node.cluster = cluster.name AND node.name = ANY(cluster.waiting)"
    )
    op.alter_column("node", "seq", nullable=False)
    op.alter_column("node", "waiting", nullable=False)
    op.add_column("cluster", sa.Column("next_seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE cluster SET next_seq = coalesce("
        "  (SELECT max(seq) + 1 FROM node WHERE node.cluster = cluster.name), 0)"
    )
    op.alter_column("cluster", "next_seq", nullable=False)
    op.drop_column("cluster", "waiting")
    op.alter_column("decision", "cluster", nullable=True)


def downgrade() -> None:
    op.execute("UPDATE decision SET cluster = 'default' WHERE cluster IS NULL")
    op.alter_column("decision", "cluster", nullable=False)
    op.add_column(
        "cluster",
        sa.Column("waiting", sa.ARRAY(sa.Text()), nullable=False, server_default="{}"),
    )
    op.alter_column("cluster", "waiting", server_default=None)
    op.execute(
        "UPDATE cluster SET waiting = coalesce((SELECT array_agg(name ORDER BY seq) FROM node "
        "WHERE node.cluster = cluster.name AND node.waiting AND NOT node.deleted), '{}')"
    )
    op.drop_column("cluster", "next_seq")
    op.drop_column("node", "waiting")
    op.drop_column("node", "seq")
