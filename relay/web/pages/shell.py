"""What every admin page shares: the page's frame (navigation, who is logged in), notices,
the session's request keys, the confirmed-change form, the stylesheet, and ``PageContext``
(the store, clock and rules every page is built from).

Pages are built with ``relay.web.html``: every string is text and escaped unless the helpers
built it as markup, so no handler escapes anything itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from relay.clock import Clock
from relay.config import Rules
from relay.store import AdminSession, Store
from relay.web.html import Markup, concat, element, link, trusted

PAGE_ROWS = 50
MAX_PAGE = 1_000_000  # of the suppression list: offset at most 50 million rows
MAX_ID = 2**63 - 1  # deliveries and incidents have bigint ids
BUILT_IN_ADMIN = "admin"  # who the shared [admin] password_hash logs in as

STYLE = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f3a5f;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:.3em 1.2em;
align-items:center}
nav a{color:#fff;text-decoration:none}nav a[aria-current]{text-decoration:underline}
nav span{color:#d8e0ea;margin-left:auto}nav button{margin:0}
main{padding:1em 1.5em;max-width:100%}h1{font-size:1.5em;overflow-wrap:anywhere}
h2{font-size:1.2em;margin-top:1.5em}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.5em 0}
caption{text-align:left;color:#555;padding:.2em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:600;border-top:2px solid #999}
th a{color:inherit}form.inline{display:inline}
form.filters{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:end;margin:.5em 0}
form.filters label{display:flex;flex-direction:column;font-size:.9em;color:#444}
input,select,button{font:inherit;margin:.2em;max-width:100%}
button{cursor:pointer}a:focus,button:focus,input:focus,select:focus{outline:2px solid #2a6fd6;
outline-offset:1px}
.err,.ok{padding:.5em .8em;border-radius:4px;border:1px solid}
.err{color:#7a0d0d;background:#fdecec;border-color:#e4a3a3}
.ok{color:#0d5a1f;background:#e9f7ec;border-color:#9fd3ab}
.muted{color:#666}.over{color:#a00;font-weight:600}
.pager{display:flex;gap:1em;align-items:center}
svg text{font:11px system-ui,sans-serif}.chartbox svg{min-width:620px;max-width:1200px}
@media (max-width:640px){main{padding:.6em}nav{padding:.5em}
form.filters{flex-direction:column;align-items:stretch}}
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard(Protocol):
    """``Login.login_required``: a handler for a live session only."""

    def __call__(self, handler: Handler, *, viewer_may_post: bool = False) -> Handler: ...


@dataclass(frozen=True)
class PageContext:
    """What the pages are built from."""

    store: Store
    clock: Clock
    rules: Callable[[], Rules] | None  # the relay's rules now (None: no verdict shown)


SESSION = web.RequestKey("session", AdminSession)
FORM = web.RequestKey("form", MultiDictProxy[Any])
NAV = (
    ("/report", "Bounces report"),
    ("/suppression", "Suppression list"),
    ("/queue", "Queue"),
    ("/incidents", "Incidents"),
    ("/guardrails", "Guardrails"),
    ("/profile", "Profile"),
)


def whole_page(
    request: web.Request, title: str, body: Markup, *, status: int = 200
) -> web.Response:
    """A whole page; logged in (a session), it starts with the navigation, who is logged in
    and Log out."""
    session = request.get(SESSION)
    nav = (
        element(
            "nav",
            *(
                link(href, name, aria_current="page" if request.path == href else None)
                for href, name in NAV
            ),
            element("span", f"{user_of(session)} ({session.role})"),
            element(
                "form",
                csrf_field(session),
                element("button", "Log out"),
                class_="inline",
                method="post",
                action="/logout",
            ),
            aria_label="pages",
        )
        if session is not None
        else None
    )
    html = trusted("<!doctype html>") + element(
        "html",
        element(
            "head",
            element("meta", charset="utf-8"),
            # Without it a phone draws the page at desktop width, shrunk.
            element("meta", name="viewport", content="width=device-width, initial-scale=1"),
            element("title", f"{title} — bounce-relay"),
            element("link", rel="stylesheet", href="/admin.css"),
        ),
        element("body", nav, element("main", element("h1", title), body)),
        lang="en",
    )
    return web.Response(text=html, content_type="text/html", status=status)


def refused(request: web.Request, title: str, why: str) -> web.Response:
    """A 400 page saying what was wrong with the request."""
    return whole_page(request, title, error_notice(why), status=400)


def read_only(request: web.Request, session: AdminSession) -> web.Response:
    """The 403 page a viewer's POST gets: nothing was changed, and why."""
    body = concat(
        error_notice(
            f"Nothing was changed: your account {user_of(session)} is a {session.role}, which "
            "may read every page but change nothing."
        ),
        element("p", "Ask someone whose account has the role admin to do it."),
    )
    return whole_page(request, "Read-only account", body, status=403)


def error_notice(text: str) -> Markup:
    """What went wrong, styled as an error and read out at once by screen readers."""
    return element("p", text, class_="err", role="alert")


def success_notice(text: str) -> Markup:
    """What a change did, styled as a success."""
    return element("p", text, class_="ok", role="status")


# The outcome a change redirects back with (POST, then 303 to the page): ``done`` is shown as
# a success, ``problem`` as an error. Both are only ever shown as text.
DONE, PROBLEM = "done", "problem"


def outcome_notice(request: web.Request) -> Markup | None:
    """The notice of the change that redirected here, if any."""
    if problem := request.query.get(PROBLEM):
        return error_notice(problem)
    if done := request.query.get(DONE):
        return success_notice(done)
    return None


def back_to(path: str, *, done: str = "", problem: str = "") -> web.HTTPSeeOther:
    """The 303 a change answers with: back to ``path`` with its outcome to show."""
    query = urlencode([(k, v) for k, v in ((DONE, done), (PROBLEM, problem)) if v])
    separator = "&" if "?" in path else "?"
    return web.HTTPSeeOther(f"{path}{separator}{query}" if query else path)


def csrf_field(session: AdminSession) -> Markup:
    return element("input", type="hidden", name="csrf", value=session.csrf)


def user_of(session: AdminSession) -> str:
    """Who the session is: the account's name, or the shared password's built-in admin."""
    return session.account or BUILT_IN_ADMIN


def actor(request: web.Request) -> str:
    """Who a page's change is audited as: the logged-in account."""
    return user_of(request[SESSION])


def confirmed_form(action: str, csrf: Markup, hidden: tuple[str, str | int], button: str) -> Markup:
    """An inline POST form for a change that needs a reason and a ticked "sure"."""
    name, value = hidden
    return element(
        "form",
        csrf,
        element("input", type="hidden", name=name, value=value),
        element(
            "label",
            "Reason ",
            element("input", name="reason", placeholder="why (required)", required=True),
        ),
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


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


class Pages:
    """A group of pages: handlers over the context's store, clock and rules."""

    def __init__(self, ctx: PageContext) -> None:
        self.store = ctx.store
        self.clock = ctx.clock
        self.rules = ctx.rules
