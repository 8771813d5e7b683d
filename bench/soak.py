"""The chaos soak (issue #8 item 4): load with a real side effect while everything breaks.

Per mode, on servers of its own (`chaos.soak_servers`) and a fresh deployment (the API in this
process, `twintrack worker` processes): `SoakSizes.executions` runs of `const → tally → delay →
output`, each of its own flow (so each has its own durable counter), paced at `rate` with at most
`clients` in flight. Each client creates, starts and follows its execution over SSE, resuming
from the last index + 1 when the stream breaks, as a user would. Meanwhile a chaos task:

- SIGKILLs the worker holding the most claims every `kill_every_s` and starts a replacement (and
  restarts any worker that exits by itself, counted), never one execution's run more than
  `kill_budget` times (half its MAX_ATTEMPTS: the soak tests recovery, not the give-up);
- restarts PostgreSQL a third of the way through the planned load window;
- stalls the broker (SIGSTOP / SIGCONT) at two thirds;
- probes the API (`/readyz` and a listing) around both, to time the recovery.

Then it waits up to `drain_s` for every execution to end, reads every row, counter and stream
once more, and `soak_check` judges each execution. All loops are bounded in count or time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.e2e.flows import flow
from tests.e2e.stack import Api

from bench.chaos import Outage, SoakServers, kill_worker, restart_postgres, stall_broker
from bench.config import Mode, SoakSizes
from bench.infra import Deployment, deploy, progress
from bench.soak_check import TERMINAL_EVENTS, TERMINAL_STATUSES, Observed
from bench.sse import Received, subscribe
from twintrack.adapters.postgres.db import create_engine
from twintrack.adapters.postgres.tables import (
    ExecutionClaimRow,
    ExecutionRow,
    TallyCounterRow,
    WorkerRow,
)

#: how long a create or start is retried while the answers are transient (5xx, 429, none)
ACCEPT_S = 60.0
REQUEST_TIMEOUT_S = 10.0
RECONNECT_S = 0.5
POLL_S = 0.5
LAG_TICK_S = 0.1
CHAOS_TICK_S = 0.1
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 2.0
#: how long the API may take to answer again after a fault ends before the soak gives up on it
HEALTHY_S = 120.0
REPLAY_CONCURRENCY = 8
MAX_RESPAWNS = 50


def soak_flow(counter: str, delay_ms: int) -> dict[str, Any]:
    """The side effect first, then a wait (so kills land after it), then its count stored."""
    return flow(
        counter,
        [
            ("one", "const", {"value": 1}),
            ("effect", "tally", {"name": counter}),
            ("wait", "delay", {"ms": delay_ms}),
            ("out", "output", {"name": "count"}),
        ],
        [
            ("one.value", "effect.value"),
            ("effect.count", "wait.value"),
            ("wait.value", "out.value"),
        ],
    )


@dataclass(frozen=True)
class Call:
    """One HTTP request the soak made: when, what, and the answer (status or error name)."""

    sent: float
    done: float
    op: str
    status: int | None
    error: str | None


@dataclass(frozen=True)
class Kill:
    at: float
    pid: int
    held: tuple[str, ...]  # executions whose claim the victim held just before or as it died


@dataclass
class Timeline:
    began: float = 0.0
    load_ended: float = 0.0
    drained: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    worker_exits: list[int] = field(default_factory=list)  # exit codes of workers we did not kill
    postgres: Outage | None = None
    postgres_healthy: float | None = None  # first probe answered 200 twice after the restart
    stall: Outage | None = None
    stall_healthy: float | None = None


@dataclass
class SoakRun:
    """What one mode's soak saw; `soak_report` turns it into numbers."""

    mode: str
    sizes: SoakSizes
    observed: list[Observed]
    refused: list[str]
    calls: list[Call]
    timeline: Timeline
    reconnects: int
    poll_errors: int
    loop_lag_max_s: float
    loop_stalls: list[tuple[float, float]]
    #: executions of the soak's flows it never accepted (a retried create), by status
    orphans: dict[str, int] = field(default_factory=dict)


def _event(received: Received) -> dict[str, Any]:
    return {
        "index": int(received.event["index"]),
        "type": received.type,
        "stamped": received.stamped,
        "at": received.at,
    }


