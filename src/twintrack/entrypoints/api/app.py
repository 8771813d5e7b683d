"""`create_app`: the FastAPI application over a container the caller owns.

The app has no lifespan of its own: whoever builds the container starts it before serving and
closes it after (`twintrack api`, `twintrack dev`, tests), so one container can back several
apps and nothing here opens a connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider

from twintrack.domain.flow import MAX_FLOW_BYTES
from twintrack.domain.limits import DEFAULT_MAX_SSE_STREAMS_PER_KEY
from twintrack.entrypoints.api.auth import DEFAULT_TTL_S, ApiKeyAuthenticator
from twintrack.entrypoints.api.deps import ApiContainer
from twintrack.entrypoints.api.docs import install_docs
from twintrack.entrypoints.api.errors import UnhandledErrors, install_error_handlers
from twintrack.entrypoints.api.limits import BodyLimit, StreamSlots
from twintrack.entrypoints.api.metrics import RequestMetrics
from twintrack.entrypoints.api.routes import admin, events, executions, flows, health
from twintrack.entrypoints.api.spans import RequestSpans
from twintrack.entrypoints.api.waits import EndWatch
from twintrack.entrypoints.console.mount import mount_console
from twintrack.observability.tracing import configure_tracing

DESCRIPTION = """\
Flow executions on two tracks (Kafka, DBOS). Every route under `/v1` needs
`Authorization: Bearer <api key>`; an owner sees only its own flows and executions.
Errors are `{"error": {"code", "message", "details"}}`.
"""


def _version() -> str:
    try:
        return version("twintrack")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"


def create_app(
    container: ApiContainer,
    *,
    auth_cache_ttl_s: float = DEFAULT_TTL_S,
    max_body_bytes: int = MAX_FLOW_BYTES,
    unavailable_errors: Sequence[type[BaseException]] = (),
    store_errors: Sequence[type[BaseException]] = (),
    max_sse_streams_per_key: int = DEFAULT_MAX_SSE_STREAMS_PER_KEY,
    console: bool = True,
    console_secret: str | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The API over `container` (not started or closed here).

    `unavailable_errors` are exception types that mean "a dependency is down" (for example the
    Kafka client's connection errors), answered 503; `store_errors` are the database driver's
    error types, 503 when the connection was lost and 500 otherwise. Both come from the
    bootstrap: the API itself knows nothing of Kafka, DBOS or SQL. `console` serves the operator
    console at `/ui` when the container also offers the database (`sessions`) it reads. Each
    request gets a span from `tracer_provider` (default: the global one, a no-op unless set);
    `console_secret` signs console sessions (CONSOLE_SECRET; random per process when None).
    """
    app = FastAPI(
        title="twintrack",
        version=_version(),
        description=DESCRIPTION,
        separate_input_output_schemas=False,
        # Operation ids are the endpoint names (create_execution, stop_execution, ...), so a
        # client generated from /openapi.json gets readable, stable method names.
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,  # both pages are served from vendored files by install_docs
        redoc_url=None,
    )
    install_docs(app)
    app.state.container = container
    app.state.authenticator = ApiKeyAuthenticator(container.keys, ttl_s=auth_cache_ttl_s)
    app.state.stream_slots = StreamSlots(max_sse_streams_per_key)
    app.state.end_watch = EndWatch(container.service.finished_among)
    outage = tuple(unavailable_errors)
    install_error_handlers(app, outage, tuple(store_errors))
    for router in (flows.router, executions.router, events.router, health.router, admin.router):
        app.include_router(router)
    if console and hasattr(container, "sessions"):
        mount_console(app, container, secret=console_secret)
    # Added innermost first: metrics see every answer, including 413s and 500s.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(UnhandledErrors, outage=outage)
    app.add_middleware(RequestMetrics)
    if tracer_provider is None:
        configure_tracing()  # OTEL_TRACES_EXPORTER; keeps a provider the host already set
    app.add_middleware(RequestSpans, provider=tracer_provider)
    return app
