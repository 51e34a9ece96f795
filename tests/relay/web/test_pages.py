"""The admin page over HTTP: login, CSRF, rate limit, report, downloads, suppression removal,
named accounts and their roles, sessions kept in the database.

Every POST carries the admin's own Origin (as a browser does) and the login form's token;
tests/relay/web/test_hardening.py checks what happens without them."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from relay.ops.app import Relay
from relay.passwords import hash_password
from relay.store.accounts import SESSION_IDLE
from relay.web.pages import COOKIE
from tests.support.admin import NOW, PASSWORD, base, browser, logged_in, login_post
from tests.support.scripted import FakeClock


def _page_routes(relay: Relay, method: str) -> list[str]:
    """The admin page's routes of ``method`` behind a login (not the JSON API's, not login's,
    not the stylesheet), as paths a client can ask for: a route with a variable part
    (/report.{fmt}) is left out."""
    assert relay.admin_app is not None
    paths = []
    for route in relay.admin_app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path")
        if route.method != method or path is None:
            continue
        public = ("/api/", "/metrics", "/healthz", "/readyz", "/login", "/logout", "/admin.css")
        if path == "/" or path.startswith(public):  # "/" only redirects to /report
            continue
        paths.append(path)
    return sorted(paths)


async def test_no_session_redirects_to_login(relay):
    """Every page, and every change, without a session sends the browser to /login."""
    pages = _page_routes(relay, "GET")
    assert {"/report", "/suppression", "/queue", "/profile", "/incidents"} <= set(pages)
    async with aiohttp.ClientSession() as http:
        for path in [*pages, "/report.csv"]:
            async with http.get(base(relay) + path, allow_redirects=False) as r:
                assert r.status == 303, path
                assert r.headers["Location"] == "/login"
        for path in _page_routes(relay, "POST"):
            own = {"Origin": base(relay)}
            async with http.post(base(relay) + path, headers=own, allow_redirects=False) as r:
                assert r.status == 303, path
                assert r.headers["Location"] == "/login"


async def test_a_viewer_is_refused_every_change_the_pages_offer(relay, db_dsn):
    """Every POST route of the admin pages (found by walking the router, so a change added
    later is covered without touching this test) answers a viewer 403 with the read-only
    page, whatever the form holds, and nothing is audited."""
    await add_account(relay, "bob", "viewer", BOB)
    http, csrf = await logged_in(relay, "bob", BOB)
    changes = _page_routes(relay, "POST")
    assert "/suppression/remove" in changes and "/incidents/release" in changes
    async with http:
        for path in changes:
            form = {"reason": "x", "confirm": "yes", "csrf": csrf}
            own = {"Origin": base(relay)}
            async with http.post(base(relay) + path, data=form, headers=own) as r:
                assert r.status == 403, path
                assert "Read-only account" in await r.text(), path
    assert [a for a in await audit_actors(db_dsn) if a[1] != "account.add"] == []


async def test_wrong_password_refused_then_rate_limited(relay):
    """Wrong passwords get 401; after five, even the right one waits (429, Retry-After)."""
    async with browser() as http:
        for _ in range(5):
            async with await login_post(http, relay, "nope") as r:
                assert r.status == 401
        async with await login_post(http, relay, PASSWORD) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) >= 1


async def test_session_cookie_flags(relay):
    """The session cookie is HttpOnly and SameSite=Strict."""
    async with (
        browser() as http,
        await login_post(http, relay, PASSWORD, allow_redirects=False) as r,
    ):
        cookie = r.cookies[COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"


async def test_login_renews_the_session(relay):
    """Logging in again issues a new session id and the old one stops working."""
    http, _ = await logged_in(relay)
    async with http:
        [old] = [c.value for c in http.cookie_jar if c.key == COOKIE]
        async with await login_post(http, relay, PASSWORD) as r:
            assert r.status == 200
        [new] = [c.value for c in http.cookie_jar if c.key == COOKIE]
        assert new != old
        async with (
            aiohttp.ClientSession(cookies={COOKIE: old}) as stale,
            stale.get(base(relay) + "/report", allow_redirects=False) as r,
        ):
            assert r.status == 303
        async with http.get(base(relay) + "/report", allow_redirects=False) as r:
            assert r.status == 200


# --- named accounts, roles and sessions in the database --------------------------------------

ALICE, BOB = "alice-password-1", "bob-password-1"


async def add_account(relay: Relay, name: str, role: str, password: str) -> None:
    hashed = await asyncio.to_thread(hash_password, password)
    assert await relay.store.add_admin_account(name, role, hashed, NOW, "test") is not None


async def audit_actors(db_dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT actor, action FROM admin_audit ORDER BY id")
    finally:
        await conn.close()
    return [(r["actor"], r["action"]) for r in rows]


async def session_count(db_dsn: str) -> int:
    conn = await asyncpg.connect(db_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM admin_sessions"))
    finally:
        await conn.close()


async def insert_incident(db_dsn: str) -> int:
    conn = await asyncpg.connect(db_dsn)
    try:
        return int(
            await conn.fetchval(
                "INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope,"
                " source_ip, recipients, attempted) VALUES (now(), now(), '550 blocked',"
                " 'mx.example.org:25', 'mx', '127.0.0.2', 40, 40) RETURNING id"
            )
        )
    finally:
        await conn.close()


async def test_an_account_logs_in_by_name_and_the_audit_log_names_it(relay, db_dsn):
    """alice (role admin) logs in with her name, typed in any case; the navigation says who
    is logged in; her removal and her incident release are audited as "alice"."""
    await add_account(relay, "alice", "admin", ALICE)
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    incident_id = await insert_incident(db_dsn)
    http, csrf = await logged_in(relay, "Alice", ALICE)
    own = {"Origin": base(relay)}
    async with http:
        async with http.get(base(relay) + "/report") as r:
            assert "alice (admin)" in await r.text()
        form = {"address": "gone@example.org", "reason": "asked", "confirm": "yes", "csrf": csrf}
        async with http.post(base(relay) + "/suppression/remove", data=form, headers=own) as r:
            assert "Removed gone@example.org." in await r.text()
        form = {"id": str(incident_id), "reason": "fixed", "confirm": "yes", "csrf": csrf}
        async with http.post(base(relay) + "/incidents/release", data=form, headers=own) as r:
            assert f"Incident #{incident_id} released" in await r.text()
    acts = [a for a in await audit_actors(db_dsn) if a[1] != "account.add"]
    assert acts == [("alice", "suppression.remove"), ("alice", "incident.release")]
    [alice] = await relay.store.admin_accounts(NOW)
    assert alice.last_login_at is not None and alice.sessions == 1


async def test_a_viewer_reads_every_page_and_is_refused_every_change(relay, db_dsn):
    """bob (viewer) sees every page; removing a suppression or releasing an incident, with
    the right CSRF token and origin, is a 403 page saying why, and nothing changes. He can
    log out (a POST too), which deletes his session."""
    await add_account(relay, "bob", "viewer", BOB)
    await relay.store.add_suppression("kept@example.org", "user_unknown", "hard_bounce")
    incident_id = await insert_incident(db_dsn)
    http, csrf = await logged_in(relay, "bob", BOB)
    own = {"Origin": base(relay)}
    async with http:
        for path in ("/report", "/report.csv", "/suppression", "/queue", "/profile", "/incidents"):
            async with http.get(base(relay) + path) as r:
                assert r.status == 200, path
        changes = [
            ("/suppression/remove", {"address": "kept@example.org"}),
            ("/incidents/release", {"id": str(incident_id)}),
        ]
        for path, fields in changes:
            form = {**fields, "reason": "x", "confirm": "yes", "csrf": csrf}
            async with http.post(base(relay) + path, data=form, headers=own) as r:
                assert r.status == 403, path
                page = await r.text()
            assert "Read-only account" in page
            assert "your account bob is a viewer" in page
        assert await session_count(db_dsn) == 1
        async with http.post(base(relay) + "/logout", data={"csrf": csrf}, headers=own) as r:
            assert str(r.url).endswith("/login")
    assert await relay.store.suppression_reasons([("kept@example.org", "")]) != [None]
    assert (await relay.store.incident(incident_id)).state == "open"
    assert [a for a in await audit_actors(db_dsn) if a[1] != "account.add"] == []
    assert await session_count(db_dsn) == 0


async def test_a_wrong_name_and_a_wrong_password_get_one_answer(relay):
    await add_account(relay, "alice", "admin", ALICE)
    async with browser() as http:
        for user, password in (("alice", "not-hers"), ("mallory", ALICE), ("", ALICE)):
            async with await login_post(http, relay, password, user=user) as r:
                assert r.status == 401, user
                assert "Wrong user name or password." in await r.text()


async def test_the_shared_password_works_until_the_first_account_exists(relay, db_dsn):
    """[admin] password_hash logs in as the built-in admin (audited as "admin") while there
    is no account; the first account ends its sessions, and from then on it is refused
    with a page saying why, under the name "admin" or none."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay)
    async with http:
        async with http.get(base(relay) + "/report") as r:
            assert "admin (admin)" in await r.text()
        form = {"address": "gone@example.org", "reason": "asked", "confirm": "yes", "csrf": csrf}
        own = {"Origin": base(relay)}
        async with http.post(base(relay) + "/suppression/remove", data=form, headers=own) as r:
            assert r.status == 200
        await add_account(relay, "alice", "admin", ALICE)
        async with http.get(base(relay) + "/report", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        for user in ("", "admin", "ADMIN"):
            async with await login_post(http, relay, PASSWORD, user=user) as r:
                assert r.status == 401
                page = await r.text()
            assert "no longer logs in: named accounts exist" in page, user
    assert await audit_actors(db_dsn) == [
        ("admin", "suppression.remove"),
        ("test", "account.add"),
    ]
    assert await session_count(db_dsn) == 0


async def test_a_new_password_ends_the_session_and_the_old_one_no_longer_logs_in(relay):
    """The old password was verified (and remembered) before; after the change it is
    refused all the same, the session it opened is gone, the new one logs in."""
    await add_account(relay, "alice", "admin", ALICE)
    http, _ = await logged_in(relay, "alice", ALICE)
    async with http:
        new_hash = await asyncio.to_thread(hash_password, "alice-password-2")
        assert await relay.store.set_admin_password("alice", new_hash, NOW, "test")
        async with http.get(base(relay) + "/report", allow_redirects=False) as r:
            assert r.status == 303
        async with await login_post(http, relay, ALICE, user="alice") as r:
            assert r.status == 401
    again, _ = await logged_in(relay, "alice", "alice-password-2")
    await again.close()


async def test_a_removed_account_is_logged_out_at_once(relay):
    await add_account(relay, "alice", "admin", ALICE)
    await add_account(relay, "bob", "viewer", BOB)
    http, _ = await logged_in(relay, "bob", BOB)
    async with http:
        assert await relay.store.remove_admin_account("bob", NOW, "test")
        async with http.get(base(relay) + "/queue", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with await login_post(http, relay, BOB, user="bob") as r:
            assert r.status == 401


async def test_without_accounts_or_a_shared_password_the_page_says_how_to_begin(
    db_dsn, make_config
):
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        '[admin]\nlisten = "127.0.0.1:0"\n[delivery]\nenabled = false\n',
        replace_base=True,
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay, browser() as http:
        async with http.get(base(relay) + "/login") as r:
            assert "bounce-relay admin user add NAME --role admin" in await r.text()
        async with await login_post(http, relay, "anything", user="admin") as r:
            assert r.status == 403
        await add_account(relay, "alice", "admin", ALICE)
        async with http.get(base(relay) + "/login") as r:
            assert "bounce-relay admin user add" not in await r.text()
        async with await login_post(http, relay, ALICE, user="alice") as r:
            assert r.status == 200 and str(r.url).endswith("/report")


async def test_an_unused_session_ends_after_the_idle_limit_on_the_relays_clock(db_dsn, make_config):
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        '[admin]\nlisten = "127.0.0.1:0"\n[delivery]\nenabled = false\n',
        replace_base=True,
    )
    clock = FakeClock()
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
        await add_account(relay, "alice", "admin", ALICE)
        http, _ = await logged_in(relay, "alice", ALICE)
        async with http:
            clock.advance(seconds=SESSION_IDLE.total_seconds() - 60)
            async with http.get(base(relay) + "/report", allow_redirects=False) as r:
                assert r.status == 200  # used: the idle limit counts from here again
            clock.advance(seconds=SESSION_IDLE.total_seconds() + 1)
            async with http.get(base(relay) + "/report", allow_redirects=False) as r:
                assert r.status == 303
