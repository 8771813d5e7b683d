"""Console sessions: a signed cookie instead of a bearer header, and a CSRF token for POSTs.

A browser cannot add `Authorization` to a link, a form or an EventSource, so signing in trades
the API key for a cookie. The cookie holds the key's SHA-256 (what the key store keeps), never
the key, plus an expiry and a random nonce, signed with HMAC-SHA256; every request looks the
hash up again, so a revoked key loses its sessions at once. It is HttpOnly (no script reads
it) and SameSite=Strict (no other site's page sends it), and each POST must also carry a token
derived from the nonce (`X-CSRF-Token` from htmx, or a `csrf` form field), which a page of
another origin cannot read.

The signing secret is the `CONSOLE_SECRET` setting when set (every API process behind one
address must share it); otherwise a random one per process, so sessions end when it does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request

from twintrack.adapters.postgres.keys import Principal, hash_key

COOKIE = "tt_console"
CSRF_HEADER = "X-CSRF-Token"
DEFAULT_SESSION_TTL_S = 12 * 3600


class PrincipalByHash(Protocol):
    async def principal_by_key_hash(self, key_hash: str) -> Principal | None: ...


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the console: the key's owner, admin or not, and the session's CSRF
    token (rendered into every page that can POST)."""

    owner_id: str
    is_admin: bool
    key_hash: str
    csrf: str


class NotSignedIn(Exception):
    """No valid session: pages redirect to the sign-in form, fragments answer 401."""


class CsrfRejected(Exception):
    """A POST without this session's CSRF token (or from another origin)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issue and check session cookies and CSRF tokens with one secret."""

    def __init__(
        self,
        keys: PrincipalByHash,
        secret: str | None = None,
        ttl_s: float = DEFAULT_SESSION_TTL_S,
    ) -> None:
        secret = secret or secrets.token_urlsafe(32)
        self._secret = secret.encode()
        self._keys = keys
        self.ttl_s = ttl_s

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def issue(self, key: str) -> str:
        """The cookie value for a session of `key` (checked by the caller first)."""
        body = {
            "kh": hash_key(key),
            "exp": int(time.time() + self.ttl_s),
            "n": _b64(secrets.token_bytes(16)),
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._sign(payload)}"

    def _payload(self, cookie: str | None) -> dict[str, object]:
        if not cookie or "." not in cookie:
            raise NotSignedIn
        encoded, signature = cookie.rsplit(".", 1)
        try:
            payload = _unb64(encoded)
        except ValueError:
            raise NotSignedIn from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise NotSignedIn
        body = json.loads(payload)
        if not isinstance(body, dict) or float(body.get("exp", 0)) < time.time():
            raise NotSignedIn
        return body

    def csrf_for(self, nonce: str) -> str:
        return self._sign(b"csrf:" + nonce.encode())

    async def viewer(self, cookie: str | None) -> Viewer:
        body = self._payload(cookie)
        key_hash, nonce = str(body["kh"]), str(body["n"])
        principal = await self._keys.principal_by_key_hash(key_hash)
        if principal is None:  # revoked since sign-in
            raise NotSignedIn
        return Viewer(principal.owner_id, principal.is_admin, key_hash, self.csrf_for(nonce))


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.console_sessions
    return sessions


async def current_viewer(request: Request) -> Viewer:
    """The signed-in viewer; for a POST, also the CSRF check."""
    viewer = await sessions_of(request).viewer(request.cookies.get(COOKIE))
    if request.method == "POST":
        token = request.headers.get(CSRF_HEADER)
        if token is None:
            form = await request.form()
            value = form.get("csrf")
            token = value if isinstance(value, str) else None
        if token is None or not hmac.compare_digest(token, viewer.csrf):
            raise CsrfRejected
    return viewer


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]
