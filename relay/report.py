"""The bounces report: filters -> rows -> table, CSV or Excel.

An analyst picks a period, a campaign (or all), a bounce type and a grouping
(sending From domain or sending IP); each row is one (group, bounce text)
with the amount of bounce events (resends count), the distinct messages and
recipient domains, the category and when it was first and last seen.

Bounce texts come from remote servers and campaign names from message
headers: both are hostile. A cell that a spreadsheet would read as a formula
(starting with ``=``, ``+``, ``-``, ``@``, tab or CR) is prefixed with ``'``
as OWASP recommends, in CSV and XLSX alike, and XLSX cells are written as
strings, never parsed. Control characters break neither: the csv module quotes a
cell with a line break, xlsxwriter writes XML-illegal ones as ``_xHHHH_``; so both
keep the stored text. The table is for a terminal: every cell goes through
``policies.text.printable`` (escaped, one line), so an escape sequence in a reply
cannot reach the screen and a line break cannot add a row.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.text import printable
from relay.store import ReportRow

__all__ = [
    "COLUMNS",
    "ReportError",
    "ReportFilter",
    "neutralise",
    "parse_filter",
    "render_table",
    "write_csv",
    "write_xlsx",
]

TYPES = {"soft": ("soft_bounce",), "hard": ("hard_bounce",), "all": ("soft_bounce", "hard_bounce")}
GROUPINGS = {"from-domain": "from_domain", "ip": "source_ip"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PROGRESS_EVERY = 50_000
# A report row costs microseconds to write; this many between yields keeps a turn of the
# event loop to a few milliseconds however many rows arrive in one fetched batch.
_ROWS_PER_YIELD = 1_000


class ReportError(ValueError):
    """A filter the report cannot honour; the message says which and why."""


@dataclass(frozen=True)
class ReportFilter:
    start: datetime  # UTC, inclusive, on a whole hour
    end: datetime  # UTC, exclusive, on a whole hour
    types: tuple[str, ...]
    campaigns: tuple[str, ...]  # empty: all campaigns
    group_by: str  # "from-domain" | "ip"
    top: int | None
    raw: bool = False

    @property
    def group_column(self) -> str:
        return GROUPINGS[self.group_by]

    @property
    def columns(self) -> list[str]:
        base = [self.group_column, *COLUMNS[1:]]
        return [*base, "sample"] if self.raw else base


COLUMNS = [
    "from_domain",
    "bounce_text",
    "amount",
    "messages",
    "recipient_domains",
    "category",
    "first_seen",
    "last_seen",
]


def _parse_when(value: str, zone: ZoneInfo, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReportError(
            f"--{name} {value!r} is not an ISO date or datetime (e.g. 2026-11-01 or "
            "2026-11-01T08:00)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def parse_filter(
    *,
    start: str | None,
    end: str | None,
    tz: str = "UTC",
    campaigns: list[str] | None = None,
    kind: str = "soft",
    group_by: str = "from-domain",
    top: int | None = None,
    raw: bool = False,
    now: datetime | None = None,
) -> ReportFilter:
    """Check and convert the report's filters; ``ReportError`` says what is wrong."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ReportError(
            f"--tz {tz!r} is not a known time zone (e.g. UTC, Europe/Berlin)"
        ) from exc
    if kind not in TYPES:
        raise ReportError(f"--type {kind!r}: use soft, hard or all")
    if group_by not in GROUPINGS:
        raise ReportError(f"--group-by {group_by!r}: use from-domain or ip")
    if top is not None and top <= 0:
        raise ReportError(f"--top {top}: must be a positive number of rows")
    current = now or datetime.now(UTC)
    # Without --to: up to the end of the current hour, so the newest bounces show.
    upper = (
        _parse_when(end, zone, "to")
        if end
        else current.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    )
    lower = _parse_when(start, zone, "from") if start else upper - timedelta(days=30)
    if lower >= upper:
        raise ReportError(
            f"--from {lower:%Y-%m-%d %H:%M}Z is not before --to {upper:%Y-%m-%d %H:%M}Z"
        )
    for name, when in (("from", lower), ("to", upper)):
        if when.minute or when.second or when.microsecond:
            raise ReportError(
                f"--{name} {when:%Y-%m-%d %H:%M:%S}Z: the report is kept per hour, so the "
                "period must start and end on a whole hour in UTC"
            )
    return ReportFilter(
        start=lower,
        end=upper,
        types=TYPES[kind],
        campaigns=tuple(campaigns or ()),
        group_by=group_by,
        top=top,
        raw=raw,
    )


