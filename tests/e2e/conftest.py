"""Fixtures for end-to-end tests: a fresh deployment per test on the session's servers.

`stack` and `bare_stack` run every test once per mode — Kafka tasks + Kafka events, DBOS tasks +
Kafka events, DBOS tasks + DBOS streams — the same suite, unchanged; `kafka_stack` and
`kafka_bare_stack` are for what only the Kafka track has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.stack import Api, Stack, open_stack, stack_env
from twintrack.tooling.embedded.discovery import ProvidedBroker


@dataclass(frozen=True)
class Mode:
    name: str
    track: str
    events_backend: str
    env: dict[str, str] = field(default_factory=dict)


MODES = {
    "kafka": Mode("kafka", "kafka", "kafka"),
    "dbos": Mode("dbos", "dbos", "kafka", {"ENABLE_DBOS_EXECUTION": "true"}),
    "dbos-streams": Mode(
        "dbos-streams",
        "dbos",
        "dbos",
        {"ENABLE_DBOS_EXECUTION": "true", "EXECUTION_EVENTS_BACKEND": "dbos"},
    ),
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> Mode:
    return MODES[request.param]


@pytest.fixture
def base_env(
    database_url: str, kafka_broker: ProvidedBroker, unique_name: Callable[[str], str]
) -> dict[str, str]:
    return stack_env(
        database_url,
        kafka_broker.bootstrap_servers,
        unique_name("tt"),
        kafka_broker.capabilities.idempotence,
    )


@pytest.fixture
def env(base_env: dict[str, str], mode: Mode) -> dict[str, str]:
    return {**base_env, **mode.env}


@pytest.fixture
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


async def _stack(env: dict[str, str], logs: Path, workers: int) -> AsyncIterator[Stack]:
    async with open_stack(env, logs) as s:
        for _ in range(workers):
            await s.add_worker()
        yield s


@pytest_asyncio.fixture
async def stack(env: dict[str, str], logs: Path) -> AsyncIterator[Stack]:
    """The API and one in-process worker, in each mode."""
    async for s in _stack(env, logs, 1):
        yield s


@pytest_asyncio.fixture
async def bare_stack(env: dict[str, str], logs: Path) -> AsyncIterator[Stack]:
    """The API with no worker, in each mode: tests add workers (or processes) themselves."""
    async for s in _stack(env, logs, 0):
        yield s


@pytest_asyncio.fixture
async def kafka_stack(base_env: dict[str, str], logs: Path) -> AsyncIterator[Stack]:
    async for s in _stack(base_env, logs, 1):
        yield s


@pytest_asyncio.fixture
async def kafka_bare_stack(base_env: dict[str, str], logs: Path) -> AsyncIterator[Stack]:
    async for s in _stack(base_env, logs, 0):
        yield s


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.api


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
