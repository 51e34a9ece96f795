"""The admin page: login, bounces report, suppression list, queue, incidents, profile.

Served on ``[admin] listen``. People log in with named accounts (``bounce-relay admin user
add|remove|list|passwd``, table ``admin_accounts``): role ``admin`` may do everything,
``viewer`` may read every page and is refused (403, with a page that says why) every POST
that changes something: any POST but the logout, so an action added later is refused to
viewers unless its route says otherwise. The shared ``[admin] password_hash`` of older
configs logs in (user name empty or "admin") as a built-in admin only while no account
exists; once one does, it is refused with a message saying so.

Sessions are rows in PostgreSQL (``relay.store.accounts``): a restart logs nobody out, a
password change or an account's removal ends its sessions at once, a logout ends its own;
the table keeps a hash of the cookie, never the cookie. The cookie is HttpOnly,
SameSite=Strict and Secure behind TLS; every form that changes something carries the
session's CSRF token, and the login form a token of its own (a random cookie and, in the
form, its HMAC under a per-process key: a page elsewhere can neither read nor forge the
pair). Every POST must come from the admin's own origin (``Origin``, else ``Referer``;
neither: refused). Failed logins are limited per client address (``LOGIN_ATTEMPTS`` in
``LOGIN_WINDOW``, then 429 with Retry-After); the attempt is counted before the password is
checked, so parallel guesses cannot slip past the limit, and the check runs off the event
loop (``PasswordChecks``). Every audit row a page writes names the account.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from policies.addresses import AddressError, normalise_address, validate_address
from policies.verdict import explain
from relay.clock import Clock, utc_now
from relay.config import Rules
from relay.errors import StoreError
from relay.passwords import AttemptLimit, CheckerBusy, SecretChecker
from relay.reports import export as report
from relay.reports.replay import judged_again
from relay.store import AdminSession, EvidenceBounce, RecordedBounce, ReportRow, Store
from relay.store.accounts import SESSION_LIFETIME
from relay.web.api import PERIOD_OUT_OF_RANGE, BadNumber, parse_number
from relay.web.downloads import send_report
from relay.web.html import Content, Markup, concat, element, link, table, trusted

__all__ = ["BUILT_IN_ADMIN", "COOKIE", "LOGIN_COOKIE", "PASSWORD_CHECKER", "add_page_routes"]

log = structlog.get_logger("relay.admin")

COOKIE = "br_session"
LOGIN_COOKIE = "br_login"  # the login form's own CSRF cookie (before there is a session)
SESSION_SECONDS = int(SESSION_LIFETIME.total_seconds())
LOGIN_ATTEMPTS = 5  # failed logins per client ...
LOGIN_WINDOW = timedelta(seconds=300)  # ... in this window, then 429 until it passes
PAGE_ROWS = 50
MAX_PAGE = 1_000_000  # of the suppression list: offset at most 50 million rows
MAX_ID = 2**63 - 1  # deliveries and incidents have bigint ids
BUILT_IN_ADMIN = "admin"  # who the shared [admin] password_hash logs in as
# The checker's name for the shared hash: no account can be called this (0013's CHECK).
_SHARED = "[admin] password_hash"
_NO_ACCOUNTS = (
    "Nobody can log in yet: create an account on the relay's host with "
    "`bounce-relay admin user add NAME --role admin`."
)
_SHARED_REFUSED = (
    "The shared password ([admin] password_hash) no longer logs in: named accounts exist. "
    "Log in with your own user name; an administrator can add you with "
    "`bounce-relay admin user add`, and should remove password_hash from config.toml."
)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f3a5f;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}
nav span{color:#d8e0ea;margin-right:1.2em}
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n{text-align:right}form.inline{display:inline}
input,select,button{font:inherit;margin:.2em}.err{color:#a00}.muted{color:#777}
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PasswordChecks:
    """Login passwords checked against the shared hash and every account's, off the event
    loop (``SecretChecker``: worker threads, a bounded number at a time). The accounts are
    read at each login; when their hashes differ from those the checker holds (an account
    added, removed or given a new password), a new checker replaces it, so a password
    verified before and remembered by the old one counts for nothing. Each check is narrowed
    to one name: it costs one scrypt, whoever is named (an unknown name: a decoy)."""

    def __init__(self, shared_hash: str) -> None:
        self.shared_hash = shared_hash
        self._accounts: dict[str, str] = {}
        self._checker = self._new_checker()
        self._retired_runs = 0

    def _new_checker(self) -> SecretChecker:
        return SecretChecker([*self._accounts.items(), (_SHARED, self.shared_hash)])

    @property
    def scrypt_runs(self) -> int:
        """Hashes computed since the relay started (observable by tests and operators)."""
        return self._retired_runs + self._checker.scrypt_runs

    def holding(self, accounts: dict[str, str]) -> tuple[SecretChecker, dict[str, str]]:
        """The checker for these account hashes, and the hashes it holds (by name)."""
        if accounts != self._accounts:
            self._retired_runs += self._checker.scrypt_runs
            self._accounts = accounts
            self._checker = self._new_checker()
        return self._checker, self._accounts


@dataclass
class _Auth:
    checks: PasswordChecks
    attempts: AttemptLimit
    form_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def login_token(self, nonce: str) -> str:
        """The login form's hidden field for the browser holding cookie ``nonce``."""
        raw = nonce.encode("utf-8", "surrogatepass")  # a cookie may hold any bytes
        return hmac.new(self.form_key, raw, hashlib.sha256).hexdigest()

    def login_token_ok(self, request: web.Request, form: MultiDictProxy[Any]) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        return bool(nonce) and _same(str(form.get("csrf", "")), self.login_token(nonce))


