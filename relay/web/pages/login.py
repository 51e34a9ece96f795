"""Logging in and out, sessions and the guards every page sits behind.

People log in with named accounts (``bounce-relay admin user add|remove|list|passwd``, table
``admin_accounts``): role ``admin`` may do everything, ``viewer`` may read every page and is
refused (403, with a page that says why) every POST that changes something: any POST but
the logout, so an action added later is refused to viewers unless its route says
otherwise. The shared ``[admin] password_hash`` of older configs logs in (user name empty
or "admin") as a built-in admin only while no account exists; once one does, it is refused
with a message saying so.

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
loop (``PasswordChecks``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from relay.clock import Clock
from relay.errors import StoreError
from relay.passwords import AttemptLimit, CheckerBusy, SecretChecker
from relay.store import Store
from relay.store.accounts import SESSION_LIFETIME
from relay.web.html import concat, element
from relay.web.pages.shell import (
    BUILT_IN_ADMIN,
    FORM,
    SESSION,
    Handler,
    actor,
    error_notice,
    read_only,
    whole_page,
)

log = structlog.get_logger("relay.admin")

COOKIE = "br_session"
LOGIN_COOKIE = "br_login"  # the login form's own CSRF cookie (before there is a session)
SESSION_SECONDS = int(SESSION_LIFETIME.total_seconds())
LOGIN_ATTEMPTS = 5  # failed logins per client ...
LOGIN_WINDOW = timedelta(seconds=300)  # ... in this window, then 429 until it passes
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


class Login:
    """/login, /logout, and ``login_required``, the guard of every other page."""

    def __init__(self, store: Store, shared_hash: str, clock: Clock) -> None:
        self.store = store
        self.shared_hash = shared_hash
        self.clock = clock
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
            request[SESSION] = session
            if request.method == "POST":
                form = await request.post()
                sent = str(form.get("csrf", ""))
                if not _same(sent, session.csrf):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token")
                if session.role != "admin" and not viewer_may_post:
                    return read_only(request, session)
                request[FORM] = form
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
            error_notice(error) if error else None,
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
        response = whole_page(request, "Log in", body, status=status)
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
        log.info("admin.logout", user=actor(request))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response
