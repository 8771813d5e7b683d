"""The operator console in a real Chromium against the real stack (API + worker on real
PostgreSQL and broker): what an operator does with it, page by page.

Waits are Playwright's `expect` (polling the page up to a timeout), never sleeps.
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect
from sqlalchemy import text

from tests.e2e import flows
from tests.e2e.console.conftest import Shots, sign_in
from tests.e2e.stack import Stack


async def test_sign_in_and_list_filters(kafka_stack: Stack, page: Page, shots: Shots) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    done = await api.create(flow_id)
    assert await api.command(done["id"], "start") == 202
    await api.wait_status(done["id"], "completed")
    waiting = await api.create(flow_id)  # never started: stays `created`

    await page.goto(f"{stack.base_url}/ui/executions")
    await expect(page).to_have_url(re.compile(r"/ui/login"))
    await page.fill("input[name=key]", "tt_not-a-key")
    await page.click("button[type=submit]")
    await expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")

    await sign_in(page, stack, api.key)
    await expect(page.get_by_test_id("owner")).to_have_text("team-a")
    table = page.get_by_test_id("executions")
    await expect(table.locator("tbody tr")).to_have_count(2)
    await shots.take(page, "executions")

    await page.select_option("select[name=status]", "created")
    await page.click("form.filters button[type=submit]")
    await expect(table.locator("tbody tr")).to_have_count(1)
    await expect(table.locator(f'tr[data-id="{waiting["id"]}"]')).to_be_visible()

    await page.select_option("select[name=status]", "")
    await page.select_option("select[name=track]", "dbos")
    await page.click("form.filters button[type=submit]")
    await expect(table).to_contain_text("No executions match")
    await page.select_option("select[name=track]", "")

    # Children of a parent, the members of a tree (children made directly: any flow will do).
    root = await stack.container.service.get("team-a", waiting["id"])
    kids = [
        await stack.container.executions.create(
            owner_id="team-a",
            flow_id=flow_id,
            flow_version=1,
            track=root.track,
            events_backend=root.events_backend,
            parent_id=parent_id,
        )
        for parent_id in (root.id, root.id)
    ]
    grandchild = await stack.container.executions.create(
        owner_id="team-a",
        flow_id=flow_id,
        flow_version=1,
        track=root.track,
        events_backend=root.events_backend,
        parent_id=kids[0].id,
    )
    await page.fill("input[name=parent_id]", root.id)
    await page.click("form.filters button[type=submit]")
    await expect(table.locator("tbody tr")).to_have_count(2)
    for kid in kids:
        await expect(table.locator(f'tr[data-id="{kid.id}"]')).to_be_visible()
    await page.fill("input[name=parent_id]", "")
    await page.fill("input[name=root_id]", root.id)
    await page.click("form.filters button[type=submit]")
    await expect(table.locator("tbody tr")).to_have_count(4)
    await expect(table.locator(f'tr[data-id="{grandchild.id}"]')).to_be_visible()
    await shots.take(page, "executions-tree-filter")

    # A time range (UTC, to the second): `done` moved an hour back, so the second of the
    # grandchild's creation divides them whatever the clock did meanwhile.
    async with stack.container.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE executions SET created_at = created_at - interval '1 hour' WHERE id = :id"
            ),
            {"id": done["id"]},
        )
    await page.fill("input[name=root_id]", "")
    since = grandchild.created_at.strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("input[name=created_after]", since)
    await page.click("form.filters button[type=submit]")
    await expect(table.locator(f'tr[data-id="{grandchild.id}"]')).to_be_visible()
    await expect(table.locator(f'tr[data-id="{done["id"]}"]')).to_have_count(0)
    await page.fill("input[name=created_after]", "")
    await page.fill("input[name=created_before]", since)
    await page.click("form.filters button[type=submit]")
    await expect(table.locator(f'tr[data-id="{done["id"]}"]')).to_be_visible()
    await expect(table.locator(f'tr[data-id="{grandchild.id}"]')).to_have_count(0)

    cookie = next(c for c in await page.context.cookies() if c["name"] == "tt_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert api.key not in cookie["value"]


async def test_live_log_replays_then_follows_to_the_terminal_event(
    kafka_stack: Stack, page: Page, shots: Shots
) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.chain(4, ms=150))
    execution = await api.create(flow_id)
    await sign_in(page, stack, api.key)
    await page.goto(f"{stack.base_url}/ui/executions/{execution['id']}")
    log = page.get_by_test_id("event-log").locator("tbody tr")
    await expect(log).to_have_count(1)  # replay: execution.created, then it waits live

    assert await api.command(execution["id"], "start") == 202
    await expect(log.last).to_contain_text("execution.completed")
    await expect(page.get_by_test_id("log-state")).to_contain_text("ended")
    indices = [int(i) for i in await log.evaluate_all("rs => rs.map(r => r.dataset.index)")]
    assert indices == list(range(len(indices)))  # no gap, no duplicate
    await expect(page.get_by_test_id("status")).to_contain_text("completed")
    waterfall = page.get_by_test_id("waterfall")
    await expect(waterfall.locator('g[data-node="n3"].s-completed')).to_have_count(1)
    await expect(waterfall).to_contain_text("queue wait")
    await expect(page.get_by_test_id("tree-status")).to_contain_text("completed")
    await shots.take(page, "execution")

    await page.goto(f"{stack.base_url}/ui/flows/{flow_id}")
    dag = page.get_by_test_id("dag")
    await expect(dag.locator("g.node")).to_have_count(5)
    await expect(dag.locator('g[data-node="out"]')).to_have_attribute("data-status", "completed")
    await shots.take(page, "flow")


async def test_stop_button_and_bulk_stop(kafka_stack: Stack, page: Page) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.long_delay())
    first, second, third = [await api.create(flow_id) for _ in range(3)]
    for execution in (first, second, third):
        assert await api.command(execution["id"], "start") == 202
    await api.wait_status(first["id"], "running")
    await sign_in(page, stack, api.key)

    await page.goto(f"{stack.base_url}/ui/executions/{first['id']}")
    await expect(page.get_by_test_id("status")).to_contain_text("running")
    await page.get_by_test_id("cmd-stop").click()
    await expect(page.get_by_test_id("status")).to_contain_text("stopped")
    assert (await api.get(first["id"]))["status"] == "stopped"
    await expect(page.get_by_test_id("log-state")).to_contain_text("ended")

    await page.goto(f"{stack.base_url}/ui/executions")
    for execution in (second, third):
        await page.check(f'input[name=ids][value="{execution["id"]}"]')
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_test_id("bulk-stop").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("stopped 2")
    for execution in (second, third):
        await api.wait_status(execution["id"], "stopped")
        cell = page.locator(f"#st-{execution['id']}")
        await expect(cell).to_contain_text("stopped")


async def test_another_owners_execution_is_not_found(kafka_stack: Stack, page: Page) -> None:
    stack, api = kafka_stack, kafka_stack.api
    other_key = (await stack.container.keys.create("team-b")).key
    theirs = await type(api)(api.client, other_key).create_flow(flows.three_nodes())
    their_execution = await type(api)(api.client, other_key).create(theirs)

    await sign_in(page, stack, api.key)
    for path in (f"/ui/executions/{their_execution['id']}", f"/ui/flows/{theirs}"):
        response = await page.goto(f"{stack.base_url}{path}")
        assert response is not None
        assert response.status == 404
        await expect(page.get_by_role("alert")).to_have_text("Not found.")
    response = await page.goto(f"{stack.base_url}/ui/executions/{their_execution['id']}/events")
    assert response is not None
    assert response.status == 404
    await page.goto(f"{stack.base_url}/ui/executions")
    await expect(page.get_by_test_id("executions")).not_to_contain_text(their_execution["id"])


async def test_compare_shows_a_match(kafka_stack: Stack, page: Page, shots: Shots) -> None:
    stack, api = kafka_stack, kafka_stack.api
    await api.create_flow(flows.three_nodes())
    admin_key = (await stack.container.keys.create("team-a", admin=True)).key
    await sign_in(page, stack, admin_key)
    await page.goto(f"{stack.base_url}/ui/tracks")
    await expect(page.get_by_test_id("track-kafka")).to_be_visible()
    await expect(page.get_by_test_id("phase-kafka")).to_have_text("active")
    history = page.get_by_test_id("rollout-history")
    await expect(history).to_contain_text("initial state from the environment")
    await shots.take(page, "tracks")

    await page.goto(f"{stack.base_url}/ui/compare")
    await page.fill("input[name=runs]", "2")
    await page.get_by_test_id("compare-run").click()
    await expect(page.get_by_test_id("verdict")).to_contain_text("match", timeout=45_000)
    await expect(page.get_by_test_id("verdict")).not_to_contain_text("mismatch")
    await expect(page.get_by_test_id("stream-diff")).to_have_text("no difference")
    await shots.take(page, "compare")

    await page.goto(f"{stack.base_url}/ui/tracks")
    kafka = page.get_by_test_id("track-kafka")
    await expect(kafka).to_contain_text("drained")
    await expect(kafka.locator("tr", has_text="completed (")).to_contain_text("2")


async def test_compare_needs_an_admin_key_and_posts_need_the_csrf_token(
    kafka_stack: Stack, page: Page
) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    await sign_in(page, stack, api.key)
    await page.goto(f"{stack.base_url}/ui/compare")
    await page.get_by_test_id("compare-run").click()
    await expect(page.get_by_role("alert")).to_contain_text("admin key")

    forged = await page.request.post(
        f"{stack.base_url}/ui/compare", form={"flow_id": flow_id, "runs": "1"}
    )
    assert forged.status == 403
