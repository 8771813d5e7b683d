"""Results: rows of the one table (a column per mode), details, and `docs/benchmarks.md`.

The doc keeps its hand-written parts: only the text between the two markers is rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_MARKER = "<!-- bench:results:start (written by `python -m bench --out`) -->"
END_MARKER = "<!-- bench:results:end -->"
_BLOCK = re.compile(
    re.escape(START_MARKER.split(" (")[0]) + r".*?" + re.escape(END_MARKER), re.DOTALL
)

DOC_TEMPLATE = f"""# Benchmarks

{START_MARKER}
{END_MARKER}

## Methodology

(Hand-written: how each number is taken and what limits it. `python -m bench --out` rewrites
only the block above.)
"""


@dataclass(frozen=True)
class Row:
    """One line of the results table, for one mode."""

    key: str  # stable across modes: rows of different modes with one key share a line
    what: str
    goal: str
    value: str
    ok: bool | None  # None: no goal to compare with (information only), or not measured

    @property
    def cell(self) -> str:
        verdict = {True: " — pass", False: " — **MISS**", None: ""}[self.ok]
        return f"{self.value}{verdict}"


@dataclass
class Section:
    """What one measurement produced for one mode: table rows and detail lines (Markdown)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


@dataclass
class ModeResult:
    mode: str
    settings: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    error: str | None = None

    @property
    def rows(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def results_table(results: Sequence[ModeResult]) -> str:
    """| what | goal | mode… |, one line per row key, in first-seen order."""
    order: list[str] = []
    labels: dict[str, tuple[str, str]] = {}
    cells: dict[tuple[str, str], str] = {}
    for result in results:
        for row in result.rows:
            if row.key not in labels:
                order.append(row.key)
                labels[row.key] = (row.what, row.goal)
            cells[(row.key, result.mode)] = row.cell
    header = "| what | goal | " + " | ".join(r.mode for r in results) + " |"
    rule = "|---|---|" + "---|" * len(results)
    lines = [header, rule]
    for key in order:
        what, goal = labels[key]
        values = [cells.get((key, r.mode), "not run" if r.error else "—") for r in results]
        lines.append("| " + " | ".join(_escape(c) for c in (what, goal, *values)) + " |")
    return "\n".join(lines)


def render(results: Sequence[ModeResult], facts: Sequence[tuple[str, str]], command: str) -> str:
    """The whole generated block: machine, table, settings, details per mode."""
    out = [START_MARKER, "", "## Results", ""]
    out += [f"- **{name}**: {value}" for name, value in facts]
    out += [f"- **command**: `{command}`", "", results_table(results), ""]
    for result in results:
        out += [f"### Mode `{result.mode}`", ""]
        if result.error:
            out += [f"Not run: {result.error}", ""]
        if result.settings:
            shown = ", ".join(f"`{k}={v}`" for k, v in sorted(result.settings.items()))
            out += [f"Settings on top of the service defaults: {shown}.", ""]
        for section in result.sections:
            if section.details:
                out += [f"**{section.title}**", "", *section.details, ""]
    out.append(END_MARKER)
    return "\n".join(out)


def write_doc(path: Path, block: str) -> None:
    """Replace the generated block of `path` (created from a template when missing)."""
    text = path.read_text() if path.exists() else DOC_TEMPLATE
    if _BLOCK.search(text):
        text = _BLOCK.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
