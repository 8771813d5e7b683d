"""Fixtures for end-to-end tests: a fresh deployment per test on the session's servers."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.stack import Api, Stack, open_stack, stack_env
from twintrack.infra.discovery import ProvidedBroker


@pytest.fixture
def env(
    database_url: str, kafka_broker: ProvidedBroker, unique_name: Callable[[str], str]
) -> dict[str, str]:
    return stack_env(
        database_url,
        kafka_broker.bootstrap_servers,
        unique_name("tt"),
        kafka_broker.capabilities.idempotence,
    )


@pytest_asyncio.fixture
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    """The API and one in-process worker."""
    with tempfile.TemporaryDirectory(prefix="tt-e2e-") as logs:
        async with open_stack(env, Path(logs)) as s:
            await s.add_worker()
            yield s


@pytest_asyncio.fixture
async def bare_stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    """The API with no worker: tests add workers (or processes) themselves."""
    with tempfile.TemporaryDirectory(prefix="tt-e2e-") as logs:
        async with open_stack(env, Path(logs)) as s:
            yield s


@pytest.fixture
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.api


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
