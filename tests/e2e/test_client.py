"""`twintrack.client` against the real API on real servers, in every mode (Kafka; DBOS + Kafka
events; DBOS + DBOS streams): what an application team relies on.

- `wait` returns the final row, in one long-poll rather than a poll loop;
- an event stream survives the API process being killed and started again mid-stream: every
  event once, in order, nothing lost or repeated;
- a create whose answer was lost, retried by the client, and concurrent creates with one
  idempotency key each yield one execution, which runs once;
- every documented error arrives as its exception, with the API's code, message and details.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import flows
from tests.e2e.conftest import Mode
from tests.e2e.stack import Stack, eventually, open_stack
from twintrack.client import (
    AsyncClient,
    Conflict,
    ConnectionFailed,
    Event,
    EventType,
    Forbidden,
    IdempotencyKeyReused,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    Unauthorized,
    WaitTimeout,
)
from twintrack.tooling.embedded._proc import free_port


class Recording(httpx.AsyncBaseTransport):
    """The real HTTP transport, recording each request; optionally losing the first answer to
    one route after the API has acted on it (a timeout on the way back)."""

    def __init__(self, lose: tuple[str, str] | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose = lose
        self.requests: list[tuple[str, str]] = []
        self.replayed: list[str | None] = []
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        self.requests.append(route)
        response = await self.inner.handle_async_request(request)
        if route == self.lose:
            self.replayed.append(response.headers.get("Idempotent-Replayed"))
            if not self.lost:
                self.lost += 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost on its way back", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))


def client(stack: Stack, **options: Any) -> AsyncClient:
    return AsyncClient(stack.base_url, stack.api.key, **options)


def assert_stream(events: list[Event]) -> None:
    """Every index once, in order, from 0, ending with the one terminal event."""
    assert [e.index for e in events] == list(range(len(events))), [
        (e.index, e.type) for e in events
    ]
    assert events[0].type is EventType.EXECUTION_CREATED
    assert [e.type.is_terminal for e in events].count(True) == 1
    assert events[-1].type.is_terminal


async def test_wait_returns_the_final_row_in_one_long_poll(stack: Stack, mode: Mode) -> None:
    transport = Recording()
    async with client(stack, transport=transport) as tt:
        flow = await tt.create_flow(flows.chain(2, ms=300))
        created = await tt.create_execution(flow.id)
        assert (created.track, created.events_backend) == (mode.track, mode.events_backend)
        await tt.start(created.id)
        final = await tt.wait(created.id, timeout=30)
        # Waiting ~0.6 s took one request (two if the first raced the start), not a poll loop.
        assert transport.count("GET", f"/v1/executions/{created.id}") <= 2
        assert final.status == "completed"
        assert final.outputs == {"done": None}
        assert final.finished_at is not None
        assert final == await tt.get_execution(created.id)

        three = await tt.create_flow(flows.three_nodes())
        ran = await tt.run(three.id, timeout=30)  # create + start + wait
        assert (ran.status, ran.outputs, ran.attempt) == ("completed", {"answer": 42}, 1)
        failing = await tt.create_flow(
            flows.flow("fails", [("boom", "fail", {"message": "no luck"})], [])
        )
        failed = await tt.run(failing.id, timeout=30)
        assert failed.status == "failed"
        assert "no luck" in (failed.error_message or "")

        slow = await tt.create_flow(flows.long_delay())
        running = await tt.create_execution(slow.id)
        await tt.start(running.id)
        with pytest.raises(WaitTimeout) as ran_out:
            await tt.wait(running.id, timeout=0.5)
        assert ran_out.value.execution.status in {"queued", "running"}
        await tt.stop(running.id, reason="enough")
        stopped = await tt.wait(running.id, timeout=30)
        assert (stopped.status, stopped.error_message) == ("stopped", "enough")


async def _healthy(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
            return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_an_event_stream_survives_the_api_process_being_restarted(stack: Stack) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = stack.spawn_api_process("api-first", port)
    await eventually(lambda: _healthy(url), timeout=60, every=0.1)
    transport = Recording()
    retry = RetryPolicy(deadline_s=60)  # covers the new process's start-up
    async with AsyncClient(url, stack.api.key, retry=retry, transport=transport) as tt:
        flow = await tt.create_flow(flows.chain(8, ms=500))
        execution = (await tt.create_execution(flow.id)).id
        events: list[Event] = []
        early = asyncio.Event()

        async def follow() -> None:
            async for event in tt.events(execution):
                events.append(event)
                if event.type is EventType.NODE_COMPLETED and event.data["node_id"] == "n0":
                    early.set()

        following = asyncio.create_task(follow())
        await tt.start(execution)
        await asyncio.wait_for(early.wait(), 30)
        os.killpg(first.pid, signal.SIGKILL)  # a crash, mid-stream: the connection is reset
        await asyncio.to_thread(first.wait, 30)
        at_kill = len(events)
        assert not following.done()
        stack.spawn_api_process("api-second", port)
        await asyncio.wait_for(following, 120)
        assert_stream(events)
        assert len(events) > at_kill  # the rest came through the new process
        assert transport.count("GET", f"/v1/executions/{execution}/events") >= 2
        assert [e async for e in tt.events(execution)] == events  # the same stream, replayed
        assert (await tt.wait(execution, timeout=30)).status == "completed"


async def test_a_retried_create_and_concurrent_creates_with_one_key_make_one_execution(
    stack: Stack,
) -> None:
    transport = Recording(lose=("POST", "/v1/executions"))
    async with client(stack, transport=transport) as tt:
        flow = await tt.create_flow(flows.three_nodes())
        # The API creates it, the answer is lost; the client retries with the same key.
        created = await tt.create_execution(flow.id)
        assert transport.lost == 1
        assert transport.replayed == [None, "true"]
        assert [e.id async for e in tt.list_executions(flow_id=flow.id)] == [created.id]

        together = await asyncio.gather(
            *(tt.create_execution(flow.id, idempotency_key="order-17") for _ in range(6))
        )
        assert len({c.id for c in together}) == 1
        listed = [e.id async for e in tt.list_executions(flow_id=flow.id)]
        assert sorted(listed) == sorted({created.id, together[0].id})

        # Each runs once, its stream intact: one execution.created, one ending.
        for execution_id in {created.id, together[0].id}:
            await tt.start(execution_id)
            final = await tt.wait(execution_id, timeout=30)
            assert (final.status, final.attempt) == ("completed", 1)
            assert_stream([e async for e in tt.events(execution_id)])
        with pytest.raises(IdempotencyKeyReused) as reused:
            await tt.create_execution(flow.id, idempotency_key="order-17", options={"debug": True})
        assert reused.value.status_code == 422
        assert reused.value.details[0]["location"] == "header.Idempotency-Key"


async def test_errors_arrive_as_the_documented_exceptions(
    env: dict[str, str], logs: Path, mode: Mode
) -> None:
    async with open_stack(env, logs, MAX_RUNNING_EXECUTIONS_PER_OWNER="1") as stack:  # no worker
        async with client(stack, retry=RetryPolicy(deadline_s=1)) as tt:
            flow = await tt.create_flow(flows.three_nodes())

            with pytest.raises(NotFound) as missing:
                await tt.get_execution("ex_does_not_exist")
            assert (missing.value.status_code, missing.value.code) == (404, "not_found")

            with pytest.raises(InvalidRequest) as invalid:
                await tt.create_flow(flows.flow("bad", [("x", "nonsense", {})], []))
            assert (invalid.value.status_code, invalid.value.code) == (422, "invalid_flow")
            assert "nonsense" in str(invalid.value.details)

            with pytest.raises(InvalidRequest) as bad_parameter:
                await tt.get_flow(flow.id, version=0)
            assert (bad_parameter.value.status_code, bad_parameter.value.code) == (
                400,
                "invalid_parameter",
            )

            with pytest.raises(Forbidden) as forbidden:
                await tt.create_execution(flow.id, track=mode.track)
            assert forbidden.value.details[0]["location"] == "track"

            huge = flows.flow("huge", [("x", "const", {"value": "x" * (1 << 20)})], [])
            with pytest.raises(PayloadTooLarge):
                await tt.create_flow(huge)

            first = await tt.create_execution(flow.id)
            second = await tt.create_execution(flow.id)
            await tt.start(first.id)  # queued: it counts as running (no worker here)
            with pytest.raises(LimitExceeded) as limited:
                await tt.start(second.id)
            assert limited.value.status_code == 429
            assert "MAX_RUNNING_EXECUTIONS_PER_OWNER" in str(limited.value.details)

            assert (await tt.stop(second.id)).status == "stopped"
            with pytest.raises(Conflict) as finished:
                await tt.pause(second.id)
            assert "already stopped" in finished.value.message

        async with AsyncClient(stack.base_url, "tt_not_a_key") as stranger:
            with pytest.raises(Unauthorized) as refused:
                await stranger.get_flow(flow.id)
            assert refused.value.code == "unauthorized"

    nowhere = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(nowhere, "tt_key", retry=RetryPolicy(deadline_s=0.3)) as lost:
        with pytest.raises(ConnectionFailed):
            await lost.get_execution("ex_1")
