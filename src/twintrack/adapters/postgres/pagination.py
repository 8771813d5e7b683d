"""Keyset pagination on (created_at, id), newest first, with opaque cursors.

Keyset (not OFFSET) returns every row exactly once across pages while rows are being inserted:
new rows land before the first page, never inside a page already handed out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import QueryableAttribute

from twintrack.core.errors import InvalidCursor
from twintrack.core.records import MAX_PAGE_SIZE, Page

T = TypeVar("T")
Q = TypeVar("Q", bound="Select[Any]")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        parsed = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if not isinstance(row_id, str) or parsed.tzinfo is None:
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return parsed, row_id


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def newest_first(
    query: Q,
    created_at: ColumnElement[datetime] | QueryableAttribute[datetime],
    row_id: ColumnElement[str] | QueryableAttribute[str],
    limit: int,
    cursor: str | None,
) -> Q:
    """Order newest first, start after `cursor`, and fetch one extra row to know if more exist."""
    if cursor is not None:
        after_created_at, after_id = decode_cursor(cursor)
        query = query.where(tuple_(created_at, row_id) < tuple_(after_created_at, after_id))
    return query.order_by(created_at.desc(), row_id.desc()).limit(check_limit(limit) + 1)


def to_page(
    rows: Sequence[Any],
    limit: int,
    convert: Callable[[Any], T],
    key: Callable[[Any], tuple[datetime, str]],
) -> Page[T]:
    """Build the page from the `limit + 1` rows `newest_first` fetched."""
    more = len(rows) > limit
    kept = rows[:limit]
    next_cursor = encode_cursor(*key(kept[-1])) if more else None
    return Page(items=[convert(r) for r in kept], next_cursor=next_cursor)


def encode_tree_cursor(depth: int, created_at: datetime, row_id: str) -> str:
    """The cursor of a tree page: the last member's (depth, created_at, id), ascending."""
    raw = json.dumps([depth, created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_tree_cursor(cursor: str) -> tuple[int, datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        depth, created_at, row_id = json.loads(raw)
        parsed = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if not isinstance(depth, int) or not isinstance(row_id, str) or parsed.tzinfo is None:
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return depth, parsed, row_id
