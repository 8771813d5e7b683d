"""Initial schema: flows and versions, executions, Kafka-track claims/workers/recoveries, API keys,
tally counters.

Written by hand to mirror src/twintrack/adapters/postgres/tables.py (tests/integration/postgres/test_migrations.py
checks that autogenerate finds no difference and that constraint names match). Closed sets are
TEXT + CHECK, so there are no enum types to create or drop. Names are wrapped in op.f() because
they are final: without it the metadata's naming convention would prefix them a second time.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'created', 'queued', 'running', 'paused', 'completed', 'failed', 'stopped'"
UNFINISHED = "status IN ('created', 'queued', 'running', 'paused')"
TRACKS = "'kafka', 'dbos'"


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _ts(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        _now("created_at"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flows")),
        sa.CheckConstraint("latest_version >= 1", name=op.f("ck_flows_latest_version_positive")),
    )
    op.create_index(
        op.f("ix_flows_owner_id_created_at_id"), "flows", ["owner_id", "created_at", "id"]
    )

    op.create_table(
        "flow_versions",
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("definition", postgresql.JSONB(), nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("flow_id", "version", name=op.f("pk_flow_versions")),
        sa.ForeignKeyConstraint(
            ["flow_id"],
            ["flows.id"],
            name=op.f("fk_flow_versions_flow_id_flows"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_flow_versions_version_positive")),
    )

    op.create_table(
        "executions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("root_id", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Text(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("flow_id", sa.Text(), nullable=False),
        sa.Column("flow_version", sa.Integer(), nullable=False),
        sa.Column("track", sa.Text(), nullable=False),
        sa.Column("events_backend", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "options", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "trigger_events",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "outputs", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_node_id", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_event_index", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _now("created_at"),
        _ts("queued_at"),
        _ts("started_at"),
        _ts("finished_at"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.ForeignKeyConstraint(
            ["flow_id", "flow_version"],
            ["flow_versions.flow_id", "flow_versions.version"],
            name=op.f("fk_executions_flow_id_flow_version_flow_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["executions.id"], name=op.f("fk_executions_parent_id_executions")
        ),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_executions_status")),
        sa.CheckConstraint(f"track IN ({TRACKS})", name=op.f("ck_executions_track")),
        sa.CheckConstraint(
            f"events_backend IN ({TRACKS})", name=op.f("ck_executions_events_backend")
        ),
        sa.CheckConstraint("depth >= 0", name=op.f("ck_executions_depth_not_negative")),
        sa.CheckConstraint(
            "(parent_id IS NULL) = (depth = 0)", name=op.f("ck_executions_root_has_depth_zero")
        ),
        sa.CheckConstraint(
            "parent_id IS NOT NULL OR root_id = id", name=op.f("ck_executions_root_is_own_root")
        ),
        sa.CheckConstraint("attempt >= 0", name=op.f("ck_executions_attempt_not_negative")),
        sa.CheckConstraint(
            "next_event_index >= 0", name=op.f("ck_executions_next_event_index_not_negative")
        ),
    )
    op.create_index(
        op.f("ix_executions_owner_id_created_at_id"), "executions", ["owner_id", "created_at", "id"]
    )
    op.create_index(
        op.f("ix_executions_owner_id_flow_id_created_at_id"),
        "executions",
        ["owner_id", "flow_id", "created_at", "id"],
    )
    op.create_index(
        op.f("ix_executions_unfinished"),
        "executions",
        ["track", "status", "created_at"],
        postgresql_where=sa.text(UNFINISHED),
    )
    op.create_index(op.f("ix_executions_root_id"), "executions", ["root_id"])
    op.create_index(op.f("ix_executions_parent_id"), "executions", ["parent_id"])

    op.create_table(
        "execution_claims",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        _now("claimed_at"),
        _now("heartbeat_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("pk_execution_claims")),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_claims_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("generation >= 1", name=op.f("ck_execution_claims_generation_positive")),
    )
    op.create_index(op.f("ix_execution_claims_expires_at"), "execution_claims", ["expires_at"])
    op.create_index(op.f("ix_execution_claims_worker_id"), "execution_claims", ["worker_id"])

    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("tracks", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _now("started_at"),
        _now("heartbeat_at"),
        _ts("stopped_at"),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_workers")),
    )

    op.create_table(
        "execution_recoveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("track", sa.Text(), nullable=False),
        _now("recovered_at"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("previous_worker_id", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_recoveries")),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_recoveries_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(f"track IN ({TRACKS})", name=op.f("ck_execution_recoveries_track")),
    )
    op.create_index(
        op.f("ix_execution_recoveries_execution_id"), "execution_recoveries", ["execution_id"]
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        _now("created_at"),
        _ts("revoked_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_owner_id"), "api_keys", ["owner_id"])

    op.create_table(
        "tally_counters",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tally_counters")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    for table in (
        "tally_counters",
        "api_keys",
        "execution_recoveries",
        "workers",
        "execution_claims",
        "executions",
        "flow_versions",
        "flows",
    ):
        op.drop_table(table)
