"""`Client` and `AsyncClient` against scripted answers (httpx.MockTransport): retries, error
mapping, long-poll waits, pagination and the event stream's reconnects.

The same behaviour against the real API on real servers is tests/e2e/test_client.py; here each
branch is forced deterministically (a connection dropped after the third event, a 503 on the
second try, ...), on both clients.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import twintrack
from twintrack.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RetryPolicy,
    ServerError,
    TwintrackError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from twintrack.domain.events import Event, EventType

FAST = RetryPolicy(deadline_s=2.0, first_backoff_s=0.001, max_backoff_s=0.01)
NOW = datetime(2026, 12, 1, tzinfo=UTC).isoformat()
Handler = Callable[[httpx.Request], httpx.Response]


def error(status: int, code: str, message: str = "m", details: Any = None) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(status, json=body)


def row(execution_id: str = "ex_1", status: str = "running") -> dict[str, Any]:
    return {
        "id": execution_id,
        "root_id": execution_id,
        "parent_id": None,
        "depth": 0,
        "owner_id": "alice",
        "flow_id": "fl_1",
        "flow_version": 1,
        "track": "kafka",
        "events_backend": "kafka",
        "status": status,
        "options": {},
        "trigger_events": [],
        "outputs": {"answer": 42} if status == "completed" else {},
        "error_message": None,
        "error_node_id": None,
        "attempt": 1,
        "next_event_index": 0,
        "created_at": NOW,
        "queued_at": None,
        "started_at": None,
        "finished_at": None,
        "updated_at": NOW,
    }


def sse(execution_id: str, indices: range, terminal_at: int | None = None) -> bytes:
    """The API's wire format for these events (a ping first, as sse-starlette sends)."""
    out = [": ping\r\n\r\n"]
    for i in indices:
        kind = EventType.EXECUTION_COMPLETED if i == terminal_at else EventType.NODE_LOG
        event = Event(execution_id=execution_id, index=i, type=kind)
        out.append(f"id: {i}\r\nevent: {kind.value}\r\ndata: {event.model_dump_json()}\r\n\r\n")
    return "".join(out).encode()


