"""The admin page: login, bounces report, suppression list, queue, profile lookup.

Served on ``[admin] listen`` only when ``[admin] password_hash`` is set. Sessions live in
memory (a restart logs everyone out); the cookie is HttpOnly, SameSite=Strict and Secure
behind TLS; every form that changes something carries the session's CSRF token, and the
login form a token of its own (a random cookie and, in the form, its HMAC under a
per-process key: a page elsewhere can neither read nor forge the pair). Every POST must come
from the admin's own origin (``Origin``, else ``Referer``; neither: refused). Failed logins
are limited per client address (``LOGIN_ATTEMPTS`` in ``LOGIN_WINDOW``, then 429 with
Retry-After); the attempt is counted before the password is checked, so parallel guesses
cannot slip past the limit, and the check runs off the event loop (``SecretChecker``).
Pages are built with ``relay.web.html``, where every string (a bounce text, a campaign, an
address, a parameter) is text and escaped unless the helpers built it as markup, so no
handler escapes anything itself; numbers in parameters go through ``parse_number`` (400
when not digits in range). The report's table takes its columns and cell texts from
``relay.reports.export`` (the CLI's), its downloads are that module's one export. Pages
need no JavaScript (the chart is server-drawn SVG), load nothing from outside the machine,
and take their style from /admin.css, so the Content-Security-Policy needs no
'unsafe-inline'.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from policies.addresses import AddressError, normalise_address, validate_address
from policies.verdict import explain
from relay.clock import Clock, utc_now
from relay.config import Rules
from relay.passwords import AttemptLimit, CheckerBusy, SecretChecker
from relay.reports import export as report
from relay.reports.replay import judged_again
from relay.store import EvidenceBounce, RecordedBounce, ReportRow, Store
from relay.web.api import PERIOD_OUT_OF_RANGE, BadNumber, parse_number
from relay.web.downloads import send_report
from relay.web.html import Content, Markup, concat, element, link, table, trusted

__all__ = ["COOKIE", "LOGIN_COOKIE", "PASSWORD_CHECKER", "add_page_routes"]

COOKIE = "br_session"
LOGIN_COOKIE = "br_login"  # the login form's own CSRF cookie (before there is a session)
SESSION_SECONDS = 8 * 3600
LOGIN_ATTEMPTS = 5  # failed logins per client ...
LOGIN_WINDOW = timedelta(seconds=300)  # ... in this window, then 429 until it passes
PAGE_ROWS = 50
MAX_PAGE = 1_000_000  # of the suppression list: offset at most 50 million rows
MAX_ID = 2**63 - 1  # deliveries and incidents have bigint ids
PASSWORD_CHECKER = web.AppKey("password_checker", SecretChecker)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f3a5f;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n{text-align:right}form.inline{display:inline}
input,select,button{font:inherit;margin:.2em}.err{color:#a00}.muted{color:#777}
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Session:
    csrf: str
    expires: float


@dataclass
class _Auth:
    checker: SecretChecker
    attempts: AttemptLimit
    sessions: dict[str, _Session] = field(default_factory=dict)
    form_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def session(self, request: web.Request) -> _Session | None:
        sid = request.cookies.get(COOKIE, "")
        found = self.sessions.get(sid)
        if found is None or found.expires < time.monotonic():
            self.sessions.pop(sid, None)
            return None
        return found

    def login_token(self, nonce: str) -> str:
        """The login form's hidden field for the browser holding cookie ``nonce``."""
        raw = nonce.encode("utf-8", "surrogatepass")  # a cookie may hold any bytes
        return hmac.new(self.form_key, raw, hashlib.sha256).hexdigest()

    def login_token_ok(self, request: web.Request, form: MultiDictProxy[Any]) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        return bool(nonce) and _same(str(form.get("csrf", "")), self.login_token(nonce))


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison that takes any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode())


def _secure(request: web.Request) -> bool:
    # X-Forwarded-Proto from anyone may only make the cookie stricter (Secure), so it is
    # honoured even from a peer that is not a trusted proxy.
    return request.secure or request.headers.get("X-Forwarded-Proto") == "https"


