"""Schemathesis against the API on the real servers (PostgreSQL, broker, a worker): generated
requests to every operation (those of one execution on a real, finished one), each answer
checked against docs/openapi.json — no 5xx, only declared status codes, bodies, SSE messages
and content types that match their schemas. Bounded (examples per operation, one seed), so it
fits a CI run; the CLI runs in a subprocess while this process serves the API."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.e2e import flows
from tests.e2e.stack import Stack

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "response_schema_conformance",
        "content_type_conformance",
    ]
)


# About 800 generated requests: 35-60 s of CLI plus 10 s of stack on the shared 2-core machine.
@pytest.mark.timeout(180)
async def test_the_api_conforms_to_its_openapi(kafka_stack: Stack, tmp_path: Path) -> None:
    # Path ids of a real, finished execution and its flow, so the per-execution operations
    # answer more than 404 (finished: its event stream ends, and commands are a 409).
    api = kafka_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    execution_id = (await api.create(flow_id))["id"]
    assert await api.command(execution_id, "start") == 202
    await api.wait_status(execution_id, "completed")
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.execution_id" = "{execution_id}"\n"path.flow_id" = "{flow_id}"\n'
    )
    # The non-admin key sees every route (the admin ones answer 403); an admin key then
    # covers the admin routes' real answers. Bulk stop/reroute may act (`dry_run: false`), but
    # the one execution there is finished, and the rollout changes apply to this stack only.
    admin_key = (await kafka_stack.container.keys.create("schemathesis-admin", admin=True)).key
    for key, only in ((api.key, None), (admin_key, "^/v1/admin/")):
        await _run_schemathesis(kafka_stack, tmp_path, key, only)


async def _run_schemathesis(stack: Stack, cwd: Path, key: str, only: str | None) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        "run",
        f"{stack.base_url}/openapi.json",
        *(("--include-path-regex", only) if only else ()),
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "4",
        # One worker: hypothesis describes filter lambdas with `ast.parse`, which CPython
        # 3.11.7 can break across threads ("SystemError: AST constructor recursion depth
        # mismatch", CPython gh-106905) — a runtime error of the tool, not of our API.
        "--workers",
        "1",
        "--seed",
        "1",
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {key}",
        "--generation-database",
        "none",
        "--no-color",
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    report = output.decode(errors="replace")
    print(report[-4000:])  # the summary, shown by pytest when the test fails (or with -rP)
    assert proc.returncode == 0, f"with {'an admin' if only else 'a'} key:\n" + report[-6000:]
