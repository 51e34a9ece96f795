"""The bounce events behind one row of the bounces report (/report/rows): the row's
amount on the report links here, with the report's filter as its exact period, the row's
group and its template key.

The events are ``store.report_row_events``, newest first, ``EVENTS_PER_PAGE`` at a time,
paged by the last one shown (its time and id), so a page never shifts when newer events
arrive. The filter is read and checked as the report reads it (``report.report_filter``);
a refusal says what is wrong in the report form's words and links back to the report.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from relay.reports import export as report
from relay.store import ReportRowEvent
from relay.web.api import BadNumber, parse_number
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.report import (
    GROUPINGS,
    TYPES,
    Refused,
    exact_query,
    period_text,
    report_filter,
)
from relay.web.pages.shell import MAX_ID, Guard, PageContext, Pages, error_notice, when, whole_page

__all__ = ["EVENTS_PER_PAGE", "add_routes"]

TITLE = "Bounce events behind a report row"
EVENTS_PER_PAGE = 200  # events behind a row, a page at a time
_KEY = re.compile(r"[0-9a-f]{32}\Z")  # a template key, as the report's links carry it


class ReportRowsPages(Pages):
    """/report/rows."""

    async def rows_page(self, request: web.Request) -> web.Response:
        """The bounce events behind one report row, newest first, a page at a time."""
        query = request.query
        try:
            flt = report_filter(query, self.clock())
            group, key, before = _row_of(query)
        except Refused as exc:
            back = element("p", link("/report", "Back to the report"))
            return whole_page(request, TITLE, concat(error_notice(str(exc)), back), status=400)
        found = await self.store.report_row_events(
            flt.start,
            flt.end,
            flt.types,
            flt.campaigns,
            flt.group_by,
            group,
            key,
            before,
            EVENTS_PER_PAGE + 1,
        )
        events, more = found[:EVENTS_PER_PAGE], len(found) > EVENTS_PER_PAGE
        report_url = f"/report?{urlencode(exact_query(flt))}"
        body = concat(
            _row_heading(flt, group, events),
            _events_table(events),
            _events_pager(query, events, more, report_url, before is not None),
        )
        return whole_page(request, TITLE, body)


def _row_of(query: MultiMapping[str]) -> tuple[str, str, tuple[datetime, int] | None]:
    """The row (its group and template key) and where the page starts (None: the newest)."""
    if "group" not in query or not _KEY.match(str(query.get("key", ""))):
        raise Refused("This link names no report row: follow a row's amount on the report")
    before_at, before_id = str(query.get("before", "")), query.get("before_id")
    group = str(query["group"])
    if "\x00" in group:
        raise Refused("Group: a NUL character is in no group's name")
    if not before_at and not before_id:
        return group, str(query["key"]), None
    try:
        number = parse_number(before_id, "Older than (event)", 1, MAX_ID)
        at = datetime.fromisoformat(before_at)
        if at.tzinfo is None or number is None:
            raise ValueError("no UTC offset, or no event")
        at = at.astimezone(UTC)
    except BadNumber as exc:
        raise Refused(str(exc)) from exc
    except (ValueError, OverflowError) as exc:
        raise Refused(
            f"Older than {before_at!r}: give a date and time with its UTC offset, and an event"
        ) from exc
    return group, str(query["key"]), (at, number)


def _row_heading(flt: report.ReportFilter, group: str, events: list[ReportRowEvent]) -> Markup:
    grouping = dict(GROUPINGS)[flt.group_by]
    kind = dict(TYPES)[next(k for k, v in report.TYPES.items() if v == flt.types)]
    facts: list[tuple[str, Content]] = [
        (grouping, group or "(none)"),
        ("Template", events[0].template if events else ""),
        ("Period", period_text(flt)),
        ("Type", kind),
        ("Campaigns", ", ".join(flt.campaigns) or "all"),
    ]
    return element(
        "dl",
        *(concat(element("dt", name), element("dd", value)) for name, value in facts),
    )


def _events_table(events: list[ReportRowEvent]) -> Markup:
    return table(
        [
            "when (UTC)",
            "type",
            "recipient",
            "code",
            "reply",
            "source IP",
            "campaign",
            "queue id",
            "Message-ID",
        ],
        (
            [
                when(e.occurred_at),
                e.type,
                link(f"/profile?{urlencode({'address': e.recipient})}", e.recipient)
                if e.recipient
                else "",
                e.code,
                e.reply_text,
                e.source_ip,
                e.campaign,
                e.queue_id,
                e.message_id,
            ]
            for e in events
        ),
        caption=f"{len(events)} events, newest first",
    )


def _events_pager(
    query: MultiMapping[str],
    events: list[ReportRowEvent],
    more: bool,
    back: str,
    paged: bool,
) -> Markup:
    links: list[Content] = [link(back, "Back to the report")]
    if paged:
        first = [(k, str(v)) for k, v in query.items() if k not in ("before", "before_id")]
        links.append(link(f"/report/rows?{urlencode(first)}", "Newest"))
    if more:
        last = events[-1]
        older = [(k, str(v)) for k, v in query.items() if k not in ("before", "before_id")]
        older += [("before", last.occurred_at.isoformat()), ("before_id", str(last.id))]
        links.append(link(f"/report/rows?{urlencode(older)}", f"Next {EVENTS_PER_PAGE} (older)"))
    return element("p", *links, class_="pager")


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = ReportRowsPages(ctx)
    app.router.add_get("/report/rows", guarded(pages.rows_page))
