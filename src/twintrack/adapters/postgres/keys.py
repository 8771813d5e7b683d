"""PostgresKeyStore: API keys. The secret is shown once at creation; only its SHA-256 is stored.

Keys carry 256 bits of randomness, so an unsalted fast hash is enough (nothing to brute-force), and
looking the hash up through a unique index leaks nothing useful about the secret through timing.
"""

from __future__ import annotations

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.db import one_statement
from twintrack.adapters.postgres.tables import ApiKeyRow
from twintrack.core.errors import NotFound
from twintrack.core.records import ApiKeyRecord, CreatedApiKey, Principal
from twintrack.domain.ids import KEY_PREFIX, hash_key, new_api_key_id, new_api_key_secret

__all__ = [
    "KEY_PREFIX",
    "ApiKeyRecord",
    "CreatedApiKey",
    "PostgresKeyStore",
    "Principal",
    "hash_key",
]


class PostgresKeyStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._single = one_statement(sessions)  # work of one statement: one round trip

    async def create(self, owner_id: str, admin: bool = False) -> CreatedApiKey:
        """A new key for `owner_id` (an admin key when `admin`); the plaintext is in the result
        and nowhere else."""
        key, prefix = new_api_key_secret()
        stmt = (
            insert(ApiKeyRow)
            .values(
                id=new_api_key_id(),
                owner_id=owner_id,
                key_hash=hash_key(key),
                prefix=prefix,
                is_admin=admin,
            )
            .returning(ApiKeyRow)
        )
        async with self._sessions.begin() as session:
            row = await session.scalar(stmt)
            assert row is not None
            stored = ApiKeyRecord.model_validate(row)
        return CreatedApiKey(**stored.model_dump(), key=key)

    async def authenticate_key(self, key: str) -> Principal | None:
        """The owner of `key` and its admin flag, or None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX):
            return None
        async with self._single() as session:
            row = (
                await session.execute(
                    select(ApiKeyRow.owner_id, ApiKeyRow.is_admin).where(
                        ApiKeyRow.key_hash == hash_key(key), ApiKeyRow.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        return None if row is None else Principal(owner_id=row.owner_id, is_admin=row.is_admin)

    async def authenticate(self, key: str) -> str | None:
        """The owner of `key`, or None for an unknown or revoked key (kept for callers that
        only need the owner; `authenticate_key` also tells whether the key is an admin key)."""
        principal = await self.authenticate_key(key)
        return None if principal is None else principal.owner_id

    async def revoke(self, owner_id: str, key_id: str) -> None:
        """Revoke a key of `owner_id` (idempotent: revoking twice keeps the first time)."""
        async with self._sessions.begin() as session:
            found = await session.scalar(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.owner_id == owner_id)
                .values(revoked_at=func.coalesce(ApiKeyRow.revoked_at, func.now()))
                .returning(ApiKeyRow.id)
            )
        if found is None:
            raise NotFound("api key", key_id)

    async def list(self, owner_id: str) -> list[ApiKeyRecord]:
        """The owner's keys, oldest first, revoked ones included."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.owner_id == owner_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            )
            return [ApiKeyRecord.model_validate(r) for r in rows]
