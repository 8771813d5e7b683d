"""One error envelope for every failure: `{"error": {"code", "message", "details"}}`.

Domain and store exceptions are mapped to HTTP here and nowhere else, so routes just let them
propagate. Anything unmapped is a bug: it is logged with its traceback and answered with a
generic 500 that leaks nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twintrack.api_models import IDEMPOTENCY_KEY_HEADER, ErrorBody
from twintrack.api_models import ErrorResponse as ErrorResponse  # re-exported for routes
from twintrack.core.errors import AlreadyExists, InvalidCursor, NotFound
from twintrack.core.service import Conflict, IdempotencyKeyReused, TrackUnavailable
from twintrack.core.transient import is_transient
from twintrack.domain.execution import IllegalTransition
from twintrack.domain.flow import FlowValidationError
from twintrack.domain.limits import LimitExceeded
from twintrack.engine import EventTooLarge


def report(level: str, event: str, **fields: Any) -> None:
    """Log, and never raise: an error answer must go out even when logging itself is broken.

    The logger is looked up per call, so logging configured (or captured in tests) after import
    still applies.
    """
    with contextlib.suppress(Exception):
        getattr(structlog.get_logger("twintrack.entrypoints.api"), level)(event, **fields)


# Request parts whose validation failures are the caller's malformed URL or headers (400), as
# opposed to a body that parsed but does not fit (422).
_NON_BODY_SOURCES = frozenset({"query", "path", "header", "cookie"})

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    429: "limit_exceeded",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """An HTTP error with a stable machine-readable `code`, raised by routes and middleware."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class CreatedNotStarted(Exception):
    """A create asked to start (`start: true`) whose start failed: answered as `cause` would
    be, with `Location` naming the execution that exists all the same, so a client that
    sent no idempotency key need not create another."""

    def __init__(self, location: str, cause: Exception) -> None:
        super().__init__(f"created {location}, not started: {cause}")
        self.location = location
        self.cause = cause


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def issue(location: str, message: str) -> dict[str, str]:
    return {"location": location, "message": message}


