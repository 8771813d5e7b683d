"""`twintrack run`: events printed, exit codes 0/1/2, inputs, JSON lines, examples."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twintrack.entrypoints.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return CliRunner()


def write(tmp_path: Path, flow: Mapping[str, object]) -> str:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow))
    return str(path)


def json_events(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("example", "outputs"),
    [
        ("hello.json", {"greeting": "Hello, world!"}),
        ("diamond.json", {"result": 48}),
        ("error-branch.json", {"error": "could not divide: division by zero"}),
    ],
)
def test_examples_complete_with_their_outputs(
    cli: CliRunner, example: str, outputs: dict[str, object]
) -> None:
    result = cli.invoke(app, ["run", str(EXAMPLES / example), "--json"])
    assert result.exit_code == 0, result.output
    events = json_events(result.stdout)
    assert [e["index"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "execution.completed"
    assert events[-1]["data"] == {"outputs": outputs}


def test_fan_out_example_runs_every_branch(cli: CliRunner) -> None:
    result = cli.invoke(app, ["run", str(EXAMPLES / "fan-out.json"), "--json"])
    assert result.exit_code == 0, result.output
    outputs = json_events(result.stdout)[-1]["data"]["outputs"]  # type: ignore[index]
    assert outputs == {**{f"branch{i}": i for i in range(1, 9)}, "runs": 1}


def test_children_example_runs_the_child_in_process(cli: CliRunner) -> None:
    result = cli.invoke(app, ["run", str(EXAMPLES / "children.json"), "--json"])
    assert result.exit_code == 0, result.output
    events = json_events(result.stdout)
    spawned = next(e for e in events if e["type"] == "child.spawned")
    child_id = spawned["data"]["child_execution_id"]  # type: ignore[index]
    child = [e for e in events if e["execution_id"] == child_id]
    assert [e["index"] for e in child] == list(range(len(child)))
    assert child[-1]["data"] == {"outputs": {"received": {"greeting": "hi from the parent"}}}


def test_readable_output_by_default(cli: CliRunner) -> None:
    result = cli.invoke(app, ["run", str(EXAMPLES / "hello.json")])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "execution.created" in lines[0]
    assert "node.completed" in result.stdout
    assert lines[-1].endswith('outputs {"greeting": "Hello, world!"}')


def test_inputs_override_const_nodes(cli: CliRunner) -> None:
    result = cli.invoke(
        app, ["run", str(EXAMPLES / "hello.json"), "--json", "--inputs", '{"who": "twintrack"}']
    )
    assert result.exit_code == 0
    last = json_events(result.stdout)[-1]
    assert last["data"] == {"outputs": {"greeting": "Hello, twintrack!"}}


def test_failed_execution_exits_1(cli: CliRunner, tmp_path: Path) -> None:
    flow = {"name": "f", "nodes": [{"id": "x", "type": "fail", "config": {"message": "boom"}}]}
    result = cli.invoke(app, ["run", write(tmp_path, flow), "--json"])
    assert result.exit_code == 1
    last = json_events(result.stdout)[-1]
    assert last["type"] == "execution.failed"
    assert last["data"]["error"] == {"message": "boom", "node_id": "x"}  # type: ignore[index]


def test_invalid_flow_exits_2_with_the_problems_and_no_traceback(
    cli: CliRunner, tmp_path: Path
) -> None:
    flow = {
        "name": "bad",
        "nodes": [{"id": "a", "type": "math", "config": {"op": "pow"}}, {"id": "b", "type": "x"}],
    }
    result = cli.invoke(app, ["run", write(tmp_path, flow)])
    assert result.exit_code == 2
    assert "nodes[0].config.op: node 'a'" in result.stderr
    assert "unknown node type 'x'" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("{not json", "--inputs: not valid JSON"),
        ("[1]", "--inputs: must be a JSON object"),
        ('{"greet": 1}', "inputs may only set const nodes; 'greet' is a 'template' node"),
        ('{"ghost": 1}', "'ghost' is not a node of this flow"),
    ],
)
def test_bad_inputs_exit_2(cli: CliRunner, inputs: str, message: str) -> None:
    result = cli.invoke(app, ["run", str(EXAMPLES / "hello.json"), "--inputs", inputs])
    assert result.exit_code == 2
    assert message in result.stderr


def test_unreadable_file_and_bad_json_exit_2(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["run", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = cli.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr


def test_bad_configuration_exits_2_naming_the_variable(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTION_MAX_DEPTH", "zero")
    result = cli.invoke(app, ["run", str(EXAMPLES / "hello.json")])
    assert result.exit_code == 2
    assert "EXECUTION_MAX_DEPTH" in result.stderr


def test_depth_cap_fails_the_emit_with_a_clear_message(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXECUTION_MAX_DEPTH", "2")
    flow = {
        "name": "recurse",
        "nodes": [
            {"id": "start", "type": "emit", "config": {"event": "go"}},
            {"id": "on_go", "type": "listen", "config": {"event": "go"}},
            {"id": "again", "type": "emit", "config": {"event": "go"}},
        ],
        "edges": [{"from": "on_go.payload", "to": "again.payload"}],
    }
    result = cli.invoke(app, ["run", write(tmp_path, flow), "--json"])
    events = json_events(result.stdout)
    depths = sorted(
        e["data"]["depth"]  # type: ignore[index]
        for e in events
        if e["type"] == "execution.created"
    )
    assert depths == [0, 1, 2]
    failures = [e for e in events if e["type"] == "execution.failed"]
    assert len(failures) == 1
    assert "EXECUTION_MAX_DEPTH is 2" in failures[0]["data"]["error"]["message"]  # type: ignore[index]
    assert result.exit_code == 0  # the root itself completed