class Dropping(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that breaks off with a ReadError after its chunks (a dropped TCP
    connection, or the API process going away mid-stream)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset")


class Script:
    """Answers in order, per request; records what was asked."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def sync_client(script: Script, retry: RetryPolicy = FAST) -> Client:
    return Client("http://api", "tt_key", retry=retry, transport=httpx.MockTransport(script))


def async_client(script: Script, retry: RetryPolicy = FAST) -> AsyncClient:
    return AsyncClient("http://api", "tt_key", retry=retry, transport=httpx.MockTransport(script))


# -- the two clients are one API --------------------------------------------------------------


def test_client_and_async_client_have_the_same_methods_and_parameters() -> None:
    def public(cls: type) -> dict[str, list[inspect.Parameter]]:
        return {
            name: list(inspect.signature(member).parameters.values())
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, asynchronous = public(Client), public(AsyncClient)
    assert sync.pop("close") == asynchronous.pop("aclose")
    assert sync == asynchronous


def test_importing_the_client_loads_none_of_the_server() -> None:
    code = (
        "import sys, twintrack.client; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'sqlalchemy', 'dbos', 'aiokafka', "
        "'asyncpg', 'uvicorn', 'structlog', 'typer') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_http_client_code_lives_outside_the_client_package() -> None:
    """The CLIs (and any later console) talk to the API through twintrack.client only."""
    package = Path(twintrack.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "client" not in path.relative_to(package).parts[:1]
        and re.search(r"^\s*(import|from)\s+httpx\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINTRACK_API_URL", "http://from-env:9/")
    monkeypatch.setenv("TWINTRACK_API_KEY", "tt_env")
    script = Script(httpx.Response(200, json=row()))
    with Client(transport=httpx.MockTransport(script)) as tt:
        assert tt.base_url == "http://from-env:9"
        tt.get_execution("ex_1")
    assert str(script.requests[0].url) == "http://from-env:9/v1/executions/ex_1"
    assert script.requests[0].headers["authorization"] == "Bearer tt_env"
    monkeypatch.delenv("TWINTRACK_API_KEY")
    with pytest.raises(ValueError, match="TWINTRACK_API_KEY"):
        Client()


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (error(400, "invalid_parameter"), InvalidRequest),
        (error(401, "unauthorized"), Unauthorized),
        (error(403, "forbidden"), Forbidden),
        (error(404, "not_found"), NotFound),
        (error(409, "conflict"), Conflict),
        (error(413, "payload_too_large"), PayloadTooLarge),
        (
            error(422, "invalid_flow", details=[{"location": "nodes[0]", "message": "x"}]),
            InvalidRequest,
        ),
        (error(422, "idempotency_key_reused"), IdempotencyKeyReused),
        (
            error(429, "limit_exceeded", details={"setting": "MAX_SSE_STREAMS_PER_KEY"}),
            LimitExceeded,
        ),
        (error(500, "internal_error"), ServerError),
        (httpx.Response(500, text="Internal Server Error"), ServerError),
        (httpx.Response(418, text="teapot"), TwintrackError),
    ],
)
def test_error_answers_map_to_exceptions_with_code_message_details(
    answer: httpx.Response, kind: type[TwintrackError]
) -> None:
    with sync_client(Script(answer)) as tt, pytest.raises(kind) as raised:
        tt.get_flow("fl_1")
    assert type(raised.value) is kind
    assert raised.value.status_code == answer.status_code
    try:
        expected = answer.json()["error"]
    except (ValueError, KeyError):
        assert raised.value.code == "error"
        assert raised.value.message == answer.text
    else:
        assert (raised.value.code, raised.value.message) == (expected["code"], expected["message"])
        assert raised.value.details == expected["details"]


# -- retries ----------------------------------------------------------------------------------


def test_reads_are_retried_through_503s_and_connection_errors() -> None:
    script = Script(
        httpx.ConnectError("refused"),
        error(503, "unavailable"),
        httpx.ReadError("reset"),
        httpx.Response(200, json=row()),
    )
    with sync_client(script) as tt:
        assert tt.get_execution("ex_1").status == "running"
    assert len(script.requests) == 4


async def test_reads_give_up_after_the_deadline_with_unavailable() -> None:
    script = Script(error(503, "unavailable", "a dependency is unavailable; retry later"))
    started = time.monotonic()
    policy = RetryPolicy(deadline_s=0.2, first_backoff_s=0.01, max_backoff_s=0.05)
    async with async_client(script, policy) as tt:
        with pytest.raises(Unavailable) as raised:
            await tt.get_execution("ex_1")
    assert 0.1 < time.monotonic() - started < 2
    assert raised.value.code == "unavailable"
    assert raised.value.after_retry
    assert len(script.requests) > 2
    refused = Script(httpx.ConnectError("refused"))
    async with async_client(refused, policy) as tt:
        with pytest.raises(ConnectionFailed, match="ConnectError"):
            await tt.get_execution("ex_1")


def test_flow_writes_and_steps_are_retried_only_when_never_sent() -> None:
    created = httpx.Response(201, json={"id": "fl_1", "version": 1})
    script = Script(httpx.ConnectError("refused"), created)
    with sync_client(script) as tt:
        assert tt.create_flow({"name": "f", "nodes": []}).id == "fl_1"
    assert len(script.requests) == 2
    for answer in (httpx.ReadError("reset"), error(503, "unavailable")):
        once = Script(answer, created)
        with sync_client(once) as tt, pytest.raises(Unavailable) as raised:
            tt.create_flow({"name": "f", "nodes": []})
        assert len(once.requests) == 1
        if isinstance(answer, Exception):
            assert "may have taken effect" in raised.value.message
        step = Script(answer, httpx.Response(202, json={}))
        with sync_client(step) as tt, pytest.raises(Unavailable):
            tt.step("ex_1")
        assert len(step.requests) == 1


async def test_a_retried_create_sends_the_same_idempotency_key() -> None:
    created = {"id": "ex_1", "status": "created", "track": "kafka", "events_backend": "kafka"}
    script = Script(
        httpx.ReadTimeout("slow"), error(503, "unavailable"), httpx.Response(201, json=created)
    )
    async with async_client(script) as tt:
        assert (await tt.create_execution("fl_1", options={"debug": True})).id == "ex_1"
        await tt.create_execution("fl_1", idempotency_key="mine")
    keys = [r.headers["idempotency-key"] for r in script.requests]
    assert keys[0] == keys[1] == keys[2]
    assert keys[0].startswith("tt-")
    assert keys[3] == "mine"
    assert json.loads(script.requests[0].content) == {"flow_id": "fl_1", "options": {"debug": True}}


def test_a_stop_whose_answer_was_lost_is_accepted_when_the_execution_is_stopped() -> None:
    script = Script(
        httpx.ReadError("reset"),
        error(409, "conflict", "execution ex_1 is already stopped"),
        httpx.Response(200, json=row(status="stopped")),
    )
    with sync_client(script) as tt:
        accepted = tt.stop("ex_1", reason="enough")
    assert (accepted.command, accepted.status) == ("stop", "stopped")
    # A first-try 409 is the truth: the execution had finished before anyone asked.
    with sync_client(Script(error(409, "conflict"))) as tt, pytest.raises(Conflict):
        tt.stop("ex_1")


# -- long-poll waits ------------------------------------------------------------------------


def test_wait_long_polls_until_the_row_is_final() -> None:
    script = Script(
        httpx.Response(200, json=row(status="running")),
        httpx.Response(200, json=row(status="completed")),
    )
    with sync_client(script) as tt:
        final = tt.wait("ex_1", timeout=100)
    assert final.status == "completed"
    assert final.outputs == {"answer": 42}
    waits = [float(r.url.params["wait"]) for r in script.requests]
    assert len(waits) == 2
    assert all(0 < w <= 30 for w in waits)


async def test_wait_times_out_with_the_last_row_and_never_spins() -> None:
    # An API that ignores `wait` (answers at once): the client must back off, not hammer it.
    script = Script(httpx.Response(200, json=row(status="running")))
    async with async_client(script) as tt:
        with pytest.raises(WaitTimeout) as raised:
            await tt.wait("ex_1", timeout=0.5)
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.execution.status == "running"
    assert len(script.requests) < 15


# -- pagination -----------------------------------------------------------------------------


def test_lists_follow_cursors_page_by_page() -> None:
    def summary(flow_id: str) -> dict[str, Any]:
        fields = {"owner_id": "alice", "name": "f", "latest_version": 1}
        return {"id": flow_id, **fields, "created_at": NOW, "updated_at": NOW}

    script = Script(
        httpx.Response(200, json={"items": [summary("fl_1"), summary("fl_2")], "next_cursor": "c"}),
        httpx.Response(200, json={"items": [summary("fl_3")], "next_cursor": None}),
    )
    with sync_client(script) as tt:
        assert [f.id for f in tt.list_flows(page_size=2)] == ["fl_1", "fl_2", "fl_3"]
    assert [r.url.params.get("cursor") for r in script.requests] == [None, "c"]
    assert {r.url.params["limit"] for r in script.requests} == {"2"}


async def test_execution_lists_send_their_filters_with_every_page() -> None:
    script = Script(
        httpx.Response(200, json={"items": [row("ex_1")], "next_cursor": "c"}),
        httpx.Response(200, json={"items": [row("ex_2")], "next_cursor": None}),
    )
    since = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    async with async_client(script) as tt:
        listed = [
            e.id
            async for e in tt.list_executions(
                root_id="ex_root", parent_id="ex_p", created_after=since, page_size=1
            )
        ]
    assert listed == ["ex_1", "ex_2"]
    for request in script.requests:  # the cursor only holds with the same filters
        assert request.url.params["root_id"] == "ex_root"
        assert request.url.params["parent_id"] == "ex_p"
        assert request.url.params["created_after"] == "2026-12-01T09:30:00+00:00"
        assert "created_before" not in request.url.params
    assert [r.url.params.get("cursor") for r in script.requests] == [None, "c"]


async def test_tree_joins_every_page() -> None:
    page = {"root_id": "ex_1", "tree_status": "running", "size": 2}
    script = Script(
        httpx.Response(200, json={**page, "executions": [row("ex_1")], "next_cursor": "c"}),
        httpx.Response(200, json={**page, "executions": [row("ex_2")], "next_cursor": None}),
    )
    async with async_client(script) as tt:
        tree = await tt.tree("ex_1")
    assert [m.id for m in tree.executions] == ["ex_1", "ex_2"]
    assert (tree.size, tree.next_cursor) == (2, None)


# -- event streams ----------------------------------------------------------------------------


def _stream_script() -> Script:
    """Events 0-2, then the connection drops; the reconnect replays 2 again (as an
    at-least-once reader might) and goes on to the terminal event 4."""
    return Script(
        httpx.Response(200, stream=Dropping(sse("ex_1", range(3)), b"id: 3\r\ndata: {")),
        httpx.ConnectError("refused: the API is restarting"),
        error(503, "unavailable"),
        httpx.Response(200, content=sse("ex_1", range(2, 5), terminal_at=4)),
    )


def test_events_resume_after_a_drop_with_last_event_id_each_event_once() -> None:
    script = _stream_script()
    with sync_client(script) as tt:
        indices = [e.index for e in tt.events("ex_1")]
    assert indices == [0, 1, 2, 3, 4]
    assert [r.headers.get("last-event-id") for r in script.requests] == [None, "2", "2", "2"]
    assert {r.url.params["from_index"] for r in script.requests} == {"0"}


async def test_async_events_resume_the_same_way() -> None:
    script = _stream_script()
    async with async_client(script) as tt:
        indices = [e.index async for e in tt.events("ex_1")]
    assert indices == [0, 1, 2, 3, 4]
    assert [r.headers.get("last-event-id") for r in script.requests] == [None, "2", "2", "2"]


def test_a_stream_closed_early_by_the_server_is_reopened_and_204_ends_it() -> None:
    script = Script(
        httpx.Response(200, content=sse("ex_1", range(2))),  # a clean close, no terminal
        httpx.Response(204),  # "finished, and nothing after index 1"
    )
    with sync_client(script) as tt:
        assert [e.index for e in tt.events("ex_1")] == [0, 1]
    assert script.requests[1].headers["last-event-id"] == "1"


async def test_an_outage_longer_than_the_deadline_ends_the_stream_with_connection_failed() -> None:
    script = Script(
        httpx.Response(200, stream=Dropping(sse("ex_1", range(1)))),
        httpx.ConnectError("refused"),
    )
    policy = RetryPolicy(deadline_s=0.2, first_backoff_s=0.01, max_backoff_s=0.05)
    seen: list[int] = []

    async def follow(tt: AsyncClient) -> None:
        async for event in tt.events("ex_1"):
            seen.append(event.index)

    async with async_client(script, policy) as tt:
        with pytest.raises(ConnectionFailed):
            await follow(tt)
    assert seen == [0]


def test_stream_refusals_are_raised_not_retried() -> None:
    limit = Script(error(429, "limit_exceeded"))
    with sync_client(limit) as tt, pytest.raises(LimitExceeded):
        list(tt.events("ex_1"))
    assert len(limit.requests) == 1
    gap = Script(httpx.Response(200, content=sse("ex_1", range(0, 1)) + sse("ex_1", range(2, 3))))
    with sync_client(gap) as tt, pytest.raises(ProtocolError, match="skipped from index 1 to 2"):
        list(tt.events("ex_1"))


def test_leaving_the_loop_early_closes_the_stream() -> None:
    script = Script(httpx.Response(200, content=sse("ex_1", range(10), terminal_at=9)))
    with sync_client(script) as tt:
        events = tt.events("ex_1", from_index=0)
        assert next(iter(events)).index == 0
        events.close()  # what `break` does to the generator
    assert len(script.requests) == 1
