"""Shadow runs: `executions.shadow_of`, `shadow_runs`, the mismatch ledger, the live
`shadow_percent`.

A sample of completed executions is re-run on the other track with side effects off and the two
runs compared (core/shadow.py). A shadow is an execution row marked with the one it shadows
(hidden from its owner, at most one per execution); `shadow_runs` holds each one's outcome and
`shadow_mismatches` the most recent ones that differed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.func.now()
_EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.add_column("executions", sa.Column("shadow_of", sa.Text(), nullable=True))
    op.create_index(
        "ix_executions_shadow_of",
        "executions",
        ["shadow_of"],
        unique=True,
        postgresql_where=sa.text("shadow_of IS NOT NULL"),
    )
    for table in ("rollout_state", "rollout_history"):
        op.add_column(
            table,
            sa.Column("shadow_percent", sa.Integer(), server_default=sa.text("0"), nullable=False),
        )
    op.create_check_constraint(
        op.f("ck_rollout_state_shadow_percent"),
        "rollout_state",
        "shadow_percent BETWEEN 0 AND 100",
    )
    op.create_table(
        "shadow_runs",
        sa.Column("original_id", sa.Text(), nullable=False),
        sa.Column("shadow_id", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("flow_version", sa.Integer(), nullable=False),
        sa.Column("original_track", sa.Text(), nullable=False),
        sa.Column("shadow_track", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "replayed",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=_EMPTY,
            nullable=False,
        ),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("compared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("original_id", name=op.f("pk_shadow_runs")),
        sa.CheckConstraint(
            "status IN ('running', 'matched', 'mismatched')", name=op.f("ck_shadow_runs_status")
        ),
    )
    op.create_index(
        "ix_shadow_runs_running",
        "shadow_runs",
        ["scheduled_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(op.f("ix_shadow_runs_compared_at"), "shadow_runs", ["compared_at"])
    op.create_table(
        "shadow_mismatches",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("original_id", sa.Text(), nullable=False),
        sa.Column("shadow_id", sa.Text(), nullable=False),
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("flow_version", sa.Integer(), nullable=False),
        sa.Column("original_track", sa.Text(), nullable=False),
        sa.Column("shadow_track", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("original_events", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("shadow_events", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "replayed",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=_EMPTY,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_mismatches")),
    )


def downgrade() -> None:
    op.drop_table("shadow_mismatches")
    op.drop_index(op.f("ix_shadow_runs_compared_at"), table_name="shadow_runs")
    op.drop_index("ix_shadow_runs_running", table_name="shadow_runs")
    op.drop_table("shadow_runs")
    op.drop_constraint(op.f("ck_rollout_state_shadow_percent"), "rollout_state", type_="check")
    for table in ("rollout_state", "rollout_history"):
        op.drop_column(table, "shadow_percent")
    op.drop_index("ix_executions_shadow_of", table_name="executions")
    op.drop_column("executions", "shadow_of")
