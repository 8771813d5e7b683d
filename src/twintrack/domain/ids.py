"""Sortable, prefixed identifiers (`ex_…`, `fl_…`): readable in logs and ordered by creation time.

The 32 hex digits after the prefix are a 48-bit millisecond timestamp followed by 80 random bits
(the layout of ULID / UUIDv7). Within one process ids are strictly increasing, even within one
millisecond, so an id sorts after every id this process made before it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

EXECUTION_PREFIX = "ex"
FLOW_PREFIX = "fl"
API_KEY_PREFIX = "key"

_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1

_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _next_parts() -> tuple[int, int]:
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _last_random = now_ms, secrets.randbits(_RANDOM_BITS - 1)
        elif _last_random < _RANDOM_MAX:
            # Same millisecond (or the clock stepped back): keep the order by counting up.
            _last_random += 1
        else:
            _last_ms, _last_random = _last_ms + 1, 0
        return _last_ms, _last_random


def new_id(prefix: str) -> str:
    """A new id `<prefix>_<32 hex>`; the hex part sorts in creation order."""
    ms, rnd = _next_parts()
    return f"{prefix}_{ms:012x}{rnd:020x}"


def new_execution_id() -> str:
    return new_id(EXECUTION_PREFIX)


def new_flow_id() -> str:
    return new_id(FLOW_PREFIX)


def new_api_key_id() -> str:
    return new_id(API_KEY_PREFIX)


# API key secrets: "tt_" and 256 random bits. Only their SHA-256 is stored; an unsalted fast hash
# is enough, since there is nothing to brute-force.
KEY_PREFIX = "tt_"
_KEY_DISPLAY_CHARS = 8  # of the random part, shown beside the "tt_" so a user can tell keys apart


def new_api_key_secret() -> tuple[str, str]:
    """A new secret and its displayable prefix."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[: len(KEY_PREFIX) + _KEY_DISPLAY_CHARS]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
