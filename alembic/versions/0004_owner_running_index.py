"""Per-owner limits: a partial index on an owner's unfinished executions.

`MAX_RUNNING_EXECUTIONS_PER_OWNER` counts them on every start; without the index that count
would read every execution the owner ever had.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NON_TERMINAL = "status IN ('created', 'queued', 'running', 'paused')"


def upgrade() -> None:
    op.create_index(
        "ix_executions_owner_unfinished",
        "executions",
        ["owner_id", "status"],
        postgresql_where=sa.text(_NON_TERMINAL),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_owner_unfinished", table_name="executions")
