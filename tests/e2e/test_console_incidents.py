"""The login and incidents pages in a real headless Chromium (tests/support/browser.py)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from tests.support.browser import (
    add_accounts,
    admin_config,
    artifacts,
    launch,
    log_in,
    needs_chromium,
    snap,
)
from tests.support.report_seeds import T0

pytestmark = needs_chromium
NOW = T0 + timedelta(days=1)


async def _incident_with_a_suppression(relay: Relay, db_dsn: str) -> int:
    """An open incident whose reply suppressed gone@example.org."""
    hostile = "550 5.7.1 <img src=x onerror=alert(1)> blocked"
    conn = await asyncpg.connect(db_dsn)
    try:
        incident_id = int(
            await conn.fetchval(
                "INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope,"
                " source_ip, recipients, attempted) VALUES ($1, $1, $2, 'mx.example.org:25',"
                " 'mx', '127.0.0.2', 40, 40) RETURNING id",
                NOW - timedelta(hours=2),
                hostile,
            )
        )
        event_id, event_at = await conn.fetchrow(
            "INSERT INTO events (occurred_at, type, recipient, recipient_domain, code,"
            " reply_text, template, source_ip, destination, incident_id, category)"
            " VALUES ($1, 'hard_bounce', 'gone@example.org', 'example.org', 550, $2, $2,"
            " '127.0.0.2', 'mx.example.org:25', $3, 'spam_block_ip') RETURNING id, occurred_at",
            NOW - timedelta(hours=2),
            hostile,
            incident_id,
        )
    finally:
        await conn.close()
    await relay.store.add_suppression(
        "gone@example.org", "spam_block_ip: 550", "hard_bounce", event_id, event_at
    )
    return incident_id


@pytest.mark.slow
async def test_login_page_and_an_incident_released_from_the_keyboard(db_dsn, make_config, tmp_path):
    """The login page (screenshot before logging in); the incidents page lists the incident
    with its hostile reply as text; releasing it without a reason is refused by the form
    itself; with a reason and the box ticked (keyboard only: Tab, typing, Space, Enter) it
    is released, the notice is a success (class "ok"), and the suppression is lifted."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        incident_id = await _incident_with_a_suppression(relay, db_dsn)
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(url + "/login")
            await snap(page, "login", folder)
            await log_in(page, url)
            await page.goto(url + "/incidents")
            listing = await page.inner_text("table")
            assert "<img src=x onerror=alert(1)>" in listing and dialogs == []
            await snap(page, "incidents", folder)
            # The reason is required: the browser does not send the form without it.
            await page.focus("input[name=reason]")
            await page.keyboard.press("Enter")
            assert page.url.endswith("/incidents")
            assert await relay.store.suppression_reasons([("gone@example.org", "")]) != [None]
            await page.keyboard.type("provider fixed it")
            await page.keyboard.press("Tab")  # the "sure" box
            await page.keyboard.press("Space")
            assert await page.is_checked("input[name=confirm]")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            notice = page.locator("p.ok")
            assert f"Incident #{incident_id} released" in await notice.inner_text()
            assert await notice.get_attribute("role") == "status"
            await snap(page, "incidents-released", folder)
            await browser.close()
        assert await relay.store.suppression_reasons([("gone@example.org", "")]) == [None]
    assert (folder / "login-phone.png").stat().st_size > 1000
