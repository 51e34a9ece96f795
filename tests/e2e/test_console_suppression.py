"""The suppression list page in a real headless Chromium (tests/support/browser.py): filter,
sort, page forward and back, remove two with the keyboard, download the CSV, import a file."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from tests.relay.web.test_suppression_page import suppress_by_bounces
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
NOW = T0 + timedelta(days=30)


def rows_text(cells: list[str]) -> list[str]:
    return [c.strip() for c in cells]


@pytest.mark.slow
async def test_filter_sort_page_remove_export_and_import_in_a_real_browser(
    db_dsn, make_config, tmp_path
):
    """alice narrows the list to the 55 imported addresses, sorts them by address, pages
    forward and back, ticks two boxes with Space and removes them (success styled as such),
    downloads the filtered CSV and imports a file with a bad line (its number shown). No
    Content-Security-Policy violation; screenshots at desktop and phone width."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        imported = [f"user{n:02}@example.org" for n in range(55)]
        await relay.store.import_suppressions([(a, "old list") for a in imported], "test", "seed")
        await suppress_by_bounces(relay.store, T0, ["gone@example.org", "left@example.net"])
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page(accept_downloads=True)
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            await page.click("nav >> text=Suppression list")
            assert "57 addresses" in await page.inner_text("main")

            # Filter: the imported ones; sorted by address from the form.
            await page.get_by_label("Address contains").fill("user")
            await page.get_by_label("Source").select_option("import")
            await page.get_by_label("Sort by").select_option("address")
            await page.get_by_label("Order").select_option("asc")
            async with page.expect_navigation():
                await page.click("form.filters button")
            main = await page.inner_text("main")
            assert "55 addresses" in main and "page 1 of 2" in main
            links = page.locator("table a[href^='/profile']")
            assert await links.first.inner_text() == "user00@example.org"
            await snap(page, "suppression", folder)

            # Forward to page 2 (five rows, no next), and back.
            async with page.expect_navigation():
                await page.click("text=next page")
            assert rows_text(await links.all_inner_texts()) == imported[50:]
            assert await page.locator("a[rel=next]").count() == 0
            async with page.expect_navigation():
                await page.click("text=previous page")
            assert await links.count() == 50 and await links.first.inner_text() == imported[0]

            # The address header turns the order round: Z to A.
            async with page.expect_navigation():
                await page.click("th >> text=address")
            assert await links.first.inner_text() == "user54@example.org"

            # Tick two rows with the keyboard, give a reason, confirm, remove.
            for address in ("user54@example.org", "user53@example.org"):
                await page.get_by_label(f"select {address}").focus()
                await page.keyboard.press("Space")
            await page.get_by_label("Reason").first.focus()
            await page.keyboard.type("mailboxes restored")
            await page.get_by_label("sure: the selected addresses").focus()
            await page.keyboard.press("Space")
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.textContent") == "Remove selected"
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            notice = page.locator("p.ok")
            assert await notice.inner_text() == "Removed 2 addresses."
            colour = await notice.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(233, 247, 236)"  # .ok from /admin.css
            assert "53 addresses" in await page.inner_text("main")
            assert await links.first.inner_text() == "user52@example.org"  # same filter, sort

            # The CSV of the filter.
            async with page.expect_download() as info:
                await page.click("text=Download these as CSV")
            download = await info.value
            got = Path(await download.path()).read_text(encoding="utf-8")
            rows = list(csv.reader(io.StringIO(got)))
            assert rows[0] == ["address", "reason", "source", "created_at"]
            assert [r[0] for r in rows[1:]] == imported[:53]

            # Import a file with a bad line.
            upload = tmp_path / "more.csv"
            upload.write_text("address\nnew1@example.org\nnot an address\nnew2@example.org,moved\n")
            await page.set_input_files("input[type=file]", str(upload))
            await page.fill("form[action='/suppression/import'] input[name=reason]", "merged")
            async with page.expect_navigation():
                await page.click("button:has-text('Import')")
            assert "2 added" in await page.locator("p.ok").inner_text()
            assert "1 line was not imported" in await page.locator("p.err").inner_text()
            assert await page.locator("td.n").all_inner_texts() == ["3"]
            await browser.close()
        reasons = await relay.store.suppression_reasons(
            [("new1@example.org", ""), ("new2@example.org", ""), ("user54@example.org", "")]
        )
    assert reasons == ["merged", "moved", None]
    assert not [m for m in console if "Content Security Policy" in m], console
    assert (folder / "suppression-phone.png").stat().st_size > 1000