def _own_origins(request: web.Request) -> set[str]:
    """The origins this request may come from: its own scheme and Host, and what a proxy in
    front says they were. A cross-site page cannot set these headers on a browser's request,
    so they need not come from a trusted proxy to be believed here."""
    schemes = {request.scheme}
    proto = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower()
    if proto in ("http", "https"):
        schemes.add(proto)
    hosts = {request.host.lower()}
    forwarded_host = request.headers.get("X-Forwarded-Host", "").rsplit(",", 1)[-1].strip()
    if forwarded_host:
        hosts.add(forwarded_host.lower())
    return {f"{scheme}://{host}" for scheme in schemes for host in hosts}


def _origin_of(request: web.Request) -> str | None:
    """The origin a POST says it comes from: Origin, else the Referer's origin, else None."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin.strip().lower()
    referer = request.headers.get("Referer")
    if not referer:
        return None
    try:
        url = URL(referer)
        return str(url.origin()).lower() if url.absolute else None
    except ValueError:
        return None


def same_origin_only(handler: Handler) -> Handler:
    """Refuse (403) a POST that does not show it comes from the admin's own origin."""

    async def checked(request: web.Request) -> web.StreamResponse:
        origin = _origin_of(request)
        if origin is None or origin not in _own_origins(request):
            raise web.HTTPForbidden(
                text=f"POST refused: its origin ({origin or 'none sent'}) is not this admin "
                "page's own. Browsers send the Origin header themselves; a script should use "
                "the JSON API with a bearer token, or send Origin: <the admin page's URL>.\n"
            )
        return await handler(request)

    return checked


_SESSION = web.RequestKey("session", _Session)
_FORM = web.RequestKey("form", MultiDictProxy[Any])
_NAV = (
    ("/report", "Bounces report"),
    ("/suppression", "Suppression list"),
    ("/queue", "Queue"),
    ("/incidents", "Incidents"),
    ("/profile", "Profile"),
)


def _page(request: web.Request, title: str, body: Markup, *, status: int = 200) -> web.Response:
    """A whole page; logged in (a session), it starts with the navigation and Log out."""
    session = request.get(_SESSION)
    nav = (
        element(
            "nav",
            *(link(href, name) for href, name in _NAV),
            element(
                "form",
                _csrf_field(session),
                element("button", "Log out"),
                class_="inline",
                method="post",
                action="/logout",
            ),
        )
        if session is not None
        else None
    )
    html = trusted("<!doctype html>") + element(
        "html",
        element(
            "head",
            element("meta", charset="utf-8"),
            element("title", f"{title} — bounce-relay"),
            element("link", rel="stylesheet", href="/admin.css"),
        ),
        element("body", nav, element("main", element("h1", title), body)),
        lang="en",
    )
    return web.Response(text=html, content_type="text/html", status=status)


def _refused(request: web.Request, title: str, why: str) -> web.Response:
    """A 400 page saying what was wrong with the request."""
    return _page(request, title, _error(why), status=400)


def _error(text: str) -> Markup:
    return element("p", text, class_="err")


def _csrf_field(session: _Session) -> Markup:
    return element("input", type="hidden", name="csrf", value=session.csrf)


def _confirmed_form(
    action: str, csrf: Markup, hidden: tuple[str, str | int], button: str
) -> Markup:
    """An inline POST form for a change that needs a reason and a ticked "sure"."""
    name, value = hidden
    return element(
        "form",
        csrf,
        element("input", type="hidden", name=name, value=value),
        element("input", name="reason", placeholder="why (required)", required=True),
        element(
            "label",
            element("input", type="checkbox", name="confirm", value="yes", required=True),
            " sure",
        ),
        element("button", button),
        class_="inline",
        method="post",
        action=action,
    )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def _incident_link(incident_id: int | None, state: str | None) -> Content:
    """A bounce's incident on the profile page: a link to it in the incidents list."""
    if not incident_id:
        return None
    return link(f"/incidents#i{incident_id}", f"#{incident_id} ({state or ''})")


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


