"""The bounces report page over HTTP: filters, presets, table, sorting, totals, threshold,
chart, the events behind a row, downloads, refusals in the page's words."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from policies.providers import provider_of
from policies.templates import template_of
from relay.ops.app import Relay
from relay.reports.export import parse_filter, write_csv
from relay.store import IncomingMessage, OutcomeRecord, Recipient, ReportTotals, Store
from relay.web.pages.report import ROW_CAP
from relay.web.pages.report_rows import EVENTS_PER_PAGE
from tests.support.admin import base, logged_in
from tests.support.report_seeds import (
    MX,
    QUOTA_T,
    T0,
    seed_hostile_bounce,
    seed_standard,
)

# The relay's clock two days after the seeded bounces (2026-11-02 10:00 to 13:00 UTC).
NOW = T0 + timedelta(days=2)
SEEDED_DAY = "from=2026-11-02&to=2026-11-02"  # one whole day, the To date included


@pytest.fixture
async def relay(db_dsn, make_config, password_hash) -> AsyncIterator[Relay]:
    """The admin page with the shared password, delivery off, and the clock at ``NOW``."""
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\npassword_hash = "{password_hash}"\n'
        "[delivery]\nenabled = false\n",
        replace_base=True,
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW) as r:
        yield r


# --- reading the page back ------------------------------------------------------------------


@dataclass
class Cell:
    text: str = ""
    links: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


@dataclass
class Table:
    head: list[Cell] = field(default_factory=list)
    body: list[list[Cell]] = field(default_factory=list)
    foot: list[Cell] = field(default_factory=list)


class Page(HTMLParser):
    """What the tests read of a page: its tables, form values, chart titles and links."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[Table] = []
        self.values: dict[str, str] = {}
        self.options: dict[str, list[tuple[str, bool]]] = {}
        self.svg_titles: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.alerts: list[str] = []
        self._part = ""
        self._cell: Cell | None = None
        self._row: list[Cell] | None = None
        self._select = ""
        self._in_svg = False
        self._title: list[str] | None = None
        self._alert: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self._table_start(tag, a)
        self._form_start(tag, a)
        if tag == "svg":
            self._in_svg = True
        elif tag == "title" and self._in_svg:
            self._title = []
        elif tag == "p" and a.get("role") == "alert":
            self._alert = []
        elif tag == "a":
            self._link = (a["href"], [])
            if self._cell is not None:
                self._cell.links.append(a["href"])
        if self._cell is not None and "class" in a:
            self._cell.classes.append(a["class"])

    def _table_start(self, tag: str, a: dict[str, str]) -> None:
        if tag == "table":
            self.tables.append(Table())
        elif tag in ("thead", "tbody", "tfoot"):
            self._part = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = Cell()

    def _form_start(self, tag: str, a: dict[str, str]) -> None:
        if tag == "input" and "name" in a and a.get("type") != "hidden":
            self.values[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a["name"]
            self.options.setdefault(self._select, [])
        elif tag == "option":
            self.options[self._select].append((a.get("value", ""), "selected" in a))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if self._part == "thead":
                table.head = self._row
            elif self._part == "tfoot":
                table.foot = self._row
            else:
                table.body.append(self._row)
            self._row = None
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], "".join(self._link[1])))
            self._link = None
        elif tag == "svg":
            self._in_svg = False
        elif tag == "title" and self._title is not None:
            self.svg_titles.append("".join(self._title))
            self._title = None
        elif tag == "p" and self._alert is not None:
            self.alerts.append("".join(self._alert))
            self._alert = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data
        if self._title is not None:
            self._title.append(data)
        if self._alert is not None:
            self._alert.append(data)
        if self._link is not None:
            self._link[1].append(data)

    @property
    def report(self) -> Table:
        """The report's table (the chart's numbers are another)."""
        return next(t for t in self.tables if t.head and t.head[-1].text == "last_seen")

    def events_link(self, row: list[Cell]) -> str:
        """Where a report row's amount links: the events behind it."""
        [href] = row[self.index("amount")].links
        return href

    def index(self, name: str) -> int:
        """The report's column ``name``."""
        return next(i for i, c in enumerate(self.report.head) if c.text == name)

    def column(self, name: str) -> list[str]:
        i = self.index(name)
        return [row[i].text for row in self.report.body]

    def foot(self, name: str) -> str:
        return self.report.foot[self.index(name)].text

    def selected(self, name: str) -> list[str]:
        return [v for v, chosen in self.options.get(name, []) if chosen]

    def link_to(self, text: str) -> str:
        return next(href for href, words in self.links if words == text)


