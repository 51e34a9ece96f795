"""The bounces report page (/report) and its downloads (/report.csv, /report.xlsx:
``relay.reports.export``'s); the bounce events behind one of its rows are
``report_rows`` (/report/rows), which reads its query with ``report_filter``.

The page is a GET form and links, no script. A period is a preset (the last 24 hours, 7 or
30 days, up to the end of the relay's current hour) or two dates, whole UTC days with the
To date included. Dates win: the form carries the preset along hidden, and a date typed
into it makes the period custom. Then the campaigns (any number; none is all), the grouping,
the bounce type and the bounce-rate threshold.

The table is the report's own rows and columns (``report.columns``, the CLI's and the
downloads'), at most ``ROW_CAP`` of them, those with the most bounce events (the downloads
hold every row), sorted here by any column; its total row is the store's (the whole
filter, each message once), never a sum of the rows shown. A row whose bounce rate is
above the threshold says so in words as well as colour. A row's amount links to the bounce
events behind it (/report/rows, by the row's template key).

The chart is ``relay.web.chart``: attempts, bounces and the bounce rate per hour (periods up
to two days) or per day, summed over the groups, from ``store.iter_bounce_series``.

Whatever the query string holds is checked, and a refusal shows the form again with what
was typed and a message in the form's own words (``LABELS``), never the CLI's flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from relay.reports import export as report
from relay.store import ReportRow, ReportTotals
from relay.web.api import BadNumber, parse_number
from relay.web.chart import Point, chart_with_numbers
from relay.web.downloads import send_report
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.shell import (
    Guard,
    PageContext,
    Pages,
    error_notice,
    whole_page,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "GROUPINGS",
    "LABELS",
    "PRESETS",
    "ROW_CAP",
    "TYPES",
    "Refused",
    "add_routes",
    "exact_query",
    "period_text",
    "report_filter",
]

TITLE = "Bounces report"
# name in the query -> (words on the page, length up to the end of the current hour)
PRESETS = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_PRESET = "30d"
ROW_CAP = 500  # rows the page shows, those with the most bounce events; downloads hold all
MAX_CAMPAIGNS = 100  # chosen at once
DEFAULT_THRESHOLD = 5  # percent
HOURLY_UP_TO = timedelta(days=2)  # longer periods are charted per day
MAX_SLOTS = 400  # the chart's bars; a longer period folds several days into one
GROUPINGS = (("from-domain", "From domain"), ("ip", "Source IP"), ("provider", "Provider"))
TYPES = (("soft", "Soft"), ("hard", "Hard"), ("all", "Soft and hard"))
# What parse_filter's messages call each option here: the form's labels.
LABELS = {"from": "From date", "to": "To date", "type": "Type", "group-by": "Group by"}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_COMPARABLE = (report.Kind.COUNT, report.Kind.RATE, report.Kind.TIME)


class Refused(ValueError):
    """What is wrong with the query, in the page's words (the drill-down's too)."""


@dataclass(frozen=True)
class _Typed:
    """The query as typed: what the form shows again, and what links carry along."""

    period: str
    start: str
    end: str
    campaigns: tuple[str, ...]
    kind: str
    group_by: str
    threshold: str
    sort: str
    direction: str

    @classmethod
    def of(cls, query: MultiMapping[str]) -> _Typed:
        def one(name: str, default: str = "") -> str:
            return str(query.get(name, default)).strip()

        campaigns = dict.fromkeys(c for c in query.getall("campaign", []) if c)
        return cls(
            period=one("period"),
            start=one("from"),
            end=one("to"),
            campaigns=tuple(campaigns),
            kind=one("type", "soft"),
            group_by=one("group_by", "from-domain"),
            threshold=one("threshold"),
            sort=one("sort"),
            direction=one("dir"),
        )

    @property
    def custom(self) -> bool:
        """Dates typed: they are the period, whatever preset came along."""
        return bool(self.start or self.end)

    def params(self, **changed: str) -> list[tuple[str, str]]:
        """The query that shows this report again (``changed`` replaced, "" left out)."""
        current = {
            "period": "" if self.custom else self.period,
            "from": self.start,
            "to": self.end,
            "type": self.kind,
            "group_by": self.group_by,
            "threshold": self.threshold,
            "sort": self.sort,
            "dir": self.direction,
        } | changed
        pairs = [(k, v) for k, v in current.items() if v]
        return pairs + [("campaign", c) for c in self.campaigns]


@dataclass(frozen=True)
class _View:
    """The checked query: the report's filter and how the page shows it."""

    flt: report.ReportFilter
    preset: str | None  # None: dates
    threshold: int
    sort: str  # a column's name
    descending: bool