class _Pages:
    def __init__(
        self,
        store: Store,
        password_hash: str,
        clock: Clock = utc_now,
        rules: Callable[[], Rules] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rules = rules
        self.auth = _Auth(
            SecretChecker([("admin", password_hash)]),
            AttemptLimit(LOGIN_ATTEMPTS, LOGIN_WINDOW, clock),
        )

    def login_required(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            session = self.auth.session(request)
            if session is None:
                raise web.HTTPSeeOther("/login")
            request[_SESSION] = session
            if request.method == "POST":
                form = await request.post()
                sent = str(form.get("csrf", ""))
                if not _same(sent, session.csrf):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token")
                request[_FORM] = form
            return await handler(request)

        return wrapped

    async def login_form(
        self, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        # The pre-session CSRF pair: a random cookie, and in the form its HMAC.
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not 0 < len(nonce) <= 128
        if fresh:
            nonce = secrets.token_urlsafe(32)
        body = concat(
            _error(error) if error else None,
            element(
                "form",
                element("input", type="hidden", name="csrf", value=self.auth.login_token(nonce)),
                element(
                    "label",
                    "Password ",
                    element("input", type="password", name="password", autofocus=True),
                ),
                element("button", "Log in"),
                method="post",
                action="/login",
            ),
        )
        response = _page(request, "Log in", body, status=status)
        if fresh:
            response.set_cookie(
                LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=_secure(request)
            )
        return response

    async def _login_refused(
        self, request: web.Request, why: str, status: int, retry_after: int
    ) -> web.Response:
        response = await self.login_form(request, why, status)
        response.headers["Retry-After"] = str(retry_after)
        return response

    async def login(self, request: web.Request) -> web.Response:
        client = request.remote or "?"
        attempts = self.auth.attempts
        # Counted before the first await and given back only on success: parallel guesses
        # all see the earlier ones, so at most LOGIN_ATTEMPTS passwords are ever checked.
        if not attempts.reserve(client):
            wait = attempts.retry_after(client)
            return await self._login_refused(
                request, f"Too many failed logins; try again in {wait} s.", 429, wait
            )
        form = await request.post()
        if not self.auth.login_token_ok(request, form):
            attempts.release(client)  # no password was tried
            raise web.HTTPForbidden(
                text="The login form expired or came from another page: reload /login and "
                "log in from there.\n"
            )
        try:
            name = await self.auth.checker.match(str(form.get("password", "")))
        except CheckerBusy:
            attempts.release(client)
            return await self._login_refused(
                request, "Too many logins being checked; try again in a second.", 503, 1
            )
        if name is None:
            return await self.login_form(request, "Wrong password.", 401)
        attempts.release(client)
        # A login always starts a new session and ends the one the browser brought along, so
        # an identifier known before the login (fixation) is worth nothing after it.
        self.auth.sessions.pop(request.cookies.get(COOKIE, ""), None)
        sid = secrets.token_urlsafe(32)
        self.auth.sessions[sid] = _Session(
            secrets.token_urlsafe(32), time.monotonic() + SESSION_SECONDS
        )
        response = web.HTTPSeeOther("/report")
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="Strict",
            secure=_secure(request),
            max_age=SESSION_SECONDS,
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.auth.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

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
            return _page(request, "Bounces report", concat(_error(str(exc)), back), status=400)
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
        return _page(request, "Bounces report", body)

    async def report_file(self, request: web.Request) -> web.StreamResponse:
        fmt: report.Format = "xlsx" if request.match_info["fmt"] == "xlsx" else "csv"
        try:
            flt = self._checked_filter(request)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return await send_report(request, self.store, flt, fmt)

    async def suppression_page(self, request: web.Request) -> web.Response:
        search = request.query.get("search") or None
        try:
            page = parse_number(request.query.get("page"), "page", 1, MAX_PAGE) or 1
        except BadNumber as exc:
            return _refused(request, "Suppression list", str(exc))
        entries = await self.store.suppressions_with_cause(
            search, PAGE_ROWS, (page - 1) * PAGE_ROWS
        )
        csrf = _csrf_field(request[_SESSION])
        rows = [
            [
                e.address,
                e.source,
                _when(e.created_at),
                e.reason,
                e.cause,
                _confirmed_form("/suppression/remove", csrf, ("address", e.address), "Remove"),
            ]
            for e in entries
        ]
        audit = await self.store.audit_log(20)
        audit_rows = [[_when(a.occurred_at), a.actor, a.action, a.subject, a.reason] for a in audit]
        notice = request.query.get("notice")
        next_page = urlencode({"search": search or "", "page": page + 1})
        body = concat(
            _error(notice) if notice else None,
            element(
                "form",
                element("input", name="search", placeholder="address contains", value=search or ""),
                element("button", "Search"),
                method="get",
            ),
            table(["address", "source", "since", "reason", "bounce that caused it", ""], rows),
            element("p", link(f"?{next_page}", "next page")) if page < MAX_PAGE else None,
            element("h2", "Audit log"),
            table(["when", "who", "what", "address", "why"], audit_rows),
        )
        return _page(request, "Suppression list", body)

    async def suppression_remove(self, request: web.Request) -> web.StreamResponse:
        form = request[_FORM]
        address, reason = str(form.get("address", "")), str(form.get("reason", "")).strip()
        if form.get("confirm") != "yes" or not reason:
            raise web.HTTPSeeOther(
                "/suppression?"
                + urlencode({"notice": "Removing needs a reason and the confirmation box."})
            )
        try:
            validate_address(address)
        except AddressError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        removed = await self.store.remove_suppression(
            normalise_address(address), "admin page", reason
        )
        notice = f"Removed {address}." if removed else f"{address} was not on the list."
        raise web.HTTPSeeOther("/suppression?" + urlencode({"notice": notice}))

    async def queue_page(self, request: web.Request) -> web.Response:
        try:
            delivery_id = parse_number(request.query.get("id"), "id", 1, MAX_ID)
        except BadNumber as exc:
            return _refused(request, "Queue", f"delivery {exc}")
        stats = await self.store.queue_stats()
        counts: list[list[Content]] = [
            [state, n, _when(oldest)] for state, (n, oldest) in sorted(stats.items())
        ]
        reasons: list[list[Content]] = [
            [reply, n] for reply, n in await self.store.deferral_reasons()
        ]
        history = None
        if delivery_id is not None:
            events = await self.store.events_of_delivery(delivery_id)
            history = concat(
                element("h2", f"Delivery {delivery_id}"),
                table(
                    ["when", "event", "attempt", "code", "category", "rule", "source IP", "reply"],
                    [
                        [
                            _when(e.occurred_at),
                            e.type,
                            e.attempt or None,
                            e.code or None,
                            e.category,
                            e.rule,
                            e.source_ip,
                            e.reply_text,
                        ]
                        for e in events
                    ],
                ),
            )
        body = concat(
            table(["state", "deliveries", "oldest message received"], counts, numeric={1}),
            element("h2", "Top deferral reasons"),
            table(["last reply", "queued"], reasons, numeric={1}),
            element(
                "form",
                element("input", name="id", placeholder="delivery id"),
                element("button", "Attempt history"),
                method="get",
            ),
            history,
        )
        return _page(request, "Queue", body)

    def _judged_again(self, bounce: EvidenceBounce) -> str:
        """What the relay's rules decide for this bounce today (policies.verdict, as
        ``classify --replay`` asks it): tells an administrator whether lifting the entry
        would be undone by the next such reply."""
        if self.rules is None or bounce.type == "non_delivery":
            return ""
        return explain(judged_again(RecordedBounce.of_evidence(bounce), self.rules()))

    async def profile_page(self, request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        result = None
        if address:
            try:
                key = normalise_address(address)
            except AddressError as exc:
                return _refused(request, "Profile", f"address: {exc}")
            profile = await self.store.profile(key)
            evidence = await self.store.suppression_evidence(key)
            status = profile.status if profile else "active"
            result = concat(
                element("p", element("b", key), f": {status}"),
                element("h2", "Why: entries that apply"),
                table(
                    ["entry", "scope", "source", "since", "until", "reason"],
                    [
                        [
                            e.kind,
                            e.scope,
                            e.source,
                            _when(e.created_at),
                            _when(e.until),
                            e.reason,
                        ]
                        for e in evidence.entries
                    ],
                ),
                element("h2", "Bounces behind them"),
                table(
                    [
                        "when",
                        "event",
                        "code",
                        "category",
                        "rule",
                        "source IP",
                        "destination",
                        "campaign",
                        "incident",
                        "reply",
                        "template",
                        "today's rules",
                    ],
                    [
                        [
                            _when(b.occurred_at),
                            b.type,
                            b.code or None,
                            b.category,
                            b.rule,
                            b.source_ip,
                            b.destination,
                            b.campaign,
                            _incident_link(b.incident_id, b.incident_state),
                            b.reply_text,
                            b.template,
                            self._judged_again(b),
                        ]
                        for b in evidence.bounces
                    ],
                ),
                element("h2", "Administrators' acts"),
                table(
                    ["when", "who", "what", "why"],
                    [[_when(a.occurred_at), a.actor, a.action, a.reason] for a in evidence.audit],
                ),
            )
        body = concat(
            element(
                "form",
                element("input", name="address", value=address, placeholder="address"),
                element("button", "Look up"),
                method="get",
            ),
            result,
        )
        return _page(request, "Profile", body)

    async def incidents_page(self, request: web.Request) -> web.Response:
        incidents = await self.store.list_incidents(None, 100)
        csrf = _csrf_field(request[_SESSION])
        rows = [
            [
                element("span", f"#{i.id}", id=f"i{i.id}"),
                i.state,
                _when(i.opened_at),
                _when(i.last_seen_at),
                i.source_ip,
                f"{i.scope}: {i.destination}",
                i.recipients,
                i.replies,
                i.lifted,
                i.category,
                i.template,
                f"{i.released_by}: {i.release_reason}"
                if i.state == "released"
                else _confirmed_form("/incidents/release", csrf, ("id", i.id), "Release"),
            ]
            for i in incidents
        ]
        notice = request.query.get("notice")
        body = concat(
            _error(notice) if notice else None,
            element(
                "p",
                "One reply template hitting many recipients at one destination from one IP: "
                "its replies defer instead of bouncing and suppress nobody. Releasing lifts every "
                "suppression its replies made and retries its deferred mail now.",
            ),
            table(
                [
                    "id",
                    "state",
                    "opened",
                    "last seen",
                    "source IP",
                    "destination",
                    "recipients",
                    "replies",
                    "lifted",
                    "category",
                    "reply template",
                    "",
                ],
                rows,
                numeric={6, 7, 8},
            ),
        )
        return _page(request, "Incidents", body)

    async def incident_release(self, request: web.Request) -> web.StreamResponse:
        form = request[_FORM]
        reason = str(form.get("reason", "")).strip()
        try:
            incident_id = parse_number(str(form.get("id", "")), "incident id", 1, MAX_ID)
        except BadNumber as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        if form.get("confirm") != "yes" or not reason or incident_id is None:
            raise web.HTTPSeeOther(
                "/incidents?"
                + urlencode({"notice": "Releasing needs a reason and the confirmation box."})
            )
        released = await self.store.release_incident(
            incident_id, self.clock(), "admin page", reason
        )
        notice = (
            f"Incident #{incident_id} released: {released[0]} suppressions lifted, "
            f"{released[1]} deferred deliveries due now."
            if released
            else f"Incident #{incident_id} was released already."
        )
        raise web.HTTPSeeOther("/incidents?" + urlencode({"notice": notice}))

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/report")

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(text=_STYLE, content_type="text/css")


def add_page_routes(
    app: web.Application,
    store: Store,
    password_hash: str,
    clock: Clock = utc_now,
    rules: Callable[[], Rules] | None = None,
) -> None:
    pages = _Pages(store, password_hash, clock, rules)
    app[PASSWORD_CHECKER] = pages.auth.checker
    guarded = pages.login_required
    app.router.add_get("/", pages.home)
    app.router.add_get("/admin.css", pages.stylesheet)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", same_origin_only(pages.login))
    app.router.add_post("/logout", same_origin_only(guarded(pages.logout)))
    app.router.add_get("/report", pages.login_required(pages.report_page))
    app.router.add_get(r"/report.{fmt:csv|xlsx}", pages.login_required(pages.report_file))
    app.router.add_get("/suppression", pages.login_required(pages.suppression_page))
    app.router.add_post("/suppression/remove", same_origin_only(guarded(pages.suppression_remove)))
    app.router.add_get("/queue", pages.login_required(pages.queue_page))
    app.router.add_get("/profile", pages.login_required(pages.profile_page))
    app.router.add_get("/incidents", pages.login_required(pages.incidents_page))
    app.router.add_post("/incidents/release", same_origin_only(guarded(pages.incident_release)))
