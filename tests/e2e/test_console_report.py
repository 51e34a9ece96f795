"""The bounces report page in a real headless Chromium (tests/support/browser.py)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import openpyxl
import pytest
from playwright.async_api import async_playwright

from relay.ops.app import Relay
from relay.store import Store
from tests.support.browser import (
    add_accounts,
    admin_config,
    artifacts,
    launch,
    log_in,
    needs_chromium,
    snap,
)
from tests.support.report_seeds import T0, Seeder, seed_hostile_bounce, seed_standard

pytestmark = needs_chromium
# The relay's clock a day after the seeded bounces: the presets (up to the end of its
# current hour) hold them whatever today's date is.
NOW = T0 + timedelta(days=1)
DAY = f"{T0:%Y-%m-%d}"
REPORT = "main > .scroll table"  # the rows (the chart's numbers are in a <details>)


async def seed_campaign_c(store: Store) -> None:
    """A third campaign, C, from bulk.example: a soft bounce that A and B leave out."""
    s = Seeder(store, prefix="C")
    await s.message("dan@bulk.example", "C", "bulk.example", T0)
    await s.bounce(T0 + timedelta(hours=1), "452 4.2.2 Mailbox full", "127.0.0.5")
    await s.finish(T0 + timedelta(hours=1))


async def query_of(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


@pytest.mark.slow
async def test_report_console_filters_sorts_drills_down_and_downloads(
    db_dsn, make_config, tmp_path
):
    """A preset, then a custom range with the date inputs and two campaigns; sort by a
    column; hover text on the chart; follow a row to its events and an event to the
    recipient's profile; the keyboard reaches the form and Enter submits it; the CSV of the
    two campaigns; the XSS payload stays text. Screenshots of the report and of the events
    at desktop and phone width. No Content-Security-Policy violation, and the stylesheet
    (/admin.css) applies."""
    folder = artifacts(tmp_path)
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as relay:
        await add_accounts(relay.store)
        await seed_standard(relay.store)
        await seed_campaign_c(relay.store)
        xss = await seed_hostile_bounce(relay.store, "A")  # last: it leaves its delivery due
        url = f"http://127.0.0.1:{relay.admin_port}"
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page(accept_downloads=True)
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await log_in(page, url)
            nav = await page.eval_on_selector("nav", "e => getComputedStyle(e).backgroundColor")
            assert nav == "rgb(31, 58, 95)"  # from /admin.css, allowed by the CSP

            # A preset: the last 7 days, up to the end of the relay's current hour.
            await page.click("text=Last 7 days")
            assert (await query_of(page))["period"] == ["7d"]
            assert await page.inner_text("strong[aria-current]") == "Last 7 days"
            assert "bulk.example" in await page.inner_text(REPORT)

            # A custom range (one whole day, the To date included) and two campaigns.
            await page.fill("input[name=from]", DAY)
            await page.fill("input[name=to]", DAY)
            await page.select_option("select[name=campaign]", ["A", "B"])
            await page.click("main form button")
            query = await query_of(page)
            assert query["from"] == [DAY] and query["to"] == [DAY]
            assert query["campaign"] == ["A", "B"]
            assert f"Showing {DAY} 00:00 to " in await page.inner_text("main")
            table = await page.inner_text(REPORT)
            assert "news.example.com" in table and "shop.example.com" in table
            assert "bulk.example" not in table  # campaign C filtered out
            assert xss in table  # shown as text ...
            assert dialogs == []  # ... never run
            # The chart: a title per bar and dot, shown on hover.
            hover = await page.locator("svg.chart .bars rect title").all_text_contents()
            assert any("bounces, bounce rate" in t for t in hover)
            await snap(page, "report", folder)

            # Sort by a column: its header is a link keeping the filters.
            await page.click(f"{REPORT} thead a:text-is('from_domain')")
            query = await query_of(page)
            assert query["sort"] == ["from_domain"] and query["campaign"] == ["A", "B"]
            domains = await page.locator(f"{REPORT} tbody tr td:first-child").all_inner_texts()
            assert domains == sorted(domains)

            # The CSV download of the two campaigns.
            async with page.expect_download() as info:
                await page.click("text=CSV")
            download = await info.value
            rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
            assert {r["from_domain"] for r in rows} == {
                "news.example.com",
                "shop.example.com",
                "evil.example",
            }
            # And the Excel workbook of the same filter: the same rows, a totals row.
            async with page.expect_download() as info:
                await page.click("text=Excel")
            xlsx = await info.value
            assert xlsx.suggested_filename.endswith(".xlsx")
            # The download is saved without its extension, which openpyxl insists on.
            saved = tmp_path / xlsx.suggested_filename
            await xlsx.save_as(saved)
            workbook = openpyxl.load_workbook(saved, read_only=True)
            sheet = list(workbook.worksheets[0].iter_rows(values_only=True))
            assert sheet[0][0] == "from_domain"
            assert {r[0] for r in sheet[1:-1]} == {r["from_domain"] for r in rows}
            assert sheet[-1][0] == "total"

            # The keyboard: Tab reaches the form, Enter in a field submits it.
            await page.focus("body")
            for _ in range(60):
                await page.keyboard.press("Tab")
                name = await page.evaluate("() => document.activeElement.name || ''")
                if name == "threshold":
                    break
            assert name == "threshold"
            await page.keyboard.press("Control+A")
            await page.keyboard.type("7")
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            query = await query_of(page)
            assert query["threshold"] == ["7"] and query["campaign"] == ["A", "B"]

            # A row's events: the news.example.com quota row holds 4 bounce events.
            row = page.locator(f"{REPORT} tbody tr", has_text="over quota").first
            amount = int(await row.locator("td").nth(3).inner_text())
            await row.locator("td").nth(3).locator("a").click()
            assert urlsplit(page.url).path == "/report/rows"
            assert await page.locator("tbody tr").count() == amount == 4
            assert "ann@gmail.com" in await page.inner_text(REPORT)
            await snap(page, "report-rows", folder)

            # A recipient's profile.
            await page.click("tbody a:text-is('ann@gmail.com')")
            assert urlsplit(page.url).path == "/profile"
            assert "ann@gmail.com" in await page.inner_text("main")
            await browser.close()
    assert (folder / "report-desktop.png").stat().st_size > 1000
    assert (folder / "report-rows-phone.png").stat().st_size > 1000
    assert not [m for m in console if "Content Security Policy" in m], console