def _period(typed: _Typed, now: datetime) -> tuple[str | None, str | None, str | None]:
    """The preset, and the start and end for ``parse_filter`` (None: its default): a date
    is a whole UTC day, the To date's included; a datetime is taken as it is."""
    if not typed.custom:
        preset = typed.period or DEFAULT_PRESET
        if preset not in PRESETS:
            choices = ", ".join(f"{key} ({words})" for key, (words, _) in PRESETS.items())
            raise Refused(f"Period {preset!r}: use one of {choices}, or pick dates")
        upper = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        upper += timedelta(hours=1)
        return preset, (upper - PRESETS[preset][1]).isoformat(), upper.isoformat()
    first, last = _day(typed.start, "From date"), _day(typed.end, "To date")
    if first and last and last < first:
        raise Refused(
            f"To date {last} is before From date {first}: pick a To date on or after the "
            "From date (it is included)"
        )
    end = typed.end or None
    if last is not None:
        if last == date.max:
            raise Refused(f"To date {last}: pick a day before {date.max}")
        end = (last + timedelta(days=1)).isoformat()  # the day included: up to its end
    return None, typed.start or None, end


def _day(typed: str, label: str) -> date | None:
    """A date as the date input sends it (YYYY-MM-DD); None for anything else."""
    if not _DATE.match(typed):
        return None
    try:
        return date.fromisoformat(typed)
    except ValueError as exc:
        raise Refused(f"{label} {typed!r} is not a date: use YYYY-MM-DD") from exc


def _check(typed: _Typed, now: datetime) -> _View:
    """``typed`` checked and converted; ``Refused`` says what to change, in page words."""
    if len(typed.campaigns) > MAX_CAMPAIGNS:
        raise Refused(f"Campaigns: pick at most {MAX_CAMPAIGNS} at once")
    if any("\x00" in c for c in typed.campaigns):
        # PostgreSQL text cannot hold one, and a stored campaign never does (store.clean)
        raise Refused("Campaigns: a NUL character is in no campaign's name")
    preset, start, end = _period(typed, now)
    try:
        flt = report.parse_filter(
            start=start,
            end=end,
            campaigns=list(typed.campaigns),
            kind=typed.kind,
            group_by=typed.group_by,
            top=ROW_CAP + 1,  # one more than shown: says whether rows were cut
            now=now,
            labels=LABELS,
        )
        threshold = parse_number(typed.threshold, "Bounce rate threshold", 0, 100)
    except OverflowError as exc:
        raise Refused(
            "From date, To date: the period reaches outside the years 1 to 9999; pick dates "
            "within them"
        ) from exc
    except (report.ReportError, BadNumber) as exc:
        raise Refused(str(exc)) from exc
    names = [c.name for c in flt.columns]
    sort = typed.sort or "amount"
    if sort not in names:
        raise Refused(f"Sort {sort!r}: pick a column: {', '.join(names)}")
    if typed.direction not in ("", "asc", "desc"):
        raise Refused(f"Order {typed.direction!r}: use asc or desc")
    descending = typed.direction == "desc" or (not typed.direction and _numeric(flt, sort))
    return _View(
        flt=flt,
        preset=preset,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        sort=sort,
        descending=descending,
    )


def _numeric(flt: report.ReportFilter, name: str) -> bool:
    """Counts, rates and times sort largest first unless asked; texts from A."""
    return next(c.kind for c in flt.columns if c.name == name) in _COMPARABLE


