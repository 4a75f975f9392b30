"""Drop ``ix_decision_event_id``: no reader uses it, and every event paid for it.

Every committed record inserts one ``decision`` row, and this index on ``(cluster, event_id)``
(ids are the producers' own, so each insert lands on a random leaf page) was the costliest part
of that insert: about as much as the row and its primary key together (docs/benchmarks.md,
"Allocator service", issue 13). No query of ipledger looks a decision up by event id; the
readers find decisions by ``(partition, offset)``, the primary key, and the holdings' and
nodes' event ids by joining on it.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_decision_event_id", table_name="decision")


def downgrade() -> None:
    op.create_index("ix_decision_event_id", "decision", ["cluster", "event_id"], unique=False)
