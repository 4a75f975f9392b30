"""An index on each decision's time: the readers' ``as_of=<time>`` finds its record by it.

``ProjectionReader.applied_offset(partition, at_time=T)`` (the query API's ``as_of`` with an
RFC 3339 time, the forecast's window start) looks for the last record whose time, the event's
else the log's else when it was applied, is at or before T. Without an index on that expression
it read every decision of the partition (seconds at millions of records); with this one it is
one descent of the index. The expression must stay exactly the readers' (``schema.py``,
``service/adapters/postgres/reader.py``) for the planner to use it.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_decision_time",
        "decision",
        ["partition", sa.text("coalesce(event_time, log_time, applied_at)"), "offset"],
    )


def downgrade() -> None:
    op.drop_index("ix_decision_time", table_name="decision")
