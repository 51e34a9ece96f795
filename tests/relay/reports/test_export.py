"""The bounces report over events written through the store's real write path."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openpyxl
import pytest

from policies.templates import wording_of
from relay.reports.export import (
    TOTAL_NOTE,
    ReportError,
    ReportFilter,
    parse_filter,
    render_table,
    write_csv,
    write_xlsx,
)
from relay.store import ReportRow, Store, create_store
from relay.store.reports import ReportStream
from tests.support.report_seeds import (
    QUOTA_T,
    T0,
    UNKNOWN_T,
    YAHOO_FULL,
    YAHOO_T,
    Seeder,
    seed_standard,
)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn)
    yield s
    await s.close()


async def rows(store: Store, **kw: Any) -> list[tuple[object, ...]]:
    flt = parse_filter(start=kw.pop("start", "2026-11-02"), end=kw.pop("end", "2026-11-03"), **kw)
    return [
        (r.group, r.bounce_text, r.amount, r.messages, r.recipient_domains, r.category)
        async for r in store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )
    ]


async def test_rows_by_from_domain_count_resends(store):
    """Soft bounces by From domain: resends count in amount, messages are distinct."""
    await seed_standard(store)
    assert await rows(store) == [
        ("news.example.com", QUOTA_T, 4, 2, 1, "mailbox_full"),
        ("shop.example.com", YAHOO_T, 1, 1, 1, "mailbox_full"),
    ]


async def test_rows_by_ip(store):
    """Grouped by the source IP actually used."""
    await seed_standard(store)
    assert await rows(store, group_by="ip") == [
        ("127.0.0.2", QUOTA_T, 4, 2, 1, "mailbox_full"),
        ("127.0.0.3", YAHOO_T, 1, 1, 1, "mailbox_full"),
    ]


async def test_type_and_campaign_filters(store):
    """--type hard shows the unknown user only; --campaign B only shop's row; all shows both."""
    await seed_standard(store)
    assert await rows(store, kind="hard") == [
        ("news.example.com", UNKNOWN_T, 1, 1, 1, "user_unknown")
    ]
    assert await rows(store, campaigns=["B"]) == [
        ("shop.example.com", YAHOO_T, 1, 1, 1, "mailbox_full")
    ]
    assert len(await rows(store, kind="all")) == 3
    assert await rows(store, campaigns=["nope"]) == []
    assert len(await rows(store, kind="all", top=1)) == 1


async def test_templates_merge_ids_and_keep_meanings_apart(store):
    """Four Gmail over-quota replies with different ids are one row; user unknown is another."""
    await seed_standard(store)
    texts = [r[1] for r in await rows(store, kind="all")]
    assert QUOTA_T != UNKNOWN_T
    assert texts.count(QUOTA_T) == 1
    assert texts.count(UNKNOWN_T) == 1


async def test_a_row_is_one_reply_with_its_codes_and_shows_a_wording_it_had(store):
    """Gmail's over-quota rewordings share a row (one help topic) that shows one of their
    own wordings, never a sentence none of them carried; the same words with another code
    are another row, and the code column says which."""
    s = Seeder(store, prefix="W")
    temp = "452 4.2.2 Mailbox gone over. https://support.google.com/mail/?p=OverQuotaTemp - gsmtp"
    perm = "552 5.2.2 Mailbox gone over. https://support.google.com/mail/?p=OverQuotaPerm - gsmtp"
    reworded = (
        "452 4.2.2 The recipient's inbox is out of storage space. "
        "https://support.google.com/mail/?p=OverQuotaTemp z1si1.1 - gsmtp"
    )
    for n, reply in enumerate((temp, reworded, perm)):
        await s.message(f"u{n}@gmail.com", "A", "news.example.com", T0)
        await s.bounce(T0, reply, "127.0.0.2")
        await s.finish(T0)
    flt = parse_filter(start="2026-11-02", end="2026-11-03")
    got = [
        (r.bounce_text, r.code, r.amount)
        async for r in store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )
    ]
    by_code = {code: (text, amount) for text, code, amount in got}
    assert set(by_code) == {"452 4.2.2", "552 5.2.2"}
    assert by_code["452 4.2.2"][1] == 2
    assert by_code["452 4.2.2"][0] in {wording_of(temp), wording_of(reworded)}
    assert by_code["552 5.2.2"] == (wording_of(perm), 1)


async def test_period_is_half_open_on_hours(store):
    """[10:00, 11:00) holds the 10:00 and 10:20 bounces; [11:00, 12:00) the 11:00 one."""
    await seed_standard(store)
    assert await rows(store, start="2026-11-02T10:00", end="2026-11-02T11:00") == [
        ("news.example.com", QUOTA_T, 2, 1, 1, "mailbox_full")
    ]
    assert await rows(store, start="2026-11-02T11:00", end="2026-11-02T12:00") == [
        ("news.example.com", QUOTA_T, 1, 1, 1, "mailbox_full")
    ]
    assert await rows(store, start="2026-11-02T09:00", end="2026-11-02T10:00") == []