def report_filter(query: MultiMapping[str], now: datetime) -> report.ReportFilter:
    """The report's filter that ``query`` asks for, its sorting left out: the filter of a
    row's events (/report/rows), checked as this page checks its own."""
    return _check(replace(_Typed.of(query), sort="", direction=""), now).flt


def exact_query(flt: report.ReportFilter) -> list[tuple[str, str]]:
    """The filter as its exact period, for downloads, the events behind a row and the way
    back from them."""
    kind = next(k for k, v in report.TYPES.items() if v == flt.types)
    return [
        ("from", flt.start.isoformat()),
        ("to", flt.end.isoformat()),
        ("type", kind),
        ("group_by", flt.group_by),
    ] + [("campaign", c) for c in flt.campaigns]


def period_text(flt: report.ReportFilter) -> str:
    start, end = flt.start.astimezone(UTC), flt.end.astimezone(UTC)
    # isoformat: four digits of year even before 1000 (strftime's %Y gives "1")
    return f"{start.date()} {start:%H:%M} to {end.date()} {end:%H:%M} UTC"


# --- the form ---------------------------------------------------------------------------


def _select(name: str, choices: Iterable[tuple[str, str]], current: str) -> Markup:
    options = (element("option", words, value=v, selected=v == current) for v, words in choices)
    return element("select", *options, name=name)


def _form(typed: _Typed, view: _View | None, offered: Sequence[str]) -> Markup:
    """The filters, showing what was typed (the dates of the period shown, for dates)."""
    start, end = typed.start, typed.end
    if view is not None and view.preset is None:
        # a period given as datetimes (a link from the events page) shown as its days
        start = start if _DATE.match(start) else view.flt.start.date().isoformat()
        last_day = view.flt.end - timedelta(microseconds=1)
        end = end if _DATE.match(end) else last_day.date().isoformat()
    campaigns = [*typed.campaigns, *(c for c in offered if c not in typed.campaigns)]
    options = (element("option", c, value=c, selected=c in typed.campaigns) for c in campaigns)
    kept = ("sort", typed.sort), ("dir", typed.direction)
    hidden = [("period", typed.period)] if not typed.custom else []
    return element(
        "form",
        *(element("input", type="hidden", name=k, value=v) for k, v in [*hidden, *kept] if v),
        element(
            "label", "From date (UTC) ", element("input", type="date", name="from", value=start)
        ),
        element(
            "label",
            "To date (UTC, included) ",
            element("input", type="date", name="to", value=end),
        ),
        element(
            "label",
            "Campaigns (none chosen: all) ",
            element(
                "select",
                *options,
                name="campaign",
                multiple=True,
                size=max(2, min(6, len(campaigns))),
            ),
        ),
        element("label", "Group by ", _select("group_by", GROUPINGS, typed.group_by)),
        element("label", "Type ", _select("type", TYPES, typed.kind)),
        element(
            "label",
            "Bounce rate threshold (%) ",
            element(
                "input",
                type="number",
                name="threshold",
                min=0,
                max=100,
                step=1,
                value=typed.threshold or (view.threshold if view else DEFAULT_THRESHOLD),
            ),
        ),
        element("button", "Show"),
        method="get",
        action="/report",
        class_="filters",
    )


def _presets(typed: _Typed, view: _View) -> Markup:
    """The presets as links keeping the other filters; the one shown is plain text."""
    choices: list[Content] = []
    for key, (words, _) in PRESETS.items():
        if key == view.preset:
            choices.append(element("strong", words, aria_current="true"))
        else:
            query = urlencode(typed.params(period=key, **{"from": "", "to": ""}))
            choices.append(link(f"/report?{query}", words))
    dates = " (the dates below)" if view.preset is None else ""
    return element(
        "p",
        "Period: ",
        *_between(choices, " · "),
        element("span", f" Showing {period_text(view.flt)}{dates}.", class_="muted"),
    )


def _between(parts: Sequence[Content], separator: str) -> list[Content]:
    joined: list[Content] = []
    for i, part in enumerate(parts):
        joined.extend([separator, part] if i else [part])
    return joined


# --- the table ----------------------------------------------------------------------------


def _percent(bounces: int, attempts: int) -> float | None:
    return 100 * bounces / attempts if attempts else None