async def get(http: aiohttp.ClientSession, relay: Relay, path: str) -> tuple[int, str]:
    async with http.get(base(relay) + path) as r:
        return r.status, await r.text()


async def store_report(store: Store, **kw: Any) -> tuple[list[Any], ReportTotals | None]:
    flt = parse_filter(**kw)
    stream = store.iter_bounce_report(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
    )
    rows = [r async for r in stream]
    return rows, stream.totals


# --- seeds of these tests (tests/support/report_seeds.py is shared: left as it is) ----------


async def seed_many(
    store: Store,
    count: int,
    *,
    reply: str,
    code: int | None,
    enhanced: str | None,
    campaign: str = "C",
    from_domain: str = "bulk.example",
    prefix: str = "M",
    domain_each: bool = False,
) -> None:
    """``count`` messages to bulk.example, all bounced softly at once (one batch: one
    occurred_at, so the events behind their row are told apart by id alone); sent from
    ``from_domain``, or with ``domain_each`` from a domain each (a row each)."""
    await store.accept_messages(
        T0,
        [
            IncomingMessage(
                queue_id=f"{prefix}{i}",
                envelope_sender=f"bounces@{from_domain}",
                from_domain=f"s{i}.{from_domain}" if domain_each else from_domain,
                recipients=(Recipient(f"u{i}@bulk.example", f"u{i}@bulk.example", "bulk.example"),),
                body=b"Subject: x\r\n\r\nx\r\n",
                message_id=f"<{prefix}{i}@{from_domain}>",
                campaign=campaign,
                client_address="127.0.0.1",
                session_id="s",
                smtputf8=False,
            )
            for i in range(count)
        ],
    )
    claimed = await store.claim_due_deliveries("seed", T0, timedelta(minutes=5), count)
    assert len(claimed) == count
    await store.apply_outcomes(
        T0,
        [
            OutcomeRecord(
                delivery_id=d.id,
                lease_token=d.lease_token,
                state="queued",
                event="soft_bounce",
                next_attempt_at=T0 + timedelta(days=30),
                code=code,
                enhanced=enhanced,
                reply_text=reply,
                template=template_of(reply),
                category="other",
                source_ip="127.0.0.4",
                destination=MX,
                provider=provider_of(MX, d.recipient_domain),
            )
            for d in claimed
        ],
    )


# --- the report -------------------------------------------------------------------------------


async def test_report_page_download_and_xss_as_text(relay):
    """The report table shows the rows; the CSV download is the CLI's bytes; a hostile bounce
    text and campaign are rendered as text, in the table, the form and the chart's label."""
    await seed_standard(relay.store)
    xss = await seed_hostile_bounce(relay.store, "<b>camp</b>")
    http, _ = await logged_in(relay)
    async with http:
        query = "?from=2026-11-02T00:00&to=2026-11-03T00:00"
        status, page = await get(http, relay, "/report" + query + "&campaign=%3Cb%3Ecamp%3C/b%3E")
        assert status == 200
        async with http.get(base(relay) + "/report.csv" + query) as r:
            csv_bytes = await r.read()
    assert "<script>" not in page and "<b>camp</b>" not in page
    assert escape(xss) in page
    assert "&lt;b&gt;camp&lt;/b&gt;" in page
    assert 'aria-label="Attempts, bounces and bounce rate per hour' in page
    assert Page(page).selected("campaign") == ["<b>camp</b>"]
    status, page = await get_all(relay, "/report" + query)
    assert escape(QUOTA_T) in page
    flt = parse_filter(start="2026-11-02T00:00", end="2026-11-03T00:00")
    expected = io.StringIO(newline="")
    await write_csv(
        relay.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        ),
        flt,
        expected,
    )
    assert csv_bytes == expected.getvalue().encode()


