"""The admin page in a real headless Chromium (Debian's, driven by Playwright; no download).

.ci/run installs the `chromium` package; the screenshot of the report page goes to
$BOUNCE_RELAY_ARTIFACTS (CI sets it to .ci/out), else to the test's temporary folder.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web

from relay.ops.app import Relay
from tests.support.browser import (
    VIEWER_PASSWORD,
    add_accounts,
    admin_config,
    artifacts,
    launch,
    log_in,
    needs_chromium,
)
from tests.support.report_seeds import T0, seed_hostile_bounce, seed_standard

pytestmark = needs_chromium
# The relay's clock a day after the seeded bounces: the page's default 30-day window
# holds them whatever today's date is.
NOW = T0 + timedelta(days=1)


async def _seed(relay: Relay) -> str:
    await add_accounts(relay.store)
    await seed_standard(relay.store)
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    return await seed_hostile_bounce(relay.store, "A")


@pytest.mark.slow
async def test_suppression_removal_in_a_real_browser(db_dsn, make_config, tmp_path):
    """Remove an address from the suppression list through the page (its box ticked, a
    reason, the confirmation); the success notice says so. No Content-Security-Policy
    violation."""
    from playwright.async_api import async_playwright

    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await _seed(relay)
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            await page.goto(url + "/suppression")
            await page.check("input[aria-label='select gone@example.org']")
            await page.fill("input[name=reason]", "customer asked")
            await page.check("input[name=confirm]")
            await page.click("text=Remove selected")
            assert "Removed gone@example.org." in await page.inner_text("p.ok")
            await page.screenshot(path=str(folder / "suppression-removed.png"), full_page=True)
            await browser.close()
    assert not [m for m in console if "Content Security Policy" in m], console


@pytest.mark.slow
async def test_another_site_cannot_frame_the_admin_page(db_dsn, make_config):
    """Clickjacking: a page on another origin (another port of the same host, so even the
    SameSite=Strict session cookie goes along) puts /suppression, with its Remove buttons,
    in a frame. Chromium refuses to render it (frame-ancestors 'none', X-Frame-Options)."""
    from playwright.async_api import async_playwright

    async with Relay(admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        await add_accounts(relay.store)
        await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
        url = f"http://127.0.0.1:{relay.admin_port}"

        async def framing_page(request: web.Request) -> web.Response:
            return web.Response(
                text=f'<!doctype html><title>win a prize</title><iframe src="{url}/suppression" '
                'width="900" height="600"></iframe>',
                content_type="text/html",
            )

        evil = web.Application()
        evil.router.add_get("/", framing_page)
        runner = web.AppRunner(evil)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        evil_port = runner.addresses[0][1]
        try:
            async with async_playwright() as pw:
                browser = await launch(pw)
                page = await browser.new_page()
                await log_in(page, url)
                await page.goto(f"http://127.0.0.1:{evil_port}/")
                iframe = await page.wait_for_selector("iframe")
                frame = await iframe.content_frame()
                assert frame is not None
                await frame.wait_for_load_state()
                framed = await frame.content()
                await browser.close()
        finally:
            await runner.cleanup()
    assert "gone@example.org" not in framed and "Remove</button>" not in framed


@pytest.mark.slow
async def test_a_viewer_sees_the_pages_but_a_change_is_refused(db_dsn, make_config):
    """victor (viewer) logs in by name and reads the suppression list and the report; his
    click on Remove answers 403 with a page that says his account is a viewer, and the
    address stays suppressed."""
    from playwright.async_api import async_playwright

    async with Relay(admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        await add_accounts(relay.store)
        await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            await log_in(page, url, "victor", VIEWER_PASSWORD)
            assert "victor (viewer)" in await page.inner_text("nav")
            await page.goto(url + "/suppression")
            assert "gone@example.org" in await page.inner_text("table")
            await page.check("input[aria-label='select gone@example.org']")
            await page.fill("input[name=reason]", "customer asked")
            await page.check("input[name=confirm]")
            async with page.expect_response(lambda r: r.url.endswith("/remove")) as answer:
                await page.click("text=Remove selected")
            assert (await answer.value).status == 403
            refused = await page.inner_text("main")
            await page.goto(url + "/incidents")
            assert page.url.endswith("/incidents")  # still logged in, still reading
            await browser.close()
        assert await relay.store.suppression_reasons([("gone@example.org", "")]) != [None]
    assert "Read-only account" in refused
    assert "your account victor is a viewer" in refused
