"""The bounces report: filters -> rows -> a table, CSV, Excel or JSON, through one ``export``.

An analyst picks a period, a campaign (or all), a bounce type and a grouping
(sending From domain or sending IP); each row is one (group, bounce text)
with the amount of bounce events (resends count), the distinct messages and
recipient domains, the category and when it was first and last seen.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import IO, Any, Literal, Protocol, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.text import printable
from relay.store import ReportRow, Store

__all__ = [
    "COLUMNS",
    "SAMPLE",
    "Column",
    "Format",
    "Kind",
    "ReportError",
    "ReportFilter",
    "Sink",
    "TextSink",
    "export",
    "neutralise",
    "parse_filter",
    "render_table",
    "write_csv",
    "write_rows",
    "write_xlsx",
]

TYPES = {"soft": ("soft_bounce",), "hard": ("hard_bounce",), "all": ("soft_bounce", "hard_bounce")}
GROUPINGS = {"from-domain": "from_domain", "ip": "source_ip"}
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
    TIME = "time"  # UTC: "YYYY-MM-DD HH:MM:SS" as text, a date in XLSX, ISO 8601 in JSON


@dataclass(frozen=True)
class Column:
    """One column of the report, for every format."""

    name: str  # the header (table, CSV, XLSX, admin page) and the JSON key
    kind: Kind
    value: Callable[[ReportRow], str | int | datetime | None]
    width: int  # characters: the XLSX column's width
    total: Literal["sum", "min", "max"] | None = None  # what the total row shows, if anything
    cut: bool = False  # the terminal table cuts it at export's ``width`` (long bounce texts)

    def text(self, row: ReportRow) -> str:
        """The value as text: a CSV cell, a table cell (before escaping), an admin page cell."""
        return _as_text(self.value(row))

    def json(self, row: ReportRow) -> str | int | None:
        value = self.value(row)
        return value.isoformat() if isinstance(value, datetime) else value


def _as_text(value: str | int | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


# The columns, in order. The first is named after the grouping (from_domain or source_ip:
# see ReportFilter.columns); `sample` follows the last with --raw.
COLUMNS: tuple[Column, ...] = (
    Column("group", Kind.TEXT, attrgetter("group"), 18),
    Column("bounce_text", Kind.TEXT, attrgetter("bounce_text"), 70, cut=True),
    Column("code", Kind.TEXT, attrgetter("code"), 10),
    Column("amount", Kind.COUNT, attrgetter("amount"), 10, total="sum"),
    Column("messages", Kind.COUNT, attrgetter("messages"), 10, total="sum"),
    # distinct per row: a sum over rows would count a domain once per row
    Column("recipient_domains", Kind.COUNT, attrgetter("recipient_domains"), 18),
    Column("category", Kind.TEXT, attrgetter("category"), 18),
    Column("first_seen", Kind.TIME, attrgetter("first_seen"), 20, total="min"),
    Column("last_seen", Kind.TIME, attrgetter("last_seen"), 20, total="max"),
)
SAMPLE = Column("sample", Kind.TEXT, attrgetter("sample"), 70)


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
    def columns(self) -> tuple[Column, ...]:
        """The report's columns under this filter: ``COLUMNS`` with the group column named
        after the grouping, and ``sample`` with ``raw``."""
        named = (replace(COLUMNS[0], name=self.group_column), *COLUMNS[1:])
        return (*named, SAMPLE) if self.raw else named


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


class _Totals:
    """The total row, accumulated as rows pass: ``Column.total`` of each column."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        self.columns = columns
        self.values: list[Any] = [0 if c.total == "sum" else None for c in columns]

    def add(self, row: ReportRow) -> None:
        for i, column in enumerate(self.columns):
            if column.total is None:
                continue
            value, held = column.value(row), self.values[i]
            if column.total == "sum":
                self.values[i] = held + value
            elif held is None:
                self.values[i] = value
            else:
                self.values[i] = min(held, value) if column.total == "min" else max(held, value)

    def cells(self) -> list[Any]:
        """Label first, then each column's total (None: nothing to show)."""
        return ["total", *self.values[1:]]


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
    rows = store.iter_bounce_report(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
    )
    return await write_rows(rows, flt, fmt, out, progress=progress, width=width)


async def write_rows(
    rows: AsyncIterator[ReportRow],
    flt: ReportFilter,
    fmt: Format,
    out: Sink,
    *,
    progress: TextIO | None = None,
    width: int = TABLE_WIDTH,
) -> int:
    """``export`` for rows already at hand (``export`` passes the store's)."""
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
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()
    counter.done()
    return counter.rows


class _Lines:
    """The csv module's output stream: each row it writes goes to the sink as UTF-8."""

    def __init__(self, out: Sink) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text.encode("utf-8"))


async def _csv(
    rows: AsyncIterator[ReportRow], flt: ReportFilter, out: Sink, progress: _Progress
) -> None:
    """RFC 4180 (CRLF, header row, UTF-8), streamed; no total row."""
    columns = flt.columns
    writer = csv.writer(_Lines(out), lineterminator="\r\n")
    writer.writerow([c.name for c in columns])
    async for row in rows:
        writer.writerow([neutralise(c.text(row)) for c in columns])
        progress.tick()
        if progress.rows % _ROWS_PER_YIELD == 0:
            await asyncio.sleep(0)  # rows come in fetched batches: let other clients in


