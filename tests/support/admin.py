"""A browser's session on the admin page over HTTP: cookies kept, the admin's own Origin on
every POST, the login form's CSRF token, for the admin page's tests. ``user`` "" logs in with
the shared ``[admin] password_hash`` (while no account exists)."""

from __future__ import annotations

import re
from datetime import timedelta

import aiohttp

from relay.ops.app import Relay
from tests.support.report_seeds import T0 as REPORT_SEEDS_T0

PASSWORD = "correct horse battery"
# The clock of the admin page tests' relay: a day after the standard report seeds
# (tests.support.report_seeds.T0), so its default 30-day window holds them.
NOW = REPORT_SEEDS_T0 + timedelta(days=1)


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.admin_port}"


def browser() -> aiohttp.ClientSession:
    """A client that, like a browser, keeps cookies and names its origin on every POST."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login_post(
    http: aiohttp.ClientSession,
    relay: Relay,
    password: str,
    *,
    user: str = "",
    allow_redirects: bool = True,
) -> aiohttp.ClientResponse:
    """GET the login form (its cookie and hidden token), then POST it with ``user`` and
    ``password``."""
    async with http.get(base(relay) + "/login") as r:
        token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert token is not None
    data = {"user": user, "password": password, "csrf": token[1]}
    return await http.post(
        base(relay) + "/login",
        data=data,
        headers={"Origin": base(relay)},
        allow_redirects=allow_redirects,
    )


async def logged_in(
    relay: Relay, user: str = "", password: str = PASSWORD
) -> tuple[aiohttp.ClientSession, str]:
    """A browser logged in as ``user``, and its session's CSRF token."""
    http = browser()
    async with await login_post(http, relay, password, user=user) as r:
        assert r.status == 200
        assert str(r.url).endswith("/report")
        page = await r.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return http, csrf[1]
