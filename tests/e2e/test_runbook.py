"""docs/rollout.md, executed: every `twintrack` command of its `sh` blocks against `twintrack dev`.

A runbook whose commands have rotted is worse than none, so the page is the test's script. The
convention (also stated at the end of the runbook): in a fenced `sh` block, a line starting with
`twintrack ` is a command and must exit 0 (`compare` must also report a match); `export` and
`unset` change the environment of the commands after them; `twintrack api|worker|dev` stand for
a restart of the deployment, so they are only checked (options parse, settings load). The
deployment is one real `twintrack dev` process on the session's servers (a fresh database and
topic prefix), stopped with SIGINT at the end like an operator's Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import UniqueName
from twintrack.tooling.embedded._proc import free_port
from twintrack.tooling.embedded.discovery import ProvidedBroker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "rollout.md"
SERVICES = frozenset({"api", "worker", "dev"})
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# The dev deployment decides where things are; the runbook decides the rollout settings.
DEPLOYMENT_VARS = frozenset({"TWINTRACK_API_URL", "TWINTRACK_API_KEY", "DATABASE_URL"})
ROLLOUT_VARS = ("ENABLE_DBOS_EXECUTION", "DBOS_ROLLOUT_PERCENT", "EXECUTION_EVENTS_BACKEND")
READY_LINE = "twintrack dev is running."
COMMAND_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Step:
    """One checked line of the runbook."""

    line: int
    text: str
    kind: str  # "run" | "service" | "export" | "unset"
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def _sh_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line inside a ```sh fence, indentation stripped."""
    fence: str | None = None
    for number, raw in enumerate(markdown.splitlines(), start=1):
        line = raw.strip()
        if fence is None:
            if line.startswith("```"):
                fence = line[3:].strip() or "text"
            continue
        if line.startswith("```"):
            fence = None
        elif fence == "sh":
            yield number, line


def _pair(word: str) -> tuple[str, str]:
    name, _, value = word.partition("=")
    return name, value


def runbook_steps(markdown: str) -> list[Step]:
    steps: list[Step] = []
    for number, line in _sh_blocks(markdown):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "export":
            pairs = tuple(_pair(w) for w in words[1:] if "=" in w)
            steps.append(Step(number, line, "export", env=pairs))
        elif words[0] == "unset":
            steps.append(Step(number, line, "unset", env=tuple((w, "") for w in words[1:])))
        else:
            n = 0  # leading `NAME=value` assignments apply to this command only
            while n < len(words) and ASSIGNMENT.match(words[n]):
                n += 1
            argv = tuple(words[n:])
            if argv and argv[0] == "twintrack":
                kind = "service" if len(argv) > 1 and argv[1] in SERVICES else "run"
                steps.append(Step(number, line, kind, argv, tuple(_pair(w) for w in words[:n])))
    return steps


def test_the_runbook_covers_each_stage_with_real_commands() -> None:
    """The parse itself: the commands an operator needs are all there, in the right kinds."""
    steps = runbook_steps(RUNBOOK.read_text())
    ran = {" ".join(s.argv[1:3]) for s in steps if s.kind == "run"}
    assert {
        "migrate",
        "keys create",
        "rollout status",
        "rollout set",
        "rollout reroute",
        "rollout report",
        "rollout mismatches",
        "rollout guard",
        "executions stop",
    } <= ran
    assert any(s.argv[1] == "compare" for s in steps if s.kind == "run")
    assert {s.argv[1] for s in steps if s.kind == "service"} >= {"api", "worker"}
    # the canary stages, in order, then the rollback
    assert [_percent_set(s) for s in steps if _percent_set(s) is not None] == [5, 25, 50, 100, 0]
    shadow = [s for s in steps if s.kind == "run" and "--shadow-percent" in s.argv]
    assert shadow, "the runbook never turns shadow runs on"


def _percent_set(step: Step) -> int | None:
    """N of a `twintrack rollout set --percent N` step; None for any other step."""
    if step.kind != "run" or step.argv[1:3] != ("rollout", "set") or "--percent" not in step.argv:
        return None
    return int(step.argv[step.argv.index("--percent") + 1])


# -- the deployment ----------------------------------------------------------------------------


