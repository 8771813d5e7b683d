"""`mount_console`: the console's routes and static files on an app made by `create_app`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from twintrack.adapters.postgres.console_queries import ConsoleQueries
from twintrack.entrypoints.console.routes import (
    auth,
    compare,
    executions,
    flows,
    rollout,
    tracks,
)
from twintrack.entrypoints.console.session import Sessions
from twintrack.entrypoints.console.web import HERE


def mount_console(app: FastAPI, container: Any, *, secret: str | None = None) -> None:
    """Serve the console on `app`. `container` is the API's (it must also have `sessions`,
    the database the console's own read-only queries use)."""
    queries = ConsoleQueries(container.sessions)
    app.state.console_queries = queries
    app.state.console_sessions = Sessions(queries, secret)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (auth, executions, flows, tracks, compare, rollout):
        app.include_router(module.router)
