"""The console's Rollout page in a real Chromium against the real stack: an operator reads the
live rollout, the guard's verdicts and the scorecard, and changes the percent with a reason;
any other key is refused.

Waits are Playwright's `expect` (polling the page up to a timeout), never sleeps.
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.e2e import flows
from tests.e2e.console.conftest import Shots, sign_in
from tests.e2e.stack import Stack
from twintrack.core.guard import CohortFigures, GuardVerdict, Verdict
from twintrack.core.shadow import Mismatch
from twintrack.domain.execution import Track


async def test_an_admin_reads_the_rollout_and_sets_the_percent(
    kafka_stack: Stack, page: Page, shots: Shots
) -> None:
    stack, api = kafka_stack, kafka_stack.api
    live = stack.container.rollout
    assert live is not None
    flow_id = await api.create_flow(flows.three_nodes())
    execution_id = (await api.create(flow_id))["id"]
    assert await api.command(execution_id, "start") == 202
    await api.wait_status(execution_id, "completed")
    before = live.version
    # A verdict as the guard records it, so the page has one to show with its figures.
    figures = {
        "dbos": CohortFigures(Track.DBOS, finished=4, failed=2, p99_s=0.8, stuck=0).to_json(),
        "kafka": CohortFigures(Track.KAFKA, finished=40, failed=0, p99_s=0.4, stuck=0).to_json(),
        "shadow": {"compared": 2, "mismatched": 1, "mismatch_rate": 0.5},
        "rollout_version": before,
    }
    await stack.container.guard_store.record(
        GuardVerdict(Verdict.FAIL, "DBOS error rate 50.0% > 5.0%", 3, True, figures)
    )
    # A ledger entry as the shadow sweep records one, so the page has a diff to show.
    diff = "--- kafka\n+++ dbos\n-node_completed a\n+node_failed a"
    mismatch = Mismatch(
        execution_id,
        "shadow-of-it",
        flow_id,
        1,
        Track.KAFKA,
        Track.DBOS,
        diff,
        ["node_completed a"],
        ["node_failed a"],
    )
    await stack.container.shadow_store.finish(
        execution_id, "mismatched", {}, mismatch, ledger_size=100
    )
    admin_key = (await stack.container.keys.create("ops", admin=True)).key
    await sign_in(page, stack, admin_key)
    await page.get_by_role("link", name="Rollout").click()
    await page.wait_for_url("**/ui/rollout")

    await expect(page.get_by_test_id("rollout-version")).to_have_text(f"v{before}")
    await expect(page.get_by_test_id("phase-kafka")).to_have_text(re.compile("^active"))
    history = page.get_by_test_id("rollout-history")
    await expect(history).to_contain_text("initial state from the environment")
    verdicts = page.get_by_test_id("guard-verdicts")
    await expect(verdicts).to_contain_text("DBOS error rate 50.0% > 5.0%")
    await expect(verdicts.get_by_test_id("rolled-back")).to_be_visible()
    await expect(verdicts).to_contain_text("4 / 2 / 0, 50.0 %")
    kafka_all = page.get_by_test_id("score-kafka-all").locator("td")
    await expect(kafka_all.nth(2)).to_have_text("1")  # executions
    await page.get_by_role("link", name="6h").click()
    await page.wait_for_url("**/ui/rollout?window=6h")
    await expect(kafka_all.nth(2)).to_have_text("1")
    ledger = page.get_by_test_id("mismatches")
    await expect(ledger).to_contain_text(execution_id)
    await expect(ledger.locator("pre.diff")).to_contain_text("+node_failed a")

    await page.fill("input[name=rollout_percent]", "25")
    await page.fill("input[name=reason]", "canary: a quarter of the owners")
    await page.get_by_test_id("rollout-apply").click()
    await expect(page.get_by_test_id("notice")).to_contain_text(f"now v{before + 1}")
    assert "window=6h" in page.url  # the scorecard window chosen stays
    await expect(page.get_by_test_id("rollout-percent")).to_have_text("25 %")
    newest = history.locator("tbody tr").first
    await expect(newest).to_contain_text(f"v{before + 1}")
    await expect(newest).to_contain_text("ops")
    await expect(newest).to_contain_text("canary: a quarter of the owners")
    # Applied to this process's routing at once, as PUT /v1/admin/rollout does.
    assert live.current().rollout_percent == 25
    await shots.take(page, "rollout")

    # The form was rendered at the old version: submitting it again is refused, not applied.
    csrf = await page.locator("input[name=csrf]").first.input_value()
    stale = await page.request.post(
        f"{stack.base_url}/ui/rollout",
        form={
            "csrf": csrf,
            "rollout_percent": "50",
            "reason": "x",
            "expected_version": str(before),
        },
    )
    assert stale.status == 409
    assert "not v" in await stale.text()
    no_reason = await page.request.post(
        f"{stack.base_url}/ui/rollout", form={"csrf": csrf, "shadow_percent": "10"}
    )
    assert no_reason.status == 422
    assert live.version == before + 1


async def test_another_key_is_refused(kafka_stack: Stack, page: Page) -> None:
    stack, live = kafka_stack, kafka_stack.container.rollout
    assert live is not None
    before = live.version
    await sign_in(page, stack, stack.api.key)
    await expect(page.get_by_role("link", name="Rollout")).to_have_count(0)
    response = await page.goto(f"{stack.base_url}/ui/rollout")
    assert response is not None
    assert response.status == 403
    await expect(page.get_by_role("alert")).to_contain_text("admin key")

    csrf = await page.locator("input[name=csrf]").first.input_value()
    refused = await page.request.post(
        f"{stack.base_url}/ui/rollout",
        form={"csrf": csrf, "rollout_percent": "100", "reason": "not mine to change"},
    )
    assert refused.status == 403
    assert live.version == before
