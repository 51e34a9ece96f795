"""The suppression list page: the entries under a filter (address, source, category of the
bounce that caused them, when added), sorted and a page at a time with their total; removal
of the selected entries (audited, one transaction); the audit log.

The list as CSV and a CSV file imported (the CLI's ``suppression export`` and ``suppression
import``) are ``suppression_files``: the download takes this page's filter
(``checked_listing``), and the import form shown here posts to it, at most
``IMPORT_MAX_BYTES``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from multidict import MultiMapping

from policies.addresses import AddressError, normalise_address, validate_address
from policies.categories import Category
from relay.store import SuppressionFilter, SuppressionWithCause
from relay.store.suppression import SORTS, SOURCES
from relay.web.api import BadNumber, parse_number
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.profile import profile_url
from relay.web.pages.shell import (
    FORM,
    MAX_PAGE,
    PAGE_ROWS,
    SESSION,
    Guard,
    PageContext,
    Pages,
    actor,
    back_to,
    csrf_field,
    error_notice,
    outcome_notice,
    when,
    whole_page,
)

__all__ = [
    "IMPORT_MAX_BYTES",
    "MAX_REASON",
    "TITLE",
    "Listing",
    "Refused",
    "add_routes",
    "checked_listing",
    "refused_listing",
]

TITLE = "Suppression list"
# A suppression is caused by a bounce or a complaint, never by a delivery.
CATEGORIES = tuple(c.value for c in Category if c is not Category.DELIVERED)
DEFAULT_ORDER = {"since": "desc", "address": "asc"}  # newest first; A to Z
SORT_LABELS = {"since": "date added", "address": "address"}
MAX_SEARCH = 320  # characters of "address contains": more than any address holds
MAX_REASON = 1000  # characters of a removal's or an import's reason
MAX_SELECTED = 1000  # addresses one removal takes (a page shows PAGE_ROWS)
IMPORT_MAX_BYTES = 10 * 1024 * 1024  # a CSV file imported (the import form states it)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Refused(ValueError):
    """A request the page cannot act on; the text says why, in the page's words."""


@dataclass(frozen=True)
class Listing:
    """What the list's query string asks for, as typed: the form shows it again, and the
    links (pages, sorting, the CSV) carry it."""

    search: str = ""
    source: str = ""
    category: str = ""
    added_from: str = ""  # YYYY-MM-DD (UTC)
    added_to: str = ""  # YYYY-MM-DD (UTC), inclusive
    sort: str = "since"
    order: str = ""  # asc | desc; "" is the sort's default
    page: int = 1

    @property
    def descending(self) -> bool:
        return (self.order or DEFAULT_ORDER.get(self.sort, "desc")) == "desc"

    def params(self, *, paged: bool = True) -> list[tuple[str, str]]:
        """The query string's fields that are not their defaults."""
        fields = [
            ("search", self.search),
            ("source", self.source),
            ("category", self.category),
            ("from", self.added_from),
            ("to", self.added_to),
        ]
        if paged:
            fields.append(("sort", "" if self.sort == "since" else self.sort))
            fields.append(("order", self.order))
            fields.append(("page", str(self.page) if self.page > 1 else ""))
        return [(k, v) for k, v in fields if v]

    def url(self, path: str = "/suppression", **changes: Any) -> str:
        listing = replace(self, **changes)
        query = urlencode(listing.params(paged=path == "/suppression"))
        return f"{path}?{query}" if query else path

    def store_filter(self) -> SuppressionFilter:
        """The filter in the store's terms (the listing is ``checked``)."""
        before = _day(self.added_to) + timedelta(days=1) if self.added_to else None
        return SuppressionFilter(
            search=self.search or None,
            source=self.source or None,
            category=self.category or None,
            added_from=_day(self.added_from) if self.added_from else None,
            added_before=before,
        )


def _day(text: str) -> datetime:
    return datetime.combine(date.fromisoformat(text), time(), UTC)


