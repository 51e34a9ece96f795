"""The profile page in a real headless Chromium (tests/support/browser.py): an address never
seen, and a bounced one with its deliveries and their attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from tests.relay.web.test_profile_page import attempt, send
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
T0 = datetime(2021, 5, 6, 9, 30, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


@pytest.mark.slow
async def test_profile_of_an_unknown_and_of_a_bounced_address_in_a_real_browser(
    db_dsn, make_config, tmp_path
):
    """Typed with the keyboard: an address never seen says "nothing known"; a bounced one
    says hard bounced and lists its delivery, linked to the queue's history, with each
    attempt (when, result, code, reply, source IP); its suppression entry links here from the
    list. An address that is not one is refused with the form kept. No CSP violation."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        await send(relay.store, T0, "pat@example.org", "Q1")
        await attempt(relay.store, T0, "452 4.2.2 mailbox full", "127.0.0.2", final=False)
        delivery = await attempt(
            relay.store, T0 + timedelta(hours=2), "550 5.1.1 no such user", "127.0.0.3", final=True
        )
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            await page.click("nav >> text=Profile")

            async def look_up(address: str) -> None:
                await page.get_by_label("Address").fill("")
                await page.get_by_label("Address").focus()
                await page.keyboard.type(address)
                async with page.expect_navigation():
                    await page.keyboard.press("Enter")

            await look_up("nobody@example.org")
            assert "nobody@example.org: nothing known." in await page.inner_text("main")
            assert await page.locator("h2").count() == 0

            await look_up("not an address")
            assert "Address: " in await page.locator("p.err").inner_text()
            assert await page.get_by_label("Address").input_value() == "not an address"

            # From the suppression list's entry to its profile.
            await page.goto(url + "/suppression")
            async with page.expect_navigation():
                await page.click("table >> text=pat@example.org")
            main = await page.inner_text("main")
            assert "pat@example.org: hard bounced since" in main
            section = page.locator("section", has_text=f"Delivery #{delivery}")
            history = await section.locator("a").get_attribute("href")
            assert history == f"/queue/delivery?id={delivery}"
            cells = [
                [c.strip() for c in await row.locator("td").all_inner_texts()]
                for row in await section.locator("tbody tr").all()
            ]
            assert cells == [
                [f"{T0:%Y-%m-%d %H:%M}", "soft_bounce", "1", "452 4.2.2", "452 4.2.2 mailbox full",
                 "127.0.0.2", "mx.example.org:25"],
                [f"{T0 + timedelta(hours=2):%Y-%m-%d %H:%M}", "hard_bounce", "2", "550 5.1.1",
                 "550 5.1.1 no such user", "127.0.0.3", "mx.example.org:25"],
            ]  # fmt: skip
            await snap(page, "profile", folder)
            await browser.close()
    assert not [m for m in console if "Content Security Policy" in m], console
    assert (folder / "profile-phone.png").stat().st_size > 1000
