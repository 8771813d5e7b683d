"""One execution's page in Chromium: the pause / step / resume buttons take effect (the row and
the live log say so), and the live log survives a dropped connection with no gap or duplicate.

Waits are Playwright's `expect` (polling the page up to a timeout), never sleeps.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.async_api import Page, expect

from tests.e2e import flows
from tests.e2e.console.conftest import sign_in
from tests.e2e.console.cutter import cutter
from tests.e2e.stack import Stack


async def _indices(page: Page) -> list[int]:
    rows = page.get_by_test_id("event-log").locator("tbody tr")
    return [int(i) for i in await rows.evaluate_all("rs => rs.map(r => r.dataset.index)")]


async def test_pause_step_and_resume_buttons(kafka_stack: Stack, page: Page) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.chain(4, ms=1500))  # 6 s of nodes, one at a time
    execution = await api.create(flow_id)
    assert await api.command(execution["id"], "start") == 202
    await api.wait_status(execution["id"], "running")
    await sign_in(page, stack, api.key)
    await page.goto(f"{stack.base_url}/ui/executions/{execution['id']}")
    status, log = page.get_by_test_id("status"), page.get_by_test_id("event-log")
    started = log.locator("tbody tr", has_text="node.started")
    await expect(status).to_contain_text("running")

    await page.get_by_test_id("cmd-pause").click()
    await expect(status).to_contain_text("paused")
    await expect(log.locator("tbody tr", has_text="execution.paused")).to_have_count(1)
    assert (await api.get(execution["id"]))["status"] == "paused"
    # Paused: the node running when it paused may finish, but no node starts until a step.
    before = await started.count()
    assert before < 5

    await page.get_by_test_id("cmd-step").click()
    await expect(started).to_have_count(before + 1)
    await expect(status).to_contain_text("paused")
    assert (await api.get(execution["id"]))["status"] == "paused"

    await page.get_by_test_id("cmd-resume").click()
    await expect(log.locator("tbody tr", has_text="execution.resumed")).to_have_count(1)
    await expect(log.locator("tbody tr").last).to_contain_text("execution.completed")
    await expect(status).to_contain_text("completed")
    assert await _indices(page) == list(range(len(await _indices(page))))


async def test_the_live_log_resumes_by_index_after_the_connection_drops(
    kafka_stack: Stack, page: Page
) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.chain(5, ms=800))
    execution = await api.create(flow_id)
    await sign_in(page, stack, api.key)  # the cookie is the host's, whatever the port
    streams: list[str] = []
    page.on(
        "request",
        lambda r: (
            streams.append(r.url) if r.url.endswith("/events") or "/events?" in r.url else None
        ),
    )
    async with cutter(urlsplit(stack.base_url).port or 80) as relay:
        await page.goto(f"http://127.0.0.1:{relay.port}/ui/executions/{execution['id']}")
        log = page.get_by_test_id("event-log").locator("tbody tr")
        await expect(page.get_by_test_id("log-state")).to_have_text("live")
        assert await api.command(execution["id"], "start") == 202
        await expect(log.filter(has_text="node.completed")).to_have_count(2)
        assert relay.cut() >= 1  # the event stream among them
        await expect(log.last).to_contain_text("execution.completed")
        await expect(page.get_by_test_id("log-state")).to_contain_text("ended")
    indices = await _indices(page)
    assert indices == list(range(len(indices)))  # no gap, no duplicate
    assert len(streams) >= 2, streams  # it did reconnect
