"""Ids and cursors from the URL: what this service could not have issued is refused up front.

Such values cannot match a row, and some (a NUL character) would make Postgres raise instead of
answering "no row", so they are answered here: 404 for an id, 400 for a cursor.
"""

from __future__ import annotations

from twintrack.adapters.postgres.pagination import decode_cursor, decode_tree_cursor
from twintrack.core.errors import InvalidCursor, NotFound
from twintrack.entrypoints.api.schemas import ID_RE


def checked_id(kind: str, value: str) -> str:
    """`value`, or NotFound (404) without a query when it cannot be an id of ours."""
    if not ID_RE.match(value):
        raise NotFound(kind, value)
    return value


def checked_cursor(cursor: str | None) -> str | None:
    """`cursor`, or InvalidCursor (400) when it does not carry one of our ids."""
    if cursor is not None and not ID_RE.match(decode_cursor(cursor)[1]):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return cursor


def checked_tree_cursor(cursor: str | None) -> str | None:
    """A `/tree` page cursor, or InvalidCursor (400) when it does not carry one of our ids."""
    if cursor is not None and not ID_RE.match(decode_tree_cursor(cursor)[2]):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return cursor
