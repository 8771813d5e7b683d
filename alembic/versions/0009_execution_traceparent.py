"""The trace an execution belongs to: `executions.traceparent`.

Written when the execution is started (the W3C traceparent of the request that started it), read
by the worker that runs it on either track, so one trace covers the request, the queue wait and
the run with its nodes. Nullable: tracing is off by default.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("traceparent", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "traceparent")
