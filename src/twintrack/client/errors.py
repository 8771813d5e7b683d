"""Errors as exceptions: every answer in the API's error envelope becomes one, by status.

`{"error": {"code", "message", "details"}}` maps onto `code`, `message` and `details`; the HTTP
status picks the class, so callers catch what they can act on (`NotFound`, `Conflict`,
`LimitExceeded`, `Unavailable`, ...) and read `code` for the finer reason.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from twintrack.api_models import ErrorResponse
from twintrack.core.records import ExecutionRecord


class TwintrackError(Exception):
    """Base of every error the client raises; `code`, `message`, `details` as the API sent
    them (`status_code` is None when no answer came)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        details: Any = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        # Set when the call was sent more than once: a refusal may then answer a retry of a
        # request that had already taken effect (see `Client.stop`).
        self.after_retry = False

    def __str__(self) -> str:
        status = f"HTTP {self.status_code} " if self.status_code is not None else ""
        return f"{status}{self.code}: {self.message}"


class InvalidRequest(TwintrackError):
    """400 or 422: a malformed parameter, or a body that does not fit (an invalid flow, options
    that do not fit it); `details` lists each problem as `{location, message}`."""


class IdempotencyKeyReused(InvalidRequest):
    """422 `idempotency_key_reused`: the key came first with another request body."""


class Unauthorized(TwintrackError):
    """401: the API key is missing, malformed, unknown or revoked."""


class Forbidden(TwintrackError):
    """403: the key may not do this (choosing the track needs an admin key)."""


class NotFound(TwintrackError):
    """404: no such flow, version or execution for this key's owner."""


class Conflict(TwintrackError):
    """409: the request does not fit the execution's state (a command on a finished one)."""


class PayloadTooLarge(TwintrackError):
    """413: the body is over 1 MiB, or trigger events over MAX_EVENT_BYTES."""


class LimitExceeded(TwintrackError):
    """429: a per-owner limit; `details` names the setting and its value."""


class Unavailable(TwintrackError):
    """503 (or a proxy's 502/504) after the retries a call is allowed: try again later."""


class ConnectionFailed(Unavailable):
    """No answer at all (refused, reset, timed out) after the retries a call is allowed."""


class ServerError(TwintrackError):
    """500 or another 5xx that is not an outage: a bug on the server (it has been logged)."""


class EventsExpired(TwintrackError):
    """The event stream cannot be served without a gap (events gone from Kafka's retention);
    `earliest_index` is the first one still there, if any."""

    def __init__(self, message: str, earliest_index: int | None) -> None:
        super().__init__(message, code="events_expired", details={"earliest_index": earliest_index})
        self.earliest_index = earliest_index


class ProtocolError(TwintrackError):
    """The API answered something the contract rules out (a gap in an event stream, a body
    that does not parse): a bug, reported rather than papered over."""


class WaitTimeout(TwintrackError, TimeoutError):
    """`wait` ran out before the execution ended; `execution` is the row as last seen."""

    def __init__(self, execution: ExecutionRecord, timeout_s: float) -> None:
        super().__init__(
            f"execution {execution.id} is still {execution.status} after {timeout_s:g}s",
            code="wait_timeout",
        )
        self.execution = execution


_BY_STATUS: dict[int, type[TwintrackError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: LimitExceeded,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
_BY_CODE: dict[str, type[TwintrackError]] = {"idempotency_key_reused": IdempotencyKeyReused}


def retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds, when given as a number (the API never sends a date)."""
    value = response.headers.get("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> TwintrackError:
    """The exception for an error answer; one not in the envelope keeps its status and text."""
    try:
        body = ErrorResponse.model_validate_json(response.content).error
        code, message, details = body.code, body.message, body.details
    except ValidationError:
        code = "error"
        message = response.text[:500] or response.reason_phrase or "no message"
        details = None
    status = response.status_code
    kind = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else TwintrackError
    return kind(
        message,
        code=code,
        details=details,
        status_code=status,
        retry_after_s=retry_after_s(response),
    )
