"""The chaos soak's numbers: table rows, details, JSON, and its own block of `docs/benchmarks.md`.

The soak block has markers of its own, so `--only soak --out docs/benchmarks.md` rewrites the
"Chaos soak" results and leaves the other measurements' block as it is (and the reverse).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.report import ModeResult, Row, Section, results_table
from bench.soak import SoakRun
from bench.soak_check import Counts, tally_up
from bench.stats import Summary, fmt

TITLE = "chaos soak"
START_MARKER = "<!-- bench:soak:start (written by `python -m bench --only soak --out`) -->"
END_MARKER = "<!-- bench:soak:end -->"
_BLOCK = re.compile(
    re.escape(START_MARKER.split(" (")[0]) + r".*?" + re.escape(END_MARKER), re.DOTALL
)
KILL_GOAL_S = 15.0


def kill_recovery_s(run: SoakRun) -> list[float]:
    """Per execution a killed worker held: kill → its next `execution.retrying` (engine time)."""
    by_id = {o.execution_id: o for o in run.observed}
    samples = []
    for kill in run.timeline.kills:
        for execution_id in kill.held:
            obs = by_id.get(execution_id)
            if obs is None:
                continue
            events = obs.replay if obs.replay else obs.live
            after = [
                e["stamped"]
                for e in events
                if e["type"] == "execution.retrying" and e["stamped"] > kill.at
            ]
            if after:
                samples.append(min(after) - kill.at)
    return samples


def _answers(run: SoakRun, began: float, ended: float) -> dict[str, int]:
    """HTTP answers to requests sent in [began, ended], by request and status (or error)."""
    seen: Counter[str] = Counter(
        f"{c.op} " + (str(c.status) if c.status is not None else (c.error or "error"))
        for c in run.calls
        if began <= c.sent <= ended
    )
    return dict(sorted(seen.items()))


def _live_arrivals(run: SoakRun) -> list[float]:
    return sorted(e["at"] for o in run.observed for e in o.live)


def summarize(run: SoakRun) -> dict[str, Any]:
    """Everything the soak reports for one mode, as plain data (the JSON for the docs)."""
    counts = tally_up(run.sizes.executions, len(run.refused), run.observed)
    line = run.timeline
    kills = Summary.of(kill_recovery_s(run))
    out: dict[str, Any] = {
        "mode": run.mode,
        "sizes": {k: v for k, v in asdict(run.sizes).items() if k != "settings"},
        "settings": dict(run.sizes.settings),
        "counts": asdict(counts),
        "kills": len(line.kills),
        "killed_holding_claims": sum(len(k.held) for k in line.kills),
        "kill_to_retrying_s": {"n": kills.n, "p50": kills.p50, "max": kills.max},
        "workers_exited_by_themselves": line.worker_exits,
        "sse_reconnects": run.reconnects,
        "status_poll_errors": run.poll_errors,
        "event_loop_lag_max_s": run.loop_lag_max_s,
        "event_loop_stalls": [(at - line.began, lag) for at, lag in run.loop_stalls][:20],
        "refused_examples": run.refused[:5],
        "orphans_of_retried_creates": run.orphans,
        "duration_s": line.drained - line.began,
        "load_s": line.load_ended - line.began,
    }
    pg = line.postgres
    if pg is not None:
        healthy = line.postgres_healthy
        out["postgres_restart"] = {
            "at_s": pg.began - line.began,
            "stop_s": pg.down - pg.began,
            "down_s": pg.ended - pg.down,
            "api_healthy_after_s": healthy - pg.ended if healthy else None,
            "api_answers": _answers(run, pg.began, healthy or pg.ended),
        }
    stall = line.stall
    if stall is not None:
        arrivals = _live_arrivals(run)
        after = [a for a in arrivals if a >= stall.ended]
        healthy = line.stall_healthy
        out["broker_stall"] = {
            "at_s": stall.began - line.began,
            "stall_s": stall.ended - stall.began,
            "events_flowing_after_s": after[0] - stall.ended if after else None,
            "events_received_during_stall": sum(stall.began <= a < stall.ended for a in arrivals),
            "api_ready_after_s": healthy - stall.ended if healthy else None,
            "api_answers": _answers(run, stall.began, healthy or stall.ended),
        }
    out["server_errors"] = sum(
        c.status is not None and c.status >= 500 and c.status != 503 for c in run.calls
    )
    out["api_answers_whole_soak"] = _answers(run, 0.0, float("inf"))
    return out


def _s(value: float | None) -> str:
    return "never" if value is None else f"{fmt(value)} s"


def _zero(key: str, what: str, value: int, detail: str = "") -> Row:
    return Row(key, what, "0", f"{value}{detail}", value == 0)


def section(run: SoakRun) -> Section:
    return section_of(summarize(run))


def _stall_cell(stall: dict[str, Any]) -> str:
    during = stall["events_received_during_stall"]
    if stall["events_flowing_after_s"] is None and during:
        flowing = f"never stopped ({during} events during the stall)"
    else:
        flowing = _s(stall["events_flowing_after_s"])
    return f"{flowing} / {_s(stall['api_ready_after_s'])} (stalled {fmt(stall['stall_s'])} s)"


def section_of(data: dict[str, Any]) -> Section:
    """The table rows and details of one mode, from `summarize`'s data (or its JSON)."""
    counts = Counts(**data["counts"])
    kill = data["kill_to_retrying_s"]
    rows = [
        Row(
            "soak-accepted",
            "chaos soak: executions accepted (create 201 + start 202) of those tried",
            "-",
            f"{counts.accepted} of {counts.target} ({counts.completed} completed, "
            f"{counts.retried} retried after a kill)",
            None,
        ),
        _zero(
            "soak-lost", "soak: lost (still created/queued at the deadline, or gone)", counts.lost
        ),
        _zero(
            "soak-twice",
            "soak: completed twice (two terminal events, status flapping, row ≠ stream)",
            counts.completed_twice,
        ),
        _zero("soak-hung", "soak: hung (running/paused at the deadline)", counts.hung),
        Row(
            "soak-stream",
            "soak: streams with a gap / with a duplicate",
            "0 / 0",
            f"{counts.stream_gaps} / {counts.stream_duplicates}",
            counts.stream_gaps == 0 and counts.stream_duplicates == 0,
        ),
        Row(
            "soak-effects",
            "soak: repeated side effects (tally > attempts, or ≠ the completing attempt's count) "
            "/ missing",
            "0 / 0",
            f"{counts.repeated_side_effects} / {counts.missing_side_effects} "
            f"({counts.reapplied_by_retry} re-applied by a retry, allowed)",
            counts.repeated_side_effects == 0 and counts.missing_side_effects == 0,
        ),
        _zero("soak-failed", "soak: ended failed (no soak flow can fail)", counts.failed),
        Row(
            "soak-kill",
            "soak: worker SIGKILLed → execution retrying elsewhere, p50 / max",
            f"≤ {KILL_GOAL_S:g} s",
            f"{fmt(kill['p50'])} / {fmt(kill['max'])} s (n={kill['n']}, {data['kills']} kills)",
            None if kill["n"] == 0 else kill["max"] <= KILL_GOAL_S,
        ),
    ]
    pg = data.get("postgres_restart")
    if pg is not None:
        rows.append(
            Row(
                "soak-postgres",
                "soak: PostgreSQL restart → API healthy (after the server is back)",
                "recovers by itself",
                f"{_s(pg['api_healthy_after_s'])} (down {fmt(pg['down_s'])} s)",
                pg["api_healthy_after_s"] is not None,
            )
        )
    stall = data.get("broker_stall")
    if stall is not None:
        rows.append(
            Row(
                "soak-stall",
                "soak: broker stall end → events flowing / API ready",
                "recovers by itself",
                _stall_cell(stall),
                stall["api_ready_after_s"] is not None,
            )
        )
    rows.append(_zero("soak-5xx", "soak: API answers 5xx other than 503", data["server_errors"]))
    return Section(TITLE, rows, _details(data, counts))


