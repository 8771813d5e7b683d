"""The one rule for database outages: what is transient, how it is retried, what a node sees."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import exc as sa_exc

import twintrack.adapters.postgres.retry  # noqa: F401  (registers the PostgreSQL rule)
from twintrack.core.transient import is_transient, retry_or_abandon, retry_transient
from twintrack.domain.events import Event
from twintrack.domain.flow import validate_flow
from twintrack.engine import EventSequencer, run_flow
from twintrack.nodes.base import InfrastructureError, NodeConfig, NodeContext, NodeType
from twintrack.nodes.registry import default_registry


def _wrapped(error: Exception) -> sa_exc.DBAPIError:
    """As SQLAlchemy's asyncpg dialect raises it: the driver error as `orig`, and as cause."""
    try:
        try:
            raise error
        except Exception as inner:
            raise sa_exc.DBAPIError("SELECT 1", {}, inner) from inner
    except sa_exc.DBAPIError as outer:
        return outer


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.InterfaceError("connection is closed"),
        _wrapped(asyncpg.InterfaceError("connection is closed")),
        _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle")),
        _wrapped(asyncpg.exceptions.TooManyConnectionsError("too many clients")),
        sa_exc.TimeoutError("QueuePool limit reached"),
        psycopg.OperationalError("the database system is shutting down"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_lost_or_refused_connection_is_transient(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        _wrapped(asyncpg.exceptions.UndefinedTableError('relation "x" does not exist')),
        asyncpg.InterfaceError("cannot use Connection.transaction() in a manual transaction"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failing_statement_is_not_transient(error: Exception) -> None:
    assert not is_transient(error)


async def test_transient_errors_are_retried_until_the_operation_works() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError(111, "refused")
        return "done"

    assert await retry_transient(flaky, what="test", deadline_s=5) == "done"
    assert calls == 3


async def test_other_errors_are_raised_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await retry_transient(broken, what="test", deadline_s=5)
    assert calls == 1


async def test_after_the_deadline_a_node_sees_infrastructure_error() -> None:
    async def down() -> None:
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        await retry_transient(down, what="test", deadline_s=0.2)
    with pytest.raises(InfrastructureError, match="tally 'x': database unavailable"):
        await retry_or_abandon(down, what="tally 'x'", deadline_s=0.2)


class _DownNode(NodeType):
    type_name = "down"
    outputs = ("value",)

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        raise InfrastructureError("database unavailable")


async def test_an_infrastructure_error_abandons_the_run_instead_of_failing_the_flow() -> None:
    registry = default_registry()
    registry.register(_DownNode())
    flow = validate_flow(
        {
            "name": "down",
            "nodes": [
                {"id": "d", "type": "down", "config": {}},
                {"id": "h", "type": "output", "config": {"name": "handled"}},
            ],
            "edges": [{"from": "d.error", "to": "h.value"}],
        },
        registry,
    )
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    with pytest.raises(InfrastructureError):
        await run_flow(flow, execution_id="ex_t", sink=EventSequencer("ex_t", publish))
    types = [e.type.value for e in events]
    assert "node.failed" not in types  # not reported as the node's failure (error port unused)
    assert not any(t in {"execution.failed", "execution.completed"} for t in types)
