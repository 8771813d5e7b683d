"""The operator console at `/ui`: server-rendered pages (Jinja2) made live with htmx and its SSE
extension, both vendored under `static/` so the console works air-gapped.

It is served by the API process over the same container, so it shows exactly what the API
would: `mount_console` adds its routes and static files to an app made by `create_app`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from twintrack.adapters.postgres.console_queries import ConsoleQueries
from twintrack.entrypoints.console.routes import auth, compare, executions, flows, tracks
from twintrack.entrypoints.console.session import Sessions
from twintrack.entrypoints.console.web import HERE


def mount_console(app: FastAPI, container: Any, *, secret: str | None = None) -> None:
    """Serve the console on `app`. `container` is the API's (it must also have `sessions`,
    the database the console's own read-only queries use)."""
    queries = ConsoleQueries(container.sessions)
    app.state.console_queries = queries
    app.state.console_sessions = Sessions(queries, secret)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (auth, executions, flows, tracks, compare):
        app.include_router(module.router)
