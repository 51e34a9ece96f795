"""The bounces report page over HTTP: filters, table, chart, drill-down, downloads."""

from __future__ import annotations

import io
from html import escape

from relay.reports.export import parse_filter, write_csv
from tests.support.admin import base, logged_in
from tests.support.report_seeds import QUOTA_T, seed_hostile_bounce, seed_standard


async def test_report_page_download_and_xss_as_text(relay):
    """The report table shows the rows; the CSV download is the CLI's bytes; a hostile bounce
    text and campaign are rendered as text."""
    await seed_standard(relay.store)
    xss = await seed_hostile_bounce(relay.store, "<b>camp</b>")
    http, _ = await logged_in(relay)
    async with http:
        query = "?from=2026-11-02T00:00&to=2026-11-03T00:00"
        async with http.get(base(relay) + "/report" + query) as r:
            page = await r.text()
        async with http.get(base(relay) + "/report.csv" + query) as r:
            csv_bytes = await r.read()
    assert escape(QUOTA_T) in page
    assert "<script>" not in page
    assert escape(xss) in page
    assert "&lt;b&gt;camp&lt;/b&gt;" in page
    assert "<svg" in page
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
