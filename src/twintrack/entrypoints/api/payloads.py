"""Reject JSON values that parse in Python but that Postgres cannot store.

Python's `json` accepts NaN and Infinity (and turns `1e999` into infinity), and JSON strings may
contain `\\u0000`; `jsonb` and `text` refuse all of them. Caught here they are a 422 naming the
field, instead of a database error (a 500) after the request was accepted.
"""

from __future__ import annotations

import math
from typing import Any

from twintrack.entrypoints.api.errors import ApiError, issue


def _problem(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number (NaN and Infinity cannot be stored)"
    if isinstance(value, str) and "\x00" in value:
        return "strings may not contain the NUL character (\\u0000)"
    return None


def _child(location: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{location}[{key}]"
    return f"{location}.{key}" if location else key


def find_unstorable(value: Any, location: str = "") -> tuple[str, str] | None:
    """The first (location, message) Postgres would refuse; iterative, so depth is no limit."""
    stack: list[tuple[str, Any]] = [(location, value)]
    while stack:
        where, current = stack.pop()
        problem = _problem(current)
        if problem is not None:
            return where, problem
        if isinstance(current, dict):
            for key, item in current.items():
                if isinstance(key, str) and "\x00" in key:
                    return where, "keys may not contain the NUL character (\\u0000)"
                stack.append((_child(where, str(key)), item))
        elif isinstance(current, list | tuple):
            stack.extend((_child(where, i), item) for i, item in enumerate(current))
    return None


def ensure_storable(value: Any, location: str = "", code: str = "invalid_request") -> None:
    """Raise a 422 (with `code`) naming the first value Postgres would refuse."""
    found = find_unstorable(value, location)
    if found is not None:
        where, message = found
        raise ApiError(
            422,
            code,
            f"{where}: {message}" if where else message,
            [issue(where, message)],
        )
