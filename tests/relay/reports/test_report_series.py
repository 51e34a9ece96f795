"""--by hour|day: the report as a time series of attempts, deliveries, bounces and the bounce
rate per UTC bucket and group, in every format, from outcomes written through the store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import openpyxl
import pytest

from relay.reports.export import ReportError, TextSink, export, parse_filter
from relay.store import Store, create_store
from tests.support.cli import run_with_config
from tests.support.report_seeds import YAHOO_FULL, Seeder, seed_standard


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn)
    yield s
    await s.close()


async def series(store: Store, **kw: Any) -> list[tuple[str, str, int, int, int]]:
    flt = parse_filter(start=kw.pop("start", "2026-11-02"), end=kw.pop("end", "2026-11-03"), **kw)
    assert flt.by is not None
    stream = store.iter_bounce_series(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top, flt.by
    )
    return [
        (f"{r.bucket:%m-%d %H}", r.group, r.amount, r.attempts, r.delivered) async for r in stream
    ]


async def test_per_hour_and_provider(store):
    """Every hour with an attempt or a bounce, per provider: 10:00 three Gmail bounces on
    three attempts, the deliveries after each resend, Yahoo at 13:00."""
    await seed_standard(store)
    assert await series(store, by="hour", group_by="provider", kind="all") == [
        ("11-02 10", "google", 3, 3, 0),
        ("11-02 11", "google", 1, 2, 1),
        ("11-02 12", "google", 1, 2, 1),
        ("11-02 13", "yahoo", 1, 2, 1),
    ]


async def test_groups_that_only_delivered_are_in_the_series(store):
    """By IP: 127.0.0.9 bounced nothing but delivered three times."""
    await seed_standard(store)
    points = await series(store, by="day", group_by="ip", kind="all")
    assert points == [
        ("11-02 00", "127.0.0.2", 5, 5, 0),
        ("11-02 00", "127.0.0.3", 1, 1, 0),
        ("11-02 00", "127.0.0.9", 0, 3, 3),
    ]


async def test_by_day_folds_edge_hours_into_their_days(store):
    """From 22:00 on day 1 to 01:00 on day 3: day 1 and day 3 hold only their hours inside
    the period; day 2 comes from the day rows."""
    s = Seeder(store)
    times = [
        datetime(2026, 11, 1, 21, 30, tzinfo=UTC),  # before the period
        datetime(2026, 11, 1, 22, 30, tzinfo=UTC),
        datetime(2026, 11, 2, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 2, 13, 0, tzinfo=UTC),
        datetime(2026, 11, 3, 0, 30, tzinfo=UTC),
        datetime(2026, 11, 3, 1, 0, tzinfo=UTC),  # after it
    ]
    await s.message("a@yahoo.com", "A", "news.example.com", times[0])
    for at in times:
        await s.bounce(at, YAHOO_FULL.format(rcpt="a@yahoo.com"), "127.0.0.2")
    got = await series(store, by="day", start="2026-11-01T22:00", end="2026-11-03T01:00")
    assert got == [
        ("11-01 00", "news.example.com", 1, 1, 0),
        ("11-02 00", "news.example.com", 2, 2, 0),
        ("11-03 00", "news.example.com", 1, 1, 0),
    ]


async def test_campaigns_and_top_groups(store):
    """--campaign B: shop only; --top 1: every point of the group with the most bounces."""
    await seed_standard(store)
    assert await series(store, by="hour", campaigns=["B"]) == [
        ("11-02 13", "shop.example.com", 1, 2, 1)
    ]
    top = await series(store, by="hour", top=1)
    assert {group for _, group, *_ in top} == {"news.example.com"}
    assert len(top) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"by": "week"}, "use hour or day"), ({"by": "day", "raw": True}, "has none")],
)
def test_bad_series_filters(kwargs, message):
    with pytest.raises(ReportError, match=message):
        parse_filter(start="2026-11-02", end="2026-11-03", **kwargs)


async def test_table_csv_and_json(store):
    """The table has its total (the whole filter); CSV a row per point; JSON the points
    and the totals."""
    await seed_standard(store)
    flt = parse_filter(start="2026-11-02", end="2026-11-03", by="hour", kind="all")
    out = io.StringIO()
    await export(store, flt, "table", TextSink(out))
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "bucket",
        "from_domain",
        "amount",
        "attempts",
        "delivered",
        "bounce_rate",
    ]
    assert lines[-1].split() == ["total", "whole", "filter", "6", "9", "3", "0.6667"]
    out = io.StringIO()
    await export(store, flt, "csv", TextSink(out))
    parsed = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert parsed[1] == ["2026-11-02 10:00:00", "news.example.com", "3", "3", "0", "1.0"]
    assert len(parsed) == 1 + 4  # news at 10, 11 and 12, shop at 13
    out = io.StringIO()
    await export(store, flt, "json", TextSink(out))
    document = json.loads(out.getvalue())
    assert document["by"] == "hour"
    assert document["rows"][0] == {
        "bucket": "2026-11-02T10:00:00+00:00",
        "from_domain": "news.example.com",
        "amount": 3,
        "attempts": 3,
        "delivered": 0,
        "bounce_rate": 1.0,
    }
    assert document["totals"] == {"amount": 6, "attempts": 9, "delivered": 3, "bounce_rate": 0.6667}


async def test_xlsx_charts_attempts_bounces_and_rate_over_time(store, tmp_path):
    await seed_standard(store)
    flt = parse_filter(start="2026-11-02", end="2026-11-03", by="hour", kind="all")
    path = tmp_path / "series.xlsx"
    with path.open("wb") as f:
        await export(store, flt, "xlsx", f)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["bounces", "over time"]
    values = [[c.value for c in row] for row in book["bounces"].iter_rows()]
    assert values[1] == [datetime(2026, 11, 2, 10), "news.example.com", 3, 3, 0, 1.0]
    assert values[-1] == ["total", "whole filter", 6, 9, 3, 0.6667]
    over_time = [[c.value for c in row] for row in book["over time"].iter_rows(max_col=4)]
    assert over_time[0] == ["hour (UTC)", "attempts", "bounces", "rate"]
    assert over_time[1:] == [
        [datetime(2026, 11, 2, 10), 3, 3, 1.0],
        [datetime(2026, 11, 2, 11), 2, 1, 0.5],
        [datetime(2026, 11, 2, 12), 2, 1, 0.5],
        [datetime(2026, 11, 2, 13), 2, 1, 0.5],
    ]
    with zipfile.ZipFile(path) as archive:  # openpyxl does not load charts; look inside
        chart = archive.read("xl/charts/chart1.xml").decode()
    assert "barChart" in chart and "lineChart" in chart
    assert "'over time'!$B$2:$B$5" in chart and "'over time'!$D$2:$D$5" in chart


async def test_the_command_writes_the_exports_series(store, db_dsn, write_config):
    """`bounce-relay report --by day --group-by provider` (CSV to a pipe) is the export's."""
    await seed_standard(store)
    config = write_config(f'[store]\ndsn = "{db_dsn}"\n', replace_base=True)
    period = ("--from", "2026-11-02", "--to", "2026-11-03")
    result = await asyncio.to_thread(
        run_with_config, config, "report", *period, "--by", "day", "--group-by", "provider"
    )
    assert result.returncode == 0, result.stderr
    flt = parse_filter(start="2026-11-02", end="2026-11-03", by="day", group_by="provider")
    out = io.StringIO(newline="")
    await export(store, flt, "csv", TextSink(out))
    assert result.stdout.replace("\r\n", "\n") == out.getvalue().replace("\r\n", "\n")
    assert result.stdout.splitlines()[1:] == [
        "2026-11-02 00:00:00,google,4,7,2,0.5714",
        "2026-11-02 00:00:00,yahoo,1,2,1,0.5",
    ]