def _rate_cell(rate: float | None, threshold: int) -> Content:
    if rate is None:
        return ""
    if rate > threshold:
        return element("span", f"{rate:.2f}% above threshold", class_="over")
    return f"{rate:.2f}%"


def _sort_key(column: report.Column) -> Callable[[ReportRow], Any]:
    if column.kind in _COMPARABLE:
        return column.value
    return lambda row: column.text(row).casefold()


def _sorted(rows: list[ReportRow], view: _View) -> list[ReportRow]:
    """By the chosen column, ties in the report's order; a row without a value (no rate)
    last either way."""
    column = next(c for c in view.flt.columns if c.name == view.sort)
    missing = [r for r in rows if column.value(r) is None]
    present = [r for r in rows if column.value(r) is not None]
    return sorted(present, key=_sort_key(column), reverse=view.descending) + missing


def _header(column: report.Column, typed: _Typed, view: _View) -> Markup:
    """A column's name (the CLI's and the downloads') as a link that sorts by it: the other
    way round if it is the sort, else its natural way (texts A to Z, the rest largest)."""
    if column.name == view.sort:
        direction = "asc" if view.descending else "desc"
    else:
        direction = "desc" if column.kind in _COMPARABLE else "asc"
    label = f"sort by {column.name}, {_order_words(column, descending=direction == 'desc')}"
    query = urlencode(typed.params(sort=column.name, dir=direction))
    return link(f"/report?{query}", column.name, aria_label=label)


def _order_words(column: report.Column, *, descending: bool) -> str:
    if column.kind is report.Kind.TIME:
        return "newest first" if descending else "oldest first"
    if column.kind in _COMPARABLE:
        return "largest first" if descending else "smallest first"
    return "Z to A" if descending else "A to Z"


def _sorted_by(view: _View) -> str:
    column = next(c for c in view.flt.columns if c.name == view.sort)
    order = _order_words(column, descending=view.descending)
    return f"Sorted by {column.name}, {order}; a column's name sorts by it."


def _cells(row: ReportRow, view: _View) -> list[Content]:
    """A row's cells; its amount links to the bounce events behind it."""
    cells: list[Content] = []
    for column in view.flt.columns:
        if column.kind is report.Kind.RATE:
            cells.append(_rate_cell(_percent(row.amount, row.attempts), view.threshold))
        elif column.name == "amount":
            cells.append(
                link(
                    _rows_link(row, view.flt),
                    column.text(row),
                    title=f"the {row.amount} bounce events behind this row",
                )
            )
        else:
            cells.append(column.text(row))
    return cells


def _totals(totals: ReportTotals | None, view: _View) -> list[Content]:
    """The store's total line in the report's columns (``Column.total``), as the CLI's."""
    cells: list[Content] = []
    for column in view.flt.columns:
        value = column.total(totals) if column.total and totals else None
        if column.kind is report.Kind.RATE and totals is not None:
            cells.append(_rate_cell(_percent(totals.amount, totals.attempts), view.threshold))
        elif isinstance(value, datetime):
            cells.append(f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}")
        else:
            cells.append(value if value is None or isinstance(value, str) else str(value))
    return cells


def _rows_link(row: ReportRow, flt: report.ReportFilter) -> str:
    query = [*exact_query(flt), ("group", row.group), ("key", row.template_key)]
    return f"/report/rows?{urlencode(query)}"


def _report_table(
    rows: list[ReportRow], totals: ReportTotals | None, typed: _Typed, view: _View
) -> Markup:
    columns = view.flt.columns
    return table(
        [_header(c, typed, view) for c in columns],
        (_cells(r, view) for r in _sorted(rows, view)),
        numeric=(
            i for i, c in enumerate(columns) if c.kind in (report.Kind.COUNT, report.Kind.RATE)
        ),
        caption=_sorted_by(view),
        foot=_totals(totals, view),
    )


# --- the chart ----------------------------------------------------------------------------


