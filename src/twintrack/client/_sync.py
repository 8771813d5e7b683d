"""`Client`: the twintrack API from blocking code (`AsyncClient` is the same for asyncio).

Kept method for method in step with `_async.py` (a test compares the two); every decision
lives in `_core` and `_sse`, so only the waiting differs.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping, Sequence
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


class Client:
    """A connection pool to one twintrack API, as one API key's owner.

    `base_url` and `api_key` default to TWINTRACK_API_URL and TWINTRACK_API_KEY (what
    `twintrack dev` prints). Reads, creates (always sent with an idempotency key) and every
    command but `step` are retried through connection errors and 503s until `retry`'s
    deadline; errors are `twintrack.client.errors` exceptions. Use it as a context manager, or
    call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _core.base_url_of(base_url)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_core.headers_of(api_key, headers),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
        attempts = Attempts(self.retry)
        while True:
            try:
                response = self._http.request(
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
                time.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = _core.delay_for(call, response, attempts)
            if delay is None:
                raise _core.refused(response, attempts)
            time.sleep(delay)

    # -- flows -----------------------------------------------------------------------------

    def create_flow(self, flow: FlowLike) -> FlowCreated:
        """Create a flow (version 1); `InvalidRequest` lists every problem of an invalid one."""
        return _core.parse(FlowCreated, self._send(_core.create_flow(flow)))

    def update_flow(self, flow_id: str, flow: FlowLike) -> FlowCreated:
        """Store `flow` as the flow's next version (executions keep the version they pinned)."""
        return _core.parse(FlowCreated, self._send(_core.update_flow(flow_id, flow)))

    def get_flow(self, flow_id: str, version: int | None = None) -> FlowOut:
        """A version of the flow, the latest by default."""
        return _core.parse(FlowOut, self._send(_core.get_flow(flow_id, version)))

    def list_flows(self, *, page_size: int = 50) -> Iterator[FlowSummary]:
        """Every flow of the owner, newest first, fetched a page at a time as you iterate."""
        cursor: str | None = None
        while True:
            page = _core.parse(FlowPage, self._send(_core.list_flows(page_size, cursor)))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- executions ------------------------------------------------------------------------

    def create_execution(
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
        return _core.parse(ExecutionCreated, self._send(call))

    def get_execution(self, execution_id: str, *, wait: float | None = None) -> ExecutionRecord:
        """The execution's row; with `wait`, held by the API until it ends, at most `wait`
        seconds (and at most MAX_WAIT_S per request)."""
        call = _core.get_execution(execution_id, wait)
        return _core.parse(ExecutionRecord, self._send(call))

    def list_executions(
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
    ) -> Iterator[ExecutionRecord]:
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
            page = _core.parse(ExecutionPage, self._send(call))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def tree(self, execution_id: str) -> ExecutionTreeOut:
        """The execution and all its descendants (every page), with the tree's status."""
        cursor: str | None = None
        members: list[ExecutionRecord] = []
        while True:
            call = _core.tree(execution_id, None, cursor)
            page = _core.parse(ExecutionTreeOut, self._send(call))
            members.extend(page.executions)
            if page.next_cursor is None:
                return page.model_copy(update={"executions": members})
            cursor = page.next_cursor

    # -- commands --------------------------------------------------------------------------

    def command(
        self, execution_id: str, command: Command | str, reason: str | None = None
    ) -> CommandAccepted:
        """Send a command; `Conflict` when the execution has already finished."""
        command = Command(command)
        try:
            response = self._send(_core.command(execution_id, command, reason))
        except Conflict as exc:
            # A stop whose first answer was lost may find its own work done on the retry.
            if not (command is Command.STOP and exc.after_retry):
                raise
            row = self.get_execution(execution_id)
            if row.status is not ExecutionStatus.STOPPED:
                raise
            return CommandAccepted(id=row.id, command=command, status=row.status)
        return _core.parse(CommandAccepted, response)

    def start(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Queue a created execution for a worker (starting twice is harmless)."""
        return self.command(execution_id, Command.START, reason)

    def pause(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Hold before the next node (running nodes finish)."""
        return self.command(execution_id, Command.PAUSE, reason)

    def resume(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        return self.command(execution_id, Command.RESUME, reason)

    def step(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Run exactly one more node of a paused execution (never retried once sent)."""
        return self.command(execution_id, Command.STEP, reason)

    def stop(self, execution_id: str, reason: str | None = None) -> CommandAccepted:
        """Stop now: running nodes are cancelled, descendants stopped too."""
        return self.command(execution_id, Command.STOP, reason)

    # -- results ---------------------------------------------------------------------------

    def wait(self, execution_id: str, *, timeout: float | None = None) -> ExecutionRecord:
        """The execution's final row, as soon as it has ended (one long-poll per MAX_WAIT_S);
        `WaitTimeout` (a TimeoutError) if it has not after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = EarlyAnswers()
        while True:
            remaining = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            asked = max(0.0, min(remaining, MAX_WAIT_S))
            sent = time.monotonic()
            row = self.get_execution(execution_id, wait=asked)
            if row.status.is_terminal:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                raise WaitTimeout(row, timeout)
            time.sleep(pause.after(time.monotonic() - sent, asked, deadline))

    def run(
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
        created = self.create_execution(
            flow_id,
            version=version,
            options=options,
            events=events,
            idempotency_key=idempotency_key,
            start=True,
        )
        return self.wait(created.id, timeout=timeout)

    def events(self, execution_id: str, *, from_index: int = 0) -> Generator[Event, None, None]:
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
                with self._http.stream(
                    call.method,
                    call.path,
                    params=call.params,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                ) as response:
                    if response.status_code == 204:
                        return  # ended, and nothing at or after the index asked for
                    if not response.is_success:
                        response.read()
                        delay = _core.delay_for(call, response, attempts)
                        if delay is None:
                            raise _core.refused(response, attempts)
                        time.sleep(delay)
                        continue
                    decoder = Decoder()
                    for line in response.iter_lines():
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
                time.sleep(delay)
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
            time.sleep(delay)
