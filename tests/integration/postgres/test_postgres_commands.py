"""PostgresCommandChannel against a real PostgreSQL: durable, live, ordered, exactly once."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.commands import (
    APPLICATION_NAME,
    PAYLOAD_BUDGET_BYTES,
    PostgresCommandChannel,
    listener_connect_params,
    notification_tail,
)
from twintrack.core.ports import CommandChannel, CommandMessage
from twintrack.domain.commands import Command
from twintrack.domain.execution import EventsBackend, Track

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
DEADLINE_S = 5.0
DEFINITION: dict[str, Any] = {
    "name": "hello",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}


class Inbox:
    """A handler that records what it gets, and lets a test wait for a count with a deadline."""

    def __init__(self) -> None:
        self.messages: list[CommandMessage] = []
        self.received_at: list[float] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: CommandMessage) -> None:
        self.messages.append(message)
        self.received_at.append(time.perf_counter())
        self._changed.set()

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.messages]

    async def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[CommandMessage]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


async def _new_executions(sessions: Sessions, count: int = 1) -> list[str]:
    flow = await PostgresFlowStore(sessions).create("alice", "f", DEFINITION)
    store = PostgresExecutionStore(sessions)
    ids = []
    for _ in range(count):
        record = await store.create(
            owner_id="alice",
            flow_id=flow.id,
            flow_version=1,
            track=Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
        )
        ids.append(record.id)
    return ids


@pytest_asyncio.fixture
async def channel(
    database_url: str, session_factory: Sessions
) -> AsyncIterator[PostgresCommandChannel]:
    commands = PostgresCommandChannel(database_url, session_factory)
    await commands.start()
    yield commands
    await commands.close()


def test_satisfies_the_port(channel: PostgresCommandChannel) -> None:
    port: CommandChannel = channel
    assert port is channel


async def test_send_then_pending_is_durable_for_a_later_worker(
    database_url: str, session_factory: Sessions
) -> None:
    first, other = await _new_executions(session_factory, 2)
    sender = PostgresCommandChannel(database_url, session_factory)  # never started: no listener
    pause = await sender.send(first, Command.PAUSE, "look")
    stop = await sender.send(first, Command.STOP)
    await sender.send(other, Command.RESUME)
    await sender.close()

    worker = PostgresCommandChannel(database_url, session_factory)
    assert await worker.pending(first) == [
        CommandMessage(pause, first, Command.PAUSE, "look"),
        CommandMessage(stop, first, Command.STOP, None),
    ]
    assert [m.id for m in await worker.pending(first, after_id=pause)] == [stop]
    assert [m.command for m in await worker.pending(other)] == [Command.RESUME]
    await worker.close()


async def test_start_is_not_a_stored_command(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    with pytest.raises(ValueError, match="start"):
        await channel.send(execution, Command.START)
    assert await channel.pending(execution) == []


async def test_live_delivery_reaches_only_the_watcher_of_that_execution(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    a, b = await _new_executions(session_factory, 2)
    inbox_a, inbox_b = Inbox(), Inbox()
    channel.watch(a, inbox_a)
    channel.watch(b, inbox_b)

    sent_a = await channel.send(a, Command.PAUSE, "for a")
    sent_b = await channel.send(b, Command.STOP, "for b")

    # Notifications arrive in commit order on one connection: had `a`'s command been routed to
    # b's watcher, it would be there before b's own.
    assert await inbox_b.wait_for(1) == [CommandMessage(sent_b, b, Command.STOP, "for b")]
    assert await inbox_a.wait_for(1) == [CommandMessage(sent_a, a, Command.PAUSE, "for a")]


async def test_a_burst_is_delivered_in_id_order(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    inbox = Inbox()
    channel.watch(execution, inbox)
    cycle = [Command.PAUSE, Command.STEP, Command.RESUME]
    sequential = [await channel.send(execution, cycle[i % 3], str(i)) for i in range(30)]
    concurrent = await asyncio.gather(
        *(channel.send(execution, cycle[i % 3], f"c{i}") for i in range(30))
    )

    await inbox.wait_for(60)
    stored = await channel.pending(execution)
    assert inbox.messages == stored
    assert inbox.ids == sorted(sequential + list(concurrent))


async def test_replay_and_watch_delivers_each_command_once_in_order(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    before = [await channel.send(execution, Command.PAUSE, f"before {i}") for i in range(3)]

    async def keep_sending() -> list[int]:
        # Races the replay: some land before its table read, some after, some in between.
        return [await channel.send(execution, Command.STEP, f"during {i}") for i in range(20)]

    inbox = Inbox()
    during_task = asyncio.create_task(keep_sending())
    await asyncio.sleep(0)  # let the first send start before the replay reads the table
    unsubscribe = await channel.replay_and_watch(execution, inbox)
    assert inbox.ids[:3] == before  # returns only once the stored ones were handed over
    during = await during_task
    after = [await channel.send(execution, Command.RESUME, "after")]

    await inbox.wait_for(24)
    assert inbox.ids == before + during + after
    assert inbox.messages == await channel.pending(execution)
    unsubscribe()


async def test_replay_and_watch_from_an_id_skips_what_the_caller_already_has(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    seen = await channel.send(execution, Command.PAUSE)
    unseen = await channel.send(execution, Command.RESUME)
    inbox = Inbox()
    await channel.replay_and_watch(execution, inbox, after_id=seen)
    assert inbox.ids == [unseen]


async def test_unsubscribe_stops_delivery(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    gone, witness = Inbox(), Inbox()
    unsubscribe = channel.watch(execution, gone)
    channel.watch(execution, witness)
    first = await channel.send(execution, Command.PAUSE)
    await gone.wait_for(1)

    unsubscribe()
    unsubscribe()  # idempotent
    second = await channel.send(execution, Command.RESUME)
    await witness.wait_for(2)
    assert witness.ids == [first, second]
    with pytest.raises(TimeoutError):
        await gone.wait_for(2, timeout=0.2)
    assert gone.ids == [first]


async def test_a_failing_handler_does_not_block_later_commands(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    inbox = Inbox()

    async def flaky(message: CommandMessage) -> None:
        await inbox(message)
        if message.command is Command.PAUSE:
            raise RuntimeError("handler bug")

    channel.watch(execution, flaky)
    await channel.send(execution, Command.PAUSE)
    await channel.send(execution, Command.STOP)
    assert [m.command for m in await inbox.wait_for(2)] == [Command.PAUSE, Command.STOP]


async def test_a_long_reason_is_stored_whole_and_delivered_whole(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    reason = 'é\n"' * 5000  # 15,000 characters, far more bytes once JSON-escaped
    tail = notification_tail(execution, Command.STOP, reason)
    assert len(tail.encode()) < PAYLOAD_BUDGET_BYTES
    assert '"truncated":true' in tail

    inbox = Inbox()
    channel.watch(execution, inbox)
    sent = await channel.send(execution, Command.STOP, reason)
    assert await inbox.wait_for(1) == [CommandMessage(sent, execution, Command.STOP, reason)]


async def test_concurrent_sends_to_one_execution_commit_in_id_order(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    """What makes "skip ids <= the last delivered" lossless: a send draws its id under the lock.

    Hold the execution's send lock, let a send queue behind it, and commit a row written
    without the lock meanwhile: the queued send must get the larger id, not an older one that
    would commit later.
    """
    (execution,) = await _new_executions(session_factory)
    lock = "SELECT pg_advisory_xact_lock(hashtext('twintrack_commands'), hashtext(:e))"
    async with session_factory() as holder:
        await holder.execute(text(lock), {"e": execution})
        queued = asyncio.create_task(channel.send(execution, Command.PAUSE))
        async with asyncio.timeout(DEADLINE_S), session_factory() as probe:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            while not await probe.scalar(text(waiting)):
                await probe.rollback()  # a fresh snapshot of pg_locks each round
        async with session_factory.begin() as other:
            unlocked = await other.scalar(
                text(
                    "INSERT INTO execution_commands (execution_id, command)"
                    " VALUES (:e, 'stop') RETURNING id"
                ),
                {"e": execution},
            )
        await holder.rollback()
    assert await queued > unlocked


async def test_close_releases_a_replay_in_progress(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    (execution,) = await _new_executions(session_factory)
    await channel.send(execution, Command.PAUSE)
    entered = asyncio.Event()

    async def stuck(message: CommandMessage) -> None:
        entered.set()
        await asyncio.Event().wait()

    replay = asyncio.create_task(channel.replay_and_watch(execution, stuck))
    async with asyncio.timeout(DEADLINE_S):
        await entered.wait()
    await channel.close()
    with pytest.raises(RuntimeError, match="closed"):
        await replay


async def _listener_pid(session_factory: Sessions, database: str) -> int:
    async with session_factory() as session:
        pids = (
            await session.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = :name AND datname = :database"
                ),
                {"name": APPLICATION_NAME, "database": database},
            )
        ).all()
    assert len(pids) == 1, pids
    return int(pids[0])


async def _terminate(session_factory: Sessions, pid: int) -> None:
    async with session_factory() as session:
        # The timeout form (PostgreSQL 14+) returns once the backend is really gone.
        assert await session.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


async def test_commands_sent_while_the_listener_is_down_arrive_once_after_reconnect(
    database_url: str, session_factory: Sessions
) -> None:
    a, b = await _new_executions(session_factory, 2)
    # A slow first retry, so the commands below are surely sent while nobody listens.
    channel = PostgresCommandChannel(database_url, session_factory, reconnect_min_s=0.3)
    await channel.start()
    try:
        replayed, watched, other = Inbox(), Inbox(), Inbox()
        await channel.replay_and_watch(a, replayed)
        channel.watch(a, watched)
        channel.watch(b, other)
        first = await channel.send(a, Command.PAUSE, "before the drop")
        await replayed.wait_for(1)
        await watched.wait_for(1)
        assert channel.generation == 1

        database = str(make_url(database_url).database)
        await _terminate(session_factory, await _listener_pid(session_factory, database))
        during = [await channel.send(a, Command.STEP, f"while down {i}") for i in range(5)]
        during_b = await channel.send(b, Command.STOP, "while down")
        assert channel.generation == 1  # still reconnecting: these were not delivered live

        await replayed.wait_for(6)
        await watched.wait_for(6)
        assert channel.generation == 2
        assert (await other.wait_for(1))[0].id == during_b
        assert await _listener_pid(session_factory, database) > 0  # exactly one listener again

        last = await channel.send(a, Command.RESUME, "after")
        for inbox in (replayed, watched):
            await inbox.wait_for(7)
            assert inbox.ids == [first, *during, last]
        assert other.ids == [during_b]
    finally:
        await channel.close()
        await channel.close()  # idempotent
    assert not channel.connected
    with pytest.raises(RuntimeError):
        channel.watch(a, Inbox())


def test_listener_params_translate_libpq_options() -> None:
    dsn, kwargs = listener_connect_params(
        "postgres://u:p%40ss@/db?host=/run/pg&sslmode=disable&connect_timeout=3"
        "&application_name=api"
    )
    assert dsn == "postgresql://u:p%40ss@/db?host=%2Frun%2Fpg"
    assert kwargs == {
        "ssl": "disable",
        "timeout": 3.0,
        "server_settings": {"application_name": APPLICATION_NAME},
    }


async def test_send_to_handler_latency(
    channel: PostgresCommandChannel, session_factory: Sessions
) -> None:
    """Not an assertion on speed (machines vary): prints p50/p99 of send() -> handler."""
    (execution,) = await _new_executions(session_factory)
    inbox = Inbox()
    channel.watch(execution, inbox)
    await channel.send(execution, Command.PAUSE, "warm-up")
    await inbox.wait_for(1)

    samples_ms: list[float] = []
    commands = [Command.RESUME, Command.PAUSE]
    for i in range(200):
        started = time.perf_counter()
        await channel.send(execution, commands[i % 2])
        await inbox.wait_for(i + 2)
        samples_ms.append((inbox.received_at[-1] - started) * 1000)
    cuts = statistics.quantiles(samples_ms, n=100)
    print(
        f"\ncommand send->handler latency over {len(samples_ms)}: p50={cuts[49]:.2f} ms "
        f"p99={cuts[98]:.2f} ms max={max(samples_ms):.2f} ms"
    )
