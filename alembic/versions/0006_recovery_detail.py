"""What happened to an attempt, in words: `execution_recoveries.detail`.

Giving up after MAX_ATTEMPTS must name the last attempt's real failure (a crash's exception, a
lost lease, a worker that stopped renewing its claim), which may have been seen by another
process than the one giving up.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("execution_recoveries", sa.Column("detail", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("execution_recoveries", "detail")