@dataclass
class DevProcess:
    """A `twintrack dev` subprocess; stdout is collected by a thread (the banner says ready)."""

    proc: subprocess.Popen[str]
    workdir: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY_LINE in line:
                self.ready.set()
        self.ready.set()  # ended: let the waiter look at the exit code

    def env_file(self) -> dict[str, str]:
        text = (self.workdir / ".twintrack" / "dev.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def log(self) -> str:
        return "".join(self.lines) + (self.workdir / "dev.log").read_text(errors="replace")


def _clean_environ() -> dict[str, str]:
    """The test process's environment without what would steer the deployment elsewhere."""
    drop = {*ROLLOUT_VARS, *DEPLOYMENT_VARS, "TEST_INFRA", "WORKER_TRACKS", "API_PORT"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _start_dev(workdir: Path, env: dict[str, str], port: int) -> DevProcess:
    log = (workdir / "dev.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "twintrack", "dev", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # the test's own Ctrl-C must not reach it half-way
    )
    dev = DevProcess(proc, workdir)
    threading.Thread(target=dev.pump, daemon=True).start()
    return dev


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twintrack", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _settings_load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from twintrack.config import load_settings; load_settings()"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _unstarted_dbos_executions(env: dict[str, str], count: int) -> list[str]:
    """Executions created on DBOS but not started: what `rollout reroute --to kafka` moves."""
    headers = {"Authorization": f"Bearer {env['TWINTRACK_API_KEY']}"}
    flow = json.loads((REPO / "examples" / "hello.json").read_text())
    async with httpx.AsyncClient(base_url=env["TWINTRACK_API_URL"], headers=headers) as http:
        created = await http.post("/v1/flows", json=flow)
        assert created.status_code == 201, created.text
        ids = []
        for _ in range(count):
            body = {"flow_id": created.json()["id"], "track": "dbos"}
            execution = await http.post("/v1/executions", json=body)
            assert execution.status_code == 201, execution.text
            assert execution.json()["track"] == "dbos"
            ids.append(str(execution.json()["id"]))
        return ids


async def _routed_to(env: dict[str, str], track: str) -> None:
    """New executions of the deployment's API go to `track` within the live rollout's 2 s
    promise (plus margin for a loaded machine): the `rollout set` just run took effect without
    a restart. Each probe is created, never started (a rollback's reroute may move it)."""
    headers = {"Authorization": f"Bearer {env['TWINTRACK_API_KEY']}"}
    flow = json.loads((REPO / "examples" / "hello.json").read_text())
    async with httpx.AsyncClient(base_url=env["TWINTRACK_API_URL"], headers=headers) as http:
        created = await http.post("/v1/flows", json=flow)
        assert created.status_code == 201, created.text
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            probe = await http.post("/v1/executions", json={"flow_id": created.json()["id"]})
            assert probe.status_code == 201, probe.text
            if probe.json()["track"] == track:
                return
            assert asyncio.get_running_loop().time() < deadline, (
                f"new executions still go to {probe.json()['track']}, not {track}"
            )
            await asyncio.sleep(0.2)


async def _tracks(env: dict[str, str], execution_ids: list[str]) -> set[str]:
    headers = {"Authorization": f"Bearer {env['TWINTRACK_API_KEY']}"}
    async with httpx.AsyncClient(base_url=env["TWINTRACK_API_URL"], headers=headers) as http:
        rows = [await http.get(f"/v1/executions/{i}") for i in execution_ids]
    return {str(r.json()["track"]) for r in rows}


def _describe(step: Step, result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"docs/rollout.md:{step.line}: `{step.text}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


# A whole deployment plus ~30 operator commands (four of them comparisons of 10-20 runs per
# track): about 50 s alone on a 2-core machine, up to 134 s measured while the suite's other
# process runs fault tests beside it (every command is a new Python process competing for the
# two cores), so it gets a timeout of its own: 400 s, the budget plugin's half being 200 s.
@pytest.mark.timeout(400)
async def test_every_runbook_command_works_against_twintrack_dev(
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: UniqueName,
    tmp_path: Path,
) -> None:
    steps = runbook_steps(RUNBOOK.read_text())
    base = {
        **_clean_environ(),
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": unique_name("runbook"),
        "KAFKA_PARTITIONS": "3",
        "LOG_LEVEL": "WARNING",
    }
    dev = _start_dev(tmp_path, base, free_port())
    try:
        await asyncio.to_thread(dev.ready.wait, 120)
        assert dev.proc.poll() is None, dev.log()
        assert READY_LINE in "".join(dev.lines), dev.log()
        # One screen for a newcomer: progress lines, then the banner; no library chatter.
        before_banner = "".join(dev.lines).split(READY_LINE)[0]
        progress = ("PostgreSQL ready", "broker ready", "migrated", "worker joined", "API listen")
        positions = [before_banner.find(p) for p in progress]
        assert -1 not in positions, before_banner
        assert positions == sorted(positions), before_banner
        assert len(dev.lines) < 40, dev.log()
        deployment = dev.env_file()
        assert deployment["TWINTRACK_API_KEY"].startswith("tt_"), deployment
        env = {**base, **deployment}
        ran: list[str] = []
        waiting: list[str] = []  # DBOS executions not started: a rollback must move them
        for step in steps:
            if step.argv[1:3] == ("rollout", "reroute") and not waiting:
                waiting = await _unstarted_dbos_executions(env, count=2)
            if step.kind == "export":
                env.update((k, v) for k, v in step.env if k not in DEPLOYMENT_VARS)
                continue
            if step.kind == "unset":
                for name, _ in step.env:
                    env.pop(name, None)
                continue
            command_env = {**env, **dict(step.env)}
            if step.kind == "service":
                # A restart of the deployment: its options must parse, its settings must load.
                parsed = await asyncio.to_thread(_run, [*step.argv[1:], "--help"], command_env)
                assert parsed.returncode == 0, _describe(step, parsed)
                loaded = await asyncio.to_thread(_settings_load, command_env)
                assert loaded.returncode == 0, _describe(step, loaded)
                continue
            result = await asyncio.to_thread(_run, list(step.argv[1:]), command_env)
            assert result.returncode == 0, _describe(step, result)
            ran.append(step.argv[1])
            if step.argv[1:3] == ("keys", "create") and "--admin" in step.argv:
                key = result.stdout.strip()
                assert key.startswith("tt_"), _describe(step, result)
                assert "\n" not in key, _describe(step, result)
                env["TWINTRACK_API_KEY"] = key  # as the runbook tells the operator
            if _percent_set(step) in (0, 100):  # whoever the owner, all or none of them
                await _routed_to(env, "dbos" if _percent_set(step) == 100 else "kafka")
            if step.argv[1] == "compare":
                assert "MATCH" in result.stdout, _describe(step, result)
                assert "MISMATCH" not in result.stdout, _describe(step, result)
        assert {"migrate", "keys", "compare", "rollout"} <= set(ran)
        assert await _tracks(env, waiting) == {"kafka"}, "the rollback left DBOS work behind"
        assert dev.proc.poll() is None, dev.log()
    finally:
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(dev.proc.wait, 60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.proc.pid, signal.SIGKILL)
            dev.proc.wait()
            raise AssertionError(f"twintrack dev ignored SIGINT for 60 s\n{dev.log()}") from None
    assert code == 0, dev.log()
