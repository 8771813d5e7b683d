"""Bearer API keys -> owner id, with a short in-process cache.

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
from typing import Annotated, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twintrack.api.errors import ApiError

DEFAULT_TTL_S = 30.0
DEFAULT_MAX_ENTRIES = 10_000
_REALM = 'Bearer realm="twintrack"'


class KeyLookup(Protocol):
    """What the authenticator needs of the key store."""

    async def authenticate(self, key: str) -> str | None: ...


class ApiKeyAuthenticator:
    """Resolve an API key to its owner, caching hits for `ttl_s` (LRU-bounded)."""

    def __init__(
        self,
        keys: KeyLookup,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    async def owner_of(self, key: str) -> str | None:
        """The owner of `key`, or None for an unknown or revoked one."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None:
            owner, expires_at = hit
            if now < expires_at:
                self._cache.move_to_end(digest)
                return owner
            del self._cache[digest]
        owner_id = await self._keys.authenticate(key)
        if owner_id is not None and self._ttl_s > 0:
            self._cache[digest] = (owner_id, now + self._ttl_s)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return owner_id

    def clear(self) -> None:
        self._cache.clear()


# auto_error=False: we answer 401 ourselves, in the error envelope. Declaring the scheme makes
# /docs offer an "Authorize" button.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer tt_...`")


def _unauthorized(message: str, header: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": header})


async def require_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> str:
    """The owner id behind the request's `Authorization: Bearer <key>`, else 401."""
    if credentials is None:
        raise _unauthorized("an `Authorization: Bearer <api key>` header is required", _REALM)
    authenticator: ApiKeyAuthenticator = request.app.state.authenticator
    owner_id = await authenticator.owner_of(credentials.credentials)
    if owner_id is None:
        raise _unauthorized("the API key is unknown or revoked", f'{_REALM}, error="invalid_token"')
    return owner_id


Owner = Annotated[str, Depends(require_owner)]