def _slots(flt: report.ReportFilter) -> tuple[str, datetime, timedelta, int]:
    """What to ask the store for (hour or day), the first slot, a slot's length and the
    number of slots: per hour up to two days, else per day, several days a slot when the
    period has more than ``MAX_SLOTS`` of them."""
    if flt.end - flt.start <= HOURLY_UP_TO:
        hour = timedelta(hours=1)
        return "hour", flt.start, hour, math.ceil((flt.end - flt.start) / hour)
    first = flt.start.replace(hour=0)
    days = math.ceil((flt.end - first) / timedelta(days=1))
    per = math.ceil(days / MAX_SLOTS)
    return "day", first, timedelta(days=per), math.ceil(days / per)


def _chart_label(flt: report.ReportFilter, step: timedelta) -> str:
    unit = "hour" if step < timedelta(days=1) else "day" if step.days == 1 else f"{step.days} days"
    chosen = f", campaigns {', '.join(flt.campaigns)}" if flt.campaigns else ""
    return f"Attempts, bounces and bounce rate per {unit}, {period_text(flt)}{chosen}"


# --- the pages ----------------------------------------------------------------------------


class ReportPages(Pages):
    """/report, /report.csv, /report.xlsx."""

    async def report_page(self, request: web.Request) -> web.Response:
        typed = _Typed.of(request.query)
        try:
            view = _check(typed, self.clock())
        except Refused as exc:
            body = concat(error_notice(str(exc)), _form(typed, None, ()))
            return whole_page(request, TITLE, body, status=400)
        flt = view.flt
        offered = await self.store.campaigns_in_period(flt.start, flt.end)
        stream = self.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )
        try:
            rows = [r async for r in stream]
        finally:
            await stream.aclose()
        cut = len(rows) > ROW_CAP
        rows = rows[:ROW_CAP]
        body = concat(
            _presets(typed, view),
            _form(typed, view, offered),
            await self._chart(view),
            self._downloads(flt),
            element("h2", "Rows"),
            self._summary(rows, stream.totals, view, cut),
            _report_table(rows, stream.totals, typed, view),
        )
        return whole_page(request, TITLE, body)

    async def _chart(self, view: _View) -> Markup:
        flt = view.flt
        by, first, step, count = _slots(flt)
        attempts, bounces = [0] * count, [0] * count
        series = self.store.iter_bounce_series(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, None, by
        )
        try:
            async for point in series:  # a point per group: summed over them
                slot = min(count - 1, (point.bucket - first) // step)
                attempts[slot] += point.attempts
                bounces[slot] += point.amount
        finally:
            await series.aclose()
        points = [Point(first + i * step, attempts[i], bounces[i]) for i in range(count)]
        return chart_with_numbers(points, step, _chart_label(flt, step), view.threshold)

    @staticmethod
    def _downloads(flt: report.ReportFilter) -> Markup:
        query = urlencode(exact_query(flt))
        return element(
            "p",
            "Download every row: ",
            link(f"/report.csv?{query}", "CSV"),
            " · ",
            link(f"/report.xlsx?{query}", "Excel"),
        )

    @staticmethod
    def _summary(
        rows: list[ReportRow], totals: ReportTotals | None, view: _View, cut: bool
    ) -> Markup:
        amount = totals.amount if totals else 0
        messages = totals.messages if totals else 0
        shown = (
            f"The {ROW_CAP} rows with the most bounce events, sorted among themselves; more "
            "rows match (the downloads hold them all). "
            if cut
            else f"{len(rows)} rows. "
        )
        return element(
            "p",
            shown,
            f"{amount} bounce events of {messages} messages in the whole filter. ",
            f"Bounce rates above {view.threshold}% are marked “above threshold”.",
            class_="muted",
        )

    async def report_file(self, request: web.Request) -> web.StreamResponse:
        fmt: report.Format = "xlsx" if request.match_info["fmt"] == "xlsx" else "csv"
        try:
            view = _check(_Typed.of(request.query), self.clock())
        except Refused as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return await send_report(request, self.store, replace(view.flt, top=None), fmt)


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = ReportPages(ctx)
    app.router.add_get("/report", guarded(pages.report_page))
    app.router.add_get(r"/report.{fmt:csv|xlsx}", guarded(pages.report_file))
