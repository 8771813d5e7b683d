"""The executions list's cursor pages and the Tracks page's figures in Chromium, against
executions whose outcome and timing the test knows (also the sign-in and flows screenshots).

Waits are Playwright's `expect` (polling the page up to a timeout), never sleeps.
"""

from __future__ import annotations

import re

from playwright.async_api import Locator, Page, expect
from sqlalchemy import text

from tests.e2e import flows
from tests.e2e.console.conftest import Shots, sign_in
from tests.e2e.stack import Api, Stack

PAGE_SIZE = 25  # the list's page (console/routes/executions.py); a change fails this test


async def _ids_shown(page: Page) -> list[str]:
    rows = page.get_by_test_id("executions").locator("tbody tr[data-id]")
    ids: list[str] = await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")
    return ids


async def test_cursor_pages_cover_every_execution_once(
    kafka_stack: Stack, page: Page, shots: Shots
) -> None:
    stack, api = kafka_stack, kafka_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    created = [(await api.create(flow_id))["id"] for _ in range(PAGE_SIZE + 5)]

    await page.goto(f"{stack.base_url}/ui/login")
    await shots.take(page, "login")
    await sign_in(page, stack, api.key)
    table = page.get_by_test_id("executions").locator("tbody tr[data-id]")
    await expect(table).to_have_count(PAGE_SIZE)
    first = await _ids_shown(page)
    assert first == created[::-1][:PAGE_SIZE]  # newest first

    await page.get_by_test_id("next-page").click()
    await expect(page).to_have_url(re.compile(r"cursor="))
    await expect(table).to_have_count(5)
    second = await _ids_shown(page)
    assert not set(first) & set(second)
    assert first + second == created[::-1]  # none missing, in order across the page break
    await expect(page.get_by_test_id("next-page")).to_have_count(0)  # the last page
    await page.get_by_role("link", name="« newest").click()
    await expect(table).to_have_count(PAGE_SIZE)
    assert await _ids_shown(page) == first

    await page.get_by_role("link", name="Flows").click()
    await expect(page.get_by_test_id("flows")).to_contain_text(flow_id)
    await shots.take(page, "flows")


async def _finished(stack: Stack, api: Api, flow_id: str, status: str, ms: int) -> None:
    """An execution that finished a minute ago, `ms` after it was created."""
    execution_id = (await api.create(flow_id))["id"]  # never started: no worker touches it
    async with stack.container.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE executions SET status = :status,"
                " finished_at = now() - interval '1 minute',"
                " created_at = now() - interval '1 minute' - make_interval(secs => :ms / 1000.0)"
                " WHERE id = :id"
            ),
            {"status": status, "ms": ms, "id": execution_id},
        )


async def test_the_tracks_figures_match_known_executions(kafka_stack: Stack, page: Page) -> None:
    stack = kafka_stack
    api = type(stack.api)(stack.api.client, (await stack.container.keys.create("tracks")).key)
    flow_id = await api.create_flow(flows.three_nodes())
    for status, ms in (("completed", 100), ("completed", 200), ("completed", 400)):
        await _finished(stack, api, flow_id, status, ms)
    await _finished(stack, api, flow_id, "failed", 50)
    await api.create(flow_id)  # unfinished: the track is not drained

    await sign_in(page, stack, api.key)
    await page.goto(f"{stack.base_url}/ui/tracks?minutes=5")
    card = page.get_by_test_id("track-kafka")

    def figure(name: str) -> Locator:
        return card.locator("tr", has=page.locator("th", has_text=re.compile(f"^{name}$")))

    await expect(figure(re.escape("completed (5 min)")).locator("td")).to_have_text("3")
    await expect(figure(re.escape("failed (5 min)")).locator("td")).to_have_text("1")
    await expect(figure("throughput").locator("td")).to_have_text("0.0133 /s")  # 4 in 300 s
    await expect(figure("error rate").locator("td")).to_have_text("25.0 %")
    await expect(figure("p50 create→completed").locator("td")).to_have_text("200 ms")
    await expect(figure("p99 create→completed").locator("td")).to_have_text("396 ms")
    await expect(figure("created").locator("td")).to_have_text("1")
    await expect(card).not_to_contain_text("drained")
