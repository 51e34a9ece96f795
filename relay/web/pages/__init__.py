"""The admin page: login, bounces report, suppression list, queue, incidents, guardrails,
profile.

Served on ``[admin] listen``, one module per page (``report`` and the events behind a row,
``report_rows``; ``suppression`` and its CSV download and import, ``suppression_files``;
``queue`` and a delivery's history, ``delivery``; ``profile``; ``incidents``;
``guardrails``), each adding
its routes behind ``login.Login.login_required``; ``shell`` is what they share (the frame,
notices, the confirmed-change form, the style).
The report's table takes its columns and cell texts from ``relay.reports.export`` (the
CLI's), its downloads are that module's one export. Numbers in parameters go through
``parse_number`` (400 when not digits in range). Every audit row a page writes names the
account. Pages need no JavaScript (the chart is server-drawn SVG), load nothing from outside
the machine, and take their style from /admin.css, so the Content-Security-Policy needs no
'unsafe-inline'.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from relay.clock import Clock, utc_now
from relay.config import Rules
from relay.store import Store
from relay.web.pages import (
    delivery,
    guardrails,
    incidents,
    profile,
    queue,
    report,
    report_rows,
    suppression,
    suppression_files,
)
from relay.web.pages.login import COOKIE, LOGIN_COOKIE, PASSWORD_CHECKER, Login, same_origin_only
from relay.web.pages.shell import BUILT_IN_ADMIN, STYLE, PageContext

__all__ = ["BUILT_IN_ADMIN", "COOKIE", "LOGIN_COOKIE", "PASSWORD_CHECKER", "add_page_routes"]


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/report")


async def _stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css")


def add_page_routes(
    app: web.Application,
    store: Store,
    shared_hash: str = "",
    clock: Clock = utc_now,
    rules: Callable[[], Rules] | None = None,
) -> None:
    """The admin page's routes; ``shared_hash`` is ``[admin] password_hash`` ("": none)."""
    login = Login(store, shared_hash, clock)
    app[PASSWORD_CHECKER] = login.auth.checks
    guarded = login.login_required
    app.router.add_get("/", _home)
    app.router.add_get("/admin.css", _stylesheet)
    app.router.add_get("/login", login.login_form)
    app.router.add_post("/login", same_origin_only(login.login))
    app.router.add_post("/logout", same_origin_only(guarded(login.logout, viewer_may_post=True)))
    ctx = PageContext(store, clock, rules)
    pages = (
        report,
        report_rows,
        suppression,
        suppression_files,
        queue,
        delivery,
        profile,
        incidents,
        guardrails,
    )
    for module in pages:
        module.add_routes(app, ctx, guarded)
