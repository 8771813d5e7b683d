"""DBOS in this process: configuration from Settings, launch, the queue, recovery, the client.

Facts that shape it (DBOS 3.4, see reference/dbos-3.4.md): queues are registered after
`launch`; recovery only picks up PENDING workflows of the same executor id and application
version, so the version is pinned and each worker has a unique executor id (its worker id);
async workflows run on DBOS's own event loop thread; DBOS replaces and later shuts down the
default executor of the loop that launched it, so blocking DBOS calls go to our own pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dbos import DBOS, DBOSClient, DBOSConfig
from twintrack.adapters.dbos import wakeup
from twintrack.adapters.dbos.names import QUEUE_NAME
from twintrack.config import Settings

_QUEUE_THREAD_JOIN_S = 15.0
T = TypeVar("T")

_BLOCKING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dbos-blocking")


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking DBOS call off the event loop, on a pool DBOS does not own."""
    return await asyncio.get_running_loop().run_in_executor(_BLOCKING, lambda: fn(*args))


@dataclass(frozen=True)
class DbosConfig:
    app_name: str
    system_database_url: str
    application_version: str
    queue_concurrency: int | None
    worker_concurrency: int
    polling_interval_s: float
    admin_enabled: bool = False
    admin_host: str = "127.0.0.1"
    admin_port: int = 3001
    conductor_url: str | None = None
    conductor_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DbosConfig:
        url = settings.dbos_system_database_url or settings.database_url
        if not url:
            raise ValueError("DBOS needs DBOS_SYSTEM_DATABASE_URL or DATABASE_URL")
        return cls(
            app_name=settings.dbos_app_name,
            system_database_url=url,
            application_version=settings.dbos_application_version,
            queue_concurrency=settings.dbos_queue_concurrency,
            worker_concurrency=settings.dbos_worker_concurrency,
            polling_interval_s=settings.dbos_queue_polling_interval_s,
            admin_enabled=settings.dbos_admin_enabled,
            admin_host=settings.dbos_admin_host,
            admin_port=settings.dbos_admin_port,
            conductor_url=settings.dbos_conductor_url,
            conductor_key=(
                settings.dbos_conductor_key.get_secret_value()
                if settings.dbos_conductor_key is not None
                else None
            ),
        )


def dbos_config(config: DbosConfig, executor_id: str) -> DBOSConfig:
    """The configuration DBOS is launched with. Conductor (DBOS's hosted, or self-hosted,
    operator service) is connected by DBOS itself when its key is set."""
    built: DBOSConfig = {
        "name": config.app_name,
        "system_database_url": config.system_database_url,
        "executor_id": executor_id,
        "application_version": config.application_version,
        "log_level": "WARNING",
    }
    if config.conductor_key:
        built["conductor_key"] = config.conductor_key
        if config.conductor_url:
            built["conductor_url"] = config.conductor_url
    return built


def migrate(system_database_url: str) -> None:
    """Create or upgrade DBOS's system tables (schema `dbos`): the API's client never does;
    then the triggers that wake the workers' queue pollers (adapters/dbos/wakeup.py)."""
    DBOS.migrate(system_database_url)
    wakeup.install(system_database_url)


def make_client(config: DbosConfig) -> DBOSClient:
    # LISTEN/NOTIFY on: without it every wait on DBOS polls once a second.
    return DBOSClient(
        system_database_url=config.system_database_url,
        application_name=config.app_name,
        use_listen_notify=True,
    )


class DbosRuntime:
    """DBOS launched in a worker process, serving the execution queue."""

    def __init__(self, config: DbosConfig, executor_id: str) -> None:
        self.config = config
        self.executor_id = executor_id
        self.launched = False
        self._poller: wakeup.QueuePoller | None = None

    async def launch(self) -> None:
        from twintrack.adapters.dbos import workflow  # noqa: F401 - registers the workflow

        c = self.config
        DBOS(config=dbos_config(c, self.executor_id))
        from dbos._dbos import _get_dbos_instance

        poller = wakeup.QueuePoller(
            c.system_database_url,
            c.polling_interval_s,
            global_limit=c.queue_concurrency is not None,
        )
        # Before launch, so no workflow is registered yet: a finished one wakes the poller.
        _get_dbos_instance()._active_workflows_set = wakeup.waking_active_set(
            QUEUE_NAME, c.worker_concurrency, poller.event.wake
        )
        # DBOS's queue manager polls no user queue: our own poller serves ours (wakeup.py).
        DBOS.listen_queues([])
        await blocking(DBOS.launch)
        self.launched = True
        queue = await DBOS.register_queue_async(
            QUEUE_NAME,
            worker_concurrency=c.worker_concurrency,
            global_concurrency=c.queue_concurrency,
            polling_interval_sec=c.polling_interval_s,
            on_conflict="always_update",
        )
        self._poller = poller
        instance = _get_dbos_instance()
        wakeup.remember_latest_version(instance._sys_db)
        poller.start(instance, wakeup.fixed_queue(queue))

    async def stop_dequeuing(self) -> None:
        """Stop this executor dequeuing workflows; those it runs go on. Idempotent.

        DBOS 3.4 has no public call for it (only `destroy`, which abandons running workflows):
        its queue manager thread (`dbos._queue.queue_thread`) and the per-queue worker threads
        it starts share one stop event, set here; the threads then exit at their next wait and
        are joined, so nothing is dequeued after this returns. Pinned by
        tests/unit/adapters/test_dbos_internals.py.
        """
        if self.launched:
            await blocking(self._stop_polling)

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop(_QUEUE_THREAD_JOIN_S)
        _stop_queue_threads()

    async def destroy(self) -> None:
        if self.launched:
            await blocking(self._stop_polling)
            self.launched = False
            await blocking(lambda: DBOS.destroy(workflow_completion_timeout_sec=0))
            # DBOS made its own pool this loop's default executor and has just shut it down;
            # the loop lives on (API, other track), so it gets a working one back.
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())

    async def recover(self, executor_ids: Sequence[str]) -> list[str]:
        """Re-enqueue the PENDING workflows of executors that will not come back.

        DBOS recovers only its own executor's workflows at start-up; this private call (pinned
        by a test, so a DBOS upgrade that changes it fails loudly) lets a live worker take over.
        """
        handles = await blocking(DBOS._recover_pending_workflows, list(executor_ids))
        return [h.get_workflow_id() for h in handles]


def _queue_manager_threads() -> list[threading.Thread]:
    from dbos._dbos import _get_dbos_instance
    from dbos._queue import queue_thread

    threads: list[threading.Thread] = _get_dbos_instance()._background_threads
    return [t for t in threads if getattr(t, "_target", None) is queue_thread]


def _stop_queue_threads() -> None:
    for thread in _queue_manager_threads():
        stop_event: threading.Event = thread._args[0]  # type: ignore[attr-defined]
        stop_event.set()
        thread.join(_QUEUE_THREAD_JOIN_S)
