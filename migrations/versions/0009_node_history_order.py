"""An index on each node's history in the readers' name order: a page of nodes as of an offset.

``ProjectionReader.nodes_at`` (the query API's ``/nodes`` list, ``cluster_at``) takes the latest
``node_history`` row of each node at or before an offset, by name bytewise (``COLLATE "C"``,
whatever the database's collation). The primary key orders names by the database's collation,
so without this index every page read and sorted all of a cluster's node history before its
limit (a page of 51 of 65,536 nodes: 300-700 ms); with it a page reads its own rows in order
(docs/benchmarks.md, Query API). The expression must stay exactly the reader's.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_node_history_name_c",
        "node_history",
        ["cluster", sa.text('(name COLLATE "C")'), "offset"],
    )


def downgrade() -> None:
    op.drop_index("ix_node_history_name_c", table_name="node_history")
