"""Start admissions: the per-owner running limit without holding the owner's lock to commit.

Until now a start took the owner's advisory lock in its own row-locked transaction and held it
until that transaction committed, which is after the `execution.queued` event was published and
acknowledged: an owner's starts ran one at a time through a broker round trip (and its children
spawned one at a time, whatever the emit's concurrency). `twintrack_owner_admit` takes the same
lock for one statement only: it counts the owner's started, unfinished executions plus the
starts admitted and not yet committed (`owner_admissions`, still `created`), and admits this one
if that is under the cap. The start's own transaction then commits its `queued` and deletes its
admission together, so every other count sees it exactly once (as an admission or as queued).
An admission whose start never commits (the process died) lapses at `expires_at`.

No foreign key to `executions`: inserting the admission would take a key-share lock on the row
the start is holding FOR UPDATE on another connection, and wait for itself.

The count's statements run after the lock is held, each with its own snapshot (READ COMMITTED,
VOLATILE plpgsql), so they see every start that committed while this one waited. Same lock key
as `twintrack_owner_running`, so processes of the previous release and this one still exclude
each other during a rolling upgrade.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owner_admissions",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("pk_owner_admissions")),
    )
    op.create_index(op.f("ix_owner_admissions_owner_id"), "owner_admissions", ["owner_id"])
    op.execute(
        """
        CREATE OR REPLACE FUNCTION twintrack_owner_admit(
            p_owner text, p_execution text, p_cap bigint, p_ttl_s double precision,
            p_wait_ms integer
        ) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            taken bigint;
        BEGIN
            PERFORM set_config('lock_timeout', p_wait_ms::text, true);
            PERFORM pg_advisory_xact_lock(hashtext('twintrack_owner_running'), hashtext(p_owner));
            DELETE FROM owner_admissions
             WHERE owner_id = p_owner AND expires_at < clock_timestamp();
            taken := (SELECT count(*) FROM executions
                       WHERE owner_id = p_owner
                         AND status IN ('queued', 'running', 'paused')
                         AND shadow_of IS NULL)
                   + (SELECT count(*) FROM owner_admissions a
                       JOIN executions e ON e.id = a.execution_id
                      WHERE a.owner_id = p_owner AND a.execution_id <> p_execution
                        AND e.status = 'created');
            IF taken < p_cap THEN
                INSERT INTO owner_admissions (execution_id, owner_id, expires_at)
                VALUES (p_execution, p_owner,
                        clock_timestamp() + make_interval(secs => p_ttl_s))
                ON CONFLICT (execution_id) DO UPDATE SET expires_at = excluded.expires_at;
            END IF;
            RETURN taken;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS twintrack_owner_admit(text, text, bigint, double precision, integer)"
    )
    op.drop_index(op.f("ix_owner_admissions_owner_id"), table_name="owner_admissions")
    op.drop_table("owner_admissions")
