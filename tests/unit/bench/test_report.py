"""The bench's pure parts: the one results table (modes, baselines, ratio columns), the doc
block it rewrites, CPU per execution, percentiles, pgbench output and the command line. No
servers: a smoke test that the report a run ends with renders as the reader expects."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench import cpu
from bench.__main__ import ALL, _arguments
from bench.bound import libpq_url, parse_tps
from bench.config import DEV, SHAPES, SPLIT
from bench.dbos_logs import CONTENTION, contention_line
from bench.report import (
    END_MARKER,
    RATIO_NOTE,
    START_MARKER,
    ModeResult,
    Row,
    Section,
    render,
    results_table,
    write_doc,
)
from bench.stats import Summary, percentile


def _latency(p50: float, p99: float) -> Row:
    return Row(
        "latency", "create→completed", "≤ 30 / ≤ 100 ms", f"{p50} / {p99} ms", None, (p50, p99)
    )


def _rate(rate: float) -> Row:
    return Row(
        "throughput", "sustained throughput", "≥ 200 executions/s", f"{rate} /s", None, (rate,)
    )


def _result(mode: str, rows: list[Row], **kind: object) -> ModeResult:
    return ModeResult(mode, sections=[Section("s", rows)], **kind)  # type: ignore[arg-type]


def _table() -> list[list[str]]:
    results = [
        _result("kafka", [_latency(40, 80), _rate(100)], track="kafka", library="bare Kafka"),
        _result("dbos", [_latency(60, 120), _rate(50)], track="dbos", library="bare DBOS"),
        _result("bare Kafka", [_latency(10, 20), _rate(400)], track="kafka", baseline=True),
        _result("bare DBOS", [_latency(20, 40), _rate(100)], track="dbos", baseline=True),
    ]
    lines = results_table(results).splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_table_has_a_column_per_mode_then_baselines_then_ratios() -> None:
    header = _table()[0]
    assert header == [
        "what",
        "goal",
        "kafka",
        "dbos",
        "bare Kafka",
        "bare DBOS",
        "kafka ÷ bare Kafka",
        "dbos ÷ bare DBOS",
        "dbos ÷ kafka",
    ]


def test_each_ratio_divides_figure_by_figure_on_the_same_line() -> None:
    table = _table()
    latency = next(row for row in table if row[0] == "create→completed")
    throughput = next(row for row in table if row[0] == "sustained throughput")
    # mode ÷ its library, then DBOS ÷ Kafka
    assert latency[6:] == ["4.00 / 4.00 x", "3.00 / 3.00 x", "1.50 / 1.50 x"]
    assert throughput[6:] == ["0.25 x", "0.50 x", "0.50 x"]
    assert latency[4] == "10 / 20 ms"  # the baseline's value sits on the mode's line


def test_a_large_ratio_shows_only_meaningful_decimals() -> None:
    results = [
        _result("kafka", [_rate(250.0)], track="kafka", library="bare Kafka"),
        _result("bare Kafka", [_rate(1.0)], track="kafka", baseline=True),
    ]
    assert results_table(results).splitlines()[2].endswith("| 250 x |")


def test_a_row_only_some_columns_have_gets_dashes_and_a_failed_mode_says_not_run() -> None:
    rss = Row("rss", "idle RSS", "≤ 150 MB", "109 MB", True, (109.0,))
    results = [
        _result("kafka", [rss], track="kafka"),
        ModeResult("dbos", track="dbos", error="RuntimeError: no DBOS"),
        _result("bare DBOS", [], track="dbos", baseline=True),
    ]
    lines = results_table(results).splitlines()
    assert lines[2] == "| idle RSS | ≤ 150 MB | 109 MB — pass | not run | — | — |"


def test_a_ratio_with_a_missing_or_zero_figure_is_not_a_number() -> None:
    results = [
        _result("kafka", [_rate(0.0)], track="kafka"),
        _result("dbos", [_rate(math.nan)], track="dbos"),
    ]
    assert results_table(results).splitlines()[2].endswith("| n/a x |")


def test_the_doc_keeps_its_prose_and_gets_machine_table_and_bound(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"# Benchmarks\n\nHand-written.\n\n{START_MARKER}\nold\n{END_MARKER}\n\nMore prose.\n"
    )
    bound = Section("physical bound", [], ["Measured with pgbench."])
    block = render(
        [_result("kafka", [_latency(40, 80)], track="kafka")],
        [("date", "2026-12-02 05:00 UTC"), ("CPU", "2 cores")],
        "uv run python -m bench --quick",
        [bound],
    )
    write_doc(doc, block)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written.\n")
    assert text.rstrip().endswith("More prose.")
    assert "old" not in text
    for expected in ("**date**: 2026-12-02 05:00 UTC", RATIO_NOTE, "### Physical bound"):
        assert expected in text
    assert text.count(START_MARKER) == 1


def test_cpu_rows_per_process_in_a_fixed_order_with_their_total() -> None:
    cores = {
        "load generator": 0.2,
        "worker 1": 0.5,
        "PostgreSQL": 0.1,
        "API": 0.4,
        "idle": 0.3,
        "machine busy": 1.7,
        "other processes": 0.1,
    }
    ms = cpu.per_execution_ms(cores, wall_s=10.0, done=1000)
    assert ms == pytest.approx(
        {"load generator": 2.0, "worker 1": 5.0, "PostgreSQL": 1.0, "API": 4.0}
    )
    rows = cpu.rows(SPLIT, ms)
    assert [r.key for r in rows] == [
        "cpu-split-API",
        "cpu-split-worker 1",
        "cpu-split-PostgreSQL",
        "cpu-split-load generator",
        "cpu-split-total",
    ]
    assert rows[-1].numbers == pytest.approx((12.0,))
    assert rows[-1].ok is False  # over the 10 ms that 200/s on 2 cores allows


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert math.isnan(percentile([], 50))
    summary = Summary.of([float(v) for v in range(1, 101)])
    assert (summary.n, summary.p50, summary.max) == (100, 50.5, 100)


def test_pgbench_output_and_urls_are_read() -> None:
    output = (
        "number of failed transactions: 0 (0.000%)\n"
        "tps = 3512.345678 (without initial connection time)\n"
    )
    assert parse_tps(output) == pytest.approx(3512.345678)
    with pytest.raises(RuntimeError):
        parse_tps("connection refused")
    assert (
        libpq_url("postgresql+asyncpg://u:p@127.0.0.1:5432/db")
        == "postgresql://u:p@127.0.0.1:5432/db"
    )


def test_a_plain_run_has_every_part_and_both_shapes() -> None:
    args = _arguments([])
    assert args.only_list == list(ALL)
    assert {"bound", "baselines", "latency", "throughput", "recovery"} <= set(args.only_list)
    assert args.shape_list == list(SHAPES) == [SPLIT, DEV]
    assert len(args.mode_list) == 3
    with pytest.raises(SystemExit):
        _arguments(["--shapes", "cluster"])


def test_dbos_contention_back_offs_are_counted_per_worker_log(tmp_path: Path) -> None:
    line = f"04:32:00 [ WARNING] (dbos:_queue.py:884) {CONTENTION} for bare. Increasing...\n"
    (tmp_path / "worker-1.log").write_text(line * 2 + "other\n")
    (tmp_path / "worker-2.log").write_text("quiet\n")
    assert contention_line(tmp_path).endswith("so far: worker-1 2, worker-2 0.")
