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
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f3a5f;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}
nav span{color:#d8e0ea;margin-right:1.2em}
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n{text-align:right}form.inline{display:inline}
input,select,button{font:inherit;margin:.2em}.err{color:#a00}.muted{color:#777}
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
            *(link(href, name) for href, name in NAV),
            element("span", f"{user_of(session)} ({session.role})"),
            element(
                "form",
                csrf_field(session),
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
    return element("p", text, class_="err")


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


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


class Pages:
    """A group of pages: handlers over the context's store, clock and rules."""

    def __init__(self, ctx: PageContext) -> None:
        self.store = ctx.store
        self.clock = ctx.clock
        self.rules = ctx.rules
