"""Pins of the DBOS 3.4 internals the DBOS track relies on (see adapters/dbos/system_db.py and
adapters/dbos/runtime.py): an upgrade that renames or reshapes one fails here, by name, before
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
    """system_db.write_streams builds a step's stream insert for each value itself, inside its
    own transaction, serialized as DBOS does, and NOTIFYs the channel DBOS's listener reads;
    readers register on the client's listener map."""
    from dbos import _serialization
    from dbos import _sys_db as sys_db_module
    from dbos._utils import LoopAwareEvent

    assert params(SystemDatabase._stream_insert_stmt) == [
        "workflow_uuid",
        "function_id",
        "key",
        "serialized_value",
        "serialization",
    ]
    assert params(_serialization.serialize_value) == [
        "value",
        "serialization_type",
        "serializer",
    ]
    assert WorkflowSerializationFormat.PORTABLE.value == "portable"
    assert sys_db_module._dbos_streams_channel == "dbos_streams_channel"
    assert sys_db_module._dbos_stream_closed_sentinel == "__DBOS_STREAM_CLOSED__"
    listener = inspect.getsource(PostgresSystemDatabase._notification_listener)
    assert "_dbos_streams_channel" in listener
    assert "self.streams_map.get(notify.payload)" in listener
    assert params(SystemDatabase.register_stream_listener) == ["workflow_uuid", "key"]
    assert params(SystemDatabase.unregister_stream_listener) == ["payload", "event"]
    assert params(LoopAwareEvent.wait_async) == ["timeout"]
    assert params(PostgresSystemDatabase._is_unique_constraint_violation) == ["dbapi_error"]
    assert "self.serializer" in inspect.getsource(SystemDatabase.__init__)
    # Retried through an outage as DBOS retries a step's own write (first argument: the db).
    assert params(sys_db_module.db_retry) == ["initial_backoff", "max_backoff", "sys_db"]
    assert "args[0]" in inspect.getsource(sys_db_module.db_retry)


def test_releasing_one_delayed_workflow() -> None:
    """system_db.release_delayed does to one row what DBOS's promotion of due DELAYED workflows
    does (status DELAYED -> ENQUEUED, nothing else for a workflow that is not debounced)."""
    from dbos._sys_db import WorkflowStatusString

    promotion = inspect.getsource(SystemDatabase.transition_delayed_workflows)
    assert "status=WorkflowStatusString.ENQUEUED.value" in promotion
    assert "deduplication_id=sa.case(" in promotion  # only debounced workflows lose it
    assert WorkflowStatusString.DELAYED.value == "DELAYED"
    assert WorkflowStatusString.ENQUEUED.value == "ENQUEUED"
    assert params(SystemDatabase._wf)[:2] == ["table", "workflow_id"]
    assert params(SystemDatabase._now_ms_sql) == []
    assert {"status", "updated_at", "workflow_uuid"} <= set(
        SystemDatabase.tables.workflow_status.c.keys()
    )


def test_the_client_keeps_its_system_database() -> None:
    assert "self._sys_db" in inspect.getsource(DBOSClient.__init__)


def test_stopping_the_queue_thread_alone() -> None:
    """runtime.stop_dequeuing finds DBOS's queue manager thread by its target and sets the stop
    event it was started with (its first argument), which the per-queue workers share."""
    import dbos._dbos as dbos_module
    from dbos._queue import queue_thread, queue_worker_thread

    assert params(queue_thread) == ["stop_event", "dbos"]
    assert params(queue_worker_thread)[:2] == ["stop_event", "dbos"]
    assert "target=queue_thread, args=(evt, self)" in inspect.getsource(DBOS._launch)
    assert "self._background_threads" in inspect.getsource(DBOS.__init__)
    assert callable(dbos_module._get_dbos_instance)
    assert "stop_event.wait(" in inspect.getsource(queue_worker_thread)


def test_requeueing_and_rewinding_through_the_client() -> None:
    """The repair sweep lists workflows by id, rewinds a finished one to its first step (same
    id) and recovery re-enqueues a PENDING one of a given executor."""
    assert {"workflow_ids", "load_input", "load_output"} <= set(
        params(DBOSClient.list_workflows_async)
    )
    assert params(DBOSClient.rewind_workflow_async)[:1] == ["workflow_id"]
    assert "queue_name" in params(DBOSClient.rewind_workflow_async)
    assert params(SystemDatabase.reenqueue_for_recovery) == [
        "workflow_id",
        "executor_ids",
        "recovery_queue_name",
    ]


