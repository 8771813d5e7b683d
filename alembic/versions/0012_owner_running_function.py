"""The per-owner running count as one round trip: `twintrack_owner_running(owner, wait_ms)`.

A start counts the owner's started, unfinished executions under the owner's advisory lock
(`MAX_RUNNING_EXECUTIONS_PER_OWNER` stays exact whichever API process starts). That was three
statements — the lock wait's bound, the lock, the count — each a round trip inside the start's
row-locked transaction. As a function it is one; the count is its own statement inside the
function, so under READ COMMITTED it takes its snapshot after the lock is held and sees every
start that committed while this one waited. Same lock key as before, so processes of the
previous release and this one still exclude each other during a rolling upgrade.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 00:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION twintrack_owner_running(p_owner text, p_wait_ms integer)
        RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM set_config('lock_timeout', p_wait_ms::text, true);
            PERFORM pg_advisory_xact_lock(hashtext('twintrack_owner_running'), hashtext(p_owner));
            RETURN (SELECT count(*) FROM executions
                     WHERE owner_id = p_owner
                       AND status IN ('queued', 'running', 'paused')
                       AND shadow_of IS NULL);
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS twintrack_owner_running(text, integer)")
