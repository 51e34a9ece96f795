"""The guardrails page in a real headless Chromium (tests/support/browser.py): the list, a
paused send's evidence, its release with a reason and the confirmation."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from tests.relay.web.test_guardrails_page import HOSTILE, SPRING, seed
from tests.support.admin import NOW
from tests.support.browser import (
    add_accounts,
    admin_config,
    artifacts,
    launch,
    log_in,
    needs_chromium,
    snap,
)

pytestmark = needs_chromium


@pytest.mark.slow
async def test_a_paused_send_is_read_and_released_from_the_keyboard(db_dsn, make_config, tmp_path):
    """Open Guardrails from the navigation: spring, paused, is first; open it: its rates now,
    the findings of its trip, the sample replies (the hostile one as text, no script runs).
    Releasing without a reason is stopped by the form itself; with a reason and "sure"
    ticked (keyboard only) the list says it was released and shows it open; its page says
    who released it. Screenshots at desktop and phone width of each page."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        await seed(relay.store)
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            async with page.expect_navigation():
                await page.click("nav >> text=Guardrails")
            assert page.url == url + "/guardrails"
            first = page.locator("main tbody tr").first
            assert "spring" in await first.inner_text() and "paused" in await first.inner_text()
            await snap(page, "guardrails", folder)

            async with page.expect_navigation():
                await page.click("main tbody tr >> nth=0 >> a")
            assert "/guardrails/send?" in page.url
            main = await page.inner_text("main")
            assert "Guardrail: spring / news.example.com / google" in main
            assert "State: paused." in main and "100 attempts, 87 delivered" in main
            assert "When it tripped (2026-11-03 09:20)" in main
            assert "Sample replies" in main and HOSTILE in main  # as text
            assert dialogs == []
            await snap(page, "guardrail-paused", folder)

            # The reason is required: the browser does not send the form without it.
            await page.focus("input[name=reason]")
            await page.keyboard.press("Enter")
            assert "/guardrails/send?" in page.url
            await page.keyboard.type("list cleaned, bounced addresses removed")
            await page.keyboard.press("Tab")  # the "sure" box
            await page.keyboard.press("Space")
            assert await page.is_checked("input[name=confirm]")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            notice = page.locator("p.ok")
            assert await notice.inner_text() == (
                "spring / news.example.com / google released: its held deliveries are due now."
            )
            assert await notice.get_attribute("role") == "status"
            rows = await page.inner_text("main tbody")
            assert "paused" not in rows
            await snap(page, "guardrails-released", folder)

            async with page.expect_navigation():
                await page.click("main tbody a >> text=spring")
            main = await page.inner_text("main")
            assert "State: open." in main and "Released 2026-11-03 10:00 by alice." in main
            assert await page.locator("input[name=reason]").count() == 0
            await snap(page, "guardrail-released", folder)
            assert dialogs == [] and not [m for m in console if "Content Security" in m]
            await browser.close()
        row = await relay.store.guardrail(SPRING)
    assert row is not None and (row.state, row.released_by) == ("open", "alice")
    assert (folder / "guardrail-paused-phone.png").stat().st_size > 1000