def _typed(query: MultiMapping[str]) -> tuple[Listing, str]:
    """The listing as typed (page 1 when its number is not one) and the page number typed."""
    raw_page = query.get("page", "")
    page = int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) < 8 else 1
    listing = Listing(
        search=query.get("search", "").strip(),
        source=query.get("source", ""),
        category=query.get("category", ""),
        added_from=query.get("from", "").strip(),
        added_to=query.get("to", "").strip(),
        sort=query.get("sort", "") or "since",
        order=query.get("order", ""),
        page=max(page, 1),
    )
    return listing, raw_page


def _checked(listing: Listing, raw_page: str) -> None:
    """Raise ``Refused`` saying what is wrong with the listing asked for, in the form's words."""
    if len(listing.search) > MAX_SEARCH:
        raise Refused(f"Address contains: at most {MAX_SEARCH} characters.")
    if _CONTROL.search(listing.search):
        raise Refused("Address contains: no control characters (tab, line break, NUL ...).")
    if listing.source and listing.source not in SOURCES:
        raise Refused(f"Source: choose one of {', '.join(SOURCES)}, or all.")
    if listing.category and listing.category not in CATEGORIES:
        raise Refused("Category: choose one of the list, or all.")
    _checked_days(listing)
    if listing.sort not in SORTS:
        raise Refused("Sort by: address or date added.")
    if listing.order not in ("", "asc", "desc"):
        raise Refused("Order: ascending or descending.")
    try:
        parse_number(raw_page, "Page", 1, MAX_PAGE)
    except BadNumber as exc:
        raise Refused(f"{exc}.") from None


def _checked_days(listing: Listing) -> None:
    """Added from and Added to: days, in that order."""
    for label, text in (("Added from", listing.added_from), ("Added to", listing.added_to)):
        if not text:
            continue
        try:
            if not _DAY.match(text):
                raise ValueError(text)
            date.fromisoformat(text)
        except ValueError:
            shown = text if len(text) <= 24 else text[:24] + "..."
            raise Refused(f"{label}: {shown!r} is not a day (YYYY-MM-DD).") from None
    if listing.added_to == f"{date.max:%Y-%m-%d}":
        raise Refused(f"Added to: at most {date.max - timedelta(days=1):%Y-%m-%d}.")
    if listing.added_from and listing.added_to and listing.added_from > listing.added_to:
        raise Refused("Added from is after Added to: nothing can match.")


def checked_listing(query: MultiMapping[str]) -> Listing:
    """The listing ``query`` asks for; ``Refused`` says what is wrong, in the form's words."""
    listing, raw_page = _typed(query)
    _checked(listing, raw_page)
    return listing


def refused_listing(request: web.Request, why: str) -> web.Response:
    """The filter form again, with what was typed and ``why`` it was refused (400)."""
    body = concat(error_notice(why), _filter_form(_typed(request.query)[0]))
    return whole_page(request, TITLE, body, status=400)


# -- the page ------------------------------------------------------------------------------------


def _input(label: str, name: str, value: str = "", **attributes: str | bool) -> Markup:
    return element("label", label, element("input", name=name, value=value, **attributes))


def _select(label: str, name: str, options: Iterable[tuple[str, str]], current: str) -> Markup:
    """A labelled select of (value, text) options, ``current`` selected."""
    choices = (element("option", text, value=v, selected=v == current) for v, text in options)
    return element("label", label, element("select", *choices, name=name))


def _filter_form(listing: Listing) -> Markup:
    """The GET form of the filter and the sort, showing what was asked for."""
    every = [("", "all")]
    return element(
        "form",
        _input("Address contains", "search", listing.search, type="search"),
        _select("Source", "source", every + [(s, s) for s in SOURCES], listing.source),
        _select("Category", "category", every + [(c, c) for c in CATEGORIES], listing.category),
        _input("Added from (UTC)", "from", listing.added_from, type="date"),
        _input("Added to (UTC)", "to", listing.added_to, type="date"),
        _select("Sort by", "sort", SORT_LABELS.items(), listing.sort),
        _select(
            "Order",
            "order",
            [("desc", "descending"), ("asc", "ascending")],
            "desc" if listing.descending else "asc",
        ),
        element("button", "Show"),
        class_="filters",
        method="get",
        action="/suppression",
    )


