"""Commands in Postgres, delivered by LISTEN/NOTIFY: the `CommandChannel` both tracks share.

The `execution_commands` table is the source of truth (a `stop` or `pause` sent
before any worker holds the execution must still be obeyed when one does); NOTIFY only carries
the news fast, because a worker must obey within 100 ms and polling cannot promise that cheaply.
NOTIFY is not durable (a notification sent while the listener is disconnected is gone), so the
table also repairs every gap: after each reconnect, and for a truncated notification, the
subscriptions re-read what they missed and drop ids they have already delivered.

Two invariants make "skip ids <= the last one delivered" exact rather than lossy:

* Per execution, command ids commit in id order: `send` takes a transaction-scoped advisory lock
  on the execution before the identity value is drawn, so two concurrent sends to one execution
  cannot commit out of order (ids of *different* executions still may, and need not be ordered).
* Every subscription catches up from the table only after the listener that will feed it is
  already LISTENing: live notifications are tagged with the listener connection's generation,
  and the first item of a newer generation makes the subscription re-read the table before it
  delivers anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import asyncpg
import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.db import one_statement, split_libpq_params
from twintrack.adapters.postgres.tables import ExecutionCommandRow
from twintrack.core.ports import CommandHandler, CommandMessage
from twintrack.domain.commands import Command

log = structlog.get_logger(__name__)

T = TypeVar("T")

CHANNEL = "twintrack_commands"
APPLICATION_NAME = "twintrack-commands"
# Postgres refuses NOTIFY payloads of 8000 bytes or more; stay far below so the id, execution id
# and JSON escaping can never push a payload over. A longer reason is cut here (flagged
# `truncated`) and the listener reads the full row from the table instead.
PAYLOAD_BUDGET_BYTES = 4000
_PAYLOAD_HEAD = '{"id":'

# One INSERT + NOTIFY, both taking effect at commit. The MATERIALIZED CTE takes the per-execution
# advisory lock before the identity value is drawn for the row (see the module docstring).
_SEND_SQL = text(
    """
    WITH serial AS MATERIALIZED (
        SELECT pg_advisory_xact_lock(hashtext('twintrack_commands'),
                                     hashtext(CAST(:execution_id AS text))) AS locked
    ), inserted AS (
        INSERT INTO execution_commands (execution_id, command, reason)
        SELECT CAST(:execution_id AS text), CAST(:command AS text), CAST(:reason AS text)
        FROM serial
        RETURNING id
    )
    SELECT id, pg_notify(CAST(:channel AS text),
                         concat(CAST(:head AS text), id, ',', CAST(:tail AS text)))
    FROM inserted
    """
)


class _ListenerConnection(Protocol):
    """The part of `asyncpg.Connection` the listener uses (asyncpg ships no type hints)."""

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None: ...

    def add_termination_listener(self, callback: Callable[..., None]) -> None: ...

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...

    async def close(self, *, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def is_closed(self) -> bool: ...


def listener_connect_params(
    database_url: str, application_name: str = APPLICATION_NAME
) -> tuple[str, dict[str, Any]]:
    """(dsn, keyword arguments) for `asyncpg.connect` from any URL form the service accepts.

    libpq-only parameters are translated as for the SQLAlchemy engines (`store.db`); `?host=`
    stays in the DSN, where asyncpg reads it as a Unix-socket directory. `application_name` is
    forced so operators (and tests) can find the listener in `pg_stat_activity`.
    """
    async_url, kwargs = split_libpq_params(database_url)
    dsn = async_url.set(drivername="postgresql").render_as_string(hide_password=False)
    server_settings = dict(kwargs.pop("server_settings", {}))
    server_settings["application_name"] = application_name
    kwargs["server_settings"] = server_settings
    return dsn, kwargs


def notification_tail(execution_id: str, command: Command, reason: str | None) -> str:
    """The payload after `{"id":<id>,`: the id is only known inside the INSERT.

    Keeps the whole payload within PAYLOAD_BUDGET_BYTES by cutting the reason (the longest
    prefix that fits, found by bisection since JSON escaping makes bytes != characters).
    """
    budget = PAYLOAD_BUDGET_BYTES - len(_PAYLOAD_HEAD) - 21  # 20 digits of bigint + ","

    def render(text_: str | None, truncated: bool) -> str:
        body: dict[str, Any] = {
            "execution_id": execution_id,
            "command": command.value,
            "reason": text_,
        }
        if truncated:
            body["truncated"] = True
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))[1:]

    def fits(candidate: str) -> bool:
        return len(candidate.encode()) <= budget

    tail = render(reason, False)
    if fits(tail) or reason is None:
        return tail
    low, high = 0, len(reason)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(render(reason[:middle], True)):
            low = middle
        else:
            high = middle - 1
    return render(reason[:low], True)


@dataclass(frozen=True)
class _Live:
    """A notification: the message, or only its id when the payload was truncated."""

    generation: int
    command_id: int
    message: CommandMessage | None


@dataclass(frozen=True)
class _Sync:
    """The listener is LISTENing on connection `generation`: catch up if not yet done for it."""

    generation: int


class _Stop:
    pass


_Item = _Live | _Sync | _Stop
_STOP = _Stop()


class _Subscription:
    """One handler on one execution: its own queue and task, so it sees commands in id order."""

    def __init__(
        self,
        execution_id: str,
        handler: CommandHandler,
        *,
        after_id: int | None,
        synced_generation: int,
    ) -> None:
        self.execution_id = execution_id
        self.handler = handler
        # Highest id handed to the handler (or already processed by the caller): skip ids <= it.
        self.last_id = after_id or 0
        # A plain `watch` wants commands from now on: catch-ups start at the newest id stored
        # when it was registered (resolved by its task); a replay starts at `after_id`.
        self.baseline: int | None = after_id
        self.synced_generation = synced_generation
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.active = True
        self.replayed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def floor(self) -> int:
        return max(self.last_id, self.baseline or 0)


class PostgresCommandChannel:
    """Durable commands (the `execution_commands` table) with live delivery by LISTEN/NOTIFY.

    `send` and `pending` need only the session factory; live delivery needs `start()`, which
    opens one dedicated asyncpg connection per process (asyncpg directly: a pooled SQLAlchemy
    connection cannot hold a LISTEN) and keeps it up, reconnecting with backoff.

    How a worker should take over an execution without losing or doubling a command: call
    `replay_and_watch(execution_id, handler)` (before or right after claiming it). It registers
    for live notifications *first* and only then reads the stored commands, so a command sent
    in between reaches it by one path or both; the subscription delivers each id once, in id
    order, and returns once every command stored before the call has been handed to `handler`.
    Doing `pending()` then `watch()` by hand leaves a window where a command is seen by neither.
    """

    def __init__(
        self,
        database_url: str,
        sessions: async_sessionmaker[AsyncSession],
        *,
        application_name: str = APPLICATION_NAME,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
        health_check_interval_s: float = 10.0,
        health_check_timeout_s: float = 5.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._sessions = sessions
        self._single = one_statement(sessions)  # work of one statement: one round trip
        self._dsn, self._connect_kwargs = listener_connect_params(database_url, application_name)
        self._connect_kwargs.setdefault("timeout", connect_timeout_s)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._health_interval_s = health_check_interval_s
        self._health_timeout_s = health_check_timeout_s
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: _ListenerConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._generation = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the listener connection is up (as far as this process knows)."""
        connection = self._connection
        return connection is not None and not connection.is_closed()

    @property
    def generation(self) -> int:
        """How many times the listener has started LISTENing (1 after `start`, +1 per reconnect)."""
        return self._generation

    async def start(self) -> None:
        """Open the listener; raises if the first connection fails (a bad URL should be loud)."""
        if self._closed:
            raise RuntimeError("the command channel is closed")
        if self._supervisor is not None:
            return
        connection, lost = await self._listen()
        self._supervisor = asyncio.create_task(
            self._supervise(connection, lost), name="twintrack-commands-listener"
        )

    async def close(self) -> None:
        """Stop listening, close the connection and end every subscription; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._drop_connection()
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.active = False
        self._subscriptions.clear()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("command_listener.closed")

    # -- sending and reading ---------------------------------------------------------------

    async def send(self, execution_id: str, command: Command, reason: str | None = None) -> int:
        """Store the command and NOTIFY in one transaction; returns its id.

        `start` is refused: it is not an engine control but a status change the service makes.
        An unknown execution id fails on the foreign key (IntegrityError).
        """
        command = Command(command)
        if command is Command.START:
            raise ValueError("start is not a stored command; use ExecutionService.start")
        params = {
            "execution_id": execution_id,
            "command": command.value,
            "reason": reason,
            "channel": CHANNEL,
            "head": _PAYLOAD_HEAD,
            "tail": notification_tail(execution_id, command, reason),
        }
        async with self._sessions.begin() as session:
            row = (await session.execute(_SEND_SQL, params)).one()
        command_id = int(row[0])
        log.debug(
            "command.sent", execution_id=execution_id, command=command.value, command_id=command_id
        )
        return command_id

    async def pending(self, execution_id: str, after_id: int = 0) -> list[CommandMessage]:
        """Stored commands of the execution with id > after_id, oldest first."""
        query = (
            select(ExecutionCommandRow)
            .where(
                ExecutionCommandRow.execution_id == execution_id,
                ExecutionCommandRow.id > after_id,
            )
            .order_by(ExecutionCommandRow.id)
        )
        async with self._single() as session:
            rows = (await session.scalars(query)).all()
        return [
            CommandMessage(
                id=row.id,
                execution_id=row.execution_id,
                command=Command(row.command),
                reason=row.reason,
            )
            for row in rows
        ]

    async def _newest_id(self, execution_id: str) -> int:
        query = select(func.coalesce(func.max(ExecutionCommandRow.id), 0)).where(
            ExecutionCommandRow.execution_id == execution_id
        )
        async with self._single() as session:
            return int(await session.scalar(query) or 0)

    # -- subscribing -----------------------------------------------------------------------

    def watch(self, execution_id: str, handler: CommandHandler) -> Callable[[], None]:
        """Hand each command sent from now on to `handler` (awaited, one at a time, id order).

        After a listener reconnect it catches up from the newest command stored when it was
        registered. To also get commands already stored (a worker taking over an execution),
        use `replay_and_watch`.
        """
        subscription = self._subscribe(execution_id, handler, after_id=None)
        return lambda: self._unsubscribe(subscription)

    async def replay_and_watch(
        self, execution_id: str, handler: CommandHandler, *, after_id: int = 0
    ) -> Callable[[], None]:
        """Every stored command with id > after_id, then every new one, each exactly once.

        Returns (an unsubscribe) once the commands stored before the call were handed to
        `handler`, so a worker knows about a durable stop or pause before it runs anything.
        While Postgres is unreachable it keeps retrying (bound it with a timeout if needed);
        RuntimeError if the channel is closed first.
        """
        subscription = self._subscribe(execution_id, handler, after_id=after_id)
        try:
            await subscription.replayed.wait()
        except BaseException:
            self._unsubscribe(subscription)
            raise
        if self._closed:
            raise RuntimeError("the command channel closed before the replay finished")
        return lambda: self._unsubscribe(subscription)

    def _subscribe(
        self, execution_id: str, handler: CommandHandler, *, after_id: int | None
    ) -> _Subscription:
        if self._closed:
            raise RuntimeError("the command channel is closed")
        replay = after_id is not None
        subscription = _Subscription(
            execution_id,
            handler,
            after_id=after_id,
            # A replay has never read the table: any item (first of all the _Sync below) makes it.
            synced_generation=-1 if replay else self._generation,
        )
        # Registered before any await: from here on, every notification for the execution
        # reaches this queue, so the catch-up read below cannot miss one.
        self._subscriptions.setdefault(execution_id, []).append(subscription)
        if replay:
            subscription.queue.put_nowait(_Sync(self._generation))
        task = asyncio.create_task(
            self._run(subscription), name=f"twintrack-commands-{execution_id}"
        )
        subscription.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        """Stop delivery now; a handler already running finishes (it may be the caller)."""
        if not subscription.active:
            return
        subscription.active = False
        subscriptions = self._subscriptions.get(subscription.execution_id, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._subscriptions.pop(subscription.execution_id, None)
        subscription.queue.put_nowait(_STOP)

    # -- delivery --------------------------------------------------------------------------

    async def _run(self, subscription: _Subscription) -> None:
        """The subscription's task: items in arrival order, repairing gaps from the table."""
        try:
            await self._deliver_items(subscription)
        finally:
            subscription.replayed.set()  # never leave `replay_and_watch` waiting on a dead task

    async def _deliver_items(self, subscription: _Subscription) -> None:
        execution_id = subscription.execution_id
        if subscription.baseline is None:
            baseline = await self._retrying(
                subscription, "baseline", lambda: self._newest_id(execution_id)
            )
            if baseline is None:
                return
            subscription.baseline = baseline
        while subscription.active:
            item = await subscription.queue.get()
            if isinstance(item, _Stop):
                return
            if item.generation > subscription.synced_generation:
                # First news from a newer listener connection: whatever was sent while the
                # previous one was down is only in the table, and must come first.
                if not await self._catch_up(subscription):
                    return
                subscription.synced_generation = max(
                    subscription.synced_generation, item.generation
                )
                subscription.replayed.set()
            if isinstance(item, _Live) and item.command_id > subscription.last_id:
                message = item.message
                if message is None:
                    load = functools.partial(self._load, execution_id, item.command_id)
                    message = await self._retrying(subscription, "load", load)
                if message is not None:
                    await self._deliver(subscription, message)

    async def _catch_up(self, subscription: _Subscription) -> bool:
        floor = subscription.floor
        messages = await self._retrying(
            subscription, "catch_up", lambda: self.pending(subscription.execution_id, floor)
        )
        if messages is None:
            return False
        if messages:
            log.info(
                "command_listener.caught_up",
                execution_id=subscription.execution_id,
                after_id=floor,
                count=len(messages),
            )
        for message in messages:
            await self._deliver(subscription, message)
        return subscription.active

    async def _load(self, execution_id: str, command_id: int) -> CommandMessage | None:
        for message in await self.pending(execution_id, command_id - 1):
            if message.id == command_id:
                return message
        return None

    async def _deliver(self, subscription: _Subscription, message: CommandMessage) -> None:
        if not subscription.active or message.id <= subscription.last_id:
            return
        subscription.last_id = message.id
        try:
            await subscription.handler(message)
        except Exception:
            # One failing handler must not stop the commands that follow (a stop after a pause).
            log.exception(
                "command.handler_failed",
                execution_id=message.execution_id,
                command=message.command.value,
                command_id=message.id,
            )

    async def _retrying(
        self, subscription: _Subscription, what: str, read: Callable[[], Awaitable[T]]
    ) -> T | None:
        """Retry a table read until it works or the subscription ends (then None)."""
        delay = self._reconnect_min_s
        while subscription.active and not self._closed:
            try:
                return await read()
            except Exception as exc:
                log.warning(
                    "command_listener.read_failed",
                    what=what,
                    execution_id=subscription.execution_id,
                    error=repr(exc),
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, self._reconnect_max_s)
        return None

    # -- the listener connection -----------------------------------------------------------

    def _on_notification(self, generation: int, payload: str) -> None:
        """asyncpg's callback: route to subscriptions; never blocks, never raises."""
        try:
            item = _parse(generation, payload)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("command_listener.bad_payload", payload=payload[:200], error=str(exc))
            return
        execution_id, live = item
        for subscription in self._subscriptions.get(execution_id, ()):
            subscription.queue.put_nowait(live)

    async def _listen(self) -> tuple[_ListenerConnection, asyncio.Event]:
        generation = self._generation + 1
        connection = cast(
            _ListenerConnection, await asyncpg.connect(self._dsn, **self._connect_kwargs)
        )
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(
                CHANNEL,
                lambda _connection, _pid, _channel, payload: self._on_notification(
                    generation, payload
                ),
            )
        except BaseException:
            connection.terminate()
            raise
        self._connection, self._generation = connection, generation
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.queue.put_nowait(_Sync(generation))
        log.info("command_listener.listening", channel=CHANNEL, generation=generation)
        return connection, lost

    async def _supervise(self, connection: _ListenerConnection, lost: asyncio.Event) -> None:
        """Keep one listener up: wait until it is lost, then reconnect with capped backoff."""
        while True:
            await self._until_lost(connection, lost)
            await self._drop_connection()
            log.warning("command_listener.lost", generation=self._generation)
            delay = self._reconnect_min_s
            while True:
                await asyncio.sleep(_jitter(delay))
                try:
                    connection, lost = await self._listen()
                    break
                except Exception as exc:
                    log.warning(
                        "command_listener.reconnect_failed",
                        error=repr(exc),
                        retry_in_s=round(delay, 3),
                    )
                    delay = min(delay * 2, self._reconnect_max_s)

    async def _until_lost(self, connection: _ListenerConnection, lost: asyncio.Event) -> None:
        """Return once the connection closed, or failed a periodic ping (a half-open socket)."""
        while True:
            try:
                await asyncio.wait_for(lost.wait(), timeout=self._health_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await connection.fetchval("SELECT 1", timeout=self._health_timeout_s)
            except Exception as exc:
                log.warning("command_listener.ping_failed", error=repr(exc))
                return

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed():
            return
        try:
            await connection.close(timeout=self._health_timeout_s)
        except Exception:
            connection.terminate()


def _parse(generation: int, payload: str) -> tuple[str, _Live]:
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise TypeError("payload is not an object")
    command_id, execution_id = data["id"], data["execution_id"]
    if not isinstance(command_id, int) or not isinstance(execution_id, str):
        raise TypeError("id or execution_id has the wrong type")
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise TypeError("reason is not a string")
    message = None
    if not data.get("truncated", False):
        message = CommandMessage(
            id=command_id,
            execution_id=execution_id,
            command=Command(data["command"]),
            reason=reason,
        )
    return execution_id, _Live(generation, command_id, message)


def _jitter(delay: float) -> float:
    """±20 %, so workers that lost Postgres together do not reconnect in lockstep."""
    return delay * random.uniform(0.8, 1.2)