def neutralise(text: str) -> str:
    """OWASP CSV-injection defence: a cell a spreadsheet would evaluate gets a leading quote."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cells(row: ReportRow, raw: bool) -> list[Any]:
    cells: list[Any] = [
        row.group,
        row.bounce_text,
        row.amount,
        row.messages,
        row.recipient_domains,
        row.category or "",
        row.first_seen,
        row.last_seen,
    ]
    if raw:
        cells.append(row.sample or "")
    return cells


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


class _Progress:
    """Counts rows on stderr when it is a terminal; silent otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.rows = 0

    def tick(self) -> None:
        self.rows += 1
        if self.enabled and self.rows % _PROGRESS_EVERY == 0:
            self.stream.write(f"\r{self.rows:,} rows")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.rows >= _PROGRESS_EVERY:
            self.stream.write(f"\r{self.rows:,} rows, done\n")


async def write_csv(rows: AsyncIterator[ReportRow], flt: ReportFilter, out: TextIO) -> int:
    """RFC 4180 CSV (CRLF, header row, UTF-8), streamed; no total row. Returns the row count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(flt.columns)
    progress = _Progress()
    async for row in rows:
        writer.writerow([neutralise(_text(c)) for c in _cells(row, flt.raw)])
        progress.tick()
        if progress.rows % _ROWS_PER_YIELD == 0:
            await asyncio.sleep(0)  # rows come in fetched batches: let other clients in
    progress.done()
    return progress.rows


def _totals(rows: list[ReportRow]) -> list[str]:
    if not rows:
        return ["total", "", "0", "0", "", "", "", ""]
    return [
        "total",
        "",
        str(sum(r.amount for r in rows)),
        str(sum(r.messages for r in rows)),
        "",
        "",
        _text(min(r.first_seen for r in rows)),
        _text(max(r.last_seen for r in rows)),
    ]


async def render_table(
    rows: AsyncIterator[ReportRow], flt: ReportFilter, out: TextIO, *, width: int = 70
) -> int:
    """An aligned, readable table with a total row; long texts are cut at ``width``."""
    collected = [row async for row in rows]
    lines = [flt.columns]
    for row in collected:
        cells = [printable(_text(c)) for c in _cells(row, flt.raw)]
        cells[1] = printable(_text(row.bounce_text), width)
        lines.append(cells)
    total = _totals(collected) + ([""] if flt.raw else [])
    widths = [max(len(line[i]) for line in [*lines, total]) for i in range(len(flt.columns))]
    numeric = {2, 3, 4}
    rule = "  ".join("-" * w for w in widths)

    def fmt(line: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    print(fmt(lines[0]), file=out)
    print(rule, file=out)
    for line in lines[1:]:
        print(fmt(line), file=out)
    print(rule, file=out)
    print(fmt(total), file=out)
    return len(collected)


async def write_xlsx(rows: AsyncIterator[ReportRow], flt: ReportFilter, out: IO[bytes]) -> int:
    """Excel: bold frozen header, autofilter, widths, real dates and numbers, a total row, and
    a second sheet charting the amount per group. Written in constant-memory mode."""
    import xlsxwriter  # late: only this format needs it

    book = xlsxwriter.Workbook(out, {"constant_memory": True, "in_memory": False})
    sheet = book.add_worksheet("bounces")
    bold = book.add_format({"bold": True})
    when = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    columns = flt.columns
    for col, name in enumerate(columns):
        sheet.write_string(0, col, name, bold)
    sheet.freeze_panes(1, 0)
    widths = [18, 70, 10, 10, 18, 18, 20, 20, 70]
    for col in range(len(columns)):
        sheet.set_column(col, col, widths[col])
    per_group: dict[str, int] = {}
    totals = [0, 0]
    first: datetime | None = None
    last: datetime | None = None
    progress = _Progress()
    row_number = 0
    async for row in rows:
        row_number += 1
        _xlsx_row(sheet, row_number, row, flt.raw, when)
        per_group[row.group] = per_group.get(row.group, 0) + row.amount
        totals[0] += row.amount
        totals[1] += row.messages
        first = row.first_seen if first is None else min(first, row.first_seen)
        last = row.last_seen if last is None else max(last, row.last_seen)
        progress.tick()
        if row_number % _ROWS_PER_YIELD == 0:
            await asyncio.sleep(0)  # rows come in fetched batches: let other clients in
    progress.done()
    total_row = row_number + 1
    sheet.write_string(total_row, 0, "total", bold)
    sheet.write_number(total_row, 2, totals[0], bold)
    sheet.write_number(total_row, 3, totals[1], bold)
    if first is not None and last is not None:
        sheet.write_datetime(total_row, 6, _naive_utc(first), when)
        sheet.write_datetime(total_row, 7, _naive_utc(last), when)
    sheet.autofilter(0, 0, max(row_number, 1), len(columns) - 1)
    _chart_sheet(book, flt, per_group, bold)
    # Closing zips every sheet: seconds of compression for a large report, kept off the
    # event loop that serves SMTP clients (zlib releases the GIL while it compresses).
    await asyncio.to_thread(book.close)
    return row_number


def _naive_utc(value: datetime) -> datetime:
    # Excel has no time zones: dates are written as UTC wall time (the header says so).
    return value.astimezone(UTC).replace(tzinfo=None)


def _xlsx_row(sheet: Any, r: int, row: ReportRow, raw: bool, when: Any) -> None:
    sheet.write_string(r, 0, neutralise(row.group))
    sheet.write_string(r, 1, neutralise(row.bounce_text))
    sheet.write_number(r, 2, row.amount)
    sheet.write_number(r, 3, row.messages)
    sheet.write_number(r, 4, row.recipient_domains)
    sheet.write_string(r, 5, neutralise(row.category or ""))
    sheet.write_datetime(r, 6, _naive_utc(row.first_seen), when)
    sheet.write_datetime(r, 7, _naive_utc(row.last_seen), when)
    if raw:
        sheet.write_string(r, 8, neutralise(row.sample or ""))


def _chart_sheet(book: Any, flt: ReportFilter, per_group: dict[str, int], bold: Any) -> None:
    sheet = book.add_worksheet("by group")
    label = flt.group_column
    sheet.write_string(0, 0, label, bold)
    sheet.write_string(0, 1, "amount", bold)
    sheet.set_column(0, 0, 30)
    ranked = sorted(per_group.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
    for i, (group, amount) in enumerate(ranked, start=1):
        sheet.write_string(i, 0, neutralise(group or "(none)"))
        sheet.write_number(i, 1, amount)
    chart = book.add_chart({"type": "bar"})
    chart.add_series(
        {
            "name": "amount",
            "categories": ["by group", 1, 0, max(len(ranked), 1), 0],
            "values": ["by group", 1, 1, max(len(ranked), 1), 1],
        }
    )
    chart.set_title({"name": f"Bounces per {label}"})
    chart.set_legend({"none": True})
    chart.set_y_axis({"reverse": True})
    sheet.insert_chart(1, 3, chart, {"x_scale": 1.5, "y_scale": 1.5})
