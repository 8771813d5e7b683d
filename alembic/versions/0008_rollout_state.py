"""Live rollout state, its history, and the rollout guard's verdicts.

A rollout used to be environment variables, so changing it meant restarting every API process;
the state now lives here (one row, seeded from the environment when empty) and every change is
kept in `rollout_history`. The guard records each verdict with its figures.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.func.now()
_PHASES = "('active', 'ramping', 'draining', 'drained')"


def upgrade() -> None:
    op.create_table(
        "rollout_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enable_dbos", sa.Boolean(), nullable=False),
        sa.Column("rollout_percent", sa.Integer(), nullable=True),
        sa.Column("events_backend", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_state")),
        sa.CheckConstraint("id = 1", name=op.f("ck_rollout_state_single_row")),
        sa.CheckConstraint(
            "rollout_percent BETWEEN 0 AND 100", name=op.f("ck_rollout_state_percent")
        ),
        sa.CheckConstraint(
            "events_backend IN ('kafka', 'dbos')", name=op.f("ck_rollout_state_events_backend")
        ),
    )
    op.create_table(
        "rollout_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("enable_dbos", sa.Boolean(), nullable=False),
        sa.Column("rollout_percent", sa.Integer(), nullable=True),
        sa.Column("events_backend", sa.Text(), nullable=False),
        sa.Column("kafka_phase", sa.Text(), nullable=False),
        sa.Column("dbos_phase", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_history")),
        sa.CheckConstraint(
            "events_backend IN ('kafka', 'dbos')", name=op.f("ck_rollout_history_events_backend")
        ),
        sa.CheckConstraint(
            f"kafka_phase IN {_PHASES}", name=op.f("ck_rollout_history_kafka_phase")
        ),
        sa.CheckConstraint(f"dbos_phase IN {_PHASES}", name=op.f("ck_rollout_history_dbos_phase")),
    )
    op.create_table(
        "rollout_guard_verdicts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("figures", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_guard_verdicts")),
        sa.CheckConstraint(
            "verdict IN ('pass', 'fail', 'inconclusive')",
            name=op.f("ck_rollout_guard_verdicts_verdict"),
        ),
    )
    op.create_index(
        "ix_executions_finished_at",
        "executions",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_finished_at", table_name="executions")
    op.drop_table("rollout_guard_verdicts")
    op.drop_table("rollout_history")
    op.drop_table("rollout_state")
