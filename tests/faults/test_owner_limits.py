"""Per-owner limits end to end: real API over HTTP, real workers, in every mode.

One key must not exhaust the cluster: a children bomb stops at MAX_EXECUTIONS_PER_TREE, an
owner's starts past MAX_RUNNING_EXECUTIONS_PER_OWNER are refused (429) until a slot frees, and
the event stream past MAX_SSE_STREAMS_PER_KEY is refused (429) until one closes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.e2e import flows
from tests.e2e.stack import Api, assert_contiguous, eventually, open_stack

K = 2  # emits per bomb member
CAP = 8  # MAX_EXECUTIONS_PER_TREE in the bomb test
SLOW = 40.0  # seconds: a generous deadline for a busy 2-core CI machine


def bomb(k: int = K) -> dict[str, Any]:
    """The root emits `boom`; every `boom` child emits `boom` k times, refusals handled."""
    nodes: list[tuple[str, str, dict[str, Any]]] = [
        ("seed", "const", {"value": 0}),
        ("kick", "emit", {"event": "boom"}),
        ("kick_refused", "output", {"name": "refused_kick"}),
        ("on_boom", "listen", {"event": "boom"}),
    ]
    edges = [("seed.value", "kick.payload"), ("kick.error", "kick_refused.value")]
    for i in range(k):
        nodes += [(f"e{i}", "emit", {"event": "boom"}), (f"r{i}", "output", {"name": f"r{i}"})]
        edges += [("on_boom.payload", f"e{i}.payload"), (f"e{i}.error", f"r{i}.value")]
    return flows.flow("bomb", nodes, edges)


def spawns_two_sleepers() -> dict[str, Any]:
    """The root spawns two children that sleep; a refused spawn is handled by an output."""
    return flows.flow(
        "two sleepers",
        [
            ("a", "emit", {"event": "sleep"}),
            ("b", "emit", {"event": "sleep"}),
            ("a_refused", "output", {"name": "a_refused"}),
            ("b_refused", "output", {"name": "b_refused"}),
            ("hold", "delay", {"ms": 600_000}),
            ("on_sleep", "listen", {"event": "sleep"}),
            ("zz", "delay", {"ms": 600_000}),
        ],
        [
            ("a.error", "a_refused.value"),
            ("b.error", "b_refused.value"),
            ("on_sleep.payload", "zz.value"),
        ],
    )


async def _whole_tree(api: Api, root: str, page: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Every member through `/tree` pages of `page`, and the tree_status each page reported."""
    members: list[dict[str, Any]] = []
    statuses: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page, **({"cursor": cursor} if cursor else {})}
        r = await api.client.get(f"/v1/executions/{root}/tree", params=params, headers=api.auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["executions"]) <= page
        members += body["executions"]
        statuses.add(body["tree_status"])
        cursor = body["next_cursor"]
        if cursor is None:
            return members, statuses


async def test_a_children_bomb_stops_at_the_tree_cap(env: dict[str, str], logs: Path) -> None:
    """Each member emits its own event K times: the tree stops at exactly CAP members; every
    refused emit fails naming the limit, its error branch runs, and every member completes."""
    async with open_stack(env, logs, MAX_EXECUTIONS_PER_TREE=str(CAP)) as stack:
        await stack.add_worker()
        api = stack.api
        root = (await api.create(await api.create_flow(bomb())))["id"]
        assert await api.command(root, "start") == 202

        async def finished() -> dict[str, Any] | None:
            tree = await api.tree(root)
            return tree if tree["tree_status"] != "running" else None

        tree = await eventually(finished, timeout=SLOW)
        assert tree["size"] == CAP
        assert tree["tree_status"] == "completed"  # every refusal went down its error branch
        members, statuses = await _whole_tree(api, root, page=3)
        assert statuses == {"completed"}  # each page tells the whole tree's status
        assert len(members) == len({m["id"] for m in members}) == CAP
        assert [m["depth"] for m in members] == sorted(m["depth"] for m in members)
        refusals = [v for m in members for v in m["outputs"].values()]
        # The root emits once and each of the others K times; CAP - 1 of those emits fit.
        assert len(refusals) == 1 + (CAP - 1) * K - (CAP - 1)
        limit = f"MAX_EXECUTIONS_PER_TREE is {CAP}"
        assert all(limit in str(v) for v in refusals), refusals
        # The tree does not grow afterwards, and a refused member's stream is whole.
        assert (await api.tree(root))["size"] == CAP
        leaf = next(m for m in members if m["outputs"])
        events = await api.events(leaf["id"])
        assert_contiguous(events)
        failed = [e for e in events if e["type"] == "node.failed"]
        assert failed
        assert all(limit in e["data"]["error"] for e in failed)