async def _json(
    rows: AsyncIterator[ReportRow], flt: ReportFilter, out: Sink, progress: _Progress
) -> None:
    """The filter echoed, then ``rows``: the bytes of ``json.dumps`` of the whole object,
    written a row at a time."""
    columns = flt.columns
    head = json.dumps(
        {
            "from": flt.start.isoformat(),
            "to": flt.end.isoformat(),
            "group_by": flt.group_column,
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
    out.write(b"]}")


async def _table(
    rows: AsyncIterator[ReportRow],
    flt: ReportFilter,
    out: Sink,
    width: int,
    progress: _Progress,
) -> None:
    """An aligned, readable table with a total row; texts of cut columns end at ``width``."""
    columns = flt.columns
    totals = _Totals(columns)
    lines = [[c.name for c in columns]]
    async for row in rows:
        lines.append([printable(c.text(row), width if c.cut else None) for c in columns])
        totals.add(row)
        progress.tick()
    total = [_as_text(v) for v in totals.cells()]
    widths = [max(len(line[i]) for line in [*lines, total]) for i in range(len(columns))]
    rule = ("  ".join("-" * w for w in widths) + "\n").encode()

    def line(cells: list[str]) -> bytes:
        shown = "  ".join(
            cell.rjust(w) if column.kind is Kind.COUNT else cell.ljust(w)
            for cell, w, column in zip(cells, widths, columns, strict=True)
        )
        return (shown.rstrip() + "\n").encode("utf-8")

    out.write(line(lines[0]))
    out.write(rule)
    for cells in lines[1:]:
        out.write(line(cells))
    out.write(rule)
    out.write(line(total))


async def _xlsx(
    rows: AsyncIterator[ReportRow], flt: ReportFilter, out: Sink, progress: _Progress
) -> None:
    # xlsxwriter's row files live in a directory of our own, removed even when the export
    # fails half-way (the workbook only deletes them when it closes).
    with tempfile.TemporaryDirectory(prefix="bounces-xlsx-") as scratch:
        book = await asyncio.to_thread(_Workbook, flt, out, scratch)
        batch: list[ReportRow] = []
        async for row in rows:
            batch.append(row)
            if len(batch) == _ROWS_PER_YIELD:
                await asyncio.to_thread(book.add, batch)
                progress.tick(len(batch))
                batch = []
        await asyncio.to_thread(book.add, batch)
        progress.tick(len(batch))
        # Closing zips every sheet: seconds of compression for a large report.
        await asyncio.to_thread(book.close)


class _Workbook:
    """The XLSX report: bold frozen header, autofilter, widths, real dates and numbers, a
    total row, and a second sheet charting the amount per group; constant-memory mode.
    Used from worker threads, one call at a time (``_xlsx`` awaits each)."""

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
        for col, column in enumerate(self.columns):
            self.sheet.write_string(0, col, column.name, self.bold)
            self.sheet.set_column(col, col, column.width)
        self.sheet.freeze_panes(1, 0)
        self.totals = _Totals(self.columns)
        self.per_group: dict[str, int] = {}
        self.rows = 0

    def add(self, batch: list[ReportRow]) -> None:
        for row in batch:
            self.rows += 1
            for col, column in enumerate(self.columns):
                self._cell(self.rows, col, column.kind, column.value(row))
            self.totals.add(row)
            self.per_group[row.group] = self.per_group.get(row.group, 0) + row.amount

    def _cell(self, r: int, c: int, kind: Kind, value: Any, style: Any = None) -> None:
        if kind is Kind.COUNT:
            self.sheet.write_number(r, c, value, style)
        elif kind is Kind.TIME:
            self.sheet.write_datetime(r, c, _naive_utc(value), style or self.when)
        else:
            self.sheet.write_string(r, c, neutralise(_as_text(value)), style)

    def close(self) -> None:
        total_row = self.rows + 1
        for col, value in enumerate(self.totals.cells()):
            if value is not None:
                kind = Kind.TEXT if col == 0 else self.columns[col].kind
                style = None if kind is Kind.TIME else self.bold  # dates keep their format
                self._cell(total_row, col, kind, value, style)
        self.sheet.autofilter(0, 0, max(self.rows, 1), len(self.columns) - 1)
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


def _naive_utc(value: datetime) -> datetime:
    # Excel has no time zones: dates are written as UTC wall time (the header says so).
    return value.astimezone(UTC).replace(tzinfo=None)


# Shortcuts for rows already at hand and a file (the tests, the demo): the same writers.


async def write_csv(rows: AsyncIterator[ReportRow], flt: ReportFilter, out: TextIO) -> int:
    """CSV to a text stream (opened with newline="")."""
    return await write_rows(rows, flt, "csv", TextSink(out))


async def write_xlsx(rows: AsyncIterator[ReportRow], flt: ReportFilter, out: IO[bytes]) -> int:
    """XLSX to a binary file."""
    return await write_rows(rows, flt, "xlsx", out)


async def render_table(
    rows: AsyncIterator[ReportRow], flt: ReportFilter, out: TextIO, *, width: int = TABLE_WIDTH
) -> int:
    """The terminal table to a text stream."""
    return await write_rows(rows, flt, "table", TextSink(out), width=width)
