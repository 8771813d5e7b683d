"""Kafka fallback at admission and bulk actions by filter.

`executions.fallback_reason`: why an execution the rollout routed to DBOS was created on Kafka
(DBOS admission failed with DBOS_FALLBACK_TO_KAFKA on). `rollout_state.fallback_to_kafka` (and
its history): the live switch. `bulk_operations` + `bulk_operation_items`: a bulk stop or reroute
kept by its operation id, each execution taken before it is acted on (at most once).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.func.now()


def upgrade() -> None:
    op.add_column("executions", sa.Column("fallback_reason", sa.Text(), nullable=True))
    op.create_index(
        "ix_executions_fallback_created_at",
        "executions",
        ["created_at"],
        postgresql_where=sa.text("fallback_reason IS NOT NULL"),
    )
    for table in ("rollout_state", "rollout_history"):
        op.add_column(
            table,
            sa.Column("fallback_to_kafka", sa.Boolean(), server_default=sa.false(), nullable=False),
        )
    op.create_table(
        "bulk_operations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("truncated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_operations")),
        sa.CheckConstraint("action IN ('stop', 'reroute')", name=op.f("ck_bulk_operations_action")),
    )
    op.create_index(
        op.f("ix_bulk_operations_created_at"), "bulk_operations", ["created_at"], unique=False
    )
    op.create_table(
        "bulk_operation_items",
        sa.Column("operation_id", sa.Text(), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["bulk_operations.id"],
            name=op.f("fk_bulk_operation_items_operation_id_bulk_operations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "operation_id", "execution_id", name=op.f("pk_bulk_operation_items")
        ),
    )


def downgrade() -> None:
    op.drop_table("bulk_operation_items")
    op.drop_index(op.f("ix_bulk_operations_created_at"), table_name="bulk_operations")
    op.drop_table("bulk_operations")
    for table in ("rollout_history", "rollout_state"):
        op.drop_column(table, "fallback_to_kafka")
    op.drop_index("ix_executions_fallback_created_at", table_name="executions")
    op.drop_column("executions", "fallback_reason")
