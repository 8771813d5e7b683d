"""`AsyncClient`: the twintrack API from asyncio code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType

import httpx

from twintrack.api_models import (
    MAX_WAIT_S,
    CommandAccepted,
    ExecutionCreated,
    ExecutionPage,
    ExecutionRecord,
    ExecutionTreeOut,
    FlowCreated,
    FlowOut,
    FlowPage,
    FlowSummary,
)
from twintrack.client import _core
from twintrack.client._core import (
    DEFAULT_TIMEOUT,
    Attempts,
    Call,
    EarlyAnswers,
    EventLike,
    FlowLike,
    OptionsLike,
    RetryPolicy,
)
from twintrack.client._sse import Decoder, StreamPosition
from twintrack.client.errors import Conflict, ConnectionFailed, WaitTimeout
from twintrack.domain.commands import Command
from twintrack.domain.events import Event
from twintrack.domain.execution import ExecutionStatus, Track


class AsyncClient:
    """A connection pool to one twintrack API, as one API key's owner.

    `base_url` and `api_key` default to TWINTRACK_API_URL and TWINTRACK_API_KEY (what
    `twintrack dev` prints). Reads, creates (always sent with an idempotency key) and every
    command but `step` are retried through connection errors and 503s until `retry`'s
    deadline; errors are `twintrack.client.errors` exceptions. Use it as an async context
    manager, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _core.base_url_of(base_url)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_core.headers_of(api_key, headers),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempts = Attempts(self.retry)
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                delay = attempts.delay_before_retry() if _core.retry_error(call, exc) else None
                if delay is None:
                    raise _core.connection_failed(self.base_url, call, exc, attempts) from exc
                await asyncio.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = _core.delay_for(call, response, attempts)
            if delay is None:
                raise _core.refused(response, attempts)
            await asyncio.sleep(delay)

    # -- flows -----------------------------------------------------------------------------

    async def create_flow(self, flow: FlowLike) -> FlowCreated:
        """Create a flow (version 1); `InvalidRequest` lists every problem of an invalid one."""
        return _core.parse(FlowCreated, await self._send(_core.create_flow(flow)))

    async def update_flow(self, flow_id: str, flow: FlowLike) -> FlowCreated:
        """Store `flow` as the flow's next version (executions keep the version they pinned)."""
        return _core.parse(FlowCreated, await self._send(_core.update_flow(flow_id, flow)))

    async def get_flow(self, flow_id: str, version: int | None = None) -> FlowOut:
        """A version of the flow, the latest by default."""
        return _core.parse(FlowOut, await self._send(_core.get_flow(flow_id, version)))

    async def list_flows(self, *, page_size: int = 50) -> AsyncIterator[FlowSummary]:
        """Every flow of the owner, newest first, fetched a page at a time as you iterate."""
        cursor: str | None = None
        while True:
            page = _core.parse(FlowPage, await self._send(_core.list_flows(page_size, cursor)))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- executions ------------------------------------------------------------------------

    async def create_execution(
        self,
        flow_id: str,
        *,
        version: int | None = None,
        options: OptionsLike | None = None,
        events: Sequence[EventLike] = (),
        track: Track | str | None = None,
        idempotency_key: str | None = None,
        start: bool = False,
    ) -> ExecutionCreated:
        """Create an execution (status `created`: `start` runs it; or `start=True`, which
        starts it in the same request and answers `queued`).

        Always sent with an `Idempotency-Key` (a fresh one unless given), so the retries after a
        lost answer return the execution the first try made. Pass your own key, stored with the
        work it belongs to, to stay safe across restarts of your own process too.
        """
        call = _core.create_execution(
            flow_id,
            version=version,
            options=options,
            events=events,
            track=track,
            idempotency_key=idempotency_key or _core.new_idempotency_key(),
            start=start,
        )
        return _core.parse(ExecutionCreated, await self._send(call))

    async def get_execution(
        self, execution_id: str, *, wait: float | None = None
    ) -> ExecutionRecord:
        """The execution's row; with `wait`, held by the API until it ends, at most `wait`
        seconds (and at most MAX_WAIT_S per request)."""
        call = _core.get_execution(execution_id, wait)
        return _core.parse(ExecutionRecord, await self._send(call))

    async def list_executions(
        self,
        *,
        flow_id: str | None = None,
        status: ExecutionStatus | str | None = None,
        track: Track | str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[ExecutionRecord]:
        """The owner's executions, newest first, optionally filtered, a page at a time.

        `parent_id`: its direct children; `root_id`: its whole tree, the root included;
        `created_after` <= created < `created_before` (a time without a zone is UTC).
        """
        cursor: str | None = None
        while True:
            call = _core.list_executions(
                flow_id,
                status,
                track,
                page_size,
                cursor,
                parent_id=parent_id,
                root_id=root_id,
                created_after=created_after,
                created_before=created_before,
            )
            page = _core.parse(ExecutionPage, await self._send(call))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def tree(self, execution_id: str) -> ExecutionTreeOut:
        """The execution and all its descendants (every page), with the tree's status."""
        cursor: str | None = None
        members: list[ExecutionRecord] = []
        while True:
            call = _core.tree(execution_id, None, cursor)
            page = _core.parse(ExecutionTreeOut, await self._send(call))
            members.extend(page.executions)
            if page.next_cursor is None:
                return page.model_copy(update={"executions": members})
            cursor = page.next_cursor

    # -- commands --------------------------------------------------------------------------

    async def command(
        self, execution_id: str, command: Command | str, reason: str | None = None
    ) -> CommandAccepted:
        """Send a command; `Conflict` when the execution has already finished."""
        command = Command(command)
        try:
            response = await self._send(_core.command(execution_id, command, reason))
        except Conflict as exc:
            # A stop whose first answer was lost may find its own work done on the retry.
            if not (command is Command.STOP and exc.after_retry):
                raise
            row = await self.get_execution(execution_id)
            if row.status is not ExecutionStatus.STOPPED:
                raise
            return CommandAccepted(id=row.id, command=command, status=row.status)
        return _core.parse(CommandAccepted, response)

    async def start(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Queue a created execution for a worker (starting twice is harmless)."""
        return await self.command(execution_id, Command.START, reason)

    async def pause(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Hold before the next node (running nodes finish)."""
        return await self.command(execution_id, Command.PAUSE, reason)

    async def resume(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        return await self.command(execution_id, Command.RESUME, reason)

    async def step(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Run exactly one more node of a paused execution (never retried once sent)."""
        return await self.command(execution_id, Command.STEP, reason)

    async def stop(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Stop now: running nodes are cancelled, descendants stopped too."""
        return await self.command(execution_id, Command.STOP, reason)

    # -- results ---------------------------------------------------------------------------

    async def wait(self, execution_id: str, *, timeout: float | None = None) -> ExecutionRecord:
        """The execution's final row, as soon as it has ended (one long-poll per MAX_WAIT_S);
        `WaitTimeout` (a TimeoutError) if it has not after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = EarlyAnswers()
        while True:
            remaining = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            asked = max(0.0, min(remaining, MAX_WAIT_S))
            sent = time.monotonic()
            row = await self.get_execution(execution_id, wait=asked)
            if row.status.is_terminal:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                raise WaitTimeout(row, timeout)
            await asyncio.sleep(pause.after(time.monotonic() - sent, asked, deadline))

    async def run(
        self,
        flow_id: str,
        *,
        version: int | None = None,
        options: OptionsLike | None = None,
        events: Sequence[EventLike] = (),
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> ExecutionRecord:
        """Create, start and wait: the final row of one execution of the flow."""
        created = await self.create_execution(
            flow_id,
            version=version,
            options=options,
            events=events,
            idempotency_key=idempotency_key,
            start=True,
        )
        return await self.wait(created.id, timeout=timeout)

    async def events(
        self, execution_id: str, *, from_index: int = 0
    ) -> AsyncGenerator[Event, None]:
        """Every event of the execution from `from_index`, in order, each exactly once, ending
        after the terminal event; live or after the fact.

        A dropped connection (or an API process restarting) is resumed with `Last-Event-ID`,
        retried until `retry`'s deadline passes without a new event; `EventsExpired` if the
        events are gone from the broker's retention.
        """
        position = StreamPosition(execution_id, from_index)
        attempts = Attempts(self.retry)
        while not position.ended:
            call = _core.events(execution_id, from_index, position.last_event_id)
            try:
                async with self._http.stream(
                    call.method,
                    call.path,
                    params=call.params,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                ) as response:
                    if response.status_code == 204:
                        return  # ended, and nothing at or after the index asked for
                    if not response.is_success:
                        await response.aread()
                        delay = _core.delay_for(call, response, attempts)
                        if delay is None:
                            raise _core.refused(response, attempts)
                        await asyncio.sleep(delay)
                        continue
                    decoder = Decoder()
                    async for line in response.aiter_lines():
                        message = decoder.feed(line)
                        event = None if message is None else position.accept(message)
                        if event is not None:
                            attempts.progressed()
                            yield event
                            if position.ended:
                                return
            except httpx.TransportError as exc:
                delay = attempts.delay_before_retry()
                if delay is None:
                    raise _core.connection_failed(self.base_url, call, exc, attempts) from exc
                await asyncio.sleep(delay)
                continue
            # The server closed the stream before the terminal event (it is shutting down):
            # reconnect at once, and back off if it keeps happening without progress.
            delay = attempts.delay_before_retry()
            if delay is None:
                raise ConnectionFailed(
                    f"the event stream of {execution_id} kept closing before its end "
                    f"(at index {position.next_index})",
                    code="stream_closed",
                )
            await asyncio.sleep(delay)
