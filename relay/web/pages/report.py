"""The bounces report page and its downloads (CSV, Excel): ``relay.reports.export``'s."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from relay.reports import export as report
from relay.store import ReportRow
from relay.web.api import PERIOD_OUT_OF_RANGE
from relay.web.downloads import send_report
from relay.web.html import Markup, concat, element, link, table
from relay.web.pages.shell import Guard, PageContext, Pages, error_notice, whole_page


def _chart(per_day: list[tuple[datetime, str, int]]) -> Markup:
    """Soft and hard bounces per day as bars in inline SVG (no script, no CDN)."""
    days = sorted({d for d, _, _ in per_day})
    if not days:
        return element("p", "No bounces in this period.", class_="muted")
    amounts = {(d, t): n for d, t, n in per_day}
    top = max(n for _, _, n in per_day) or 1
    width, height, bar = max(240, 24 * len(days) + 80), 160, 10
    bars = []
    for i, day in enumerate(days):
        for j, (kind, colour) in enumerate(
            (("soft_bounce", "#e0a030"), ("hard_bounce", "#c03030"))
        ):
            n = amounts.get((day, kind), 0)
            h = int(120 * n / top)
            bars.append(
                element(
                    "rect",
                    element("title", f"{day:%Y-%m-%d} {kind}: {n}"),
                    x=30 + i * 24 + j * bar,
                    y=130 - h,
                    width=bar - 1,
                    height=h,
                    fill=colour,
                )
            )
    labels = [element("text", f"{days[0]:%Y-%m-%d}", x=30, y=150, font_size=10)]
    if len(days) > 4:
        last = 30 + (len(days) - 1) * 24
        labels.append(element("text", f"{days[-1]:%m-%d}", x=last, y=150, font_size=10))
    legend = (
        element("text", "soft", x=30, y=12, font_size=11, fill="#e0a030"),
        element("text", "hard", x=70, y=12, font_size=11, fill="#c03030"),
    )
    return element(
        "svg",
        *legend,
        *bars,
        *labels,
        role="img",
        aria_label="bounces per day",
        width=width,
        height=height,
    )


class ReportPages(Pages):
    """/report, /report.csv, /report.xlsx."""

    def _filter(self, request: web.Request) -> report.ReportFilter:
        q = request.query
        return report.parse_filter(
            start=q.get("from") or None,
            end=q.get("to") or None,
            campaigns=[c for c in q.getall("campaign", []) if c],
            kind=q.get("type", "soft"),
            group_by=q.get("group_by", "from-domain"),
            now=self.clock(),
        )

    def _rows(self, flt: report.ReportFilter) -> Any:
        return self.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )

    def _checked_filter(self, request: web.Request) -> report.ReportFilter:
        """The report's filter from the query; ``ValueError`` says what is wrong with it."""
        try:
            return self._filter(request)
        except OverflowError as exc:
            raise ValueError(PERIOD_OUT_OF_RANGE) from exc

    async def report_page(self, request: web.Request) -> web.Response:
        try:
            flt = self._checked_filter(request)
        except ValueError as exc:  # ReportError, or a period beyond the calendar
            back = element("p", link("/report", "Back"))
            return whole_page(
                request, "Bounces report", concat(error_notice(str(exc)), back), status=400
            )
        campaigns = await self.store.campaigns_in_period(flt.start, flt.end)
        rows: list[ReportRow] = [r async for r in self._rows(flt)]
        per_day = await self.store.bounces_per_day(flt.start, flt.end, flt.campaigns or None)

        def pick(name: str, values: list[str], current: str) -> Markup:
            options = (element("option", v, selected=v == current) for v in values)
            return element("select", *options, name=name)

        kind = next(k for k, v in report.TYPES.items() if v == flt.types)
        campaign_options = (
            element("option", c, value=c, selected=c in flt.campaigns) for c in campaigns
        )
        form = element(
            "form",
            "From ",
            element("input", name="from", value=f"{flt.start:%Y-%m-%dT%H:%M}"),
            " to ",
            element("input", name="to", value=f"{flt.end:%Y-%m-%dT%H:%M}"),
            " (UTC) campaign ",
            element(
                "select", element("option", "all", value=""), *campaign_options, name="campaign"
            ),
            " group by ",
            pick("group_by", ["from-domain", "ip"], flt.group_by),
            " type ",
            pick("type", ["soft", "hard", "all"], kind),
            " ",
            element("button", "Show"),
            method="get",
            action="/report",
        )
        query = urlencode(
            [
                ("from", flt.start.isoformat()),
                ("to", flt.end.isoformat()),
                ("type", kind),
                ("group_by", flt.group_by),
            ]
            + [("campaign", c) for c in flt.campaigns]
        )
        downloads = element(
            "p",
            "Download: ",
            link(f"/report.csv?{query}", "CSV"),
            " · ",
            link(f"/report.xlsx?{query}", "Excel"),
        )
        # The report's own columns, each cell the text the CLI's table and CSV show.
        columns = flt.columns
        rows_table = table(
            [c.name for c in columns],
            ([c.text(r) for c in columns] for r in rows),
            numeric=(i for i, c in enumerate(columns) if c.kind is report.Kind.COUNT),
        )
        total = sum(r.amount for r in rows)
        summary = element("p", f"{len(rows)} rows, {total} bounce events.", class_="muted")
        body = concat(form, _chart(per_day), downloads, rows_table, summary)
        return whole_page(request, "Bounces report", body)

    async def report_file(self, request: web.Request) -> web.StreamResponse:
        fmt: report.Format = "xlsx" if request.match_info["fmt"] == "xlsx" else "csv"
        try:
            flt = self._checked_filter(request)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return await send_report(request, self.store, flt, fmt)


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = ReportPages(ctx)
    app.router.add_get("/report", guarded(pages.report_page))
    app.router.add_get(r"/report.{fmt:csv|xlsx}", guarded(pages.report_file))
