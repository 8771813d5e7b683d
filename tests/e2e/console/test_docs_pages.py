"""`/docs` and `/redoc` render in Chromium with every other host unreachable, as on an
air-gapped operator's machine: any request that leaves the API's origin is aborted and
recorded, and the test fails if there was one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.async_api import Page, Route, expect

from tests.e2e.stack import Stack


async def _cut_off(page: Page, stack: Stack) -> list[str]:
    """Abort every request to another origin; the list of them fills as the page loads."""
    ours = urlsplit(stack.base_url).netloc
    outside: list[str] = []

    async def only_ours(route: Route) -> None:
        if urlsplit(route.request.url).netloc == ours:
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort("internetdisconnected")

    await page.route("**/*", only_ours)
    return outside


async def test_swagger_ui_lists_the_operations_offline(kafka_stack: Stack, page: Page) -> None:
    outside = await _cut_off(page, kafka_stack)
    await page.goto(f"{kafka_stack.base_url}/docs")
    operations = page.locator(".opblock")
    await expect(operations.first).to_be_visible()
    await expect(
        page.locator(".opblock-summary-path", has_text="/v1/executions").first
    ).to_be_visible()
    assert await operations.count() >= 10
    await page.wait_for_load_state("networkidle")
    assert outside == []


async def test_redoc_renders_the_document_offline(kafka_stack: Stack, page: Page) -> None:
    outside = await _cut_off(page, kafka_stack)
    await page.goto(f"{kafka_stack.base_url}/redoc")
    await expect(page.locator("h1", has_text="twintrack")).to_be_visible()
    create = page.locator('[id="tag/executions/operation/create_execution"]')
    await expect(create).to_be_attached()
    await expect(page.get_by_role("menuitem", name="executions")).to_be_visible()
    await page.wait_for_load_state("networkidle")
    assert outside == []