def choose_victim(
    held: Mapping[int, Sequence[str]], killed: Mapping[str, int], budget: int
) -> int | None:
    """The worker (pid) to kill: of those holding claims, none of an execution already killed
    `budget` times, the one holding the most; None when there is none.

    Without the budget the soak hunts one execution down: once only a few are left running,
    each is taken over (DBOS: registry silence, sweep, lease; about 6 s) just after the next
    kill is due, so its new holder is killed right after the claim, run after run, until its
    MAX_ATTEMPTS real runs have failed and it is given up, which the soak then reported as a
    flow failure (issue #8 item 4: ten attempts, one per kill of its holder)."""
    eligible = {
        pid: len(claims)
        for pid, claims in held.items()
        if claims and all(killed.get(e, 0) < budget for e in claims)
    }
    return max(eligible, key=lambda p: eligible[p], default=None)


ChaosStep = Literal["postgres", "broker", "kill", "done", "wait"]


def chaos_step(
    now: float,
    window: float,
    *,
    postgres_done: bool,
    stall_done: bool,
    may_kill: bool,
    killed_yet: bool,
    next_kill: float,
) -> ChaosStep:
    """What the chaos task does next, `now` seconds into a load planned to last `window`.

    The PostgreSQL restart waits for the first kill while one can still happen: a run whose
    first claim came late (a cold worker) otherwise spent its whole load inside the two outages
    and ended it before any worker held a claim to kill (a tiny soak on DBOS streams, where the
    stalled broker holds nothing back, did: 0 kills)."""
    first_kill_pending = may_kill and not killed_yet
    if not postgres_done and now >= window / 3 and not first_kill_pending:
        return "postgres"
    if postgres_done and not stall_done and now >= 2 * window / 3:
        return "broker"
    if may_kill and now >= next_kill:
        return "kill"
    if postgres_done and stall_done and not may_kill:
        return "done"
    return "wait"


