"""Long-running processes: the API server, a worker (with its recovery sweeper), and `dev`.

Each builds a container through the ServiceFactory, starts it, runs until SIGINT/SIGTERM,
then shuts down in order: stop taking work, let running executions finish briefly, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

import structlog
import uvicorn

from twintrack.bootstrap import Container, ServiceFactory
from twintrack.config import Settings
from twintrack.core.transient import retry_transient
from twintrack.domain.execution import Track

log = structlog.get_logger()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


class WorkerProcess:
    """The workers of the tracks this process serves, their run host, and the sweeper."""

    def __init__(self, factory: ServiceFactory, container: Container) -> None:
        self.settings = factory.settings
        tracks = set(self.settings.worker_tracks)
        self.host = factory.run_host(container)
        self.worker = factory.kafka_worker(container, self.host) if Track.KAFKA in tracks else None
        self.dbos = factory.dbos_worker(container, self.host) if Track.DBOS in tracks else None
        self.sweeper = factory.sweeper(container)
        self.dead_executors = (
            factory.dead_executor_sweeper(container, self.dbos) if self.dbos else None
        )
        self.recovery_loop = factory.recovery_loop(container, self.sweeper)
        self.dead_executor_loop = (
            factory.dead_executor_loop(container, self.dead_executors)
            if self.dead_executors is not None
            else None
        )
        #: the cluster's one rollout guard, when GUARD_ENABLED (every worker stands for it)
        self.guard_loop = factory.guard_loop(container) if self.settings.guard_enabled else None
        #: the cluster's one shadow sweep and scorecard refresh (every worker stands for it)
        self.shadow_loop = factory.shadow_loop(container)
        self.registry = container.workers
        self._sweeps: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        tracks = [t.value for t in self.settings.worker_tracks]
        await retry_transient(
            lambda: self.registry.register(self.host.worker_id, tracks), what="register worker"
        )
        self.host.start()
        # Sweep from the first moment: a replacement worker must not wait for its consumer
        # group join (seconds) before it can recover what a dead one left.
        self._sweeps = [asyncio.create_task(self.recovery_loop.run(), name="recovery-sweeper")]
        if self.guard_loop is not None:
            self._sweeps.append(asyncio.create_task(self.guard_loop.run(), name="rollout-guard"))
        self._sweeps.append(asyncio.create_task(self.shadow_loop.run(), name="shadow-sweep"))
        if self.dbos is not None:
            await self.dbos.start()  # recovering workflows needs DBOS launched
            assert self.dead_executor_loop is not None
            self._sweeps.append(
                asyncio.create_task(self.dead_executor_loop.run(), name="dead-executor-sweeper")
            )
        if self.worker is not None:
            await self.worker.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """A rolling deploy's shutdown: stop taking work on every track first (the Kafka
        consumer leaves its group, DBOS stops dequeuing), let runs finish within the grace
        period (WORKER_SHUTDOWN_GRACE_S), hand the rest to the other workers without spending
        an attempt, then close."""
        grace = self.settings.worker_shutdown_grace_s if grace_s is None else grace_s
        self.host.draining = True
        intake = [w.stop_taking_work() for w in (self.worker, self.dbos) if w is not None]
        await asyncio.gather(*intake)
        log.info("stopped taking work", grace_s=grace, running=len(self.host.runs))
        for sweep in self._sweeps:
            sweep.cancel()
        await asyncio.gather(*self._sweeps, return_exceptions=True)
        await self.host.stop(grace)
        if self.dbos is not None:
            await self.dbos.stop()
        if self.worker is not None:
            await self.worker.stop()
        await self.registry.stopped(self.host.worker_id)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_server(container: Container, host: str, port: int) -> uvicorn.Server:
    from twintrack.entrypoints.api.app import create_app

    app = create_app(
        container,
        unavailable_errors=ServiceFactory.outage_errors(),
        store_errors=ServiceFactory.store_errors(),
        max_sse_streams_per_key=container.settings.max_sse_streams_per_key,
        console_secret=(
            secret.get_secret_value()
            if (secret := container.settings.console_secret) is not None
            else None
        ),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # httptools rides with uvloop (EVENT_LOOP=uvloop); the standard loop keeps h11.
        http="httptools" if container.settings.event_loop == "uvloop" else "h11",
    )
    return _Server(config)


async def _serve(server: uvicorn.Server, stop: asyncio.Event) -> None:
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


async def _start_when_reachable(start: Callable[[], Awaitable[None]], deadline_s: float) -> None:
    """A process started while the database restarts or the broker stalls (a deploy during a
    failover, a supervisor replacing a worker) waits it out instead of exiting: `start` is
    retried, with backoff, on an outage error until `deadline_s` (the starts are idempotent)."""
    outage = (*ServiceFactory.outage_errors(), TimeoutError, OSError)
    await retry_transient(start, what="start", deadline_s=deadline_s, also=outage)


async def run_with(
    settings: Settings,
    body: Callable[[ServiceFactory, Container, asyncio.Event], Awaitable[None]],
) -> None:
    factory = ServiceFactory(settings)
    container = factory.build()
    await _start_when_reachable(container.start, deadline_s=settings.db_retry_deadline_s)
    try:
        await body(factory, container, _stop_event())
    finally:
        await container.close()


async def run_api(settings: Settings) -> None:
    async def body(_: ServiceFactory, container: Container, stop: asyncio.Event) -> None:
        server = api_server(container, settings.api_host, settings.api_port)
        log.info("api listening", url=f"http://{settings.api_host}:{settings.api_port}")
        await _serve(server, stop)

    await run_with(settings, body)


async def run_worker(settings: Settings) -> None:
    async def body(factory: ServiceFactory, container: Container, stop: asyncio.Event) -> None:
        from twintrack.observability.tracing import configure_tracing

        configure_tracing()  # OTEL_TRACES_EXPORTER: runs continue the trace of their start
        if settings.worker_metrics_port is not None:
            from twintrack.observability.metrics import serve

            serve(settings.worker_metrics_port)
        process = WorkerProcess(factory, container)
        try:
            # Inside the try: a start that fails half-way (the broker unreachable for longer
            # than the Kafka worker waits) still hands over what DBOS had already dequeued,
            # instead of closing the channels under running executions (failed attempts).
            await process.start()
            await stop.wait()
        finally:
            await process.stop()

    await run_with(settings, body)


async def run_all(settings: Settings, on_ready: Callable[[], None]) -> None:
    """API and a worker in one process (`twintrack dev`)."""

    async def body(factory: ServiceFactory, container: Container, stop: asyncio.Event) -> None:
        process = WorkerProcess(factory, container)
        try:  # as in run_worker: a start that fails part-way still stops in order
            await process.start()
            server = api_server(container, settings.api_host, settings.api_port)
            serving = asyncio.create_task(_serve(server, stop))
            while not server.started and not serving.done():  # noqa: ASYNC110 (no event)
                await asyncio.sleep(0.02)
            if server.started:
                on_ready()
            await serving
        finally:
            await process.stop()

    await run_with(settings, body)
