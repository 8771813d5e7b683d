"""The comparison catalog: `flows/NAME.json`, each with an optional `flows/NAME.scenario.json`.

A scenario says how to run its flow and what to expect:

    {
      "description": "...",
      "options": {...},               # execution options (debug, breakpoints, node_timeout_s, ...)
      "ordering": "strict",           # or "per_node" (twintrack.domain.comparison.Ordering)
      "script": [                     # run after `start`, in order:
        {"wait_for": {"type": "node.completed", "data": {"node_id": "a"}}},
        {"command": "step"},          # pause | resume | step | stop, with an optional "reason"
        ...
      ],
      "expect": {"status": "completed", "outputs": {...}, "error_node_id": "...",
                 "descendants": 3}
    }

`wait_for` waits until the root's stream holds an event, after the one the previous `wait_for`
matched, whose type is `type` and whose data contains every key/value of `data`: commands are
sent only once the engine has shown the state they are meant for, so the streams of every mode
are comparable event for event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twintrack.domain.comparison import Ordering

FLOWS_DIR = Path(__file__).parent / "flows"
SCENARIO_SUFFIX = ".scenario.json"
COMMANDS = {"pause", "resume", "step", "stop"}


@dataclass(frozen=True)
class Expect:
    status: str = "completed"
    outputs: dict[str, Any] | None = None
    error_node_id: str | None = None
    descendants: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    flow: dict[str, Any]
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    ordering: Ordering = Ordering.STRICT
    script: list[dict[str, Any]] = field(default_factory=list)
    expect: Expect = field(default_factory=Expect)


def matches(event: dict[str, Any], pattern: dict[str, Any]) -> bool:
    """`event` has the pattern's type and every key/value of its `data`."""
    if event.get("type") != pattern["type"]:
        return False
    data = event.get("data") or {}
    return all(data.get(k) == v for k, v in (pattern.get("data") or {}).items())


def _check_script(name: str, script: list[dict[str, Any]]) -> None:
    for step in script:
        if "wait_for" in step:
            assert "type" in step["wait_for"], f"{name}: wait_for without a type: {step}"
        else:
            assert step.get("command") in COMMANDS, f"{name}: unknown script step {step}"


def load(name: str) -> Scenario:
    flow = json.loads((FLOWS_DIR / f"{name}.json").read_text())
    path = FLOWS_DIR / f"{name}{SCENARIO_SUFFIX}"
    raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    unknown = set(raw) - {"description", "options", "ordering", "script", "expect"}
    assert not unknown, f"{path}: unknown keys {sorted(unknown)}"
    script = list(raw.get("script", []))
    _check_script(name, script)
    return Scenario(
        name=name,
        flow=flow,
        description=str(raw.get("description", "")),
        options=dict(raw.get("options", {})),
        ordering=Ordering(raw.get("ordering", Ordering.STRICT)),
        script=script,
        expect=Expect(**raw.get("expect", {})),
    )


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in FLOWS_DIR.glob("*.json")
        if not p.name.endswith(SCENARIO_SUFFIX)
    )


def catalog() -> list[Scenario]:
    return [load(name) for name in names()]