async def get_all(relay: Relay, path: str) -> tuple[int, str]:
    """One page in a session of its own."""
    http, _ = await logged_in(relay)
    async with http:
        return await get(http, relay, path)


async def test_presets_are_relative_to_the_relays_clock(relay):
    """Last 24 hours, 7 and 30 days end with the relay's current hour (NOW, two days after
    the bounces): 24 hours hold none of them, 7 days all; 30 days is the default, shown
    as text (the current choice) while the others are links keeping the filters."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        _, day = await get(http, relay, "/report?period=24h&type=all")
        _, week = await get(http, relay, "/report?period=7d&type=all")
        _, default = await get(http, relay, "/report?type=all")
    assert "Showing 2026-11-03 11:00 to 2026-11-04 11:00 UTC" in day
    assert Page(day).column("from_domain") == []
    assert "Showing 2026-10-28 11:00 to 2026-11-04 11:00 UTC" in week
    assert set(Page(week).column("from_domain")) == {"news.example.com", "shop.example.com"}
    assert "Showing 2026-10-05 11:00 to 2026-11-04 11:00 UTC" in default
    assert '<strong aria-current="true">Last 30 days</strong>' in default
    week_link = Page(default).link_to("Last 7 days")
    assert parse_qs(urlsplit(week_link).query) == {
        "period": ["7d"],
        "type": ["all"],
        "group_by": ["from-domain"],
    }
    # under a preset the dates are empty: typing one makes the period custom
    assert Page(week).values["from"] == "" and Page(week).values["to"] == ""


async def test_custom_dates_are_whole_utc_days_with_the_to_date_included(relay):
    """From 2026-11-02 to 2026-11-02 is that whole day; the rows and the total are the
    store's for [11-02, 11-03); the next day alone holds nothing."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all")
        _, next_day = await get(http, relay, "/report?from=2026-11-03&to=2026-11-03&type=all")
    read = Page(page)
    assert read.values["from"] == "2026-11-02" and read.values["to"] == "2026-11-02"
    assert "Showing 2026-11-02 00:00 to 2026-11-03 00:00 UTC" in page
    rows, totals = await store_report(relay.store, start="2026-11-02", end="2026-11-03", kind="all")
    assert totals is not None and totals.amount == 6
    assert sorted(read.column("amount")) == sorted(str(r.amount) for r in rows)
    assert Page(next_day).column("amount") == []
    assert "No attempts or bounces in this period." in next_day


async def test_totals_row_is_the_stores_not_a_sum_of_the_rows(relay):
    """The total line holds the store's totals (each message once: the message resent three
    times with one text and once with another counts once)."""
    await seed_standard(relay.store)
    _, page = await get_all(relay, f"/report?{SEEDED_DAY}&type=all")
    _, totals = await store_report(relay.store, start="2026-11-02", end="2026-11-03", kind="all")
    assert totals is not None
    read = Page(page)
    assert read.foot("from_domain") == "total"
    assert read.foot("amount") == str(totals.amount)
    assert read.foot("messages") == str(totals.messages)
    assert read.foot("attempts") == str(totals.attempts)
    assert read.foot("delivered") == str(totals.delivered)
    assert read.foot("first_seen") == f"{totals.first_seen:%Y-%m-%d %H:%M:%S}"