def _sort_link(listing: Listing, key: str, label: str) -> Markup:
    """A column header that sorts by it: the other way round when it is the sort already."""
    if listing.sort != key:
        return link(listing.url(sort=key, order="", page=1), label)
    flipped = "asc" if listing.descending else "desc"
    arrow = " ↓" if listing.descending else " ↑"
    return link(listing.url(order=flipped, page=1), label + arrow)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}es"


def _pager(listing: Listing, total: int) -> Markup:
    """Previous and next, each only when that page has rows."""
    last = max(1, -(-total // PAGE_ROWS))
    previous = min(listing.page - 1, last)
    parts: list[Content] = []
    if previous >= 1:
        parts.append(link(listing.url(page=previous), "← previous page", rel="prev"))
    parts.append(element("span", f"page {listing.page:,} of {last:,}", class_="muted"))
    if listing.page < last and listing.page < MAX_PAGE:
        parts.append(link(listing.url(page=listing.page + 1), "next page →", rel="next"))
    return element("p", *parts, class_="pager")


def _rows_form(listing: Listing, entries: list[SuppressionWithCause], csrf: Markup) -> Markup:
    """The page's entries, each with a box to select it, in the form that removes them."""
    rows = [
        [
            element(
                "label",
                element(
                    "input",
                    type="checkbox",
                    name="address",
                    value=e.address,
                    aria_label=f"select {e.address}",
                ),
            ),
            link(profile_url(e.address), e.address),
            e.source,
            when(e.created_at),
            e.reason,
            e.cause,
        ]
        for e in entries
    ]
    order = "newest first" if listing.descending else "oldest first"
    if listing.sort == "address":
        order = "Z to A" if listing.descending else "A to Z"
    return element(
        "form",
        csrf,
        element("input", type="hidden", name="back", value=urlencode(listing.params())),
        table(
            [
                "select",
                _sort_link(listing, "address", "address"),
                "source",
                _sort_link(listing, "since", "since"),
                "reason",
                "bounce that caused it",
            ],
            rows,
            caption=f"By {SORT_LABELS[listing.sort]}, {order}",
        ),
        element(
            "p",
            _input("Reason ", "reason", required=True, placeholder="why (required)"),
            " ",
            element(
                "label",
                element("input", type="checkbox", name="confirm", value="yes", required=True),
                " sure: the selected addresses may get mail again",
            ),
            " ",
            element("button", "Remove selected"),
        ),
        method="post",
        action="/suppression/remove",
    )


def _import_form(csrf: Markup) -> Markup:
    return concat(
        element("h2", "Import a CSV file"),
        element(
            "p",
            f"One address a line, optionally with a reason after a comma; a header line is "
            f"allowed; UTF-8, at most {IMPORT_MAX_BYTES // (1024 * 1024)} MB. Addresses "
            "already on the list stay as they are. The reason goes to lines without one, and "
            "to the audit log.",
            class_="muted",
        ),
        element(
            "form",
            csrf,
            element(
                "p",
                _input("CSV file ", "file", type="file", accept=".csv,text/csv", required=True),
            ),
            element(
                "p",
                _input("Reason ", "reason", required=True, placeholder="why (required)"),
                " ",
                element("button", "Import"),
            ),
            method="post",
            action="/suppression/import",
            enctype="multipart/form-data",
        ),
    )


class SuppressionPages(Pages):
    """/suppression, and the removal of entries from it."""

    async def suppression_page(self, request: web.Request) -> web.Response:
        try:
            listing = checked_listing(request.query)
        except Refused as exc:
            return refused_listing(request, str(exc))
        flt = listing.store_filter()
        total = await self.store.count_suppressions(flt)
        entries = await self.store.suppression_page(
            flt, listing.sort, listing.descending, PAGE_ROWS, (listing.page - 1) * PAGE_ROWS
        )
        csrf = csrf_field(request[SESSION])
        if entries:
            listed: Markup = concat(_rows_form(listing, entries, csrf), _pager(listing, total))
        elif total:  # a page past the end (typed, or its rows were removed meanwhile)
            listed = concat(element("p", "No entries on this page."), _pager(listing, total))
        else:
            listed = element("p", "No address on the list matches.", class_="muted")
        audit = await self.store.audit_log(20)
        body = concat(
            outcome_notice(request),
            _filter_form(listing),
            element(
                "p",
                element("strong", _plural(total, "address")),
                " · ",
                link(listing.url("/suppression.csv"), "Download these as CSV"),
            ),
            listed,
            _import_form(csrf),
            element("h2", "Audit log"),
            table(
                ["when", "who", "what", "address", "why"],
                [[when(a.occurred_at), a.actor, a.action, a.subject, a.reason] for a in audit],
                caption="Administrators' acts, newest first",
            ),
        )
        return whole_page(request, TITLE, body)

    async def suppression_remove(self, request: web.Request) -> web.StreamResponse:
        """Remove the selected addresses (one or many), each audited with the reason."""
        form = request[FORM]
        back = _back(str(form.get("back", "")))
        try:
            keys, reason = _removal(form)
        except Refused as exc:
            raise back_to(back, problem=f"Nothing removed: {exc}") from None
        removed = {
            r.address for r in await self.store.remove_suppressions(keys, actor(request), reason)
        }
        missing = [k for k in keys if k not in removed]
        if not removed:
            if len(keys) == 1:
                raise back_to(back, problem=f"{keys[0]} was not on the list.")
            raise back_to(back, problem="Nothing removed: none of them was on the list.")
        done = (
            f"Removed {keys[0]}."
            if len(keys) == 1
            else f"Removed {_plural(len(removed), 'address')}."
        )
        if missing:
            done += f" Not on the list (any more): {', '.join(missing[:5])}"
            done += " ..." if len(missing) > 5 else "."
        raise back_to(back, done=done)


def _removal(form: MultiMapping[Any]) -> tuple[list[str], str]:
    """The list keys of the selected addresses and the reason, or ``Refused``."""
    addresses = [str(a) for a in form.getall("address", [])]
    reason = str(form.get("reason", "")).strip()
    if not addresses:
        raise Refused("select at least one address.")
    if len(addresses) > MAX_SELECTED:
        raise Refused(f"at most {MAX_SELECTED:,} addresses at once.")
    if not reason:
        raise Refused("give a reason (the audit log keeps it).")
    if len(reason) > MAX_REASON:
        raise Refused(f"the reason is longer than {MAX_REASON:,} characters.")
    if form.get("confirm") != "yes":
        raise Refused("tick the box that says you are sure.")
    keys: dict[str, None] = {}  # in the order selected, each once
    for address in addresses:
        try:
            validate_address(address)
            keys[normalise_address(address)] = None
        except AddressError as exc:
            raise Refused(str(exc)) from None
    return list(keys), reason


def _back(query: str) -> str:
    """The list as it was (filter, sort, page) from the removal form's ``back`` field, keeping
    only the list's own fields."""
    known = ("search", "source", "category", "from", "to", "sort", "order", "page")
    fields = [(k, v) for k, v in parse_qsl(query[:4000]) if k in known]
    return "/suppression?" + urlencode(fields) if fields else "/suppression"


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = SuppressionPages(ctx)
    app.router.add_get("/suppression", guarded(pages.suppression_page))
    app.router.add_post("/suppression/remove", same_origin_only(guarded(pages.suppression_remove)))
