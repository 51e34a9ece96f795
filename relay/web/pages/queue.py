"""The queue page: open deliveries by state and the top deferral reasons; every delivery,
newest first, filtered and a page at a time; retry now and purge of a selection (audited,
one row per delivery). Each delivery links to its history, the page of ``delivery``
(/queue/delivery?id=); /queue?id=, that page's old address, is sent there.

Only queued deliveries (waiting for their first attempt, or deferred) can be retried or
purged: a selection's others are left alone and the notice says how many and why. An action
changes at most ``ACTION_LIMIT`` deliveries. The listing reads are bounded in time by the
store (``QUEUE_READ_SECONDS``); the count stops at ``ACTION_LIMIT`` and says "more than"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from policies.addresses import DomainError, ascii_domain
from policies.states import DeliveryState
from relay.store import QueueAction, QueueDelivery, QueueFilter
from relay.store.queue import QUEUE_READ_SECONDS
from relay.web.api import BadNumber, parse_number
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.shell import (
    FORM,
    MAX_ID,
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
    refused,
    when,
    whole_page,
)

ACTION_LIMIT = 10_000  # deliveries one retry or purge changes at most (and the count's cap)
MAX_TEXT = 500  # characters of a campaign or of reply words to look for
REPLY_SHOWN = 160  # characters of the last reply in the listing (the history has it all)
STATES = tuple(s.value for s in DeliveryState)
# The filter's fields: query parameter and the label the form shows (and messages name).
FIELDS = (
    ("state", "State"),
    ("recipient_domain", "Recipient domain"),
    ("from_domain", "From domain"),
    ("campaign", "Campaign"),
    ("reply", "Last reply contains"),
)
_COLUMNS = (
    "id",
    "recipient",
    "From domain",
    "campaign",
    "state",
    "attempts",
    "next attempt",
    "last reply",
)
_ONLY_QUEUED = "only queued deliveries, waiting or deferred, can be"
_SKIPPED = {
    "inflight": "in flight (being tried right now)",
    "unknown": "no such delivery",
    "changed": "changed meanwhile (a worker or another administrator got there first)",
}
_VERBS = {"retry": ("Retried", "retried", "due now"), "purge": ("Purged", "purged", "cancelled")}


def _deliveries(n: int) -> str:
    return f"{n:,} deliver{'y' if n == 1 else 'ies'}"


def _typed(values: Mapping[str, Any]) -> dict[str, str]:
    """The filter as typed (query string or the action form's hidden copy), to show again."""
    return {name: str(values.get(name, "")) for name, _ in FIELDS}


def _domain(typed: Mapping[str, str], name: str, label: str) -> str | None:
    text = typed[name].strip().lstrip("@")
    if not text:
        return None
    try:
        return ascii_domain(text)
    except DomainError as exc:
        raise ValueError(f"{label}: {exc}") from None


def _text(typed: Mapping[str, str], name: str, label: str) -> str | None:
    text = typed[name].strip()
    if len(text) > MAX_TEXT:
        raise ValueError(f"{label}: at most {MAX_TEXT} characters, not {len(text):,}.")
    return text or None


def parse_filter(typed: Mapping[str, str]) -> QueueFilter:
    """The store's filter from what was typed; ``ValueError`` says which field is wrong."""
    state = typed["state"]
    if state and state not in STATES:
        raise ValueError(f"State {state[:40]!r}: choose one of {', '.join(STATES)}, or any.")
    return QueueFilter(
        state=state or None,
        recipient_domain=_domain(typed, "recipient_domain", "Recipient domain"),
        from_domain=_domain(typed, "from_domain", "From domain"),
        campaign=_text(typed, "campaign", "Campaign"),
        reply_contains=_text(typed, "reply", "Last reply contains"),
    )


def listing_url(typed: Mapping[str, str], **cursor: int | None) -> str:
    """/queue with the filter as typed and a page cursor (``before`` or ``after``)."""
    pairs = [(k, v) for k, v in typed.items() if v]
    pairs += [(k, str(v)) for k, v in cursor.items() if v is not None]
    return "/queue?" + urlencode(pairs) if pairs else "/queue"


@dataclass(frozen=True)
class _Cursor:
    before: int | None = None  # the page of deliveries older than this id
    after: int | None = None  # the page of deliveries just newer than this id


def _cursor(values: Mapping[str, Any]) -> _Cursor:
    """The page asked for; ``BadNumber`` names the parameter."""
    before = parse_number(values.get("before"), "before", 1, MAX_ID)
    after = parse_number(values.get("after"), "after", 1, MAX_ID)
    if before is not None and after is not None:
        raise BadNumber("before and after: a page is either older or newer, not both")
    return _Cursor(before, after)


@dataclass(frozen=True)
class _Kept:
    """The action form as sent, shown again when it was refused."""

    ids: frozenset[int] = frozenset()
    reason: str = ""
    every: bool = False
    confirmed: bool = False


@dataclass(frozen=True)
class _Page:
    rows: list[QueueDelivery]
    newer: int | None  # the cursor of the page before (None: this is the newest)
    older: int | None  # the cursor of the page after (None: this is the oldest)


def _skipped_text(skipped: dict[str, int], verb: str) -> str:
    if not skipped:
        return ""
    parts = ", ".join(f"{n:,} {_SKIPPED.get(state, state)}" for state, n in sorted(skipped.items()))
    total = sum(skipped.values())
    return f" Skipped {_deliveries(total)} ({_ONLY_QUEUED} {verb}): {parts}."


def _outcome(action: str, result: QueueAction, at_limit: bool) -> tuple[str, str]:
    """The notice of a retry or purge: (done, problem), one of them empty."""
    done_word, verb, meaning = _VERBS[action]
    skipped = _skipped_text(result.skipped, verb)
    limit = f" That was the limit of {ACTION_LIMIT:,} per action: do it again for the rest."
    rest = skipped + (limit if at_limit else "")
    if result.done == 0:
        return "", f"Nothing {verb}.{rest}"
    return f"{done_word} {_deliveries(result.done)} ({meaning}).{rest}", ""


def _state_select(current: str) -> Markup:
    options = [element("option", "any", value="", selected=not current)]
    options += [element("option", s, value=s, selected=s == current) for s in STATES]
    return element("select", *options, name="state")


def _filter_form(typed: Mapping[str, str]) -> Markup:
    inputs: list[Content] = [element("label", "State ", _state_select(typed["state"]))]
    for name, label in FIELDS[1:]:
        inputs.append(element("label", f"{label} ", element("input", name=name, value=typed[name])))
    return element(
        "form",
        *inputs,
        element("button", "Filter"),
        link("/queue", "Clear"),
        class_="filters",
        method="get",
        action="/queue",
        aria_label="filter the deliveries",
    )


def _reply_cell(d: QueueDelivery) -> Content:
    text = " ".join((d.last_reply or "").split())
    return text if len(text) <= REPLY_SHOWN else text[:REPLY_SHOWN] + "…"


def _row(d: QueueDelivery, kept: _Kept | None) -> list[Content]:
    """One delivery of the listing; ``kept`` None: no selection column (a viewer)."""
    cells: list[Content] = []
    if kept is not None:
        cells.append(
            element(
                "input",
                type="checkbox",
                name="id",
                value=d.id,
                checked=d.id in kept.ids,
                aria_label=f"select delivery {d.id}",
            )
        )
    cells += [
        link(f"/queue/delivery?id={d.id}", str(d.id)),
        link("/profile?" + urlencode({"address": d.recipient_key}), d.recipient),
        d.from_domain,
        d.campaign,
        d.state,
        d.attempts,
        when(d.next_attempt_at) if d.state == DeliveryState.QUEUED else "",
        _reply_cell(d),
    ]
    return cells


def _table(rows: list[QueueDelivery], kept: _Kept | None) -> Markup:
    """The listing; ``kept`` None: without the selection column (a viewer's)."""
    headers = ["select", *_COLUMNS] if kept is not None else list(_COLUMNS)
    return table(
        headers,
        [_row(d, kept) for d in rows],
        numeric={headers.index("attempts")},
        caption="Newest first",
    )


def _pager(typed: Mapping[str, str], page: _Page) -> Markup:
    newer = page.newer is not None
    return element(
        "p",
        link(listing_url(typed, after=page.newer), "← Newer") if newer else None,
        link(listing_url(typed), "Newest") if newer else None,
        link(listing_url(typed, before=page.older), "Older →") if page.older is not None else None,
        class_="pager",
    )


def _count_text(count: int | None) -> str:
    if count is None:
        return "Counting the deliveries this filter matches took too long; not shown."
    if count > ACTION_LIMIT:
        return f"More than {ACTION_LIMIT:,} deliveries match."
    return f"{_deliveries(count)} match." if count != 1 else "1 delivery matches."


def _action_controls(kept: _Kept) -> Markup:
    return concat(
        element(
            "p",
            element(
                "label",
                element("input", type="checkbox", name="scope", value="all", checked=kept.every),
                f" every queued delivery matching the filter, not only the ticked ones "
                f"(at most {ACTION_LIMIT:,} per action)",
            ),
        ),
        element(
            "p",
            element(
                "label",
                "Reason ",
                element("input", name="reason", value=kept.reason, required=True),
            ),
            " ",
            element(
                "label",
                element(
                    "input",
                    type="checkbox",
                    name="confirm",
                    value="yes",
                    checked=kept.confirmed,
                    required=True,
                ),
                " I am sure",
            ),
            " ",
            element("button", "Retry now", name="action", value="retry"),
            " ",
            element("button", "Purge", name="action", value="purge"),
        ),
        element(
            "p",
            f"Retry now makes a delivery due at once; Purge cancels it for good. Both are "
            f"audited with the reason, and {_ONLY_QUEUED} retried or purged: the others "
            "are left alone.",
            class_="muted",
        ),
    )


class QueuePages(Pages):
    """/queue, /queue/action."""

    async def queue_page(self, request: web.Request) -> web.StreamResponse:
        """The counts, the reasons, the filter and a page of the deliveries it matches."""
        q = request.query
        if "id" in q:  # the old attempt-history form: the history is delivery.py's page now
            try:
                delivery_id = parse_number(q.get("id"), "id", 1, MAX_ID)
            except BadNumber as exc:
                return refused(request, "Queue", f"delivery {exc}")
            if delivery_id is not None:
                raise web.HTTPSeeOther(f"/queue/delivery?id={delivery_id}")
        typed = _typed(q)
        try:
            cursor = _cursor(q)
            flt = parse_filter(typed)
        except ValueError as exc:  # BadNumber too
            return await self._queue(request, typed, None, _Cursor(), problem=str(exc))
        return await self._queue(request, typed, flt, cursor)

    async def _page(self, flt: QueueFilter, cursor: _Cursor) -> _Page | None:
        """The page ``cursor`` asks for (None: the store gave up). A page newer than the
        first is the first: paging back always lands on the pages paged through."""
        rows: list[QueueDelivery] | None
        if cursor.after is not None:
            rows = await self.store.queue_deliveries(flt, PAGE_ROWS + 1, newer_than=cursor.after)
            if rows is None:
                return None
            if len(rows) > PAGE_ROWS:
                kept = rows[1:]  # the newest of them is the next page's
                return _Page(kept, newer=kept[0].id, older=kept[-1].id)
            cursor = _Cursor()
        rows = await self.store.queue_deliveries(flt, PAGE_ROWS + 1, older_than=cursor.before)
        if rows is None:
            return None
        kept = rows[:PAGE_ROWS]
        return _Page(
            kept,
            newer=kept[0].id if cursor.before is not None and kept else None,
            older=kept[-1].id if len(rows) > PAGE_ROWS else None,
        )

    async def _queue(
        self,
        request: web.Request,
        typed: Mapping[str, str],
        flt: QueueFilter | None,
        cursor: _Cursor,
        *,
        kept: _Kept | None = None,
        problem: str = "",
    ) -> web.Response:
        """The whole page; ``flt`` None: the filter was refused (``problem`` says why), the
        form is shown again with what was typed. ``kept``: a refused action, shown again."""
        stats = await self.store.queue_stats()
        counts: list[list[Content]] = [
            [link(listing_url({"state": state}), state), n, when(oldest)]
            for state, (n, oldest) in sorted(stats.items())
        ]
        reasons: list[list[Content]] = [
            [self._reason_link(reply), n] for reply, n in await self.store.deferral_reasons()
        ]
        listing = await self._listing(request, typed, flt, cursor, kept) if flt else None
        body = concat(
            error_notice(problem) if problem else outcome_notice(request),
            table(
                ["state", "deliveries", "oldest message received"],
                counts,
                numeric={1},
                caption="Open deliveries",
            ),
            element("h2", "Top deferral reasons"),
            table(["last reply", "queued"], reasons, numeric={1}),
            element("h2", "Deliveries"),
            _filter_form(typed),
            listing,
        )
        return whole_page(request, "Queue", body, status=400 if problem else 200)

    @staticmethod
    def _reason_link(reply: str) -> Content:
        """A deferral reason: a link to the queued deliveries whose last reply has its first
        line (the form's field is one line)."""
        if reply == "(not tried yet)":
            return reply
        first_line = reply.split("\n", 1)[0].strip()[:MAX_TEXT]
        return link(listing_url({"state": "queued", "reply": first_line}), reply)

    async def _listing(
        self,
        request: web.Request,
        typed: Mapping[str, str],
        flt: QueueFilter,
        cursor: _Cursor,
        kept: _Kept | None,
    ) -> Markup:
        page = await self._page(flt, cursor)
        if page is None:
            return error_notice(
                f"Listing these deliveries took longer than {QUEUE_READ_SECONDS:g} s, so the "
                "database gave up: narrow the filter with a state or a recipient domain."
            )
        count = await self.store.count_queue_deliveries(flt, ACTION_LIMIT + 1)
        summary = element("p", _count_text(count), class_="muted")
        if not page.rows:
            none = element("p", "No deliveries match this filter on this page.", class_="muted")
            return concat(summary, none, _pager(typed, page))
        session = request[SESSION]
        if session.role != "admin":
            note = element(
                "p", "Retry and purge need an account with the role admin.", class_="muted"
            )
            return concat(summary, _table(page.rows, None), _pager(typed, page), note)
        kept = kept or _Kept()
        hidden = [
            element("input", type="hidden", name=name, value=value)
            for name, value in (*typed.items(), ("before", cursor.before), ("after", cursor.after))
            if value
        ]
        form = element(
            "form",
            csrf_field(session),
            *hidden,
            _table(page.rows, kept),
            _action_controls(kept),
            method="post",
            action="/queue/action",
            aria_label="retry or purge deliveries",
        )
        return concat(summary, form, _pager(typed, page))

    async def queue_action(self, request: web.Request) -> web.StreamResponse:
        """Retry now or purge the ticked deliveries (or every queued one matching the
        filter); refused with the form shown again unless there is a reason, the
        confirmation and something to do."""
        form = request[FORM]
        typed = _typed(form)
        try:
            cursor = _cursor(form)
            ids = self._ticked(form)
        except ValueError as exc:
            return refused(request, "Queue", str(exc))
        action = str(form.get("action", ""))
        kept = _Kept(
            frozenset(ids),
            str(form.get("reason", ""))[:MAX_TEXT],
            form.get("scope") == "all",
            form.get("confirm") == "yes",
        )
        try:
            flt = parse_filter(typed)
        except ValueError as exc:
            return await self._queue(request, typed, None, cursor, problem=str(exc))
        problem = self._action_problem(action, kept)
        if problem:
            return await self._queue(request, typed, flt, cursor, kept=kept, problem=problem)
        back = listing_url(typed, before=cursor.before, after=cursor.after)
        if kept.every:
            matching = await self.store.queued_ids_matching(flt, ACTION_LIMIT)
            if matching is None:
                raise back_to(
                    back,
                    problem=f"Finding the queued deliveries this filter matches took longer "
                    f"than {QUEUE_READ_SECONDS:g} s: nothing was changed. Narrow the filter.",
                )
            if not matching:
                raise back_to(
                    back, problem="No queued delivery matches the filter: nothing changed."
                )
            ids = matching
        change = self.store.retry_deliveries if action == "retry" else self.store.purge_deliveries
        result = await change(ids, self.clock(), actor(request), kept.reason.strip())
        done, problem = _outcome(action, result, kept.every and len(ids) >= ACTION_LIMIT)
        raise back_to(back, done=done, problem=problem)

    @staticmethod
    def _ticked(form: MultiDictProxy[Any]) -> list[int]:
        """The ticked delivery ids; ``ValueError`` for one that is not an id, or too many."""
        raw = form.getall("id", [])
        if len(raw) > ACTION_LIMIT:
            raise ValueError(f"At most {ACTION_LIMIT:,} deliveries per action, not {len(raw):,}.")
        ids = (parse_number(str(v), "delivery id", 1, MAX_ID) for v in raw)
        return [i for i in ids if i is not None]

    @staticmethod
    def _action_problem(action: str, kept: _Kept) -> str:
        if action not in _VERBS:
            return "Choose Retry now or Purge."
        if not kept.reason.strip():
            return "Retry now and Purge need a reason (it goes into the audit log)."
        if not kept.confirmed:
            return "Retry now and Purge need the box “I am sure” ticked."
        if not kept.ids and not kept.every:
            return (
                "Nothing selected: tick the deliveries to change, or every queued delivery "
                "matching the filter."
            )
        return ""


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = QueuePages(ctx)
    app.router.add_get("/queue", guarded(pages.queue_page))
    app.router.add_post("/queue/action", same_origin_only(guarded(pages.queue_action)))
