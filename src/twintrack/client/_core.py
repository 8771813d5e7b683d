"""What both clients share, without I/O: the calls (path, body, whether a retry is safe), the
retry schedule, and how answers are read.

`Client` and `AsyncClient` differ only in how they wait; everything that decides something is
here, once.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from twintrack.api_models import (
    IDEMPOTENCY_KEY_HEADER,
    MAX_WAIT_S,
    FlowDocument,
)
from twintrack.client.errors import (
    ConnectionFailed,
    ProtocolError,
    TwintrackError,
    error_from_response,
    retry_after_s,
)
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionOptions, ExecutionStatus, Track, TriggerEvent

API_URL_ENV = "TWINTRACK_API_URL"
API_KEY_ENV = "TWINTRACK_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The API pings an open event stream every 15 s: three missed pings mean the connection is
# dead even if no error says so (a host gone without closing it), so the reader reconnects.
STREAM_READ_TIMEOUT_S = 45.0
# A long-poll answers within MAX_WAIT_S; this much more covers the network and a slow row read.
WAIT_SLACK_S = 10.0
# Statuses that say "not now" without the request having had any effect we could repeat.
RETRY_STATUSES = frozenset({502, 503, 504})
# Transport errors raised before the request could reach the server: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

FlowLike = FlowDocument | Mapping[str, Any]
OptionsLike = ExecutionOptions | Mapping[str, Any]
EventLike = TriggerEvent | Mapping[str, Any]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call keeps trying through connection errors and 503s, and how it backs off
    (exponential, with jitter so many clients do not retry in step). `deadline_s=0`: never."""

    deadline_s: float = 30.0
    first_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def backoff_s(self, attempt: int) -> float:
        ceiling = min(self.max_backoff_s, self.first_backoff_s * 2.0**attempt)
        return float(ceiling * random.uniform(0.5, 1.0))


NO_RETRY = RetryPolicy(deadline_s=0)


class Safety(Enum):
    """Whether sending a call twice can do twice what once would."""

    SAFE = "safe"  # reads, idempotent commands, creates under an idempotency key
    ONCE = "once"  # a flow create or update, a step: only retried when surely never sent


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    safety: Safety = Safety.SAFE
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: httpx.Timeout | float | None = None


class Attempts:
    """The retry schedule of one call (or, for an event stream, of one outage)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.retries = 0
        self._since = time.monotonic()

    def delay_before_retry(self, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next try, or None: the deadline does not allow one."""
        delay = self.policy.backoff_s(self.retries)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.policy.max_backoff_s))
        if time.monotonic() + delay > self._since + self.policy.deadline_s:
            return None
        self.retries += 1
        return delay

    def progressed(self) -> None:
        """The stream delivered again: the next outage gets a whole deadline of its own."""
        self.retries = 0
        self._since = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._since


def retry_error(call: Call, exc: httpx.TransportError) -> bool:
    """Whether a transport error may be retried for this call."""
    return call.safety is Safety.SAFE or isinstance(exc, _NOT_SENT)


def retry_response(call: Call, response: httpx.Response) -> bool:
    return call.safety is Safety.SAFE and response.status_code in RETRY_STATUSES


def connection_failed(
    base_url: str, call: Call, exc: httpx.TransportError, attempts: Attempts
) -> ConnectionFailed:
    sent = not isinstance(exc, _NOT_SENT)
    maybe = " (it may have taken effect)" if sent and call.safety is Safety.ONCE else ""
    tried = f" after {attempts.retries + 1} tries in {attempts.elapsed_s:.1f}s"
    error = ConnectionFailed(
        f"{call.method} {call.path} on {base_url} failed{maybe}{tried}: "
        f"{type(exc).__name__}: {exc}",
        code="connection_failed",
    )
    error.after_retry = attempts.retries > 0
    return error


def refused(response: httpx.Response, attempts: Attempts) -> TwintrackError:
    error = error_from_response(response)
    error.after_retry = attempts.retries > 0
    return error


def delay_for(call: Call, response: httpx.Response, attempts: Attempts) -> float | None:
    """Seconds before retrying this answer, or None when it is final."""
    if not retry_response(call, response):
        return None
    return attempts.delay_before_retry(retry_after_s(response))


def parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ProtocolError(
            f"{response.request.method} {response.request.url.path} answered a body that is "
            f"not a {model.__name__}: {exc.errors()[:1]}",
            code="invalid_response",
            status_code=response.status_code,
        ) from None


