"""The CLI starts without the libraries its verbs load on demand.

Operators script many short commands and the runbook test runs dozens: each `--help` or
`rollout status` must not pay for DBOS, aiokafka, SQLAlchemy, FastAPI or the settings stack
before it knows what it was asked to do.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from twintrack.domain.execution import Track
from twintrack.entrypoints.cli.rollout import TrackChoice

HEAVY = ("dbos", "aiokafka", "sqlalchemy", "fastapi", "httpx", "structlog", "pydantic_settings")


def _run_probe(code: str) -> tuple[str, set[str]]:
    """Run `code` in a fresh interpreter: what it printed, and the top-level modules loaded."""
    probe = f"{code}\nimport sys\nprint('\\n' + ' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    printed, _, modules = out.rpartition("\n")
    return printed, {name.split(".")[0] for name in modules.split()}


def _loaded_after(code: str) -> set[str]:
    return _run_probe(code)[1]


def test_importing_the_cli_loads_none_of_the_heavy_libraries() -> None:
    assert _loaded_after("import twintrack.entrypoints.cli.main").isdisjoint(HEAVY)


def _help_of(*argv: str) -> str:
    """Code that runs `twintrack <argv> --help` in the probe's process, as the script would."""
    args = ", ".join(repr(a) for a in ("twintrack", *argv, "--help"))
    return (
        "import sys\nfrom twintrack.entrypoints.cli.main import app\n"
        f"sys.argv = [{args}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )


@pytest.mark.parametrize(
    "argv", [(), ("rollout", "status"), ("rollout", "reroute")], ids=lambda a: "-".join(a) or "top"
)
def test_help_loads_none_of_them_either(argv: tuple[str, ...]) -> None:
    """`twintrack --help` and the verbs operators run most (the issue names `rollout status`);
    the help must really have been printed, or the probe proved nothing."""
    printed, loaded = _run_probe(_help_of(*argv))
    assert "Usage:" in printed, printed
    assert " ".join(argv) in printed, printed
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_cli_track_choice_is_the_track_enum() -> None:
    assert [c.value for c in TrackChoice] == [t.value for t in Track]