async def test_period_across_days_reads_whole_days_and_edge_hours(store):
    """A period from 22:00 on day 1 to 01:00 on day 3 counts the edge hours exactly."""
    s = Seeder(store)
    day1_late = datetime(2026, 11, 1, 22, 30, tzinfo=UTC)
    day1_before = datetime(2026, 11, 1, 21, 59, tzinfo=UTC)
    day2 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    day3_early = datetime(2026, 11, 3, 0, 30, tzinfo=UTC)
    day3_late = datetime(2026, 11, 3, 1, 0, tzinfo=UTC)
    await s.message("a@yahoo.com", "A", "news.example.com", day1_before)
    for at in (day1_before, day1_late, day2, day3_early, day3_late):
        await s.bounce(at, YAHOO_FULL.format(rcpt="a@yahoo.com"), "127.0.0.2")
    counted = await rows(store, start="2026-11-01T22:00", end="2026-11-03T01:00")
    assert counted == [("news.example.com", YAHOO_T, 3, 0, 1, "mailbox_full")]
    everything = await rows(store, start="2026-11-01", end="2026-11-04")
    assert everything == [("news.example.com", YAHOO_T, 5, 1, 1, "mailbox_full")]


async def test_time_zone_shifts_the_period(store):
    """--tz Europe/Berlin: 2026-11-02 11:00 local is 10:00 UTC."""
    await seed_standard(store)
    berlin = await rows(store, start="2026-11-02T11:00", end="2026-11-02T12:00", tz="Europe/Berlin")
    assert berlin == [("news.example.com", QUOTA_T, 2, 1, 1, "mailbox_full")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "2026-11-03", "end": "2026-11-02"}, "is not before"),
        ({"start": "yesterday", "end": None}, "not an ISO date"),
        ({"start": None, "end": None, "group_by": "campaign"}, "use from-domain, ip or provider"),
        ({"start": None, "end": None, "kind": "bogus"}, "use soft, hard or all"),
        ({"start": None, "end": None, "tz": "Mars/Olympus"}, "not a known time zone"),
        ({"start": "2026-11-02T10:30", "end": None}, "whole hour"),
        ({"start": None, "end": None, "top": 0}, "positive"),
    ],
)
def test_bad_filters_say_what_is_wrong(kwargs, message):
    """Each bad filter raises ReportError naming the problem (a missing --to is counted
    from the test's clock, a day after the seeded bounces, not from today)."""
    with pytest.raises(ReportError, match=message):
        parse_filter(**kwargs, now=T0 + timedelta(days=1))


PAYLOADS = [
    '=HYPERLINK("http://evil.example","click")',
    "=cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "+1+2",
    "-2+3",
    "\t=1+1",
]


HEADER = [
    "from_domain",
    "bounce_text",
    "code",
    "amount",
    "attempts",
    "delivered",
    "bounce_rate",
    "messages",
    "recipient_domains",
    "category",
    "first_seen",
    "last_seen",
]


async def seed_hostile(store: Store) -> None:
    s = Seeder(store, prefix="H")
    for n, payload in enumerate(PAYLOADS):
        await s.message(f"u{n}@evil.example", payload, "=evil.example", T0)
        await s.bounce(T0, f"550 {payload}", "127.0.0.2", kind="hard")


async def _report(store: Store, **kw: Any) -> tuple[ReportStream[ReportRow], ReportFilter]:
    flt = parse_filter(start="2026-11-02", end="2026-11-03", **kw)
    it = store.iter_bounce_report(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
    )
    return it, flt


async def test_csv_parses_back_and_neutralises_formulas(store):
    """RFC 4180 with header, no total row; every formula payload starts with a quote."""
    await seed_standard(store)
    await seed_hostile(store)
    it, flt = await _report(store, kind="all", raw=True)
    out = io.StringIO(newline="")
    await write_csv(it, flt, out)
    assert "\r\n" in out.getvalue()
    parsed = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert parsed[0] == [*HEADER, "sample"]
    body = parsed[1:]
    assert len(body) == 3 + len(PAYLOADS)
    assert not any(row[0] == "total" for row in body)
    news = dict(zip(parsed[0], next(r for r in body if r[1] == QUOTA_T), strict=True))
    assert news == {
        **news,
        "from_domain": "news.example.com",
        "bounce_text": QUOTA_T,
        "code": "452 4.2.2",
        "amount": "4",
        "attempts": "7",
        "delivered": "2",
        "bounce_rate": "0.5714",
        "messages": "2",
        "recipient_domains": "1",
        "category": "mailbox_full",
        "first_seen": "2026-11-02 10:00:00",
    }
    for row in body:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


