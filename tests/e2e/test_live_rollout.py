"""The live rollout and its guard (issue #12) on real servers: a change made with `twintrack
rollout set` or `PUT /v1/admin/rollout` reaches every API process within 2 s without a
restart; changing it while two API processes create executions (run by a Kafka-only and a
DBOS-only worker process) loses or double-routes none; and the guard rolls a failing DBOS
cohort back while the Kafka cohort is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import func, select

from tests.e2e import flows
from tests.e2e.stack import Api, Stack, assert_contiguous, eventually, open_stack
from tests.e2e.test_rollout import run_cli
from twintrack.adapters.postgres.tables import ExecutionRow, WorkerRow
from twintrack.bootstrap import Container, ServiceFactory
from twintrack.config import load_settings
from twintrack.core.guard import GUARD
from twintrack.core.live_rollout import LiveRollout
from twintrack.domain.execution import Track
from twintrack.domain.rollout import owner_bucket
from twintrack.entrypoints.processes import api_server
from twintrack.nodes.base import NodeConfig, NodeContext, NodeError, NodeType
from twintrack.observability.metrics import REGISTRY
from twintrack.tooling.embedded._proc import free_port

pytestmark = pytest.mark.integration

#: a change must be in force on every API process within this (issue #12)
PROPAGATION_S = 2.0


@contextlib.asynccontextmanager
async def another_api(
    env: Mapping[str, str], **overrides: str
) -> AsyncIterator[tuple[Container, str]]:
    """A second API process on the same database (its own container, pool and listener)."""
    settings = load_settings(**{k.lower(): v for k, v in {**env, **overrides}.items()})
    container = ServiceFactory(settings).build()
    await container.start()
    port = free_port()
    server = api_server(container, "127.0.0.1", port)
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _true(server.started), timeout=10)
        yield container, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        await container.close()


async def _true(value: bool) -> bool:
    return value


async def in_force(container: Container, percent: int | None, timeout: float) -> float:
    """Seconds until `container` routes by `percent` (fails after `timeout`)."""
    started = time.monotonic()
    await eventually(
        lambda: _true(container.service.policy.rollout_percent == percent),
        timeout=timeout,
        every=0.01,
    )
    return time.monotonic() - started


async def newer_than(live: LiveRollout, version: int) -> None:
    """Until the process holds a state newer than `version`."""
    await eventually(lambda: _true(live.version > version), timeout=PROPAGATION_S)


async def admin_key(stack: Stack, owner: str = "ops") -> str:
    return (await stack.container.keys.create(owner, admin=True)).key


async def test_a_change_reaches_every_api_process_within_two_seconds(
    base_env: dict[str, str], logs: Path
) -> None:
    # The timer fallback is set far away: what delivers the change here is LISTEN/NOTIFY.
    env = {**base_env, "ROLLOUT_REFRESH_S": "30"}
    async with open_stack(env, logs) as stack, another_api(env) as (second, second_url):
        first = stack.container
        assert first.service.route("team-a") is Track.KAFKA
        key = await admin_key(stack)
        flow_id = await stack.api.create_flow(flows.three_nodes())

        code, out = await run_cli(
            stack, "set", "--percent", "100", "--reason", "canary is healthy", "--by", "alice"
        )
        assert code == 0, out
        assert "DBOS gets 100%" in out
        for container in (first, second):
            assert await in_force(container, 100, PROPAGATION_S) < PROPAGATION_S
        async with httpx.AsyncClient(base_url=second_url, timeout=30) as client:
            created = await client.post(
                "/v1/executions",
                json={"flow_id": flow_id},
                headers={"Authorization": f"Bearer {stack.api.key}"},
            )
            assert created.status_code == 201, created.text
            assert created.json()["track"] == "dbos"

            # The API: admin keys only, the key's owner is who changed it.
            body = {"rollout_percent": 0, "reason": "roll back by hand"}
            refused = await client.put(
                "/v1/admin/rollout", json=body, headers={"Authorization": f"Bearer {stack.api.key}"}
            )
            assert refused.status_code == 403, refused.text
            auth = {"Authorization": f"Bearer {key}"}
            bad = await client.put("/v1/admin/rollout", json={"rollout_percent": 5}, headers=auth)
            assert bad.status_code == 422, bad.text
            changed = await client.put("/v1/admin/rollout", json=body, headers=auth)
            assert changed.status_code == 200, changed.text
            assert (changed.json()["rollout_percent"], changed.json()["changed_by"]) == (0, "ops")
            assert second.service.policy.rollout_percent == 0  # its own process: at once
            assert await in_force(first, 0, PROPAGATION_S) < PROPAGATION_S

            shown = (await client.get("/v1/admin/rollout", headers=auth)).json()
        assert [(h["changed_by"], h["reason"]) for h in shown["history"]] == [
            ("ops", "roll back by hand"),
            ("alice", "canary is healthy"),
            ("environment", "initial state from the environment"),
        ]
        assert shown["state"]["phases"] == {"kafka": "active", "dbos": "draining"}
        assert shown["tracks"]["dbos"]["phase"] == "draining"  # the created one is unfinished

        code, out = await run_cli(stack, "status")
        assert code == 0, out
        assert out.splitlines()[0].split()[:3] == ["TRACK", "CREATED", "QUEUED"]
        assert out.splitlines()[0].split()[-1] == "PHASE"
        assert "by alice: canary is healthy" in out
        assert "by ops: roll back by hand" in out
        code, out = await run_cli(stack, "set", "--reason", "nothing")
        assert code == 2, out


async def test_the_timer_re_reads_a_change_whose_notification_was_lost_and_the_env_overrides(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {**base_env, "ROLLOUT_REFRESH_S": "0.2"}
    async with (
        open_stack(env, logs) as stack,
        another_api(env, ROLLOUT_SOURCE="environment") as (pinned, _),
    ):
        live = stack.container.rollout
        assert live is not None
        assert live.feed is not None
        await live.feed.close()  # no notification reaches this process any more
        code, out = await run_cli(stack, "set", "--percent", "30", "--reason", "r", "--by", "b")
        assert code == 0, out
        assert await in_force(stack.container, 30, PROPAGATION_S) < PROPAGATION_S
        # ROLLOUT_SOURCE=environment: the settings rule that process, whatever is stored.
        assert pinned.rollout is None
        assert pinned.service.policy.rollout_percent is None
        assert pinned.service.route("team-a") is Track.KAFKA


async def healthy(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
            return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def workers_by_track(stack: Stack) -> dict[str, str]:
    """worker_id -> the one track it serves, for the live workers registered so far."""
    async with stack.container.sessions() as session:
        rows = (
            await session.execute(
                select(WorkerRow.worker_id, WorkerRow.tracks).where(WorkerRow.stopped_at.is_(None))
            )
        ).all()
    return {r.worker_id: r.tracks[0] for r in rows if len(r.tracks) == 1}


async def finished(stack: Stack, ids: list[str]) -> bool:
    async with stack.container.sessions() as session:
        done = await session.scalar(
            select(func.count())
            .select_from(ExecutionRow)
            .where(ExecutionRow.id.in_(ids), ExecutionRow.finished_at.is_not(None))
        )
    return done == len(ids)


async def test_changing_the_rollout_while_executions_are_created_loses_or_doubles_nothing(
    base_env: dict[str, str], logs: Path
) -> None:
    """Two API processes create while the rollout flips under them; the flips reach them by
    NOTIFY alone (the timer re-read is further away than the test lasts), and the executions run
    on a Kafka-only and a DBOS-only worker process: each where it was routed, once."""
    # A lease that cannot lapse on a loaded machine: a recovery re-run is not what this checks.
    env = {**base_env, "ROLLOUT_REFRESH_S": "120", "CLAIM_TTL_S": "15"}
    async with open_stack(env, logs) as stack:
        urls = []
        for name in ("api-1", "api-2"):
            port = free_port()
            stack.spawn_api_process(name, port)
            urls.append(f"http://127.0.0.1:{port}")
        for track in ("kafka", "dbos"):
            stack.spawn_worker_process(f"{track}-worker", env={"WORKER_TRACKS": track})
        key = await admin_key(stack)
        flow_id = await stack.api.create_flow(flows.crashable(ms=10))
        auth = {"Authorization": f"Bearer {key}"}
        for url in urls:
            await eventually(functools.partial(healthy, url), timeout=60, every=0.1)
        workers = await eventually(
            lambda: _two_tracks(workers_by_track(stack)), timeout=60, every=0.1
        )

        async def put(percent: int, reason: str) -> None:
            # Through the test's own API process: the spawned ones only hear of it by NOTIFY.
            r = await stack.api.client.put(
                "/v1/admin/rollout",
                json={"rollout_percent": percent, "reason": reason},
                headers=auth,
            )
            assert r.status_code == 200, r.text

        created: list[tuple[int, dict[str, Any]]] = []  # (API process, the create's answer)
        async with contextlib.AsyncExitStack() as clients:
            apis = [
                Api(
                    await clients.enter_async_context(httpx.AsyncClient(base_url=u, timeout=30)),
                    stack.api.key,
                )
                for u in urls
            ]

            async def create_and_start(i: int) -> None:
                row = await apis[i].create(flow_id)
                assert await apis[i].command(row["id"], "start") == 202
                created.append((i, row))

            creating = True

            async def flip() -> int:
                n = 0
                while creating:
                    await put(100 * (n % 2 == 0), f"flip {n}")
                    n += 1
                    await asyncio.sleep(0.01)  # pacing, not synchronisation
                return n

            live = stack.container.rollout
            assert live is not None
            flipping = asyncio.create_task(flip())
            for _ in range(4):  # waves, each after the state in force changed again
                await newer_than(live, live.version)
                await asyncio.gather(*(create_and_start(i) for i in (0, 1) for _ in range(5)))
            creating = False
            assert await flipping >= 2
            assert {r["track"] for _, r in created} == {"kafka", "dbos"}  # both routes taken

            # Each process follows each change within 2 s, by NOTIFY (its timer is minutes away).
            for percent, track in ((100, "dbos"), (0, "kafka")):
                await put(percent, f"settle on {track}")
                for i in (0, 1):

                    async def routed(i: int = i, track: str = track) -> bool:
                        await create_and_start(i)
                        return bool(created[-1][1]["track"] == track)

                    await eventually(routed, timeout=PROPAGATION_S, every=0.05)

        ids = [r["id"] for _, r in created]
        assert len(set(ids)) == len(ids)
        await eventually(lambda: finished(stack, ids), timeout=60, every=0.2)
        async with stack.container.sessions() as session:
            made = await session.scalar(
                select(func.count())
                .select_from(ExecutionRow)
                .where(ExecutionRow.flow_id == flow_id, ExecutionRow.shadow_of.is_(None))
            )
        assert made == len(ids)  # no create made a second execution
        api = stack.api
        for _, answer in created:
            row = await api.get(answer["id"])
            assert (row["status"], row["attempt"]) == ("completed", 1), row
            assert row["track"] == answer["track"]  # decided once, at creation
            events = await api.events(row["id"])
            assert_contiguous(events)
            (made_event,) = [e for e in events if e["type"] == "execution.created"]
            (started,) = [e for e in events if e["type"] == "execution.started"]
            assert made_event["data"]["track"] == started["data"]["track"] == row["track"]
            # ...and run by the worker of that track, the only one that could take it.
            assert workers[started["data"]["worker_id"]] == row["track"], started
        assert await stack.container.counters.get("before") == len(ids)
        assert await stack.container.counters.get("after") == len(ids)


async def _two_tracks(found: Awaitable[dict[str, str]]) -> dict[str, str] | None:
    workers = await found
    return workers if sorted(workers.values()) == ["dbos", "kafka"] else None


class FailsOnDbos(NodeType):
    """Test-only plugin: fails when its execution runs on the DBOS track, passes on Kafka."""

    type_name = "fails_on_dbos"
    config_model = NodeConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": False}
    outputs = ("value",)

    def __init__(self, container: Container) -> None:
        self.container = container

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        record = await self.container.executions.get(ctx.execution_id)
        if record.track is Track.DBOS:
            raise NodeError("injected failure: this node fails on the DBOS track")
        return {"value": inputs.get("value")}


def owners_on_each_side(percent: int) -> tuple[str, str]:
    """An owner in the DBOS cohort at `percent`, and one outside it."""
    inside = next(f"dbos-{i}" for i in range(1000) if owner_bucket(f"dbos-{i}") < percent)
    outside = next(f"kafka-{i}" for i in range(1000) if owner_bucket(f"kafka-{i}") >= percent)
    return inside, outside


def verdicts(verdict: str) -> float:
    value = REGISTRY.get_sample_value(
        "twintrack_rollout_guard_verdicts_total", {"track": "dbos", "verdict": verdict}
    )
    return value or 0.0


async def test_the_guard_rolls_a_failing_dbos_cohort_back_and_leaves_kafka_alone(
    base_env: dict[str, str], logs: Path
) -> None:
    window_s = 20.0
    env = {
        **base_env,
        "DBOS_ROLLOUT_PERCENT": "50",
        "GUARD_ENABLED": "true",
        "GUARD_INTERVAL_S": "0.3",
        "GUARD_WINDOW_S": str(window_s),
        "GUARD_INITIAL_DELAY_S": "1",
        "GUARD_MIN_SAMPLES": "5",
        "GUARD_FAILURES_TO_ROLLBACK": "2",
        "CLAIM_TTL_S": "15",  # no recovery re-run on a loaded machine: attempts stay 1
    }
    async with open_stack(env, logs) as stack:
        stack.container.registry.register(FailsOnDbos(stack.container))  # the test's plugin
        await stack.add_worker()  # serves both tracks, and stands for the guard
        inside, outside = owners_on_each_side(50)
        flow = flows.flow(
            "fails-on-dbos",
            [
                ("x", "const", {"value": 1}),
                ("f", "fails_on_dbos", {}),
                ("o", "output", {"name": "v"}),
            ],
            [("x.value", "f.value"), ("f.value", "o.value")],
        )
        fails_before = verdicts("fail")
        apis = {}
        for owner in (inside, outside):
            key = (await stack.container.keys.create(owner)).key
            apis[owner] = type(stack.api)(stack.api.client, key)
        flow_ids = {o: await apis[o].create_flow(flow) for o in apis}

        async def run(owner: str) -> dict[str, Any]:
            row = await apis[owner].create(flow_ids[owner])
            await apis[owner].command(row["id"], "start")
            return await apis[owner].wait_status(row["id"], {"completed", "failed"}, 30)

        started = time.monotonic()
        rows = await asyncio.gather(*(run(o) for o in (inside, outside) for _ in range(6)))
        on_dbos = [r for r in rows if r["track"] == "dbos"]
        assert {r["track"] for r in rows} == {"dbos", "kafka"}
        for row in rows:
            expected = ("dbos", "failed") if row["track"] == "dbos" else ("kafka", "completed")
            assert (row["track"], row["status"]) == expected, row
        assert len(on_dbos) == 6

        async def rolled_back() -> bool:
            state = await stack.container.rollout_store.load()
            return state is not None and state.switches.rollout_percent == 0

        await eventually(rolled_back, timeout=window_s)
        assert time.monotonic() - started < window_s  # within its window
        (latest, *_) = await stack.container.rollout_store.history(5)
        assert latest.changed_by == GUARD
        assert "error rate" in latest.reason
        recorded = await stack.container.guard_store.recent(10)
        assert recorded[0].rolled_back
        assert recorded[0].figures["dbos"]["failed"] == 6
        assert recorded[0].figures["kafka"]["failed"] == 0
        assert verdicts("fail") - fails_before >= 2

        # New admissions of the DBOS cohort now go to Kafka, and run there.
        await eventually(lambda: _true(stack.container.service.route(inside) is Track.KAFKA))
        after = await run(inside)
        assert (after["track"], after["status"]) == ("kafka", "completed")
        # The Kafka cohort's executions were untouched: one attempt each, never rerouted.
        for row in rows:
            if row["track"] == "kafka":
                again = await apis[outside].get(row["id"])
                assert (again["status"], again["attempt"], again["track"]) == (
                    "completed",
                    1,
                    "kafka",
                )

        code, out = await run_cli(stack, "guard", "status", "--json")
        assert code == 0, out
        shown = json.loads(out)
        assert shown["verdicts"][0]["verdict"] == "fail"
        assert shown["verdicts"][0]["rolled_back"] is True
