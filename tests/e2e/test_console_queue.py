"""The queue page in a real headless Chromium (tests/support/browser.py): filter, select with
the keyboard, retry with the confirmation, purge, a delivery's history, its recipient's
profile."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from tests.relay.web.test_queue_page import HOSTILE_CAMPAIGN, NOW, seed
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
async def test_filter_select_retry_and_follow_a_delivery_to_its_profile(
    db_dsn, make_config, tmp_path
):
    """Filter the queue to the queued gmail.com deliveries, tick both with Space, retry them
    with a reason and the confirmation (keyboard only), see the success notice with the
    filter kept; open one's history (the retry is in it) and follow its recipient to the
    profile page. Screenshots at desktop and phone width; no script runs, no CSP violation."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        s = await seed(relay.store)
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            await page.goto(url + "/queue")
            assert HOSTILE_CAMPAIGN in await page.inner_text("main")  # as text, not run
            await page.select_option("select[name=state]", "queued")
            await page.focus("input[name=recipient_domain]")
            await page.keyboard.type("gmail.com")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            assert "state=queued" in page.url and "recipient_domain=gmail.com" in page.url
            rows = await page.inner_text("form[aria-label='retry or purge deliveries'] tbody")
            assert "ann@gmail.com" in rows and "fay@gmail.com" in rows
            assert "cid@gmail.com" not in rows  # delivered
            assert "bob@yahoo.com" not in rows  # another domain
            for delivery_id in (s.deferred_ann, s.deferred_fay):
                await page.focus(f"input[aria-label='select delivery {delivery_id}']")
                await page.keyboard.press("Space")
            await page.focus("input[name=reason]")
            await page.keyboard.type("gmail answers again")
            await page.keyboard.press("Tab")  # to "I am sure"
            await page.keyboard.press("Space")
            await page.keyboard.press("Tab")  # to "Retry now"
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            notice = await page.inner_text("[role=status]")
            assert notice == "Retried 2 deliveries (due now)."
            assert "recipient_domain=gmail.com" in page.url
            await snap(page, "queue", folder)
            # Purge one with the mouse: tick it, a reason, the confirmation, Purge.
            await page.check(f"input[aria-label='select delivery {s.deferred_fay}']")
            await page.fill("input[name=reason]", "customer left")
            await page.check("input[name=confirm]")
            async with page.expect_navigation():
                await page.click("button[value=purge]")
            assert await page.inner_text("[role=status]") == "Purged 1 delivery (cancelled)."
            async with page.expect_navigation():
                await page.click(f"a[href='/queue/delivery?id={s.deferred_ann}']")
            history = await page.inner_text("main")
            assert f"Delivery {s.deferred_ann}" in history
            assert "soft_bounce" in history and "Mailbox FULL" in history
            assert "queue.retry" in history and "gmail answers again" in history
            await snap(page, "queue-delivery", folder)
            async with page.expect_navigation():
                await page.click("a:text('ann@gmail.com')")
            assert "/profile?address=ann%40gmail.com" in page.url
            assert "ann@gmail.com" in await page.inner_text("main")
            await browser.close()
        fay = await relay.store.delivery_by_id(s.deferred_fay)
        assert fay is not None and fay.state == "cancelled"
    assert dialogs == []
    assert not [m for m in console if "Content Security Policy" in m], console
    assert (folder / "queue-phone.png").stat().st_size > 1000
    assert (folder / "queue-delivery-desktop.png").stat().st_size > 1000
