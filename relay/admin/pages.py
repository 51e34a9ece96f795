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
Every string from outside (bounce texts, campaigns, addresses) goes through
``html.escape``; numbers in parameters go through ``parse_number`` (400 when not digits in
range). Pages need no JavaScript (the chart is server-drawn SVG), load nothing from
outside the machine, and take their style from /admin.css, so the Content-Security-Policy
needs no 'unsafe-inline'.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from policies.addresses import AddressError, normalise_address, validate_address
from relay import report
from relay.admin.api import PERIOD_OUT_OF_RANGE, BadNumber, parse_number
from relay.clock import Clock, utc_now
from relay.passwords import AttemptLimit, CheckerBusy, SecretChecker
from relay.store import ReportRow, Store

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


def _page(title: str, body: str, *, nav: bool = True, status: int = 200) -> web.Response:
    links = (
        '<nav><a href="/report">Bounces report</a><a href="/suppression">Suppression list</a>'
        '<a href="/queue">Queue</a><a href="/incidents">Incidents</a><a href="/profile">Profile</a>'
        '<form class="inline" method="post" action="/logout">{csrf}'
        "<button>Log out</button></form></nav>"
        if nav
        else ""
    )
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} — '
        'bounce-relay</title><link rel="stylesheet" href="/admin.css"></head>'
        f"<body>{links}<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(text=html, content_type="text/html", status=status)


def _refused(title: str, why: str) -> web.Response:
    """A 400 page saying what was wrong with the request."""
    return _page(title, f'<p class="err">{escape(why)}</p>', status=400)


def _csrf_field(session: _Session) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'


def _with_csrf(response: web.Response, session: _Session) -> web.Response:
    assert response.text is not None
    response.text = response.text.replace("{csrf}", _csrf_field(session), 1)
    return response