class Soak:
    def __init__(self, deployment: Deployment, own: SoakServers, sizes: SoakSizes) -> None:
        self.deployment = deployment
        self.own = own
        self.sizes = sizes
        self.client = httpx.AsyncClient(
            base_url=deployment.base_url,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=2 * sizes.clients + 16),
        )
        self.api = Api(self.client, deployment.api.key)
        self.engine: AsyncEngine = create_engine(
            deployment.env["DATABASE_URL"], pool_pre_ping=True, pool_size=2, max_overflow=2
        )
        self.observed: dict[str, Observed] = {}
        self.counter_of: dict[str, str] = {}  # flow id and execution id -> its counter
        self.flow_ids: list[str] = []
        self.orphans: dict[str, int] = {}
        self.refused: list[str] = []
        self.calls: list[Call] = []
        self.timeline = Timeline()
        self.reconnects = 0
        self.poll_errors = 0
        self.load_done = False
        self._respawns = 0
        #: per execution, the kills of a worker that held its claim (each one spent an attempt)
        self.killed: Counter[str] = Counter()
        self.loop_lag_max_s = 0.0
        self.loop_stalls: list[tuple[float, float]] = []  # (when, how long) of lags over 0.5 s
        self._stop_polling = asyncio.Event()

    async def close(self) -> None:
        await self.client.aclose()
        await self.engine.dispose()

    # -- the API, as a client with retries ----------------------------------------------------

    async def _request(self, op: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        sent = time.time()
        try:
            response = await self.client.request(method, url, headers=self.api.auth, **kw)
        except httpx.HTTPError as exc:
            self.calls.append(Call(sent, time.time(), op, None, type(exc).__name__))
            return None
        self.calls.append(Call(sent, time.time(), op, response.status_code, None))
        return response

    async def _until_answered(
        self, op: str, url: str, ok: set[int], body: dict[str, Any] | None = None
    ) -> tuple[httpx.Response | None, str]:
        """POST until an `ok` answer; transient answers (5xx, 429, none) are retried with
        backoff for up to ACCEPT_S, anything else is final. (response or None, last problem)."""
        deadline = time.monotonic() + ACCEPT_S
        delay = 0.25
        while True:
            response = await self._request(op, "POST", url, json=body)
            if response is not None and response.status_code in ok:
                return response, ""
            if response is None:
                problem = f"{op}: no answer ({self.calls[-1].error})"
            else:
                problem = f"{op}: HTTP {response.status_code} {response.text[:160]}"
                if response.status_code < 500 and response.status_code != 429:
                    return None, problem
            if time.monotonic() + delay > deadline:
                return None, problem
            await asyncio.sleep(delay)  # backoff before retrying, not synchronisation
            delay = min(delay * 2, 2.0)

    # -- the load ----------------------------------------------------------------------------

    async def create_flows(self) -> list[str]:
        """One flow per execution, before any fault: returns their ids in order."""
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with gate:
                counter = f"soak-{i}"
                flow_id = await self.api.create_flow(soak_flow(counter, self.sizes.delay_ms))
                self.counter_of[flow_id] = counter
                return flow_id

        self.flow_ids = list(await asyncio.gather(*(one(i) for i in range(self.sizes.executions))))
        return self.flow_ids

    async def produce(self, flows: list[str]) -> None:
        """Start one client per flow, paced at `rate`, at most `clients` at once."""
        slots = asyncio.Semaphore(self.sizes.clients)
        began = time.monotonic()
        tasks = []
        for i, flow_id in enumerate(flows):
            await asyncio.sleep(max(0.0, began + i / self.sizes.rate - time.monotonic()))  # pacing
            await slots.acquire()
            tasks.append(asyncio.create_task(self._client(flow_id, slots)))
        await asyncio.gather(*tasks)
        self.load_done = True
        self.timeline.load_ended = time.time()

    async def _client(self, flow_id: str, slots: asyncio.Semaphore) -> None:
        try:
            created, problem = await self._until_answered(
                "create", "/v1/executions", {201}, {"flow_id": flow_id}
            )
            if created is None:
                self.refused.append(problem)
                return
            execution_id = str(created.json()["id"])
            # 409: a retried start whose first try went through, and the run already ended
            started, problem = await self._until_answered(
                "start", f"/v1/executions/{execution_id}/start", {202, 409}
            )
            if started is None:
                self.refused.append(problem)
                return
            obs = Observed(execution_id)
            self.observed[execution_id] = obs
            self.counter_of[execution_id] = self.counter_of[flow_id]
            await self._follow(obs)
        finally:
            slots.release()

    async def _follow(self, obs: Observed) -> None:
        """Follow the stream live until its terminal event, resuming after the last index."""
        deadline = time.monotonic() + self.sizes.follow_s
        while (left := deadline - time.monotonic()) > 0:
            start = obs.live[-1]["index"] + 1 if obs.live else 0
            try:
                async with (
                    asyncio.timeout(left),
                    subscribe(self.api, obs.execution_id, start) as stream,
                ):
                    while True:
                        received = await stream.next()
                        obs.live.append(_event(received))
                        if received.type in TERMINAL_EVENTS:
                            return
            except TimeoutError:
                return
            except (httpx.HTTPError, RuntimeError, EOFError, ValueError):
                self.reconnects += 1
            await asyncio.sleep(RECONNECT_S)  # backoff before reconnecting

    # -- status poller -----------------------------------------------------------------------

    async def poll(self) -> None:
        """Record every status change of every accepted execution (for flapping)."""
        while not self._stop_polling.is_set():
            await self._poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_polling.wait(), POLL_S)

    async def _poll_once(self) -> None:
        ids = list(self.observed)
        if not ids:
            return
        try:
            async with asyncio.timeout(5), self.engine.connect() as connection:
                rows = (
                    await connection.execute(
                        select(ExecutionRow.id, ExecutionRow.status).where(ExecutionRow.id.in_(ids))
                    )
                ).all()
        except (SQLAlchemyError, OSError, TimeoutError):
            self.poll_errors += 1
            return
        for execution_id, status in rows:
            seen = self.observed[execution_id].statuses
            if not seen or seen[-1] != str(status):
                seen.append(str(status))

    def stop_polling(self) -> None:
        self._stop_polling.set()

    async def watch_loop(self) -> None:
        """How late this event loop wakes up: the API under test shares it, so a blocked loop
        delays the soak's own clocks too (reported, to say how far its timings can be trusted)."""
        while not self._stop_polling.is_set():
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            lag = time.monotonic() - before - LAG_TICK_S
            self.loop_lag_max_s = max(self.loop_lag_max_s, lag)
            if lag > 0.5:
                self.loop_stalls.append((time.time() - lag, lag))

    # -- chaos -------------------------------------------------------------------------------

    async def chaos(self, began: float) -> None:
        """Kills every `kill_every_s` while clients run; PostgreSQL at 1/3, broker at 2/3 of the
        planned load window (each once, whatever the load's progress); see `chaos_step`."""
        window = self.sizes.executions / self.sizes.rate
        next_kill = self.sizes.kill_every_s
        postgres_done = stall_done = False
        while True:
            now = time.monotonic() - began
            await self._respawn_exited()
            step = chaos_step(
                now,
                window,
                postgres_done=postgres_done,
                stall_done=stall_done,
                may_kill=self._may_kill(),
                killed_yet=bool(self.timeline.kills),
                next_kill=next_kill,
            )
            if step == "postgres":
                await self._postgres_fault()
                postgres_done = True
            elif step == "broker":
                await self._broker_fault()
                stall_done = True
            elif step == "kill":
                if await self._kill():
                    next_kill = time.monotonic() - began + self.sizes.kill_every_s
                else:
                    await asyncio.sleep(CHAOS_TICK_S)  # nobody holds a claim yet: look again
            elif step == "done":
                return
            else:
                await asyncio.sleep(CHAOS_TICK_S)

    def _may_kill(self) -> bool:
        cap = self.sizes.max_kills
        return not self.load_done and (cap is None or len(self.timeline.kills) < cap)

    async def _claims_by_pid(self) -> dict[int, list[str]]:
        try:
            async with asyncio.timeout(5), self.engine.connect() as connection:
                rows = (
                    await connection.execute(
                        select(WorkerRow.pid, ExecutionClaimRow.execution_id).join(
                            ExecutionClaimRow, ExecutionClaimRow.worker_id == WorkerRow.worker_id
                        )
                    )
                ).all()
        except (SQLAlchemyError, OSError, TimeoutError):
            return {}
        held: dict[int, list[str]] = {}
        for pid, execution_id in rows:
            held.setdefault(int(pid), []).append(str(execution_id))
        return held

    @property
    def kill_budget(self) -> int:
        """Kills one execution's runs may take: half its attempts (MAX_ATTEMPTS, the service's
        default 3 unless the soak sets it), the rest left for what else may cost one (a lost
        lease in the PostgreSQL outage)."""
        return max(1, int(self.sizes.settings.get("MAX_ATTEMPTS", "3")) // 2)

    async def _kill(self) -> bool:
        """SIGKILL the live worker holding the most claims, if any holds one (a worker still
        starting holds none: killing it would test start-up, not recovery) and none of an
        execution already killed `kill_budget` times. Whether it did."""
        live = [p for p in self.deployment.workers if p.poll() is None]
        held = await self._claims_by_pid()
        pid = choose_victim(
            {p.pid: held.get(p.pid, []) for p in live}, self.killed, self.kill_budget
        )
        if pid is None:
            return False
        victim = next(p for p in live if p.pid == pid)
        at = await kill_worker(victim)
        self.deployment.workers.remove(victim)
        # Read again once it is dead (its claims stay its own until their leases run out): a
        # takeover it made between the read above and the signal spent an attempt too.
        died_holding = (await self._claims_by_pid()).get(victim.pid, [])
        claims = tuple(dict.fromkeys([*held.get(victim.pid, []), *died_holding]))
        self.killed.update(claims)
        self.timeline.kills.append(Kill(at, victim.pid, claims))
        progress(f"soak: SIGKILL worker {victim.pid} holding {len(claims)} claim(s)")
        self.deployment.spawn_worker()
        return True

    async def _respawn_exited(self) -> None:
        """A worker that exits by itself (say, on the database restart) is replaced, counted."""
        for proc in list(self.deployment.workers):
            code = proc.poll()
            if code is None:
                continue
            self.deployment.workers.remove(proc)
            self.timeline.worker_exits.append(code)
            progress(f"soak: worker {proc.pid} exited by itself ({code}); replacing it")
            if self._respawns < MAX_RESPAWNS:
                self._respawns += 1
                self.deployment.spawn_worker()

    async def _probe(self, ended: asyncio.Event) -> float | None:
        """Probe `/readyz` and a listing until both answer 200 after `ended` is set: that time."""
        deadline: float | None = None
        while deadline is None or time.monotonic() < deadline:
            if ended.is_set() and deadline is None:
                deadline = time.monotonic() + HEALTHY_S
            after = ended.is_set()
            ready = await self._request("readyz", "GET", "/readyz", timeout=PROBE_TIMEOUT_S)
            listing = await self._request(
                "list", "GET", "/v1/executions", params={"limit": 1}, timeout=PROBE_TIMEOUT_S
            )
            answered = [r.status_code if r is not None else None for r in (ready, listing)]
            if after and answered == [200, 200]:
                return time.time()
            await asyncio.sleep(PROBE_EVERY_S)
        return None

    async def _postgres_fault(self) -> None:
        progress(f"soak: restarting PostgreSQL (down {self.sizes.pg_down_s:g} s)")
        ended = asyncio.Event()
        probing = asyncio.create_task(self._probe(ended))
        try:
            self.timeline.postgres = await restart_postgres(self.own.postgres, self.sizes.pg_down_s)
        finally:
            ended.set()
        self.timeline.postgres_healthy = await probing
        progress("soak: PostgreSQL back; API healthy" if self.timeline.postgres_healthy else "")

    async def _broker_fault(self) -> None:
        progress(f"soak: stalling the broker for {self.sizes.stall_s:g} s (SIGSTOP)")
        ended = asyncio.Event()
        probing = asyncio.create_task(self._probe(ended))
        try:
            self.timeline.stall = await stall_broker(self.own.broker, self.sizes.stall_s)
        finally:
            ended.set()
        self.timeline.stall_healthy = await probing
        progress("soak: broker resumed (SIGCONT)")

    # -- the end -----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Until every accepted execution's row is terminal, at most `drain_s`."""
        deadline = time.monotonic() + self.sizes.drain_s
        while time.monotonic() < deadline:
            await self._poll_once()
            if all(
                o.statuses and o.statuses[-1] in TERMINAL_STATUSES for o in self.observed.values()
            ):
                break
            await asyncio.sleep(POLL_S)
        self.timeline.drained = time.time()

    async def final_check(self) -> None:
        """Rows, counters and the whole streams, read once more."""
        ids = list(self.observed)
        rows = await self._read_rows(ids)
        counts = await self._read_counters()
        for execution_id, obs in self.observed.items():
            row = rows.get(execution_id)
            if row is not None:
                obs.final_status = str(row.status)
                obs.attempt = int(row.attempt)
                obs.outputs = dict(row.outputs or {})
                obs.error = row.error_message
            obs.tally = counts.get(self.counter_of[execution_id], 0)
        self.orphans = await self._read_orphans(set(ids))
        gate = asyncio.Semaphore(REPLAY_CONCURRENCY)

        async def replay(obs: Observed) -> None:
            async with gate:
                terminal = obs.final_status in TERMINAL_STATUSES
                obs.replay = await self._replay(obs.execution_id, 15.0 if terminal else 2.0)

        await asyncio.gather(*(replay(o) for o in self.observed.values()))

    async def _read_rows(self, ids: list[str]) -> dict[str, Any]:
        for _ in range(30):  # the database came back long ago; a bounded retry all the same
            try:
                async with asyncio.timeout(10), self.engine.connect() as connection:
                    rows = (
                        await connection.execute(
                            select(
                                ExecutionRow.id,
                                ExecutionRow.status,
                                ExecutionRow.attempt,
                                ExecutionRow.outputs,
                                ExecutionRow.error_message,
                            ).where(ExecutionRow.id.in_(ids))
                        )
                    ).all()
                return {row.id: row for row in rows}
            except (SQLAlchemyError, OSError, TimeoutError):
                await asyncio.sleep(1)
        raise RuntimeError("soak: could not read the executions back from PostgreSQL")

    async def _read_orphans(self, accepted: set[str]) -> dict[str, int]:
        """Executions of the soak's flows it never accepted, by status: a create retried after
        its answer was lost made one more (creates carry no idempotency key)."""
        flows = self.flow_ids
        async with asyncio.timeout(10), self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(ExecutionRow.id, ExecutionRow.status).where(
                        ExecutionRow.flow_id.in_(flows)
                    )
                )
            ).all()
        orphans: dict[str, int] = {}
        for execution_id, status in rows:
            if execution_id not in accepted:
                orphans[str(status)] = orphans.get(str(status), 0) + 1
        return orphans

    async def _read_counters(self) -> dict[str, int]:
        async with asyncio.timeout(10), self.engine.connect() as connection:
            rows = (
                await connection.execute(select(TallyCounterRow.name, TallyCounterRow.count))
            ).all()
        return {str(name): int(count) for name, count in rows}

    async def _replay(self, execution_id: str, timeout: float) -> list[dict[str, Any]]:
        """The stream from index 0 until the server ends it (or `timeout`): what it holds."""
        events: list[dict[str, Any]] = []
        for _ in range(3):
            events = []
            try:
                async with asyncio.timeout(timeout), subscribe(self.api, execution_id) as stream:
                    while True:
                        events.append(_event(await stream.next()))
            except (EOFError, TimeoutError):
                return events
            except (httpx.HTTPError, RuntimeError, ValueError):
                await asyncio.sleep(RECONNECT_S)
        return events


