"""DbosStreamEventBus: each execution's events in the DBOS stream of its workflow.

The workflow (id = execution id) exists from creation on (prepared DELAYED by the task
queue), so `execution.created` is in its stream before start. Writes are at-least-once, like
a step's: a retried run never renumbers what is there, and the reader dedupes and orders by
index, so a client never sees a duplicate or a gap. The stream is closed after the terminal
event, which ends every reader at once.

Writes go through one writer task in order; `publish` returns at once (or, with `wait`,
once its event is durable) and `flush` waits for everything published so far. The writer takes
everything queued when it is free and commits it as one transaction (a terminal event and its
stream's close in the same one), so events wait for at most one commit in flight, never a
timer. A reader is woken once per commit to its stream and reads what is new in one query on
the service's own pool (no worker threads in the way).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import sys
from collections.abc import AsyncGenerator

import structlog
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dbos import DBOSClient
from twintrack.adapters.dbos.runtime import DbosConfig, blocking, make_client
from twintrack.adapters.dbos.system_db import (
    CLOSED,
    STREAM_KEY,
    listen_stream,
    unlisten_stream,
    write_streams,
)
from twintrack.core.in_order import InOrderReader
from twintrack.core.transient import retry_transient
from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend

log = structlog.get_logger()
_MAX_BATCH = 500
# A reader re-reads at least this often in case a NOTIFY was lost (the listener reconnecting).
_READ_FALLBACK_S = 0.5
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
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[_Item]) -> None:
        try:
            await self._write([event for event, _ in batch])
        except Exception:
            if len(batch) == 1:
                self._settle(batch[0], sys.exc_info()[1])
                return
            # One transaction lost them all: each alone, so a failure is its own execution's.
            for item in batch:
                try:
                    await self._write([item[0]])
                except Exception as exc:
                    self._settle(item, exc)
                else:
                    self._settle(item, None)
        else:
            for item in batch:
                self._settle(item, None)

    def _settle(self, item: _Item, exc: BaseException | None) -> None:
        event, done = item
        if exc is None:
            if done is not None and not done.done():
                done.set_result(None)
            return
        log.warning("dbos stream write failed", execution_id=event.execution_id)
        if done is not None:
            if not done.done():
                done.set_exception(exc)  # its caller hears of it ...
        else:
            self._failed.setdefault(event.execution_id, exc)  # ... or its flush does

    async def _write(self, events: list[Event]) -> None:
        client = self._client
        assert client is not None
        values: list[tuple[str, object]] = []
        for event in events:
            values.append((event.execution_id, event.model_dump(mode="json")))
            if event.type.is_terminal:
                values.append((event.execution_id, CLOSED))
        await blocking(write_streams, client, values)

    # -- reading ---------------------------------------------------------------------------

    async def subscribe(
        self, execution_id: str, from_index: int = 0
    ) -> AsyncGenerator[Event, None]:
        """Every event from `from_index` in order, ending after the terminal event.

        An event's offset in the stream is never below its index (duplicates only add rows),
        so reading from offset `from_index` skips nothing the reader needs."""
        if self._client is None:
            raise RuntimeError("DbosStreamEventBus.start() was not called")
        client = self._client
        in_order = InOrderReader(from_index)
        wake, payload = listen_stream(client, execution_id)
        offset = from_index
        try:
            while not in_order.ended:
                wake.clear()  # before the read: a commit after it leaves the event set
                # Through an outage, as DBOS's own reader retries its reads.
                rows = await retry_transient(
                    functools.partial(self._rows, execution_id, offset),
                    what=f"read events of {execution_id}",
                    deadline_s=math.inf,
                )
                for row_offset, value in rows:
                    offset = row_offset + 1
                    event = _decode(value, execution_id)
                    if event is None:
                        continue
                    for ready in in_order.push(event):
                        yield ready
                    if in_order.ended:
                        return
                if not rows:
                    await wake.wait_async(timeout=_READ_FALLBACK_S)
        finally:
            unlisten_stream(client, payload, wake)

    async def _rows(self, execution_id: str, offset: int) -> list[tuple[int, object]]:
        async with self._sessions() as session:
            result = await session.execute(
                text(
                    'SELECT "offset", value FROM dbos.streams WHERE workflow_uuid = :id '
                    'AND key = :key AND "offset" >= :offset ORDER BY "offset" LIMIT 1000'
                ).bindparams(id=execution_id, key=STREAM_KEY, offset=offset)
            )
            return [(int(o), json.loads(v)) for o, v in result.all()]

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
    if value == CLOSED:
        return None
    try:
        event = Event.model_validate(value)
    except ValidationError:
        log.warning("skipping a malformed stream value", execution_id=execution_id)
        return None
    return event if event.execution_id == execution_id else None