async def test_xlsx_reads_back_with_types_header_total_and_chart_sheet(store, tmp_path):
    """Bold frozen header, numbers as numbers, dates as dates, total row, chart sheet;
    hostile texts are strings that cannot evaluate."""
    await seed_standard(store)
    await seed_hostile(store)
    it, flt = await _report(store, kind="all")
    path = tmp_path / "report.xlsx"
    with path.open("wb") as f:
        await write_xlsx(it, flt, f)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["bounces", "by group"]
    sheet = book["bounces"]
    header = [c.value for c in sheet[1]]
    assert header == HEADER
    assert sheet["A1"].font.b
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref is not None
    values = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
    news = dict(zip(header, next(v for v in values if v[1] == QUOTA_T), strict=True))
    assert news == {
        **news,
        "from_domain": "news.example.com",
        "code": "452 4.2.2",
        "amount": 4,
        "attempts": 7,
        "delivered": 2,
        "bounce_rate": 0.5714,
        "messages": 2,
        "first_seen": datetime(2026, 11, 2, 10, 0),
    }
    rate = header.index("bounce_rate") + 1
    assert sheet.cell(2, rate).number_format == "0.00%"
    total = dict(zip(header, values[-1], strict=True))
    assert total["from_domain"] == "total"
    assert total["amount"] == 4 + 1 + 1 + len(PAYLOADS)
    assert total["messages"] == 4 + len(PAYLOADS)
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            assert cell.data_type != "f"
            if isinstance(cell.value, str):
                assert not cell.value.startswith(("=", "+", "-", "@", "\t")), cell.value
    chart_sheet = book["by group"]
    assert chart_sheet["A1"].value == "from_domain"
    per_group = {r[0].value: r[1].value for r in chart_sheet.iter_rows(min_row=2, max_col=2)}
    assert per_group == {
        "'=evil.example": len(PAYLOADS),
        "news.example.com": 4 + 1,
        "shop.example.com": 1,
    }
    with zipfile.ZipFile(path) as archive:  # openpyxl does not load charts; look inside
        chart = archive.read("xl/charts/chart1.xml").decode()
    assert "barChart" in chart
    assert "'by group'!$B$2:$B$4" in chart


async def test_table_has_aligned_columns_and_total(store):
    """The terminal table: header, rule, rows, rule, total."""
    await seed_standard(store)
    it, flt = await _report(store)
    out = io.StringIO()
    await render_table(it, flt, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == HEADER
    assert set(lines[1]) <= {"-", " "}
    assert lines[-1].startswith(f"total             {TOTAL_NOTE}")
    # amount, attempts, delivered, bounce_rate, messages; then two times of two words
    assert lines[-1].split()[-9:-4] == ["5", "9", "3", "0.5556", "3"]


CONTROL_REPLIES = [
    "550 5.1.1 bad\x00user",  # NUL: PostgreSQL refuses it; the store replaces it
    "550 5.1.1 colour \x1b[31mred\x1b[0m and a vertical\x0btab",  # illegal in XML 1.0
    "550 5.7.1 =?utf-8?b?PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==?= {{7*7}} ${jndi:ldap://x}",
    "550 5.7.1 see http://evil.example/click and mailto:x@evil.example",
]


async def test_hostile_texts_export_without_formulas_links_or_a_broken_file(store, tmp_path):
    """NUL, terminal escapes, XML-illegal control characters, MIME-encoded and template-looking
    payloads and URLs: the CSV and the XLSX are still written whole; the XLSX's XML has no
    formula and no hyperlink, and reads back."""
    s = Seeder(store, prefix="C")
    for n, reply in enumerate(CONTROL_REPLIES):
        await s.message(f"c{n}@evil.example", f"camp{n}", "evil.example", T0)
        await s.bounce(T0, reply, "127.0.0.2", kind="hard")
    it, flt = await _report(store, kind="all", raw=True)
    out = io.StringIO(newline="")
    await write_csv(it, flt, out)
    assert len(list(csv.reader(io.StringIO(out.getvalue(), newline="")))) == 1 + len(
        CONTROL_REPLIES
    )
    it, flt = await _report(store, kind="all", raw=True)
    path = tmp_path / "hostile.xlsx"
    with path.open("wb") as f:
        await write_xlsx(it, flt, f)
    with zipfile.ZipFile(path) as z:
        xml = "".join(z.read(n).decode("utf-8") for n in z.namelist() if n.endswith(".xml"))
    assert "<f>" not in xml and "<f " not in xml
    assert "<hyperlink" not in xml  # (docProps' <HyperlinksChanged> is not one)
    assert "\x1b" not in xml and "\x0b" not in xml and "\x00" not in xml
    sheet = openpyxl.load_workbook(path)["bounces"]
    assert sheet.max_row == 1 + len(CONTROL_REPLIES) + 1  # header, rows, total
