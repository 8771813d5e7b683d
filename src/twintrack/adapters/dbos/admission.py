"""DbosAdmission: can the DBOS track take a new execution now? Asked before each create.

A DBOS-track execution needs the DBOS system schema (`dbos`, made by `twintrack migrate`, which
the API's client never runs) at the migration this DBOS release expects, and the rights to
write its workflow and stream tables. When any of that is missing, a create routed to DBOS
would make a row whose start can never be enqueued; with DBOS_FALLBACK_TO_KAFKA it goes to Kafka
instead, otherwise it is refused — either way before any row or event exists. The check is a
few catalog reads with a short timeout (a timeout is a refusal), and its answer serves every
create of the process for DBOS_ADMISSION_CACHE_S, so a burst of creates costs one query.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from twintrack.core.ports import Refusal
from twintrack.domain.execution import Track

SCHEMA = "dbos"
#: what a DBOS-track execution writes: its workflow (queue), its inputs, its event stream
_TABLES = ("workflow_status", "workflow_input", "streams")
_CHECK = text(
    """
    SELECT n.oid IS NOT NULL AS has_schema,
           CASE WHEN n.oid IS NULL THEN false
                ELSE has_schema_privilege(n.oid, 'USAGE') END AS usage,
           coalesce(
               (SELECT array_agg(c.relname::text) FROM pg_class c
                 WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
                   AND c.relname = ANY(CAST(:tables AS text[]))),
               ARRAY[]::text[]) AS present,
           coalesce(
               (SELECT array_agg(c.relname::text) FROM pg_class c
                 WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
                   AND c.relname = ANY(CAST(:tables AS text[]))
                   AND NOT (has_table_privilege(c.oid, 'SELECT')
                            AND has_table_privilege(c.oid, 'INSERT')
                            AND has_table_privilege(c.oid, 'UPDATE'))),
               ARRAY[]::text[]) AS unwritable,
           EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid
                     AND c.relname = 'dbos_migrations') AS has_migrations
    FROM (SELECT 1) one
    LEFT JOIN pg_namespace n ON n.nspname = :schema
    """
)


def required_migration() -> int:
    """The DBOS system-schema migration this installed DBOS release expects (the count of its
    migrations, as `DBOS.migrate` records it; a private call pinned by a unit test)."""
    from dbos._migration import get_dbos_migrations

    return len(get_dbos_migrations(SCHEMA, True, False))


class DbosAdmission:
    """`core.ports.AdmissionProbe` for the DBOS track, on the DBOS system database."""

    track = Track.DBOS

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
        required_version: int | None = None,
        owns_engine: bool = False,
    ) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.required_version = required_version or required_migration()
        self._answer: tuple[float, Refusal | None] | None = None
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        """The pool it checks on: the DBOS system database's."""
        return self._engine

    async def refusal(self) -> Refusal | None:
        async with self._lock:  # one check at a time; the others read its answer
            now = time.monotonic()
            if self._answer is not None and now - self._answer[0] < self.cache_s:
                return self._answer[1]
            answer = await self._check()
            self._answer = (time.monotonic(), answer)
            return answer

    async def close(self) -> None:
        """Dispose of the engine if it was made for this probe (a separate system database)."""
        if self._owns_engine:
            await self._engine.dispose()

    def forget(self) -> None:
        """Drop the cached answer (tests, and an operator's `migrate` in the same process)."""
        self._answer = None

    async def _check(self) -> Refusal | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read()
        except TimeoutError:
            return Refusal(
                "timeout",
                f"the DBOS system database did not answer within {self.timeout_s:g}s "
                "(DBOS_ADMISSION_TIMEOUT_S)",
            )
        except Exception as exc:
            return Refusal(
                "client_error", f"the DBOS system database check failed: {type(exc).__name__}"
            )

    async def _read(self) -> Refusal | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_CHECK, {"schema": SCHEMA, "tables": list(_TABLES)})).one()
            if not row.has_schema or not row.has_migrations:
                return Refusal(
                    "schema_missing",
                    f"the DBOS system schema `{SCHEMA}` is missing (run `twintrack migrate`)",
                )
            if not row.usage:
                return Refusal(
                    "no_privilege", f"this database role may not use the schema `{SCHEMA}`"
                )
            missing = sorted(set(_TABLES) - set(row.present))
            if missing:
                return Refusal(
                    "schema_missing",
                    f"the DBOS system schema lacks {', '.join(missing)} (run `twintrack migrate`)",
                )
            if row.unwritable:
                return Refusal(
                    "no_privilege",
                    f"this database role may not write {SCHEMA}."
                    f"{f', {SCHEMA}.'.join(sorted(row.unwritable))}",
                )
            try:
                version = await conn.scalar(
                    text(f"SELECT max(version) FROM {SCHEMA}.dbos_migrations")
                )
            except Exception as exc:  # the catalog said it is there: so not readable by us
                return Refusal(
                    "no_privilege",
                    f"this database role cannot read {SCHEMA}.dbos_migrations "
                    f"({type(exc).__name__})",
                )
        if version is None or int(version) < self.required_version:
            return Refusal(
                "schema_behind",
                f"the DBOS system schema is at migration {version or 0}, this release needs "
                f"{self.required_version} (run `twintrack migrate`)",
            )
        return None
