"""The README's "From Python" example, run as written against a running deployment.

The block is taken from README.md itself, so an example that rots fails here: it runs in a
fresh interpreter with only TWINTRACK_API_URL and TWINTRACK_API_KEY set, as a reader would
after `twintrack dev` printed them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.stack import Stack

REPO = Path(__file__).resolve().parents[2]
SECTION = "## From Python"


def readme_example() -> str:
    """The first ```python block under the "From Python" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_example_is_there_and_complete() -> None:
    code = readme_example()
    assert "from twintrack.client import Client" in code
    compile(code, "README.md", "exec")


async def test_the_readme_example_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINTRACK_", "DATABASE_"))}
    env.update(TWINTRACK_API_URL=stack.base_url, TWINTRACK_API_KEY=stack.api.key)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "completed {'greeting': 'Hello, Python!'}"
    events = lines[1:-2]
    assert events[0] == "0 execution.created "
    assert events[-1].split()[:2] == [str(len(events) - 1), "execution.completed"]
    assert [int(line.split()[0]) for line in events] == list(range(len(events)))
    assert lines[-2] == "{'greeting': 'Hello, world!'}"
    assert lines[-1] == "not_found execution ex_does_not_exist not found"