async def test_several_campaigns_at_once_and_their_downloads(relay):
    """Campaigns A and B together show both senders, without C's; both stay selected; the
    CSV and Excel links carry both, and the CSV is the export's for them."""
    await seed_standard(relay.store)
    await seed_many(relay.store, 3, reply="550 5.7.1 blocked", code=550, enhanced="5.7.1")
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&campaign=A&campaign=B")
        read = Page(page)
        csv_link = read.link_to("CSV")
        async with http.get(base(relay) + csv_link) as r:
            assert r.status == 200
            csv_bytes = await r.read()
        async with http.get(base(relay) + read.link_to("Excel")) as r:
            assert r.status == 200
            assert (await r.read())[:2] == b"PK"
    assert set(read.column("from_domain")) == {"news.example.com", "shop.example.com"}
    assert read.selected("campaign") == ["A", "B"]
    assert {v for v, _ in read.options["campaign"]} == {"A", "B", "C"}
    assert parse_qs(urlsplit(csv_link).query)["campaign"] == ["A", "B"]
    flt = parse_filter(start="2026-11-02", end="2026-11-03", kind="all", campaigns=["A", "B"])
    expected = io.StringIO(newline="")
    await write_csv(
        relay.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, "from-domain", None
        ),
        flt,
        expected,
    )
    assert csv_bytes == expected.getvalue().encode()


async def test_grouped_by_provider(relay):
    """Group by provider: the first column is the provider; its download is grouped alike."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&group_by=provider")
        read = Page(page)
        async with http.get(base(relay) + read.link_to("CSV")) as r:
            header = (await r.text()).splitlines()[0]
    assert set(read.column("provider")) == {"google", "yahoo"}
    assert header.startswith("provider,bounce_text,")
    assert read.selected("group_by") == ["provider"]


async def test_sorting_by_a_column_keeps_the_filters(relay):
    """A header link sorts by its column (the sorted one flips the order) and keeps the
    other filters; texts sort from A, counts largest first unless asked."""
    await seed_standard(relay.store)
    await seed_many(relay.store, 3, reply="550 5.7.1 blocked", code=550, enhanced="5.7.1")
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&threshold=7")
        read = Page(page)
        amounts = [int(a) for a in read.column("amount")]
        assert amounts == sorted(amounts, reverse=True)  # the report's own order
        by_domain = read.report.head[read.index("from_domain")].links[0]
        query = parse_qs(urlsplit(by_domain).query)
        assert query["sort"] == ["from_domain"] and query["dir"] == ["asc"]
        assert query["threshold"] == ["7"] and query["from"] == ["2026-11-02"]
        _, page = await get(http, relay, by_domain)
        domains = Page(page).column("from_domain")
        assert domains == sorted(domains) and len(set(domains)) == 3
        assert "Sorted by from_domain, A to Z" in page
        flipped = Page(page).report.head[0].links[0]
        assert parse_qs(urlsplit(flipped).query)["dir"] == ["desc"]
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&sort=amount&dir=asc")
        amounts = [int(a) for a in Page(page).column("amount")]
        assert amounts == sorted(amounts)


async def test_threshold_marks_rows_above_it_in_words(relay):
    """A bounce rate above the threshold is marked (class "over") and says "above
    threshold"; the rate is a percentage; threshold 100 marks nothing."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        _, low = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&threshold=0")
        _, high = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&threshold=100")
    rows, _ = await store_report(relay.store, start="2026-11-02", end="2026-11-03", kind="all")
    rates = Page(low).column("bounce_rate")
    expected = [f"{100 * r.amount / r.attempts:.2f}% above threshold" for r in rows]
    assert sorted(rates) == sorted(expected)
    marked = [c for row in Page(low).report.body for c in row if "over" in c.classes]
    assert len(marked) == len(rows)
    assert Page(low).values["threshold"] == "0"
    assert "above threshold" not in "".join(Page(high).column("bounce_rate"))
    assert Page(high).values["threshold"] == "100"