class EarlyAnswers:
    """Backs `wait` off when long-polls come back early without an ending (an API restarting,
    or one that predates `?wait=`), so that case cannot become a busy loop."""

    def __init__(self) -> None:
        self._pause = 0.0

    def after(self, took_s: float, asked_s: float, deadline: float | None) -> float:
        if took_s >= asked_s / 2:
            self._pause = 0.0
            return 0.0
        self._pause = min(max(self._pause * 2, 0.05), 1.0)
        if deadline is not None:
            return max(0.0, min(self._pause, deadline - time.monotonic()))
        return self._pause


# -- configuration ----------------------------------------------------------------------------


def base_url_of(base_url: str | None) -> str:
    return (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def headers_of(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise ValueError(f"no API key: pass api_key=... or set {API_KEY_ENV}")
    return {**(headers or {}), "Authorization": f"Bearer {key}"}


def new_idempotency_key() -> str:
    return f"tt-{uuid.uuid4().hex}"


# -- the calls --------------------------------------------------------------------------------


def _flow_body(flow: FlowLike) -> Any:
    if isinstance(flow, FlowDocument):
        return flow.model_dump(mode="json", by_alias=True)
    return dict(flow)


def create_flow(flow: FlowLike) -> Call:
    return Call("POST", "/v1/flows", Safety.ONCE, json=_flow_body(flow))


def update_flow(flow_id: str, flow: FlowLike) -> Call:
    return Call("PUT", f"/v1/flows/{flow_id}", Safety.ONCE, json=_flow_body(flow))


def get_flow(flow_id: str, version: int | None) -> Call:
    params = None if version is None else {"version": version}
    return Call("GET", f"/v1/flows/{flow_id}", params=params)


def list_flows(limit: int, cursor: str | None) -> Call:
    return Call("GET", "/v1/flows", params=_page(limit, cursor))


def create_execution(
    flow_id: str,
    *,
    version: int | None,
    options: OptionsLike | None,
    events: Sequence[EventLike],
    track: Track | str | None,
    idempotency_key: str,
    start: bool = False,
) -> Call:
    body: dict[str, Any] = {"flow_id": flow_id}
    if start:
        body["start"] = True
    if version is not None:
        body["version"] = version
    if options is not None:
        body["options"] = (
            options.model_dump(mode="json") if isinstance(options, ExecutionOptions) else options
        )
    if events:
        body["events"] = [
            e.model_dump(mode="json") if isinstance(e, TriggerEvent) else dict(e) for e in events
        ]
    if track is not None:
        body["track"] = Track(track).value
    headers = {IDEMPOTENCY_KEY_HEADER: idempotency_key}
    return Call("POST", "/v1/executions", json=body, headers=headers)


def get_execution(execution_id: str, wait_s: float | None) -> Call:
    if not wait_s or wait_s <= 0:
        return Call("GET", f"/v1/executions/{execution_id}")
    wait_s = min(wait_s, MAX_WAIT_S)
    timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=wait_s + WAIT_SLACK_S)
    return Call("GET", f"/v1/executions/{execution_id}", params={"wait": wait_s}, timeout=timeout)


def list_executions(
    flow_id: str | None,
    status: ExecutionStatus | str | None,
    track: Track | str | None,
    limit: int,
    cursor: str | None,
    *,
    parent_id: str | None = None,
    root_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Call:
    params = _page(limit, cursor)
    if flow_id is not None:
        params["flow_id"] = flow_id
    if status is not None:
        params["status"] = ExecutionStatus(status).value
    if track is not None:
        params["track"] = Track(track).value
    if parent_id is not None:
        params["parent_id"] = parent_id
    if root_id is not None:
        params["root_id"] = root_id
    if created_after is not None:
        params["created_after"] = created_after.isoformat()
    if created_before is not None:
        params["created_before"] = created_before.isoformat()
    return Call("GET", "/v1/executions", params=params)


def tree(execution_id: str, limit: int | None, cursor: str | None) -> Call:
    params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
    if limit is not None:
        params["limit"] = limit
    return Call("GET", f"/v1/executions/{execution_id}/tree", params=params)


def command(execution_id: str, command: Command, reason: str | None) -> Call:
    # A second start, pause, resume or stop does what the first did; a second step runs
    # another node, so a step is only retried when it surely never reached the API.
    safety = Safety.ONCE if command is Command.STEP else Safety.SAFE
    body = None if reason is None else {"reason": reason}
    return Call("POST", f"/v1/executions/{execution_id}/{command.value}", safety, json=body)


def events(execution_id: str, from_index: int, last_event_id: str | None) -> Call:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=STREAM_READ_TIMEOUT_S)
    return Call(
        "GET",
        f"/v1/executions/{execution_id}/events",
        params={"from_index": from_index},
        headers=headers,
        timeout=timeout,
    )


def _page(limit: int, cursor: str | None) -> dict[str, Any]:
    return {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