async def run(deployment: Deployment, own: SoakServers, sizes: SoakSizes) -> SoakRun:
    """One mode's soak on a deployment whose servers are `own`."""
    soak = Soak(deployment, own, sizes)
    try:
        progress(f"soak {deployment.mode.name}: creating {sizes.executions} flows")
        flows = await soak.create_flows()
        poller = asyncio.create_task(soak.poll())
        watcher = asyncio.create_task(soak.watch_loop())
        began = time.monotonic()
        soak.timeline.began = time.time()
        chaos = asyncio.create_task(soak.chaos(began))
        producing = asyncio.create_task(soak.produce(flows))
        try:
            # a fault that could not be injected (or undone) ends the soak at once
            await asyncio.wait({chaos, producing}, return_when=asyncio.FIRST_EXCEPTION)
            if chaos.done() and chaos.exception() is not None:
                producing.cancel()
                await chaos
            await producing
            progress(f"soak {deployment.mode.name}: load done, waiting for the faults to end")
            await chaos
            progress(f"soak {deployment.mode.name}: draining")
            await soak.drain()
        finally:
            producing.cancel()
            chaos.cancel()  # a stall in progress is always thawed (chaos.stall_broker)
            with contextlib.suppress(asyncio.CancelledError):
                await producing
            with contextlib.suppress(asyncio.CancelledError):
                await chaos
            soak.stop_polling()
            await poller
            await watcher
        progress(f"soak {deployment.mode.name}: checking {len(soak.observed)} executions")
        await soak.final_check()
        return SoakRun(
            deployment.mode.name,
            sizes,
            list(soak.observed.values()),
            soak.refused,
            soak.calls,
            soak.timeline,
            soak.reconnects,
            soak.poll_errors,
            soak.loop_lag_max_s,
            soak.loop_stalls,
            soak.orphans,
        )
    finally:
        await soak.close()


def time_budget(sizes: SoakSizes) -> float:
    """An upper bound on one mode's soak, for a timeout: every phase at its own worst case."""
    window = sizes.executions / sizes.rate
    faults = sizes.pg_down_s + sizes.stall_s + 2 * HEALTHY_S
    return (
        300
        + 2 * window
        + faults
        + sizes.follow_s
        + ACCEPT_S
        + sizes.drain_s
        + sizes.executions * 0.1
    )


async def soak_mode(own: SoakServers, mode: Mode, sizes: SoakSizes, log_dir: Path) -> SoakRun:
    """A fresh deployment of `mode` on the soak's servers, soaked."""
    progress(f"soak {mode.name}: deploying")
    async with asyncio.timeout(time_budget(sizes)):
        async with deploy(own.servers, mode, log_dir, sizes.settings) as deployment:
            return await run(deployment, own, sizes)