async def test_chart_draws_attempts_bounces_and_rate_with_hover_titles(relay):
    """One day is charted per hour: a title per bar and dot with that hour's numbers, and
    the numbers as a table; seven days per day."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        _, hourly = await get(http, relay, f"/report?{SEEDED_DAY}&type=all")
        _, daily = await get(http, relay, "/report?period=7d&type=all")
    titles = Page(hourly).svg_titles
    assert titles[0].startswith("Attempts, bounces and bounce rate per hour, 2026-11-02 00:00")
    assert "2026-11-02 10:00 UTC: 3 attempts, 3 bounces, bounce rate 100.00%" in titles
    assert "<details><summary>Numbers behind the chart</summary>" in hourly
    assert Page(daily).svg_titles[0].startswith("Attempts, bounces and bounce rate per day")
    assert any(t.startswith("2026-11-02 UTC: ") for t in Page(daily).svg_titles)


async def test_rows_beyond_the_cap_are_left_out_and_said(relay):
    """More rows than ROW_CAP: the page shows the ROW_CAP largest and says more match; the
    total is still the whole filter's; the CSV holds every row."""
    await seed_standard(relay.store)
    await seed_many(
        relay.store,
        ROW_CAP,
        reply="550 5.7.1 blocked",
        code=550,
        enhanced="5.7.1",
        domain_each=True,
    )
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&sort=from_domain")
        async with http.get(base(relay) + Page(page).link_to("CSV")) as r:
            csv_lines = (await r.text()).splitlines()
    read = Page(page)
    domains = read.column("from_domain")
    assert len(domains) == ROW_CAP and domains == sorted(domains)
    assert "news.example.com" in domains  # 4 events: among the largest
    assert f"The {ROW_CAP} rows with the most bounce events" in page
    assert read.foot("amount") == str(6 + ROW_CAP)
    assert len(csv_lines) == 1 + ROW_CAP + 3


@pytest.mark.parametrize(
    ("period", "per"),
    [
        ("from=2020-01-01&to=2026-12-31", "7 days"),  # 2,557 days: 7 a bar, 366 bars
        ("from=0001-01-01&to=9999-12-30", "9131 days"),  # the whole calendar, 400 bars
    ],
)
async def test_long_periods_fold_days_into_at_most_400_bars(relay, period, per):
    """A period of years is charted with several days a bar, never more than 400 bars."""
    await seed_standard(relay.store)
    status, page = await get_all(relay, f"/report?{period}&type=all")
    assert status == 200
    titles = Page(page).svg_titles
    assert f"Attempts, bounces and bounce rate per {per}," in titles[0]
    slots = {t for t in titles[1:] if "attempts," in t and " to " in t}
    assert len(slots) <= 400
    assert any(": 9 attempts, 6 bounces" in t for t in slots)


# --- the events behind a row -----------------------------------------------------------------


async def test_every_rows_events_count_its_amount_and_link_to_profiles(relay):
    """Each row's "events" link lists exactly its amount of bounce events (codes unknown,
    code without an enhanced status, and both, included), each recipient linking to the
    profile page, which answers."""
    await seed_standard(relay.store)
    await seed_many(relay.store, 2, reply="Connection timed out", code=None, enhanced=None)
    await seed_many(relay.store, 3, reply="550 no such user", code=550, enhanced=None, prefix="N")
    await seed_many(
        relay.store, 1, reply="4.4.1 no answer", code=None, enhanced="4.4.1", prefix="O"
    )
    http, _ = await logged_in(relay)
    async with http:
        for group_by in ("from-domain", "ip", "provider"):
            _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all&group_by={group_by}")
            report = Page(page).report
            assert len(report.body) >= 5
            for row in report.body:
                amount = int(row[3].text)
                status, events = await get(http, relay, Page(page).events_link(row))
                assert status == 200
                shown = Page(events).tables[0]
                assert len(shown.body) == amount, (group_by, row[0].text, row[1].text)
                profile = shown.body[0][2].links[0]
                assert profile.startswith("/profile?address=")
        status, profile_page = await get(http, relay, profile)
    assert status == 200
    assert parse_qs(urlsplit(profile)[3])["address"][0] in profile_page


async def test_events_behind_a_row_come_a_page_at_a_time_newest_first(relay):
    """More events than a page: the first page holds EVENTS_PER_PAGE, "next" the rest
    (keyset on time and id: these share one time), none twice; the queue ids and
    Message-IDs are shown."""
    total = EVENTS_PER_PAGE + 5
    await seed_many(relay.store, total, reply="550 5.7.1 blocked", code=550, enhanced="5.7.1")
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all")
        [row] = Page(page).report.body
        assert row[3].text == str(total)
        _, first = await get(http, relay, Page(page).events_link(row))
        older = Page(first).link_to(f"Next {EVENTS_PER_PAGE} (older)")
        _, second = await get(http, relay, older)
    one, two = Page(first).tables[0].body, Page(second).tables[0].body
    assert len(one) == EVENTS_PER_PAGE and len(two) == 5
    queue_ids = [r[7].text for r in one + two]
    assert len(set(queue_ids)) == total
    assert "<M0@bulk.example>" in [r[8].text for r in one + two]
    assert not any(words.startswith("Next") for _, words in Page(second).links)
    assert "550 5.7.1 blocked" in Page(first).tables[0].body[0][4].text