def format_location(loc: Sequence[int | str]) -> str:
    """`("body", "options", "breakpoints", 0)` -> `options.breakpoints[0]` (as flow issues read)."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _not_found_message(exc: NotFound) -> str:
    key = exc.key
    if isinstance(key, tuple) and len(key) == 2:
        ident, version = key
        if exc.kind == "flow version" and version is not None:
            return f"flow {ident} has no version {version}"
        return f"{exc.kind.split()[0]} {ident} not found"
    return f"{exc.kind} {key} not found"


# -- the mapping ----------------------------------------------------------------------------


def _is_outage(exc: BaseException, extra: tuple[type[BaseException], ...]) -> bool:
    """A dependency (database, broker) is down or overloaded: the caller may retry later."""
    if isinstance(exc, (TrackUnavailable, OSError, TimeoutError, *extra)):
        return True
    return is_transient(exc)  # a lost or refused database connection, however it is wrapped


def to_response(exc: BaseException, outage: tuple[type[BaseException], ...] = ()) -> JSONResponse:
    """The answer for an exception; a 500 (logged by the caller) for anything not foreseen."""
    if isinstance(exc, CreatedNotStarted):
        response = to_response(exc.cause, outage)
        response.headers["Location"] = exc.location
        return response
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", _not_found_message(exc))
    if isinstance(exc, InvalidCursor):
        return error_response(400, "invalid_cursor", "the cursor is not one this API issued")
    if isinstance(exc, FlowValidationError):
        details = [issue(i.location, i.message) for i in exc.issues]
        return error_response(422, "invalid_request", str(exc), details)
    if isinstance(exc, IdempotencyKeyReused):
        details = [issue(f"header.{IDEMPOTENCY_KEY_HEADER}", str(exc))]
        return error_response(422, "idempotency_key_reused", str(exc), details)
    if isinstance(exc, LimitExceeded):
        return error_response(429, "limit_exceeded", str(exc), exc.details)
    if isinstance(exc, Conflict | IllegalTransition | AlreadyExists):
        return error_response(409, "conflict", str(exc))
    if isinstance(exc, EventTooLarge):
        return error_response(413, "payload_too_large", str(exc))
    if _is_outage(exc, outage):
        message = str(exc) if isinstance(exc, TrackUnavailable) else "a dependency is unavailable"
        return error_response(503, "unavailable", f"{message}; retry later")
    return error_response(500, "internal_error", "internal error; it has been logged")


def _validation_issue(error: dict[str, Any]) -> dict[str, str]:
    loc = error.get("loc", ())
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "malformed")
        where = f" at position {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return issue("", f"request body is not valid JSON: {reason}{where}")
    return issue(format_location(loc), str(error.get("msg", "")))


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = [dict(e) for e in exc.errors()]
    details = [_validation_issue(e) for e in errors]
    sources = {str(e.get("loc", ("body",))[0]) for e in errors}
    if sources and sources <= _NON_BODY_SOURCES:
        return error_response(400, "invalid_parameter", _summary(details), details)
    return error_response(422, "invalid_request", _summary(details), details)


def _summary(details: Iterable[dict[str, str]]) -> str:
    parts = [f"{d['location']}: {d['message']}" if d["location"] else d["message"] for d in details]
    return "; ".join(parts) or "invalid request"


def _http_response(exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


def _report_outage(request: Request, exc: Exception) -> None:
    """One line per refused request: during an outage every request fails the same way, and
    rendering a traceback for each would slow the 503s down (seconds on a busy machine)."""
    report(
        "warning",
        "dependency unavailable",
        method=request.method,
        path=request.url.path,
        error=f"{type(exc).__name__}: {exc}",
    )


def install_error_handlers(
    app: FastAPI,
    outage: tuple[type[BaseException], ...],
    store_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Map every foreseen exception to the envelope (unforeseen ones: `UnhandledErrors`).

    `outage`: types that always mean a dependency is down (503). `store_errors`: the stores'
    own error types, answered 503 when the transient rule says the connection was lost and 500
    otherwise; both come from the bootstrap, so the API names no driver."""

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _http_response(exc)

    async def on_mapped(request: Request, exc: Exception) -> JSONResponse:
        response = to_response(exc, outage)
        if response.status_code == 503:
            _report_outage(request, exc)
        elif response.status_code >= 500:
            report(
                "error",
                "request failed",
                method=request.method,
                path=request.url.path,
                exc_info=exc,
            )
        return response

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for exc_type in (
        ApiError,
        CreatedNotStarted,
        NotFound,
        InvalidCursor,
        FlowValidationError,
        Conflict,
        IdempotencyKeyReused,
        IllegalTransition,
        AlreadyExists,
        LimitExceeded,
        EventTooLarge,
        TrackUnavailable,
        *store_errors,
        OSError,
        TimeoutError,
        *outage,
    ):
        app.add_exception_handler(exc_type, on_mapped)


class UnhandledErrors:
    """Turn any exception that escaped the handlers into a logged, generic 500 envelope.

    Runs inside the metrics middleware, so a bug still counts as a 500 there, and instead of
    Starlette's plain-text ServerErrorMiddleware, so clients always get JSON. An exception after
    the response started (a broken stream) can only be logged and re-raised.
    """

    def __init__(self, app: ASGIApp, outage: tuple[type[BaseException], ...] = ()) -> None:
        self.app = app
        self.outage = outage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            report(
                "error",
                "unhandled error",
                method=scope.get("method"),
                path=scope.get("path"),
                exc_info=exc,
            )
            if started:
                raise
            await to_response(exc, self.outage)(scope, receive, send)


# For route decorators: the error answers every authenticated route can give.
# "default" also keeps FastAPI from documenting its own 422 shape, which this API never sends.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed query parameter, header or cursor"},
    401: {"model": ErrorResponse, "description": "Missing, malformed, unknown or revoked key"},
    404: {"model": ErrorResponse, "description": "No such resource for this owner"},
    503: {"model": ErrorResponse, "description": "A dependency is down (database, broker): retry"},
    "default": {"model": ErrorResponse, "description": "Any other error, same envelope"},
}
