"""The bounces report: filters -> rows -> a table, CSV, Excel or JSON, through one ``export``.

An analyst picks a period, a campaign (or all), a bounce type and a grouping (sending From
domain, sending IP, or the recipients' mailbox provider); each row is one (group, bounce
text) with the amount of bounce events (resends count), the group's delivery attempts and
deliveries, the bounce rate (the row's amount over its group's attempts), the distinct
messages and recipient domains, the category and when it was first and last seen. The
total line is the store's (``ReportTotals``): the whole filter, each message once.

``export`` is the one way out, for the CLI (``bounce-relay report``), the admin page's
downloads and the JSON API: the same filter gives the same rows, columns and bytes
everywhere. ``columns`` is the one list of the report's columns (name, kind, how a value
is shown as text, width, what the total row holds); every format, and the admin page's
HTML table, is drawn from it.

Formats: ``csv`` and ``json`` stream (a row is written as it arrives from the database
cursor, constant memory); ``table`` needs every row first (column widths, the total row);
``xlsx`` is built in worker threads (constant-memory mode, rows handed over a batch at a
time), never on the event loop, and zipped into ``out`` when it closes.

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
import enum
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import IO, Any, Literal, Protocol, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.text import printable
from relay.store import ReportRow, ReportTotals, SeriesRow, Store
from relay.store.reports import ReportStream

__all__ = [
    "COLUMNS",
    "SAMPLE",
    "SERIES_COLUMNS",
    "Column",
    "Format",
    "Kind",
    "ReportError",
    "ReportFilter",
    "Sink",
    "TextSink",
    "bounce_rate",
    "export",
    "neutralise",
    "parse_filter",
    "render_table",
    "write_csv",
    "write_rows",
    "write_xlsx",
]

TYPES = {"soft": ("soft_bounce",), "hard": ("hard_bounce",), "all": ("soft_bounce", "hard_bounce")}
GROUPINGS = {"from-domain": "from_domain", "ip": "source_ip", "provider": "provider"}
BUCKETS = ("hour", "day")  # --by: a time series per UTC hour or day
Format = Literal["table", "csv", "xlsx", "json"]
TABLE_WIDTH = 70  # the terminal table cuts long texts (the bounce text) at this many characters
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PROGRESS_EVERY = 50_000
# A report row costs microseconds to write; this many between yields keeps a turn of the
# event loop to a few milliseconds however many rows arrive in one fetched batch. XLSX hands
# its rows to the worker thread in batches of this size: one thread hop per batch.
_ROWS_PER_YIELD = 1_000


class ReportError(ValueError):
    """A filter the report cannot honour; the message says which and why."""


class Kind(enum.Enum):
    """What a column holds, which decides how each format writes it."""

    TEXT = "text"  # from outside: escaped on a terminal, formula-neutralised in CSV and XLSX
    COUNT = "count"  # a whole number: right-aligned, a number in XLSX and JSON
    RATE = "rate"  # a fraction (4 places) or None: right-aligned, a percentage in XLSX
    TIME = "time"  # UTC: "YYYY-MM-DD HH:MM:SS" as text, a date in XLSX, ISO 8601 in JSON


Value = str | int | float | datetime | None
Row = ReportRow | SeriesRow  # a report row, or a point of the series (--by)
Rows = ReportStream[ReportRow] | ReportStream[SeriesRow]


@dataclass(frozen=True)
class Column:
    """One column of the report, for every format."""

    name: str  # the header (table, CSV, XLSX, admin page) and the JSON key
    kind: Kind
    value: Callable[[Row], Value]
    width: int  # characters: the XLSX column's width
    # What the total row shows (the table, XLSX; JSON's "totals" for numbers and times),
    # from the store's totals: never a sum of the rows shown, which would count a message
    # once per row and a group's attempts once per text.
    total: Callable[[ReportTotals], Value] | None = None
    cut: bool = False  # the terminal table cuts it at export's ``width`` (long bounce texts)

    def text(self, row: Row) -> str:
        """The value as text: a CSV cell, a table cell (before escaping), an admin page cell."""
        return _as_text(self.value(row))

    def json(self, row: Row) -> str | int | float | None:
        return _as_json(self.value(row))


def _as_text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _as_json(value: Value) -> str | int | float | None:
    return value.isoformat() if isinstance(value, datetime) else value


def bounce_rate(bounces: int, attempts: int) -> float | None:
    """``bounces / attempts`` to four places; None without attempts (none were recorded:
    only bounce messages' reports, or a period before the relay counted attempts)."""
    return round(bounces / attempts, 4) if attempts else None


# What the total line says of itself, in its bounce_text cell (short enough for a table cut
# at 60 characters); docs/reports.md says it in full.
TOTAL_NOTE = "whole filter, each message once; row attempts are per group"

# The columns, in order. The first is named after the grouping (from_domain, source_ip or
# provider: see ReportFilter.columns); `sample` follows the last with --raw.
COLUMNS: tuple[Column, ...] = (
    Column("group", Kind.TEXT, attrgetter("group"), 18, total=lambda _: "total"),
    Column(
        "bounce_text",
        Kind.TEXT,
        attrgetter("bounce_text"),
        70,
        total=lambda _: TOTAL_NOTE,
        cut=True,
    ),
    Column("code", Kind.TEXT, attrgetter("code"), 10),
    Column("amount", Kind.COUNT, attrgetter("amount"), 10, total=attrgetter("amount")),
    # the group's, on each of its rows: how much it sent, which the row's bounces are out of
    Column("attempts", Kind.COUNT, attrgetter("attempts"), 10, total=attrgetter("attempts")),
    Column("delivered", Kind.COUNT, attrgetter("delivered"), 10, total=attrgetter("delivered")),
    Column(
        "bounce_rate",
        Kind.RATE,
        lambda r: bounce_rate(r.amount, r.attempts),
        12,
        total=lambda t: bounce_rate(t.amount, t.attempts),
    ),
    Column("messages", Kind.COUNT, attrgetter("messages"), 10, total=attrgetter("messages")),
    # distinct per row: the rows' sum would count a domain once per row, and no total is kept
    Column("recipient_domains", Kind.COUNT, attrgetter("recipient_domains"), 18),
    Column("category", Kind.TEXT, attrgetter("category"), 18),
    Column("first_seen", Kind.TIME, attrgetter("first_seen"), 20, total=attrgetter("first_seen")),
    Column("last_seen", Kind.TIME, attrgetter("last_seen"), 20, total=attrgetter("last_seen")),
)
SAMPLE = Column("sample", Kind.TEXT, attrgetter("sample"), 70)

# --by hour|day: the report as a time series, a row per UTC bucket and group, no texts. The
# second column is named after the grouping.
SERIES_COLUMNS: tuple[Column, ...] = (
    Column("bucket", Kind.TIME, attrgetter("bucket"), 20, total=lambda _: "total"),
    Column("group", Kind.TEXT, attrgetter("group"), 18, total=lambda _: "whole filter"),
    *(c for c in COLUMNS if c.name in ("amount", "attempts", "delivered", "bounce_rate")),
)


@dataclass(frozen=True)
class ReportFilter:
    start: datetime  # UTC, inclusive, on a whole hour
    end: datetime  # UTC, exclusive, on a whole hour
    types: tuple[str, ...]
    campaigns: tuple[str, ...]  # empty: all campaigns
    group_by: str  # "from-domain" | "ip" | "provider"
    top: int | None  # rows; groups with ``by``
    raw: bool = False
    by: str | None = None  # "hour" | "day": a time series

    @property
    def group_column(self) -> str:
        return GROUPINGS[self.group_by]

    @property
    def columns(self) -> tuple[Column, ...]:
        """The report's columns under this filter: ``COLUMNS`` (``SERIES_COLUMNS`` with
        ``by``) with the group column named after the grouping, and ``sample`` with ``raw``."""
        if self.by:
            bucket, group, *counts = SERIES_COLUMNS
            return (bucket, replace(group, name=self.group_column), *counts)
        named = (replace(COLUMNS[0], name=self.group_column), *COLUMNS[1:])
        return (*named, SAMPLE) if self.raw else named


def _parse_when(value: str, zone: ZoneInfo, label: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReportError(
            f"{label} {value!r} is not an ISO date or datetime (e.g. 2026-11-01 or "
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
    by: str | None = None,
    now: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> ReportFilter:
    """Check and convert the report's filters; ``ReportError`` says what is wrong.

    ``labels``: what the messages call each option, by its flag's name without the dashes
    ("from", "to", "group-by" ...), for a form that labels its fields otherwise (the admin
    page); an option not in it is called by its flag ("--from")."""

    def name(option: str) -> str:
        return labels.get(option, f"--{option}") if labels else f"--{option}"

    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ReportError(
            f"{name('tz')} {tz!r} is not a known time zone (e.g. UTC, Europe/Berlin)"
        ) from exc
    if kind not in TYPES:
        raise ReportError(f"{name('type')} {kind!r}: use soft, hard or all")
    if group_by not in GROUPINGS:
        raise ReportError(f"{name('group-by')} {group_by!r}: use from-domain, ip or provider")
    if top is not None and top <= 0:
        raise ReportError(f"{name('top')} {top}: must be a positive number of rows")
    if by is not None and by not in BUCKETS:
        raise ReportError(f"{name('by')} {by!r}: use hour or day")
    if by is not None and raw:
        raise ReportError(
            f"{name('raw')} shows the replies behind rows; a time series ({name('by')}) has none"
        )
    current = now or datetime.now(UTC)
    # Without --to: up to the end of the current hour, so the newest bounces show.
    upper = (
        _parse_when(end, zone, name("to"))
        if end
        else current.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    )
    lower = _parse_when(start, zone, name("from")) if start else upper - timedelta(days=30)
    if lower >= upper:
        raise ReportError(
            f"{name('from')} {lower:%Y-%m-%d %H:%M}Z is not before "
            f"{name('to')} {upper:%Y-%m-%d %H:%M}Z"
        )
    for option, when in (("from", lower), ("to", upper)):
        if when.minute or when.second or when.microsecond:
            raise ReportError(
                f"{name(option)} {when:%Y-%m-%d %H:%M:%S}Z: the report is kept per hour, so "
                "the period must start and end on a whole hour in UTC"
            )
    return ReportFilter(
        start=lower,
        end=upper,
        types=TYPES[kind],
        campaigns=tuple(campaigns or ()),
        group_by=group_by,
        top=top,
        raw=raw,
        by=by,
    )


def neutralise(text: str) -> str:
    """OWASP CSV-injection defence: a cell a spreadsheet would evaluate gets a leading quote."""
    return "'" + text if text.startswith(_FORMULA_START) else text


class Sink(Protocol):
    """Where ``export`` writes: any binary file (a file opened "wb", ``sys.stdout.buffer``,
    a temporary file), or ``TextSink`` around a text stream. CSV writes one row per call,
    the table one line, JSON one row (after the opening, before the closing); XLSX is
    written by xlsxwriter's zip, from a worker thread, when the workbook closes."""

    def write(self, data: bytes, /) -> object: ...


class TextSink:
    """A ``Sink`` over a text stream (a terminal, ``io.StringIO``): each write is decoded
    whole, so a stream that treats each write as a row (``TerminalCsv``) still gets rows."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, data: bytes, /) -> int:
        return self.out.write(data.decode("utf-8"))


class _Progress:
    """Counts rows on ``stream`` when it is a terminal; silent otherwise (and without one)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.enabled = stream is not None and stream.isatty()
        self.rows = 0

    def tick(self, rows: int = 1) -> None:
        before, self.rows = self.rows, self.rows + rows
        if self.enabled and before // _PROGRESS_EVERY != self.rows // _PROGRESS_EVERY:
            assert self.stream is not None
            self.stream.write(f"\r{self.rows:,} rows")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.rows >= _PROGRESS_EVERY:
            assert self.stream is not None
            self.stream.write(f"\r{self.rows:,} rows, done\n")


def _total_cells(columns: tuple[Column, ...], totals: ReportTotals | None) -> list[Value]:
    """The total row's cells (None: nothing to show), from the store's totals."""
    return [c.total(totals) if c.total and totals else None for c in columns]


async def export(
    store: Store,
    flt: ReportFilter,
    fmt: Format,
    out: Sink,
    *,
    progress: TextIO | None = None,
    width: int = TABLE_WIDTH,
) -> int:
    """The bounces report under ``flt`` written to ``out`` as ``fmt``; returns the row count.

    The one export of the report, for the CLI, the admin page and the API. ``progress``:
    a stream to count rows on when it is a terminal (the CLI's stderr); ``width``: where
    the table cuts long texts."""
    rows: Rows
    if flt.by:
        rows = store.iter_bounce_series(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top, flt.by
        )
    else:
        rows = store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )
    return await write_rows(rows, flt, fmt, out, progress=progress, width=width)


async def write_rows(
    rows: Rows,
    flt: ReportFilter,
    fmt: Format,
    out: Sink,
    *,
    progress: TextIO | None = None,
    width: int = TABLE_WIDTH,
) -> int:
    """``export`` for a report already asked of the store (its rows and totals)."""
    counter = _Progress(progress)
    try:
        if fmt == "csv":
            await _csv(rows, flt, out, counter)
        elif fmt == "json":
            await _json(rows, flt, out, counter)
        elif fmt == "xlsx":
            await _xlsx(rows, flt, out, counter)
        else:
            await _table(rows, flt, out, width, counter)
    finally:
        # Close the cursor now, whatever happened: it holds a pooled connection.
        await rows.aclose()
    counter.done()
    return counter.rows


class _Lines:
    """The csv module's output stream: each row it writes goes to the sink as UTF-8."""

    def __init__(self, out: Sink) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text.encode("utf-8"))


async def _csv(rows: Rows, flt: ReportFilter, out: Sink, progress: _Progress) -> None:
    """RFC 4180 (CRLF, header row, UTF-8), streamed; no total row (a reader summing the
    rows gets amounts and counts of events; docs/reports.md says what does not add up)."""
    columns = flt.columns
    writer = csv.writer(_Lines(out), lineterminator="\r\n")
    writer.writerow([c.name for c in columns])
    async for row in rows:
        writer.writerow([neutralise(c.text(row)) for c in columns])
        progress.tick()
        if progress.rows % _ROWS_PER_YIELD == 0:
            await asyncio.sleep(0)  # rows come in fetched batches: let other clients in


async def _json(rows: Rows, flt: ReportFilter, out: Sink, progress: _Progress) -> None:
    """The filter echoed, then ``rows``, then ``totals`` (the total line's numbers and
    times): the bytes of ``json.dumps`` of the whole object, written a row at a time."""
    columns = flt.columns
    head = json.dumps(
        {
            "from": flt.start.isoformat(),
            "to": flt.end.isoformat(),
            "group_by": flt.group_column,
            "by": flt.by,
            "types": list(flt.types),
            "campaigns": list(flt.campaigns),
        }
    )
    out.write(head[:-1].encode() + b', "rows": [')
    separator = ""
    async for row in rows:
        item = json.dumps({c.name: c.json(row) for c in columns})
        out.write(f"{separator}{item}".encode())
        separator = ", "
        progress.tick()
        if progress.rows % _ROWS_PER_YIELD == 0:
            await asyncio.sleep(0)
    totals = {
        c.name: _as_json(value)
        for c, value in zip(columns, _total_cells(columns, rows.totals), strict=True)
        if value is not None and not isinstance(value, str)  # not the labels
    }
    out.write(b'], "totals": ' + json.dumps(totals).encode() + b"}")


async def _table(
    rows: Rows,
    flt: ReportFilter,
    out: Sink,
    width: int,
    progress: _Progress,
) -> None:
    """An aligned, readable table with a total row; texts of cut columns end at ``width``."""
    columns = flt.columns
    lines = [[c.name for c in columns]]
    async for row in rows:
        lines.append([printable(c.text(row), width if c.cut else None) for c in columns])
        progress.tick()
    total = [
        printable(_as_text(v), width if c.cut else None)
        for c, v in zip(columns, _total_cells(columns, rows.totals), strict=True)
    ]
    widths = [max(len(line[i]) for line in [*lines, total]) for i in range(len(columns))]
    rule = ("  ".join("-" * w for w in widths) + "\n").encode()

    def line(cells: list[str]) -> bytes:
        shown = "  ".join(
            cell.rjust(w) if column.kind in (Kind.COUNT, Kind.RATE) else cell.ljust(w)
            for cell, w, column in zip(cells, widths, columns, strict=True)
        )
        return (shown.rstrip() + "\n").encode("utf-8")

    out.write(line(lines[0]))
    out.write(rule)
    for cells in lines[1:]:
        out.write(line(cells))
    out.write(rule)
    out.write(line(total))


async def _xlsx(rows: Rows, flt: ReportFilter, out: Sink, progress: _Progress) -> None:
    # xlsxwriter's row files live in a directory of our own, removed even when the export
    # fails half-way (the workbook only deletes them when it closes).
    with tempfile.TemporaryDirectory(prefix="bounces-xlsx-") as scratch:
        book = await asyncio.to_thread(_Workbook, flt, out, scratch)
        batch: list[Row] = []
        async for row in rows:
            batch.append(row)
            if len(batch) == _ROWS_PER_YIELD:
                await asyncio.to_thread(book.add, batch)
                progress.tick(len(batch))
                batch = []
        await asyncio.to_thread(book.add, batch)
        progress.tick(len(batch))
        # Closing zips every sheet: seconds of compression for a large report.
        await asyncio.to_thread(book.close, rows.totals)


class _Workbook:
    """The XLSX report: bold frozen header, autofilter, widths, real dates and numbers, a
    total row, and a second sheet charting the amount per group (a time series: attempts,
    bounces and the bounce rate over time); constant-memory mode. Used from worker
    threads, one call at a time (``_xlsx`` awaits each)."""

    def __init__(self, flt: ReportFilter, out: Sink, scratch: str) -> None:
        import xlsxwriter  # late: only this format needs it

        self.flt = flt
        self.columns = flt.columns
        self.book = xlsxwriter.Workbook(
            out, {"constant_memory": True, "in_memory": False, "tmpdir": scratch}
        )
        self.sheet = self.book.add_worksheet("bounces")
        self.bold = self.book.add_format({"bold": True})
        self.when = self.book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.percent = self.book.add_format({"num_format": "0.00%"})
        self.bold_percent = self.book.add_format({"bold": True, "num_format": "0.00%"})
        for col, column in enumerate(self.columns):
            self.sheet.write_string(0, col, column.name, self.bold)
            self.sheet.set_column(col, col, column.width)
        self.sheet.freeze_panes(1, 0)
        self.per_group: dict[str, int] = {}
        self.per_bucket: dict[datetime, tuple[int, int]] = {}  # attempts, bounces
        self.rows = 0

    def add(self, batch: list[Row]) -> None:
        for row in batch:
            self.rows += 1
            for col, column in enumerate(self.columns):
                self._cell(self.rows, col, column.kind, column.value(row))
            self.per_group[row.group] = self.per_group.get(row.group, 0) + row.amount
            if isinstance(row, SeriesRow):
                attempts, amount = self.per_bucket.get(row.bucket, (0, 0))
                self.per_bucket[row.bucket] = (attempts + row.attempts, amount + row.amount)

    def _cell(self, r: int, c: int, kind: Kind, value: Any, style: Any = None) -> None:
        if kind is Kind.RATE and value is None:
            self.sheet.write_blank(r, c, None, style)
        elif kind is Kind.RATE:
            self.sheet.write_number(r, c, value, style or self.percent)
        elif kind is Kind.COUNT:
            self.sheet.write_number(r, c, value, style)
        elif kind is Kind.TIME:
            self.sheet.write_datetime(r, c, _naive_utc(value), style or self.when)
        else:
            self.sheet.write_string(r, c, neutralise(_as_text(value)), style)

    def close(self, totals: ReportTotals | None) -> None:
        total_row = self.rows + 1
        for col, value in enumerate(_total_cells(self.columns, totals)):
            if value is not None:
                # a label is text whatever the column holds (a series' total is in "bucket")
                kind = Kind.TEXT if isinstance(value, str) else self.columns[col].kind
                # dates keep their format, rates their percent sign
                style = {Kind.TIME: None, Kind.RATE: self.bold_percent}.get(kind, self.bold)
                self._cell(total_row, col, kind, value, style)
        self.sheet.autofilter(0, 0, max(self.rows, 1), len(self.columns) - 1)
        if self.flt.by:
            self._series_chart_sheet()
        else:
            self._chart_sheet()
        self.book.close()

    def _chart_sheet(self) -> None:
        sheet = self.book.add_worksheet("by group")
        label = self.flt.group_column
        sheet.write_string(0, 0, label, self.bold)
        sheet.write_string(0, 1, "amount", self.bold)
        sheet.set_column(0, 0, 30)
        ranked = sorted(self.per_group.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
        for i, (group, amount) in enumerate(ranked, start=1):
            sheet.write_string(i, 0, neutralise(group or "(none)"))
            sheet.write_number(i, 1, amount)
        chart = self.book.add_chart({"type": "bar"})
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

    def _series_chart_sheet(self) -> None:
        """Attempts and bounces (columns) and the bounce rate (a line, right axis) per bucket,
        over the groups shown."""
        name = "over time"
        sheet = self.book.add_worksheet(name)
        for col, header in enumerate((f"{self.flt.by} (UTC)", "attempts", "bounces", "rate")):
            sheet.write_string(0, col, header, self.bold)
        sheet.set_column(0, 0, 20)
        buckets = sorted(self.per_bucket.items())
        for i, (at, (attempts, amount)) in enumerate(buckets, start=1):
            sheet.write_datetime(i, 0, _naive_utc(at), self.when)
            sheet.write_number(i, 1, attempts)
            sheet.write_number(i, 2, amount)
            rate = bounce_rate(amount, attempts)
            if rate is None:
                sheet.write_blank(i, 3, None)
            else:
                sheet.write_number(i, 3, rate, self.percent)
        last = max(len(buckets), 1)
        counts = self.book.add_chart({"type": "column"})
        for col, title in ((1, "attempts"), (2, "bounces")):
            counts.add_series(
                {
                    "name": title,
                    "categories": [name, 1, 0, last, 0],
                    "values": [name, 1, col, last, col],
                }
            )
        rate_line = self.book.add_chart({"type": "line"})
        rate_line.add_series(
            {
                "name": "bounce rate",
                "categories": [name, 1, 0, last, 0],
                "values": [name, 1, 3, last, 3],
                "y2_axis": True,
            }
        )
        counts.combine(rate_line)
        counts.set_title({"name": f"Attempts, bounces and bounce rate per {self.flt.by}"})
        counts.set_x_axis({"date_axis": True, "num_format": "yyyy-mm-dd hh:mm"})
        rate_line.set_y2_axis({"num_format": "0%"})
        counts.set_legend({"position": "bottom"})
        sheet.insert_chart(1, 5, counts, {"x_scale": 2, "y_scale": 1.5})


def _naive_utc(value: datetime) -> datetime:
    # Excel has no time zones: dates are written as UTC wall time (the header says so).
    return value.astimezone(UTC).replace(tzinfo=None)


# Shortcuts for rows already at hand and a file (the tests, the demo): the same writers.


async def write_csv(rows: Rows, flt: ReportFilter, out: TextIO) -> int:
    """CSV to a text stream (opened with newline="")."""
    return await write_rows(rows, flt, "csv", TextSink(out))


async def write_xlsx(rows: Rows, flt: ReportFilter, out: IO[bytes]) -> int:
    """XLSX to a binary file."""
    return await write_rows(rows, flt, "xlsx", out)


async def render_table(
    rows: Rows, flt: ReportFilter, out: TextIO, *, width: int = TABLE_WIDTH
) -> int:
    """The terminal table to a text stream."""
    return await write_rows(rows, flt, "table", TextSink(out), width=width)