async def test_events_page_escapes_and_refuses_what_names_no_row(relay):
    """A hostile reply is text on the events page; a link without a row's key, or with a
    bad page start, is a 400 in words, not a traceback."""
    xss = await seed_hostile_bounce(relay.store, "<b>camp</b>")
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, f"/report?{SEEDED_DAY}&type=all")
        [row] = Page(page).report.body
        _, events = await get(http, relay, Page(page).events_link(row))
        assert "<script>" not in events and "&lt;script&gt;" in events
        assert "&lt;b&gt;camp&lt;/b&gt;" in events
        for bad in (
            "/report/rows?group=x",
            "/report/rows?group=x&key=zz",
            Page(page).events_link(row) + "&before=yesterday&before_id=3",
            Page(page).events_link(row) + "&before=2026-11-02T10:00:00%2B00:00&before_id=-1",
            Page(page).events_link(row) + "&before=0001-01-01T00:00%2B01:00&before_id=3",
            Page(page).events_link(row) + "&before=2026-11-02T10:00:00&before_id=3",
            Page(page).events_link(row).replace("group=evil.example", "group=%00"),
        ):
            status, text = await get(http, relay, bad)
            assert status == 400, bad
            assert Page(text).alerts and "Traceback" not in text
    assert xss


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("from=2026-13-01&to=2026-11-02", "From date '2026-13-01' is not a date"),
        ("from=yesterday", "From date 'yesterday' is not an ISO date or datetime"),
        ("from=2026-11-03&to=2026-11-02", "To date 2026-11-02 is before From date 2026-11-03"),
        ("from=2026-11-02&to=2026-02-30", "To date '2026-02-30' is not a date"),
        ("from=2026-11-02T10:30&to=2026-11-03", "From date 2026-11-02 10:30:00Z: the report"),
        ("type=bogus", "Type 'bogus': use soft, hard or all"),
        ("group_by=domain", "Group by 'domain': use from-domain, ip or provider"),
        ("threshold=five", "Bounce rate threshold 'five'"),
        ("threshold=101", "Bounce rate threshold '101'"),
        ("period=1y", "Period '1y'"),
        ("sort=bogus", "Sort 'bogus': pick a column"),
        ("dir=up", "Order 'up': use asc or desc"),
        ("from=0001-01-01T00:00%2B01:00&to=2026-01-01", "outside the years 1 to 9999"),
        ("from=9999-12-30&to=9999-12-31", "To date 9999-12-31: pick a day before"),
        ("campaign=%00", "Campaigns: a NUL character is in no campaign's name"),
        ("to=%00", "To date '\\x00' is not an ISO date"),
    ],
)
async def test_refusals_keep_the_form_and_speak_the_pages_words(relay, query, words):
    """400 with the form again, what was typed kept, and a message naming the fields as the
    form labels them: never a CLI flag."""
    status, page = await get_all(relay, f"/report?{query}&campaign=%3Cb%3Ex%3C/b%3E&campaign=B")
    assert status == 400
    read = Page(page)
    [alert] = read.alerts
    assert words in alert, alert
    assert "--" not in alert
    assert read.selected("campaign")[-2:] == ["<b>x</b>", "B"]
    typed = parse_qs(query)
    for name in ("from", "to", "threshold"):
        if name in typed:
            assert read.values[name] == typed[name][0]


async def test_too_many_campaigns_are_refused(relay):
    many = "&".join(f"campaign=c{i}" for i in range(101))
    status, page = await get_all(relay, f"/report?{many}")
    assert status == 400 and "Campaigns: pick at most 100" in page