def test_a_running_thread_keeps_its_target_and_arguments() -> None:
    """CPython keeps `_target` and `_args` on a Thread until its target returns: that is how
    the queue thread's stop event is found."""
    import threading

    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(5.0,))
    thread.start()
    try:
        assert thread._target == release.wait  # type: ignore[attr-defined]
        assert thread._args == (5.0,)  # type: ignore[attr-defined]
    finally:
        release.set()
        thread.join()


def test_the_migration_count_the_admission_check_expects() -> None:
    """adapters/dbos/admission.py compares `dbos.dbos_migrations` with the count of the
    installed release's migrations, as `DBOS.migrate` records it."""
    from dbos._migration import get_dbos_migrations, get_migration_versions

    from twintrack.adapters.dbos.admission import required_migration

    assert params(get_dbos_migrations) == ["schema", "use_listen_notify", "is_cockroach"]
    assert params(get_migration_versions) == ["engine", "schema", "use_listen_notify"]
    assert required_migration() >= 1


def test_running_the_queue_worker_thread_ourselves() -> None:
    """adapters/dbos/wakeup.py starts DBOS's per-queue worker thread itself, with a stop event
    of its own that has only `wait` and `is_set`, and tells DBOS's queue manager (through
    `listen_queues([])`) to start none for user queues."""
    import re

    from dbos._queue import queue_thread, queue_worker_thread

    assert params(queue_worker_thread) == ["stop_event", "dbos", "queue"]
    used = set(re.findall(r"stop_event\.(\w+)", inspect.getsource(queue_worker_thread)))
    assert used <= {"wait", "is_set"}
    assert params(DBOS.listen_queues) == ["queues"]
    manager = inspect.getsource(queue_thread)
    assert "queue.name not in listening_set" in manager
    assert "dbos._listening_queues" in manager
    assert "Queue" in str(inspect.signature(DBOS.register_queue_async).return_annotation)


def test_counting_this_workers_running_workflows() -> None:
    """adapters/dbos/wakeup.py replaces DBOS's registry of running workflows (made in
    `DBOS.__init__`, counted by the queue poller) with a subclass whose `_remove(key, bucket)`
    is where every release ends, the bucket's first item being the queue's name."""
    from dbos._core import ActiveWorkflowById, ActiveWorkflowEntry
    from dbos._dbos import DBOS as DbosClass
    from dbos._queue import queue_worker_thread

    assert params(ActiveWorkflowById._remove) == ["key", "bucket"]
    assert "self._active._remove(self._key, self._bucket)" in inspect.getsource(
        ActiveWorkflowEntry.release
    )
    assert "self._active_workflows_set: ActiveWorkflowById = ActiveWorkflowById()" in (
        inspect.getsource(DbosClass.__init__)
    )
    assert "_active_workflows_set.count_for_queue(queue.name)" in inspect.getsource(
        queue_worker_thread
    )


def test_enqueueing_with_the_system_schemas_own_function() -> None:
    """adapters/dbos/enqueue.py calls `dbos.enqueue_workflow` by these parameter names; the
    newest definition DBOS migrates to keeps an existing workflow as it is (ON CONFLICT on its
    id) and stores the inputs as portable JSON, which the worker reads back."""
    from dbos._migration import get_dbos_migrations

    definitions = [
        m for m in get_dbos_migrations("dbos", True, False) if '"dbos".enqueue_workflow(' in m
    ]
    latest = definitions[-1]
    for parameter in (
        "workflow_name TEXT",
        "queue_name TEXT",
        "positional_args JSON[]",
        "workflow_id TEXT",
        "app_version TEXT",
        "delay_until_epoch_ms BIGINT",
        "application_name TEXT",
    ):
        assert parameter in latest
    assert "ON CONFLICT (workflow_uuid)\n    DO UPDATE SET\n        updated_at" in latest
    assert "'portable_json'" in latest


def test_what_each_poll_would_read_again() -> None:
    """adapters/dbos/wakeup.py serves the queue thread a copy whose `database_backed_queue`
    is False (the thread then skips its per-iteration reload) and replaces the system
    database's `_is_latest_version(app_version, c)`, which the claim calls on itself."""
    from dbos._queue import queue_worker_thread

    thread = inspect.getsource(queue_worker_thread)
    assert "if queue.database_backed_queue:" in thread
    assert "latest = dbos._sys_db.get_queue(queue.name)" in thread
    assert params(SystemDatabase._is_latest_version) == ["app_version", "c"]
    claim = inspect.getsource(SystemDatabase.start_queued_workflows)
    assert "self._is_latest_version(app_version, c)" in claim
