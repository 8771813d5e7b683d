"""Browser fixtures: Debian's Chromium driven by Playwright (never Playwright's own browser
download, which cannot work here), over the real stack of tests/e2e.

`scripts/bootstrap.sh` installs `chromium` when it is missing; without it these tests skip,
saying so, except under `CI=true`, where they fail: CI must not go green having opened no page.
`CONSOLE_SCREENSHOTS=DIR` saves each page's screenshot there (the README's images come from
`CONSOLE_SCREENSHOTS=docs/console .venv/bin/pytest tests/e2e/console`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.stack import Stack

EXPECT_TIMEOUT_MS = 15_000
expect.set_options(timeout=EXPECT_TIMEOUT_MS)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def required_chromium() -> str:
    """The browser's path; without one, skip (a laptop) or fail (`CI=true`)."""
    binary = chromium_binary()
    if binary is not None:
        return binary
    missing = "no chromium on PATH (scripts/bootstrap.sh installs Debian's)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{missing}, and CI=true: the browser tests must run in CI")
    pytest.skip(missing)


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    binary = required_chromium()
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    opened = await context.new_page()
    try:
        yield opened
    finally:
        await context.close()


class Shots:
    """Where screenshots go: CONSOLE_SCREENSHOTS, else nowhere."""

    def __init__(self) -> None:
        folder = os.environ.get("CONSOLE_SCREENSHOTS")
        self.folder = Path(folder) if folder else None

    async def take(self, page: Page, name: str) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


@pytest.fixture
def shots() -> Shots:
    return Shots()


async def sign_in(page: Page, stack: Stack, key: str) -> None:
    await page.goto(f"{stack.base_url}/ui/executions")
    await page.fill("input[name=key]", key)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/executions")
