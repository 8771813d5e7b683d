"""Pins of the DBOS 3.4 internals the DBOS track relies on (see tracks/dbos/system_db.py and
tracks/dbos/runtime.py): an upgrade that renames or reshapes one fails here, by name, before
anything subtler breaks. The end-to-end suite exercises each of them for real."""

from __future__ import annotations

import inspect

from dbos import DBOS, DBOSClient
from dbos._serialization import WorkflowSerializationFormat
from dbos._sys_db import SystemDatabase
from dbos._sys_db_postgres import PostgresSystemDatabase


def params(fn: object) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]  # type: ignore[arg-type]


def test_recovering_other_executors() -> None:
    assert params(DBOS._recover_pending_workflows) == ["executor_ids"]


def test_stream_writes_outside_a_step_context() -> None:
    assert params(SystemDatabase.write_stream_from_step)[:4] == [
        "workflow_uuid",
        "function_id",
        "key",
        "value",
    ]
    assert "serialization_type" in params(SystemDatabase.write_stream_from_step)
    assert params(SystemDatabase.close_stream_from_step) == ["workflow_uuid", "function_id", "key"]
    assert WorkflowSerializationFormat.PORTABLE.value == "portable"


def test_waking_stream_readers_and_promoting_delayed_workflows() -> None:
    assert params(PostgresSystemDatabase._flush_notifications) == []
    assert params(SystemDatabase.transition_delayed_workflows) == []


def test_the_client_keeps_its_system_database() -> None:
    assert "self._sys_db" in inspect.getsource(DBOSClient.__init__)