def _table(headers: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def _chart(per_day: list[tuple[datetime, str, int]]) -> str:
    """Soft and hard bounces per day as bars in inline SVG (no script, no CDN)."""
    days = sorted({d for d, _, _ in per_day})
    if not days:
        return '<p class="muted">No bounces in this period.</p>'
    amounts = {(d, t): n for d, t, n in per_day}
    top = max(n for _, _, n in per_day) or 1
    width, height, bar = max(240, 24 * len(days) + 80), 160, 10
    parts = []
    for i, day in enumerate(days):
        for j, (kind, colour) in enumerate(
            (("soft_bounce", "#e0a030"), ("hard_bounce", "#c03030"))
        ):
            n = amounts.get((day, kind), 0)
            h = int(120 * n / top)
            x = 30 + i * 24 + j * bar
            parts.append(
                f'<rect x="{x}" y="{130 - h}" width="{bar - 1}" height="{h}" fill="{colour}">'
                f"<title>{escape(day.strftime('%Y-%m-%d'))} {kind}: {n}</title></rect>"
            )
    last = 30 + (len(days) - 1) * 24
    labels = f'<text x="30" y="150" font-size="10">{days[0]:%Y-%m-%d}</text>' + (
        f'<text x="{last}" y="150" font-size="10">{days[-1]:%m-%d}</text>' if len(days) > 4 else ""
    )
    legend = (
        '<text x="30" y="12" font-size="11" fill="#e0a030">soft</text>'
        '<text x="70" y="12" font-size="11" fill="#c03030">hard</text>'
    )
    return (
        f'<svg role="img" aria-label="bounces per day" width="{width}" height="{height}">'
        f"{legend}{''.join(parts)}{labels}</svg>"
    )


_SESSION = web.RequestKey("session", _Session)
_FORM = web.RequestKey("form", MultiDictProxy[Any])


class _Pages:
    def __init__(self, store: Store, password_hash: str, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock
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
            response = await handler(request)
            if isinstance(response, web.Response) and response.content_type == "text/html":
                return _with_csrf(response, session)
            return response

        return wrapped

    async def login_form(
        self, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        # The pre-session CSRF pair: a random cookie, and in the form its HMAC.
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not 0 < len(nonce) <= 128
        if fresh:
            nonce = secrets.token_urlsafe(32)
        message = f'<p class="err">{escape(error)}</p>' if error else ""
        body = (
            f'{message}<form method="post" action="/login">'
            f'<input type="hidden" name="csrf" value="{self.auth.login_token(nonce)}">'
            '<label>Password <input type="password" name="password" autofocus></label>'
            "<button>Log in</button></form>"
        )
        response = _page("Log in", body, nav=False, status=status)
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
            return _page(
                "Bounces report",
                f'<p class="err">{escape(str(exc))}</p><p><a href="/report">Back</a></p>',
                status=400,
            )
        campaigns = await self.store.campaigns_in_period(flt.start, flt.end)
        rows: list[ReportRow] = [r async for r in self._rows(flt)]
        per_day = await self.store.bounces_per_day(flt.start, flt.end, flt.campaigns or None)
        options = "".join(
            f'<option value="{escape(c)}"{" selected" if c in flt.campaigns else ""}>'
            f"{escape(c)}</option>"
            for c in campaigns
        )

        def pick(name: str, values: list[str], current: str) -> str:
            opts = "".join(
                f"<option{' selected' if v == current else ''}>{escape(v)}</option>" for v in values
            )
            return f'<select name="{name}">{opts}</select>'

        kind = next(k for k, v in report.TYPES.items() if v == flt.types)
        form = (
            '<form method="get" action="/report">'
            f'From <input name="from" value="{flt.start:%Y-%m-%dT%H:%M}"> '
            f'to <input name="to" value="{flt.end:%Y-%m-%dT%H:%M}"> (UTC) '
            f'campaign <select name="campaign"><option value="">all</option>{options}</select> '
            f"group by {pick('group_by', ['from-domain', 'ip'], flt.group_by)} "
            f"type {pick('type', ['soft', 'hard', 'all'], kind)} "
            "<button>Show</button></form>"
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
        downloads = (
            f'<p>Download: <a href="/report.csv?{escape(query)}">CSV</a> · '
            f'<a href="/report.xlsx?{escape(query)}">Excel</a></p>'
        )
        table = _table(
            flt.columns,
            [
                [
                    escape(r.group),
                    escape(r.bounce_text),
                    str(r.amount),
                    str(r.messages),
                    str(r.recipient_domains),
                    escape(r.category or ""),
                    _when(r.first_seen),
                    _when(r.last_seen),
                ]
                for r in rows
            ],
            numeric=frozenset({2, 3, 4}),
        )
        total = sum(r.amount for r in rows)
        body = (
            f"{form}{_chart(per_day)}{downloads}{table}"
            f'<p class="muted">{len(rows)} rows, {total} bounce events.</p>'
        )
        return _page("Bounces report", body)

    async def report_file(self, request: web.Request) -> web.StreamResponse:
        fmt = request.match_info["fmt"]
        try:
            flt = self._checked_filter(request)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if fmt == "csv":
            text = io.StringIO(newline="")
            await report.write_csv(self._rows(flt), flt, text)
            body, ctype = text.getvalue().encode(), "text/csv"
        else:
            binary = io.BytesIO()
            await report.write_xlsx(self._rows(flt), flt, binary)
            body = binary.getvalue()
            ctype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        return web.Response(
            body=body,
            content_type=ctype,
            headers={"Content-Disposition": f'attachment; filename="bounces.{fmt}"'},
        )

    async def suppression_page(self, request: web.Request) -> web.Response:
        search = request.query.get("search") or None
        try:
            page = parse_number(request.query.get("page"), "page", 1, MAX_PAGE) or 1
        except BadNumber as exc:
            return _refused("Suppression list", str(exc))
        entries = await self.store.suppressions_with_cause(
            search, PAGE_ROWS, (page - 1) * PAGE_ROWS
        )
        csrf = _csrf_field(request[_SESSION])
        rows = [
            [
                escape(e["address"]),
                escape(e["source"]),
                _when(e["created_at"]),
                escape(e["reason"]),
                escape(e["cause"] or ""),
                '<form class="inline" method="post" action="/suppression/remove">'
                f'{csrf}<input type="hidden" name="address" value="{escape(e["address"])}">'
                '<input name="reason" placeholder="why (required)" required>'
                '<label><input type="checkbox" name="confirm" value="yes" required> sure</label>'
                "<button>Remove</button></form>",
            ]
            for e in entries
        ]
        audit = await self.store.audit_log(20)
        audit_rows = [
            [
                _when(a["occurred_at"]),
                escape(a["actor"]),
                escape(a["action"]),
                escape(a["subject"]),
                escape(a["reason"]),
            ]
            for a in audit
        ]
        notice = request.query.get("notice")
        body = (
            (f'<p class="err">{escape(notice)}</p>' if notice else "")
            + '<form method="get"><input name="search" placeholder="address contains" '
            f'value="{escape(search or "")}"><button>Search</button></form>'
            + _table(["address", "source", "since", "reason", "bounce that caused it", ""], rows)
            + (
                f'<p><a href="?{escape(urlencode({"search": search or "", "page": page + 1}))}">'
                "next page</a></p>"
                if page < MAX_PAGE
                else ""
            )
            + "<h2>Audit log</h2>"
            + _table(["when", "who", "what", "address", "why"], audit_rows)
        )
        return _page("Suppression list", body)

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
            return _refused("Queue", f"delivery {exc}")
        stats = await self.store.queue_stats()
        counts = [
            [escape(state), str(n), _when(oldest)] for state, (n, oldest) in sorted(stats.items())
        ]
        reasons = [[escape(reply), str(n)] for reply, n in await self.store.deferral_reasons()]
        history = ""
        if delivery_id is not None:
            events = await self.store.events_of_delivery(delivery_id)
            history = f"<h2>Delivery {delivery_id}</h2>" + _table(
                ["when", "event", "attempt", "code", "category", "rule", "source IP", "reply"],
                [
                    [
                        _when(e["occurred_at"]),
                        escape(e["type"]),
                        str(e["attempt"] or ""),
                        str(e["code"] or ""),
                        escape(e["category"] or ""),
                        escape(e["rule"] or ""),
                        escape(e["source_ip"] or ""),
                        escape(e["reply_text"] or ""),
                    ]
                    for e in events
                ],
            )
        body = (
            _table(["state", "deliveries", "oldest message received"], counts, frozenset({1}))
            + "<h2>Top deferral reasons</h2>"
            + _table(["last reply", "queued"], reasons, frozenset({1}))
            + '<form method="get"><input name="id" placeholder="delivery id">'
            "<button>Attempt history</button></form>" + history
        )
        return _page("Queue", body)

    async def profile_page(self, request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        result = ""
        if address:
            try:
                key = normalise_address(address)
            except AddressError as exc:
                return _refused("Profile", f"address: {exc}")
            profile = await self.store.profile(key)
            evidence = await self.store.suppression_evidence(key)
            status = profile["status"] if profile else "active"
            result = (
                f"<p><b>{escape(key)}</b>: {escape(status)}</p><h2>Why: entries that apply</h2>"
                + _table(
                    ["entry", "scope", "source", "since", "until", "reason"],
                    [
                        [
                            escape(e["kind"]),
                            escape(e["scope"] or ""),
                            escape(e["source"]),
                            _when(e["created_at"]),
                            _when(e["until"]),
                            escape(e["reason"]),
                        ]
                        for e in evidence.entries
                    ],
                )
                + "<h2>Bounces behind them</h2>"
                + _table(
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
                    ],
                    [
                        [
                            _when(b["occurred_at"]),
                            escape(b["type"]),
                            str(b["code"] or ""),
                            escape(b["category"] or ""),
                            escape(b["rule"] or ""),
                            escape(b["source_ip"] or ""),
                            escape(b["destination"] or ""),
                            escape(b["campaign"] or ""),
                            f'<a href="/incidents#i{b["incident_id"]}">#{b["incident_id"]} '
                            f"({escape(b['incident_state'] or '')})</a>"
                            if b["incident_id"]
                            else "",
                            escape(b["reply_text"] or ""),
                            escape(b["template"] or ""),
                        ]
                        for b in evidence.bounces
                    ],
                )
                + "<h2>Administrators' acts</h2>"
                + _table(
                    ["when", "who", "what", "why"],
                    [
                        [
                            _when(a["occurred_at"]),
                            escape(a["actor"]),
                            escape(a["action"]),
                            escape(a["reason"]),
                        ]
                        for a in evidence.audit
                    ],
                )
            )
        body = (
            f'<form method="get"><input name="address" value="{escape(address)}" '
            'placeholder="address"><button>Look up</button></form>' + result
        )
        return _page("Profile", body)

    async def incidents_page(self, request: web.Request) -> web.Response:
        incidents = await self.store.list_incidents(None, 100)
        csrf = _csrf_field(request[_SESSION])
        rows = [
            [
                f'<span id="i{i["id"]}">#{i["id"]}</span>',
                escape(i["state"]),
                _when(i["opened_at"]),
                _when(i["last_seen_at"]),
                escape(i["source_ip"]),
                escape(f"{i['scope']}: {i['destination']}"),
                str(i["recipients"]),
                str(i["replies"]),
                str(i["lifted"]),
                escape(i["category"] or ""),
                escape(i["template"]),
                escape(f"{i['released_by']}: {i['release_reason']}")
                if i["state"] == "released"
                else '<form class="inline" method="post" action="/incidents/release">'
                f'{csrf}<input type="hidden" name="id" value="{i["id"]}">'
                '<input name="reason" placeholder="why (required)" required>'
                '<label><input type="checkbox" name="confirm" value="yes" required> sure</label>'
                "<button>Release</button></form>",
            ]
            for i in incidents
        ]
        notice = request.query.get("notice")
        body = (
            (f'<p class="err">{escape(notice)}</p>' if notice else "")
            + "<p>One reply template hitting many recipients at one destination from one IP: "
            "its replies defer instead of bouncing and suppress nobody. Releasing lifts every "
            "suppression its replies made and retries its deferred mail now.</p>"
            + _table(
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
                frozenset({6, 7, 8}),
            )
        )
        return _page("Incidents", body)

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
    app: web.Application, store: Store, password_hash: str, clock: Clock = utc_now
) -> None:
    pages = _Pages(store, password_hash, clock)
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
