"""DBOS's admin routes on a DBOS-track worker (`DBOS_ADMIN_ENABLED`, `DBOS_ADMIN_PORT`).

DBOS 3.4 dropped the admin server its 1.x/2.x releases ran on port 3001 (the `run_admin_server`
key is silently ignored), so the read-only part of it is served here over DBOS's public calls,
with the same paths: `GET /dbos-healthz`, `GET /workflows` (`?status=`, `?name=`, `?limit=`,
`?offset=`, newest first), `GET /workflows/{id}`, `GET /workflows/{id}/steps` and `GET /queues`
(workflows waiting on or taken from a queue). It shows DBOS's view — each execution's workflow,
its one step, status, executor and version — not ours (events, nodes, trees: the console).

A stdlib HTTP server on its own thread: DBOS's calls are blocking and safe from any thread, and
the worker's event loop never waits on it. No authentication, like DBOS's was: bound to
127.0.0.1 unless DBOS_ADMIN_HOST says otherwise.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from dbos import DBOS

log = structlog.get_logger()
_MAX_LIMIT = 1000
_FIELDS = (
    "workflow_id",
    "status",
    "name",
    "queue_name",
    "executor_id",
    "app_version",
    "created_at",
    "updated_at",
    "input",
    "output",
    "error",
)


def _workflow(status: Any) -> dict[str, Any]:
    found = {name: getattr(status, name, None) for name in _FIELDS}
    if found["error"] is not None:
        found["error"] = repr(found["error"])
    return found


def _step(step: Any) -> dict[str, Any]:
    found = dict(step)
    if found.get("error") is not None:
        found["error"] = repr(found["error"])
    return found


def _limit(query: dict[str, list[str]]) -> tuple[int, int]:
    def number(name: str, default: int) -> int:
        try:
            return max(0, int(query.get(name, [str(default)])[0]))
        except ValueError:
            return default

    return min(number("limit", 100), _MAX_LIMIT), number("offset", 0)


class _Handler(BaseHTTPRequestHandler):
    server_version = "twintrack-dbos-admin"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        try:
            if parts == ["dbos-healthz"]:
                self._send(HTTPStatus.OK, {"status": "healthy"})
            elif parts == ["workflows"]:
                limit, offset = _limit(query)
                found = DBOS.list_workflows(
                    status=query.get("status"),
                    name=query.get("name"),
                    limit=limit,
                    offset=offset,
                    sort_desc=True,
                )
                self._send(HTTPStatus.OK, [_workflow(w) for w in found])
            elif len(parts) == 2 and parts[0] == "workflows":
                one = DBOS.list_workflows(workflow_ids=[parts[1]])
                if one:
                    self._send(HTTPStatus.OK, _workflow(one[0]))
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no workflow {parts[1]}"})
            elif len(parts) == 3 and parts[0] == "workflows" and parts[2] == "steps":
                self._send(HTTPStatus.OK, [_step(s) for s in DBOS.list_workflow_steps(parts[1])])
            elif parts == ["queues"]:
                limit, offset = _limit(query)
                queued = DBOS.list_queued_workflows(limit=limit, offset=offset, sort_desc=True)
                self._send(HTTPStatus.OK, [_workflow(w) for w in queued])
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "no such route"})
        except Exception as exc:  # an admin page must not take the worker down
            log.warning("dbos admin request failed", path=self.path, error=repr(exc))
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})

    def _send(self, code: HTTPStatus, body: object) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are not worth a log line each."""


class DbosAdminServer:
    """The admin routes on `host:port`, from `start` to `stop` (both idempotent)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dbos-admin", daemon=True
        )
        self._thread.start()
        log.info("dbos admin server listening", url=f"http://{self.host}:{self.port}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