async def test_starts_over_the_running_limit_are_429_until_a_slot_frees(
    env: dict[str, str], logs: Path
) -> None:
    """8 debug executions started at once, limit 3: exactly 3 run (paused, holding slots), 5
    are refused and stay `created`; another owner still starts; a stop frees a slot."""
    async with open_stack(env, logs, MAX_RUNNING_EXECUTIONS_PER_OWNER="3") as stack:
        await stack.add_worker()
        api = stack.api
        flow_id = await api.create_flow(flows.chain(2))
        ids = [(await api.create(flow_id, options={"debug": True}))["id"] for _ in range(8)]
        answers = await asyncio.gather(
            *(api.client.post(f"/v1/executions/{i}/start", headers=api.auth) for i in ids)
        )
        codes = [a.status_code for a in answers]
        assert sorted(codes) == [202] * 3 + [429] * 5, codes
        refused = next(a for a in answers if a.status_code == 429).json()
        assert refused["error"]["code"] == "limit_exceeded"
        assert refused["error"]["details"] == {
            "limit": "MAX_RUNNING_EXECUTIONS_PER_OWNER",
            "value": 3,
        }
        assert "MAX_RUNNING_EXECUTIONS_PER_OWNER is 3" in refused["error"]["message"]
        started = [i for i, a in zip(ids, answers, strict=True) if a.status_code == 202]
        waiting = [i for i, a in zip(ids, answers, strict=True) if a.status_code == 429]
        for ex in started:
            await api.wait_status(ex, "paused", timeout=SLOW)
        assert {(await api.get(ex))["status"] for ex in waiting} == {"created"}

        other = Api(api.client, (await stack.container.keys.create("team-b")).key)
        theirs = (await other.create(await other.create_flow(flows.three_nodes())))["id"]
        assert await other.command(theirs, "start") == 202
        await other.wait_status(theirs, "completed", timeout=SLOW)

        assert await api.command(started[0], "stop") == 202
        await api.wait_status(started[0], "stopped", timeout=SLOW)
        assert await api.command(waiting[0], "start") == 202
        await api.wait_status(waiting[0], "paused", timeout=SLOW)
        assert await api.command(waiting[1], "start") == 429
        for ex in [*started[1:], waiting[0]]:
            assert await api.command(ex, "resume") == 202
            await api.wait_status(ex, "completed", timeout=SLOW)


async def test_a_child_over_the_running_limit_is_ended_and_its_emit_fails(
    env: dict[str, str], logs: Path
) -> None:
    """Limit 2: the root and one child run; the other spawn is refused naming the limit (its
    error branch runs), and the refused child is ended `failed`, never left `created`."""
    async with open_stack(env, logs, MAX_RUNNING_EXECUTIONS_PER_OWNER="2") as stack:
        await stack.add_worker()
        api = stack.api
        root = (await api.create(await api.create_flow(spawns_two_sleepers())))["id"]
        assert await api.command(root, "start") == 202

        async def spawns_settled() -> list[dict[str, Any]] | None:
            members = (await api.tree(root))["executions"]
            kids = [m for m in members if m["depth"] == 1]
            settled = {m["status"] for m in kids} == {"running", "failed"}
            return members if len(kids) == 2 and settled else None

        members = await eventually(spawns_settled, timeout=SLOW)
        refused = next(m for m in members if m["status"] == "failed")
        assert "not started" in refused["error_message"]
        assert "MAX_RUNNING_EXECUTIONS_PER_OWNER is 2" in refused["error_message"]
        assert_contiguous(await api.events(refused["id"]))

        assert await api.command(root, "stop") == 202
        root_row = await api.wait_status(root, "stopped", timeout=SLOW)
        outputs = root_row["outputs"]
        assert len(outputs) == 1, outputs  # exactly one of a_refused / b_refused
        assert "MAX_RUNNING_EXECUTIONS_PER_OWNER is 2" in next(iter(outputs.values()))

        async def all_ended() -> bool:
            tree = await api.tree(root)
            return all(m["status"] in {"stopped", "failed"} for m in tree["executions"])

        await eventually(all_ended, timeout=SLOW)


async def _open_stream(client: httpx.AsyncClient, ex: str, key: str) -> httpx.Response:
    request = client.build_request(
        "GET", f"/v1/executions/{ex}/events", headers={"Authorization": f"Bearer {key}"}
    )
    return await client.send(request, stream=True)


async def test_streams_over_the_per_key_limit_are_429_until_one_closes(
    base_env: dict[str, str], logs: Path
) -> None:
    """Limit 2 per key on real HTTP streams: the third is refused naming the limit, another key
    is not affected, and a closed stream or one the server ended frees its slot."""
    async with open_stack(base_env, logs, MAX_SSE_STREAMS_PER_KEY="2") as stack:
        api = stack.api
        waiting = (await api.create(await api.create_flow(flows.three_nodes())))["id"]
        key = api.key
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
            first = await _open_stream(client, waiting, key)
            second = await _open_stream(client, waiting, key)
            assert (first.status_code, second.status_code) == (200, 200)
            third = await _open_stream(client, waiting, key)
            assert third.status_code == 429
            body = json.loads(await third.aread())
            assert body["error"]["code"] == "limit_exceeded"
            assert body["error"]["details"] == {"limit": "MAX_SSE_STREAMS_PER_KEY", "value": 2}
            assert "MAX_SSE_STREAMS_PER_KEY is 2" in body["error"]["message"]

            same_owner_key = (await stack.container.keys.create("team-a")).key
            others = await _open_stream(client, waiting, same_owner_key)
            assert others.status_code == 200  # per key, not per owner
            await others.aclose()

            await first.aclose()

            async def reopened() -> httpx.Response | None:
                again = await _open_stream(client, waiting, key)
                if again.status_code == 200:
                    return again
                await again.aclose()
                return None

            replacement = await eventually(reopened, timeout=10)
            await replacement.aclose()
            await second.aclose()

        # A stream the server ends (after the terminal event) frees its slot too.
        await stack.add_worker()
        done = (await api.create(await api.create_flow(flows.three_nodes())))["id"]
        await api.command(done, "start")
        await api.wait_status(done, "completed")

        async def whole_replays() -> bool:
            try:
                replays = await asyncio.gather(*(api.events(done) for _ in range(2)))
            except AssertionError:  # a slot the closed streams held is not free yet
                return False
            return all(r[-1]["type"] == "execution.completed" for r in replays)

        await eventually(whole_replays, timeout=10)
        for _ in range(3):  # sequential replays: each ended stream gave its slot back
            assert (await api.events(done))[-1]["type"] == "execution.completed"
