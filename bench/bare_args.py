"""The command line both bare baselines share (`python -m bench.bare_kafka|bare_dbos`).

`bench.bare` starts each library's workers and client with the same options (role, database,
worker name and slots, phase sizes, the in-flight cap); a baseline adds only what its library
needs, so the two can never drift apart on what they measure.
"""

from __future__ import annotations

import argparse


def bare_parser(prog: str) -> argparse.ArgumentParser:
    """The shared options; the caller adds its library's own before parsing."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("role", choices=("worker", "client"))
    parser.add_argument("--url", required=True, help="PostgreSQL URL (libpq form)")
    parser.add_argument("--name", default="worker")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--phase", choices=("latency", "throughput"), default="latency")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", default="worker")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--in-flight", type=int, default=80, help="cap: sent, not yet done")
    return parser
