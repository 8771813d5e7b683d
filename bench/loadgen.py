"""The load generator of `throughput`, in its own process so it does not share the API's CPU.

`python -m bench.loadgen --url U --key K --flow F --clients C --duration S` runs C clients that
each create and start executions of flow F back to back for S seconds, then prints one JSON
object: when it began and ended (time.time()), how many were created and started, errors, and
the request latencies, and its CPU time (in all, and over the window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Tally:
    created: int = 0
    started: int = 0
    errors: list[str] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    start_ms: list[float] = field(default_factory=list)


async def _client(client: httpx.AsyncClient, flow_id: str, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        try:
            t0 = time.perf_counter()
            r = await client.post("/v1/executions", json={"flow_id": flow_id})
            t1 = time.perf_counter()
            if r.status_code != 201:
                tally.errors.append(f"create {r.status_code}: {r.text[:200]}")
                continue
            tally.created += 1
            tally.create_ms.append((t1 - t0) * 1000)
            r = await client.post(f"/v1/executions/{r.json()['id']}/start")
            if r.status_code != 202:
                tally.errors.append(f"start {r.status_code}: {r.text[:200]}")
                continue
            tally.started += 1
            tally.start_ms.append((time.perf_counter() - t1) * 1000)
        except httpx.HTTPError as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q / 100), len(ordered) - 1)]


async def run(url: str, key: str, flow_id: str, clients: int, duration: float) -> dict[str, object]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:
        began, cpu_began = time.time(), time.process_time()
        deadline = time.monotonic() + duration
        await asyncio.gather(*(_client(client, flow_id, deadline, tally) for _ in range(clients)))
        ended, cpu_window = time.time(), time.process_time() - cpu_began
    return {
        "began": began,
        "ended": ended,
        "created": tally.created,
        "started": tally.started,
        "errors": len(tally.errors),
        "first_errors": tally.errors[:3],
        "create_ms_p50": _p(tally.create_ms, 50),
        "create_ms_p99": _p(tally.create_ms, 99),
        "start_ms_p50": _p(tally.start_ms, 50),
        "start_ms_p99": _p(tally.start_ms, 99),
        "cpu_s": time.process_time(),
        #: over the load window only (not the start-up's imports)
        "cpu_window_s": cpu_window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--flow", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.key, args.flow, args.clients, args.duration))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
