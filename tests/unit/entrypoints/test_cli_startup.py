"""The CLI starts without the libraries its verbs load on demand.

Operators script many short commands and the runbook test runs dozens: each `--help` or
`rollout status` must not pay for DBOS, aiokafka, SQLAlchemy, FastAPI or the settings stack
before it knows what it was asked to do.
"""

from __future__ import annotations

import subprocess
import sys

from twintrack.domain.execution import Track
from twintrack.entrypoints.cli.rollout import TrackChoice

HEAVY = ("dbos", "aiokafka", "sqlalchemy", "fastapi", "httpx", "structlog", "pydantic_settings")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_importing_the_cli_loads_none_of_the_heavy_libraries() -> None:
    assert _loaded_after("import twintrack.entrypoints.cli.main").isdisjoint(HEAVY)


def test_help_of_a_verb_loads_none_of_them_either() -> None:
    code = (
        "import sys\nfrom twintrack.entrypoints.cli.main import app\n"
        "sys.argv = ['twintrack', 'rollout', 'reroute', '--help']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(code).isdisjoint(HEAVY)


def test_the_cli_track_choice_is_the_track_enum() -> None:
    assert [c.value for c in TrackChoice] == [t.value for t in Track]
