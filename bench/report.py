"""Results: rows of the one table (a column per mode, then the bare baselines, then ratios),
details, and `docs/benchmarks.md`.

A ratio column divides one column's numbers by another's, row by row: each mode by the bare
library its track is built on (the track's overhead), and each DBOS mode by the Kafka mode. The
doc keeps its hand-written parts: only the text between the two markers is rewritten.
"""

from __future__ import annotations

import math
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import fmt

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
    #: the figures in `value`, in its order (p50 and p99, a rate...), for the ratio columns
    numbers: tuple[float, ...] = ()

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
    """One column: a mode of twintrack, or (`baseline`) a bare library doing the same work."""

    mode: str
    settings: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    error: str | None = None
    #: the mode's track ("kafka", "dbos"): DBOS modes get a ratio column over the Kafka mode
    track: str | None = None
    #: the `mode` of the baseline column this mode's track is built on (its ratio column)
    library: str | None = None
    baseline: bool = False

    @property
    def rows(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows]


def failed_section(name: str, exc: BaseException) -> Section:
    """A measurement that could not run: its traceback on stderr, an error row in the table."""
    traceback.print_exception(exc, file=sys.stderr)
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return Section(name, [Row(f"error-{name}", f"{name} (failed)", "-", message, False)])


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _ratio(top: Row | None, bottom: Row | None) -> str:
    """`top`'s numbers over `bottom`'s, figure by figure ("1.52 / 1.31 x"); "—" if not both."""
    if top is None or bottom is None or not top.numbers or len(top.numbers) != len(bottom.numbers):
        return "—"
    parts = []
    for a, b in zip(top.numbers, bottom.numbers, strict=True):
        parts.append("n/a" if math.isnan(a) or math.isnan(b) or b == 0 else fmt(a / b))
    return " / ".join(parts) + " x"


def ratio_columns(results: Sequence[ModeResult]) -> list[tuple[str, str, str]]:
    """(header, numerator column, denominator column): each mode over its library's baseline,
    then each DBOS mode over the Kafka mode (when both ran)."""
    names = {r.mode for r in results}
    columns = [
        (f"{r.mode} ÷ {r.library}", r.mode, r.library)
        for r in results
        if not r.baseline and r.library in names
    ]
    kafka = next((r.mode for r in results if not r.baseline and r.track == "kafka"), None)
    if kafka is not None:
        columns += [
            (f"{r.mode} ÷ {kafka}", r.mode, kafka)
            for r in results
            if not r.baseline and r.track == "dbos"
        ]
    return [(header, top, bottom) for header, top, bottom in columns if bottom is not None]


def results_table(results: Sequence[ModeResult]) -> str:
    """| what | goal | mode… | baseline… | ratio… |, one line per row key, in first-seen order
    (modes before baselines, so a baseline's rows sit on the modes' lines)."""
    ordered = [r for r in results if not r.baseline] + [r for r in results if r.baseline]
    order: list[str] = []
    labels: dict[str, tuple[str, str]] = {}
    rows: dict[tuple[str, str], Row] = {}
    for result in ordered:
        for row in result.rows:
            if row.key not in labels:
                order.append(row.key)
                labels[row.key] = (row.what, row.goal)
            rows[(row.key, result.mode)] = row
    ratios = ratio_columns(ordered)
    headers = [r.mode for r in ordered] + [header for header, _, _ in ratios]
    lines = [
        "| what | goal | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(headers),
    ]
    for key in order:
        what, goal = labels[key]
        values = [
            rows[(key, r.mode)].cell if (key, r.mode) in rows else "not run" if r.error else "—"
            for r in ordered
        ]
        values += [
            _ratio(rows.get((key, top)), rows.get((key, bottom))) for _, top, bottom in ratios
        ]
        lines.append("| " + " | ".join(_escape(c) for c in (what, goal, *values)) + " |")
    return "\n".join(lines)


RATIO_NOTE = (
    "Ratio columns divide the first column's figures by the second's, figure by figure: below "
    "1 x is better for times and CPU, above 1 x for rates. A bare baseline is the library alone "
    "doing the same work (no HTTP, no events, no engine): a mode over its baseline is what "
    "twintrack adds on top of the library its track is built on."
)


def render(
    results: Sequence[ModeResult],
    facts: Sequence[tuple[str, str]],
    command: str,
    machine_wide: Sequence[Section] = (),
) -> str:
    """The whole generated block: machine, table, settings, details per mode and baseline, then
    the machine-wide measurements (the physical bound)."""
    out = [START_MARKER, "", "## Results", ""]
    out += [f"- **{name}**: {value}" for name, value in facts]
    out += [f"- **command**: `{command}`", "", results_table(results), "", RATIO_NOTE, ""]
    for result in results:
        kind = "Baseline" if result.baseline else "Mode"
        out += [f"### {kind} `{result.mode}`", ""]
        if result.error:
            out += [f"Not run: {result.error}", ""]
        if result.settings:
            shown = ", ".join(f"`{k}={v}`" for k, v in sorted(result.settings.items()))
            lead = "Set up with" if result.baseline else "Settings on top of the service defaults:"
            out += [f"{lead} {shown}.", ""]
        for section in result.sections:
            if section.details:
                out += [f"**{section.title}**", "", *section.details, ""]
    for section in machine_wide:
        out += [f"### {section.title[:1].upper()}{section.title[1:]}", "", *section.details, ""]
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