PASSWORD_CHECKER = web.AppKey("password_checker", PasswordChecks)


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


_SESSION = web.RequestKey("session", AdminSession)
_FORM = web.RequestKey("form", MultiDictProxy[Any])
_NAV = (
    ("/report", "Bounces report"),
    ("/suppression", "Suppression list"),
    ("/queue", "Queue"),
    ("/incidents", "Incidents"),
    ("/profile", "Profile"),
)


def _page(request: web.Request, title: str, body: Markup, *, status: int = 200) -> web.Response:
    """A whole page; logged in (a session), it starts with the navigation, who is logged in
    and Log out."""
    session = request.get(_SESSION)
    nav = (
        element(
            "nav",
            *(link(href, name) for href, name in _NAV),
            element("span", f"{_user(session)} ({session.role})"),
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


def _read_only(request: web.Request, session: AdminSession) -> web.Response:
    """The 403 page a viewer's POST gets: nothing was changed, and why."""
    body = concat(
        _error(
            f"Nothing was changed: your account {_user(session)} is a {session.role}, which "
            "may read every page but change nothing."
        ),
        element("p", "Ask someone whose account has the role admin to do it."),
    )
    return _page(request, "Read-only account", body, status=403)


def _error(text: str) -> Markup:
    return element("p", text, class_="err")


def _csrf_field(session: AdminSession) -> Markup:
    return element("input", type="hidden", name="csrf", value=session.csrf)


def _user(session: AdminSession) -> str:
    """Who the session is: the account's name, or the shared password's built-in admin."""
    return session.account or BUILT_IN_ADMIN


def _actor(request: web.Request) -> str:
    """Who a page's change is audited as: the logged-in account."""
    return _user(request[_SESSION])


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
        shared_hash: str,
        clock: Clock = utc_now,
        rules: Callable[[], Rules] | None = None,
    ) -> None:
        self.store = store
        self.shared_hash = shared_hash
        self.clock = clock
        self.rules = rules
        self.auth = _Auth(
            PasswordChecks(shared_hash), AttemptLimit(LOGIN_ATTEMPTS, LOGIN_WINDOW, clock)
        )

    def login_required(self, handler: Handler, *, viewer_may_post: bool = False) -> Handler:
        """``handler`` for a live session only (else to /login). A POST needs the session's
        CSRF token and, unless ``viewer_may_post`` (the logout), the role admin: a POST
        changes something, and a viewer may change nothing."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            session_id = request.cookies.get(COOKIE, "")
            session = (
                await self.store.admin_session(session_id, self.clock(), self.shared_hash)
                if session_id
                else None
            )
            if session is None:
                raise web.HTTPSeeOther("/login")
            request[_SESSION] = session
            if request.method == "POST":
                form = await request.post()
                sent = str(form.get("csrf", ""))
                if not _same(sent, session.csrf):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token")
                if session.role != "admin" and not viewer_may_post:
                    return _read_only(request, session)
                request[_FORM] = form
            return await handler(request)

        return wrapped

    async def login_form(
        self, request: web.Request, error: str = "", status: int = 200, user: str = ""
    ) -> web.Response:
        """The login form; after a refusal, with why and the user name typed."""
        # The pre-session CSRF pair: a random cookie, and in the form its HMAC.
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not 0 < len(nonce) <= 128
        if fresh:
            nonce = secrets.token_urlsafe(32)
        if not error and not self.shared_hash and not await self.store.admin_account_hashes():
            error = _NO_ACCOUNTS
        body = concat(
            _error(error) if error else None,
            element(
                "form",
                element("input", type="hidden", name="csrf", value=self.auth.login_token(nonce)),
                element(
                    "p",
                    element(
                        "label",
                        "User name ",
                        element(
                            "input",
                            name="user",
                            value=user,
                            autocomplete="username",
                            autofocus=True,
                        ),
                    ),
                ),
                element(
                    "p",
                    element(
                        "label",
                        "Password ",
                        element(
                            "input",
                            type="password",
                            name="password",
                            autocomplete="current-password",
                        ),
                    ),
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

    def _checked_as(self, user: str, accounts: dict[str, str]) -> str | None:
        """Whose hash the password given with ``user`` is checked against: the account of
        that name; the shared password (user name empty or "admin", no such account); else
        the name as given (no such account: the check runs on a decoy and fails). None: no
        check at all, nobody can log in (no account, no shared password)."""
        if user in accounts:
            return user
        if user in ("", BUILT_IN_ADMIN) and self.shared_hash:
            return _SHARED
        if not accounts and not self.shared_hash:
            return None
        return user

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
        try:
            return await self._log_in(request, client)
        except StoreError:
            attempts.release(client)  # the database failed: not a wrong password
            raise

    async def _log_in(self, request: web.Request, client: str) -> web.Response:
        attempts = self.auth.attempts
        form = await request.post()
        if not self.auth.login_token_ok(request, form):
            attempts.release(client)  # no password was tried
            raise web.HTTPForbidden(
                text="The login form expired or came from another page: reload /login and "
                "log in from there.\n"
            )
        user = str(form.get("user", "")).strip().lower()
        accounts = await self.store.admin_account_hashes()
        checked_as = self._checked_as(user, accounts)
        if checked_as is None:
            attempts.release(client)
            return await self.login_form(request, _NO_ACCOUNTS, 403)
        checker, hashes = self.auth.checks.holding(accounts)
        try:
            name = await checker.match(str(form.get("password", "")), among=(checked_as,))
        except CheckerBusy:
            attempts.release(client)
            return await self._login_refused(
                request, "Too many logins being checked; try again in a second.", 503, 1
            )
        if name == _SHARED and accounts:
            # Right, but retired: say so (the attempt still counts, as a wrong one would).
            log.warning("admin.shared_password_refused", client=client, accounts=len(accounts))
            return await self.login_form(request, _SHARED_REFUSED, 401, user)
        if name is None:
            log.info("admin.login_failed", user=user[:100], client=client)
            return await self.login_form(request, "Wrong user name or password.", 401, user)
        # A login always starts a new session and ends the one the browser brought along, so
        # an identifier known before the login (fixation) is worth nothing after it.
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        replaced = request.cookies.get(COOKIE, "")
        if name == _SHARED:
            await self.store.start_shared_session(
                session_id, csrf, self.clock(), self.shared_hash, replaced
            )
            user, role = BUILT_IN_ADMIN, "admin"
        else:
            started = await self.store.start_account_session(
                session_id, csrf, self.clock(), name, hashes[name], replaced
            )
            if started is None:  # removed, or a new password, while this one was checked
                return await self.login_form(request, "Wrong user name or password.", 401, user)
            user, role = name, started
        attempts.release(client)
        log.info("admin.login", user=user, role=role, client=client)
        response = web.HTTPSeeOther("/report")
        response.set_cookie(
            COOKIE,
            session_id,
            httponly=True,
            samesite="Strict",
            secure=_secure(request),
            max_age=SESSION_SECONDS,
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self.store.end_admin_session(request.cookies.get(COOKIE, ""))
        log.info("admin.logout", user=_actor(request))
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
            normalise_address(address), _actor(request), reason
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
            incident_id, self.clock(), _actor(request), reason
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
    shared_hash: str = "",
    clock: Clock = utc_now,
    rules: Callable[[], Rules] | None = None,
) -> None:
    """The admin page's routes; ``shared_hash`` is ``[admin] password_hash`` ("": none)."""
    pages = _Pages(store, shared_hash, clock, rules)
    app[PASSWORD_CHECKER] = pages.auth.checks
    guarded = pages.login_required
    app.router.add_get("/", pages.home)
    app.router.add_get("/admin.css", pages.stylesheet)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", same_origin_only(pages.login))
    app.router.add_post("/logout", same_origin_only(guarded(pages.logout, viewer_may_post=True)))
    app.router.add_get("/report", pages.login_required(pages.report_page))
    app.router.add_get(r"/report.{fmt:csv|xlsx}", pages.login_required(pages.report_file))
    app.router.add_get("/suppression", pages.login_required(pages.suppression_page))
    app.router.add_post("/suppression/remove", same_origin_only(guarded(pages.suppression_remove)))
    app.router.add_get("/queue", pages.login_required(pages.queue_page))
    app.router.add_get("/profile", pages.login_required(pages.profile_page))
    app.router.add_get("/incidents", pages.login_required(pages.incidents_page))
    app.router.add_post("/incidents/release", same_origin_only(guarded(pages.incident_release)))
