"""`twintrack compare` against a real deployment: the table, and the exit code it promises.

The command runs in a worker thread (it has its own event loop) through a one-command Typer app,
against the stack's API over real HTTP, with one worker serving both tracks.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest_asyncio
import typer
from typer.testing import CliRunner, Result

from tests.e2e import flows
from tests.e2e.stack import Stack, eventually
from twintrack.entrypoints.cli.compare import (
    API_KEY_ENV,
    API_URL_ENV,
    EXIT_MATCH,
    EXIT_MISMATCH,
    EXIT_USAGE,
    compare,
)
from twintrack.tooling.embedded._proc import free_port

REPO = Path(__file__).resolve().parents[2]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(compare)
    return app


async def _compare(*args: str) -> Result:
    # The caller's own TWINTRACK_API_* must not leak into what each case passes explicitly.
    env = {"COLUMNS": "160", API_URL_ENV: None, API_KEY_ENV: None}
    return await asyncio.to_thread(CliRunner().invoke, _app(), list(args), env=env)


def _write(tmp_path: Path, flow: dict[str, Any], name: str = "flow.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(flow))
    return str(path)


@pytest_asyncio.fixture
async def admin_key(kafka_stack: Stack) -> str:
    return (await kafka_stack.container.keys.create("ops", admin=True)).key


async def test_a_deterministic_flow_matches_on_both_tracks(
    kafka_stack: Stack, admin_key: str
) -> None:
    result = await _compare(
        str(REPO / "examples" / "diamond.json"),
        "--runs",
        "3",
        "--inputs",
        '{"x": 5}',
        "--api",
        kafka_stack.base_url,
        "--key",
        admin_key,
    )
    assert result.exit_code == EXIT_MATCH, result.output
    out = result.stdout
    assert "MATCH: both tracks agree on all 3 run(s)" in out
    for row in ("final status", "outputs", "event stream", "create→start", "start→end"):
        assert row in out
    assert out.count("3 completed") == 2  # one cell per track
    assert "DIFFERENT" not in out
    # Both tracks really ran: three executions on each.
    rows = (await kafka_stack.container.executions.list("ops", limit=50)).items
    assert sorted(r.track for r in rows) == ["dbos"] * 3 + ["kafka"] * 3
    assert {json.dumps(r.outputs) for r in rows} == {json.dumps({"result": 5 * 2 + 5 * 5})}


async def test_a_flow_with_a_side_effect_differs_and_exits_1(
    kafka_stack: Stack, admin_key: str, tmp_path: Path
) -> None:
    # Each run increments the same durable counter, so no two runs output the same count.
    counting = flows.flow(
        "counting",
        [("count", "tally", {"name": f"c-{tmp_path.name}"}), ("out", "output", {"name": "n"})],
        [("count.count", "out.value")],
    )
    result = await _compare(
        _write(tmp_path, counting), "--runs", "2", "--api", kafka_stack.base_url, "--key", admin_key
    )
    assert result.exit_code == EXIT_MISMATCH, result.output
    assert "MISMATCH: outputs, event stream" in result.stdout
    assert "outputs differ" in result.stdout
    assert "event streams differ" in result.stdout


async def test_an_invalid_flow_exits_2_with_the_apis_details(
    kafka_stack: Stack, admin_key: str, tmp_path: Path
) -> None:
    broken = flows.flow("broken", [("x", "nonsense", {})], [])
    result = await _compare(
        _write(tmp_path, broken), "--api", kafka_stack.base_url, "--key", admin_key
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert "the API refused the flow (HTTP 422" in result.stderr
    assert "nonsense" in result.stderr


async def test_a_key_that_is_not_admin_exits_2_with_a_hint(
    kafka_stack: Stack, tmp_path: Path
) -> None:
    result = await _compare(
        str(REPO / "examples" / "hello.json"),
        "--api",
        kafka_stack.base_url,
        "--key",
        kafka_stack.api.key,  # team-a's plain key
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert "HTTP 403 forbidden" in result.stderr
    assert "--admin" in result.stderr


async def test_usage_errors_exit_2(kafka_stack: Stack, admin_key: str, tmp_path: Path) -> None:
    api = kafka_stack.base_url
    hello = str(REPO / "examples" / "hello.json")
    not_json = tmp_path / "not.json"
    not_json.write_text("{nope")
    cases = {
        "cannot read": ("/nonexistent/flow.json", "--api", api, "--key", admin_key),
        "is not valid JSON": (str(not_json), "--api", api, "--key", admin_key),
        "--inputs must be a JSON object": (hello, "--inputs", "[1]", "--key", admin_key),
        "--inputs is not valid JSON": (hello, "--inputs", "{", "--key", admin_key),
        "an admin API key is needed": (hello, "--api", api),
        "cannot reach the API": (hello, "--api", f"http://127.0.0.1:{free_port()}", "--key", "k"),
        "unknown or revoked": (hello, "--api", api, "--key", "tt_not_a_key"),
    }
    for expected, args in cases.items():
        result = await _compare(*args)
        assert result.exit_code == EXIT_USAGE, (expected, result.output)
        assert expected in result.stderr, (expected, result.stderr)


async def test_a_run_that_does_not_finish_in_time_is_a_mismatch_and_is_stopped(
    kafka_stack: Stack, admin_key: str, tmp_path: Path
) -> None:
    slow = _write(tmp_path, flows.long_delay(60_000))
    result = await _compare(
        slow, "--runs", "1", "--timeout", "1", "--api", kafka_stack.base_url, "--key", admin_key
    )
    assert result.exit_code == EXIT_MISMATCH, result.output
    assert "did not end within 1s" in result.stdout
    rows = (await kafka_stack.container.executions.list("ops", limit=10)).items
    assert len(rows) == 2

    async def all_stopped() -> bool:
        current = [await kafka_stack.container.executions.get(r.id) for r in rows]
        return all(r.status == "stopped" for r in current)

    # Given up on, and stopped rather than left running unwatched.
    await eventually(all_stopped, timeout=15)
