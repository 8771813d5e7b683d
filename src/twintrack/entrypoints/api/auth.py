"""Bearer API keys -> the caller (owner id + admin flag), with a short in-process cache.

At a few hundred requests a second a database round trip per request only to authenticate would
dominate the API's cost, so successful lookups are cached for `ttl_s` (30 s by default).
The price: a key revoked in the database keeps working in an API process for up to `ttl_s`.
Failed lookups are not cached, so a key created a moment ago works at once; the cache holds a
SHA-256 of each key, never the key itself.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Protocol, runtime_checkable

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twintrack.adapters.postgres.keys import Principal
from twintrack.entrypoints.api.errors import ApiError, issue

DEFAULT_TTL_S = 30.0
DEFAULT_MAX_ENTRIES = 10_000
_REALM = 'Bearer realm="twintrack"'


class KeyLookup(Protocol):
    """The minimal key store: owners only (every key it knows is a plain, non-admin key)."""

    async def authenticate(self, key: str) -> str | None: ...


@runtime_checkable
class PrincipalLookup(Protocol):
    """A key store that also knows admin keys (`KeyStore`)."""

    async def authenticate_key(self, key: str) -> Principal | None: ...


class ApiKeyAuthenticator:
    """Resolve an API key to its caller, caching hits for `ttl_s` (LRU-bounded)."""

    def __init__(
        self,
        keys: KeyLookup | PrincipalLookup,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def principal_of(self, key: str) -> Principal | None:
        """Who `key` acts as (owner and admin flag), or None for an unknown or revoked one."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None:
            principal, expires_at = hit
            if now < expires_at:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        found = await self._lookup(key)
        if found is not None and self._ttl_s > 0:
            self._cache[digest] = (found, now + self._ttl_s)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return found

    async def owner_of(self, key: str) -> str | None:
        """The owner of `key`, or None for an unknown or revoked one."""
        principal = await self.principal_of(key)
        return None if principal is None else principal.owner_id

    async def _lookup(self, key: str) -> Principal | None:
        if isinstance(self._keys, PrincipalLookup):
            return await self._keys.authenticate_key(key)
        owner_id = await self._keys.authenticate(key)
        return None if owner_id is None else Principal(owner_id=owner_id)

    def clear(self) -> None:
        self._cache.clear()


# auto_error=False: we answer 401 ourselves, in the error envelope. Declaring the scheme makes
# /docs offer an "Authorize" button.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer tt_...`")


def _unauthorized(message: str, header: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": header})


async def require_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """The caller behind the request's `Authorization: Bearer <key>`, else 401.

    FastAPI caches a dependency per request, so routes that take both `Owner` and `Caller`
    still look the key up once.
    """
    if credentials is None:
        raise _unauthorized("an `Authorization: Bearer <api key>` header is required", _REALM)
    authenticator: ApiKeyAuthenticator = request.app.state.authenticator
    principal = await authenticator.principal_of(credentials.credentials)
    if principal is None:
        raise _unauthorized("the API key is unknown or revoked", f'{_REALM}, error="invalid_token"')
    return principal


Caller = Annotated[Principal, Depends(require_principal)]


async def require_owner(principal: Caller) -> str:
    """The owner id behind the request's key, else 401."""
    return principal.owner_id


Owner = Annotated[str, Depends(require_owner)]


def forbidden(field: str, message: str) -> ApiError:
    """403 for a request field the caller's key may not use.

    Only for permissions on a field the caller chose to send: a resource of another owner
    still answers 404, never 403, so ids stay unguessable.
    """
    return ApiError(403, "forbidden", message, [issue(field, message)])
