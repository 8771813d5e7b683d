"""DbosStreamEventBus: each execution's events in the DBOS stream of its workflow.

The workflow (id = execution id) exists from creation on (prepared DELAYED by the task
queue), so `execution.created` is in its stream before start. Writes are at-least-once, like
a step's: a retried run never renumbers what is there, and the reader dedupes and orders by
index, so a client never sees a duplicate or a gap. The stream is closed after the terminal
event, which ends every reader at once.

Writes go through one writer task in order; `publish` returns at once (or, with `wait`,
once its event is durable) and `flush` waits for everything published so far.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import structlog
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dbos import DBOSClient
from twintrack.adapters.dbos.runtime import DbosConfig, blocking, make_client
from twintrack.adapters.dbos.system_db import STREAM_KEY, close_stream, write_stream
from twintrack.core.in_order import InOrderReader
from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend

log = structlog.get_logger()
_CLOSED = "__DBOS_STREAM_CLOSED__"
_ROWS_POLL_S = 0.05
_Item = tuple[Event, "asyncio.Future[None] | None"]


class DbosStreamEventBus:
    backend = EventsBackend.DBOS

    def __init__(
        self,
        config: DbosConfig,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_event_bytes: int = 1_000_000,
    ) -> None:
        self.config = config
        self._sessions = sessions
        # Checked by the writers (engine sink, service) before anything reaches a stream.
        self.max_event_bytes = max_event_bytes
        self._client: DBOSClient | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._failed: dict[str, BaseException] = {}  # per execution: its first lost event

    async def start(self) -> None:
        if self._client is None:
            self._client = await blocking(make_client, self.config)
            self._writer = asyncio.create_task(self._write_forever(), name="dbos-stream-writer")

    async def close(self) -> None:
        if self._client is None:
            return
        try:
            await self.flush()
        finally:
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            client, self._client = self._client, None
            await blocking(client.destroy)

    # -- writing ---------------------------------------------------------------------------

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        if self._client is None:
            raise RuntimeError("DbosStreamEventBus.start() was not called")
        done: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if wait else None
        )
        self._queue.put_nowait((event, done))
        if done is not None:
            await done

    async def flush(self, execution_id: str | None = None) -> None:
        """Wait for every write queued so far; raise for the execution's lost events (for any
        execution's, without one): one execution's failure is never blamed on another."""
        await self._queue.join()
        ids = list(self._failed) if execution_id is None else [execution_id]
        failures = [(i, self._failed.pop(i)) for i in ids if i in self._failed]
        if failures:
            first_id, first = failures[0]
            raise RuntimeError(
                f"{len(failures)} execution(s) had events not written to DBOS streams, "
                f"{first_id} first: {first!r}"
            ) from first

    async def _write_forever(self) -> None:
        while True:
            event, done = await self._queue.get()
            try:
                await self._write(event)
            except Exception as exc:
                log.warning("dbos stream write failed", execution_id=event.execution_id)
                if done is not None:
                    done.set_exception(exc)  # its caller hears of it ...
                else:
                    self._failed.setdefault(event.execution_id, exc)  # ... or its flush does
            else:
                if done is not None:
                    done.set_result(None)
            finally:
                self._queue.task_done()

    async def _write(self, event: Event) -> None:
        client = self._client
        assert client is not None
        value = event.model_dump(mode="json")
        await blocking(write_stream, client, event.execution_id, value)
        if event.type.is_terminal:
            await blocking(close_stream, client, event.execution_id)

    # -- reading ---------------------------------------------------------------------------

    async def subscribe(
        self, execution_id: str, from_index: int = 0
    ) -> AsyncGenerator[Event, None]:
        """Every event from `from_index` in order, ending after the terminal event.

        An event's offset in the stream is never below its index (duplicates only add rows),
        so reading from offset `from_index` skips nothing the reader needs."""
        if self._client is None:
            raise RuntimeError("DbosStreamEventBus.start() was not called")
        in_order = InOrderReader(from_index)
        values = self._client.read_stream_async(execution_id, STREAM_KEY, offset=from_index)
        try:
            async for value in values:
                event = _decode(value, execution_id)
                if event is None:
                    continue
                for ready in in_order.push(event):
                    yield ready
                if in_order.ended:
                    return
        finally:
            await values.aclose()
        # DBOS ends a read once the workflow is no longer active (cancelled: stopped or
        # rerouted before it ran) even if our terminal event is still on its way: follow the
        # stored rows until it arrives.
        while not in_order.ended:
            for event in await self._events(execution_id):
                for ready in in_order.push(event):
                    yield ready
            if not in_order.ended:
                await asyncio.sleep(_ROWS_POLL_S)

    async def _events(self, execution_id: str) -> list[Event]:
        async with self._sessions() as session:
            rows = await session.scalars(
                text(
                    "SELECT value FROM dbos.streams WHERE workflow_uuid = :id AND key = :key "
                    'ORDER BY "offset"'
                ).bindparams(id=execution_id, key=STREAM_KEY)
            )
            values = [json.loads(v) for v in rows]
        return [e for e in (_decode(v, execution_id) for v in values) if e is not None]

    async def last_event(self, execution_id: str) -> Event | None:
        events = await self._events(execution_id)
        return max(events, key=lambda e: e.index) if events else None

    async def next_index(self, execution_id: str) -> int:
        last = await self.last_event(execution_id)
        return 0 if last is None else last.index + 1


def _decode(value: object, execution_id: str) -> Event | None:
    if value == _CLOSED:
        return None
    try:
        event = Event.model_validate(value)
    except ValidationError:
        log.warning("skipping a malformed stream value", execution_id=execution_id)
        return None
    return event if event.execution_id == execution_id else None
