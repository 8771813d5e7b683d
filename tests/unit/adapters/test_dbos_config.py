"""The configuration DBOS is launched with: Conductor's key and URL go to DBOS itself when set
(Conductor cannot be reached from here, so what DBOS receives is what is checked), and nothing
of Conductor when they are not; the admin server is off by default."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest

from tests.unit.core.support import settings
from twintrack.adapters.dbos import runtime, wakeup
from twintrack.adapters.dbos.runtime import DbosConfig, DbosRuntime

DB = "postgresql://u@localhost/db"


class _CapturingDBOS:
    """Stands in for DBOS's class: keeps the config and launches nothing."""

    received: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, *, config: dict[str, Any]) -> None:
        self.received.append(dict(config))

    @staticmethod
    def listen_queues(names: list[str]) -> None: ...

    @staticmethod
    def launch() -> None: ...

    @staticmethod
    async def register_queue_async(name: str, **options: Any) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name, database_backed_queue=True, **options)


class _IdlePoller:
    """Stands in for our queue poller (adapters/dbos/wakeup.py): there is no DBOS to poll."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.event = types.SimpleNamespace(wake=lambda: None)  # a finished workflow's wake-up

    def start(self, *args: Any) -> None: ...

    def stop(self, *args: Any) -> None: ...


async def _received(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> dict[str, Any]:
    import dbos._dbos

    _CapturingDBOS.received = []
    monkeypatch.setattr(runtime, "DBOS", _CapturingDBOS)
    monkeypatch.setattr(wakeup, "QueuePoller", _IdlePoller)
    # receives the running-workflow registry and the remembered version check, nothing else
    instance = types.SimpleNamespace(_sys_db=types.SimpleNamespace(_is_latest_version=None))
    monkeypatch.setattr(dbos._dbos, "_get_dbos_instance", lambda: instance)
    config = DbosConfig.from_settings(settings(dbos_system_database_url=DB, **overrides))
    await DbosRuntime(config, executor_id="w-1").launch()
    (received,) = _CapturingDBOS.received
    return received


async def test_conductor_settings_reach_dbos(monkeypatch: pytest.MonkeyPatch) -> None:
    received = await _received(
        monkeypatch,
        dbos_conductor_key="ck-secret",
        dbos_conductor_url="wss://conductor.example/websocket",
    )
    assert received["conductor_key"] == "ck-secret"
    assert received["conductor_url"] == "wss://conductor.example/websocket"
    assert received["executor_id"] == "w-1"
    assert received["system_database_url"] == DB


async def test_without_a_key_dbos_hears_nothing_of_conductor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received = await _received(monkeypatch, dbos_conductor_url="wss://conductor.example/ws")
    assert "conductor_key" not in received
    assert "conductor_url" not in received


def test_the_conductor_key_is_a_secret_and_the_admin_server_is_off_by_default() -> None:
    s = settings(dbos_conductor_key="ck-secret")
    assert "ck-secret" not in repr(s)
    config = DbosConfig.from_settings(settings(dbos_system_database_url=DB))
    assert (config.admin_enabled, config.admin_port) == (False, 3001)
    assert "ck-secret" not in repr(
        DbosConfig.from_settings(s.model_copy(update={"database_url": DB}))
    )