def _details(data: dict[str, Any], counts: Counts) -> list[str]:
    lines = [
        f"{counts.target} executions of `const → tally → delay({data['sizes']['delay_ms']} ms) → "
        f"output`, one flow each; {data['kills']} worker SIGKILLs "
        f"({data['killed_holding_claims']} claims held by the victims), "
        f"{len(data['workers_exited_by_themselves'])} worker exit(s) not caused by a kill, "
        f"load {fmt(data['load_s'])} s, whole soak {fmt(data['duration_s'])} s.",
        "Settings on top of the deployment's: "
        + ", ".join(f"`{k}={v}`" for k, v in data["settings"].items())
        + ".",
    ]
    if counts.refused:
        lines += [
            "",
            f"{counts.refused} execution(s) not accepted within the retry window; first "
            f"answer(s): " + "; ".join(f"`{r}`" for r in data["refused_examples"][:3]) + ".",
        ]
    if data["orphans_of_retried_creates"]:
        lines += [
            "",
            "Executions a retried create left behind (its first answer was lost, so the soak "
            "never knew them), by status: "
            + ", ".join(f"{k} {v}" for k, v in data["orphans_of_retried_creates"].items())
            + ".",
        ]
    if counts.failure_reasons:
        lines += ["", "Why executions failed:", ""]
        lines += [f"- {n}: `{reason}`" for reason, n in counts.failure_reasons.items()]
    if counts.examples:
        lines += [
            "",
            "Examples: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in counts.examples.items()),
        ]
    lines += ["", "```json", compact_json(data), "```"]
    return lines


def compact_json(data: dict[str, Any]) -> str:
    """One top-level key per line: short enough for the docs, still valid JSON."""
    items = [f" {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in data.items()]
    return "{\n" + ",\n".join(items) + "\n}"


def render_block(
    results: Sequence[ModeResult], facts: Sequence[tuple[str, str]], command: str
) -> str:
    out = [START_MARKER, "", "### Soak results", ""]
    out += [f"- **{name}**: {value}" for name, value in facts]
    out += [f"- **command**: `{command}`", "", results_table(results), ""]
    for result in results:
        out += [f"#### Mode `{result.mode}`", ""]
        if result.error:
            out += [f"Not run: {result.error}", ""]
        for sec in result.sections:
            out += [*sec.details, ""]
    out.append(END_MARKER)
    return "\n".join(out)


def write_doc(path: Path, block: str) -> None:
    """Replace the soak block of `path`, or add it at the end (under a "Chaos soak" heading)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if _BLOCK.search(text):
        text = _BLOCK.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Chaos soak\n\n" + block + "\n"
    path.write_text(text)
