"""The admin listener under hostile clients: token floods, parallel password guesses, forged
proxies, out-of-range numbers, framing and cross-site POSTs. All over real HTTP against a
running relay (or the admin listener on a running relay's store)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_network
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web

from relay.config import AdminToken
from relay.ops.app import Relay
from relay.passwords import hash_password
from relay.web.server import forwarded_client, start_admin
from tests.support.scripted import FakeClock

PASSWORD = "correct horse battery"
TOKEN = "tok-good-4f1e"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture(scope="module")
def tokens() -> tuple[AdminToken, ...]:
    # Two configured tokens: a token never seen before costs one scrypt per configured hash.
    return (AdminToken("crm", hash_password(TOKEN)), AdminToken("bi", hash_password("tok-bi")))


@pytest.fixture
async def relay(db_dsn, make_config) -> AsyncIterator[Relay]:
    """A running relay (SMTP intake on loopback) whose admin listener each test starts."""
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n[delivery]\nenabled = false\n',
        replace_base=True,
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), admin=False) as r:
        yield r


@asynccontextmanager
async def admin(relay: Relay, **kw: Any) -> AsyncIterator[tuple[web.Application, str]]:
    """The admin listener on the relay's store and event loop: (its app, its base URL)."""
    runner, port = await start_admin(
        relay.store, relay.metrics, lambda: True, ("127.0.0.1", 0), **kw
    )
    try:
        assert runner.app is not None
        yield runner.app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def session(local: str | None = None) -> aiohttp.ClientSession:
    """A client session, optionally connecting from another loopback address (127.0.0.x)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None, limit=0)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login_csrf(http: aiohttp.ClientSession, base: str) -> str:
    """GET the login form (which sets its cookie) and return its hidden CSRF field."""
    async with http.get(base + "/login") as r:
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    return found[1] if found else ""


async def log_in(http: aiohttp.ClientSession, base: str) -> str:
    """Log in through the form; return the session's CSRF token for later POSTs."""
    csrf = await login_csrf(http, base)
    data = {"password": PASSWORD, "csrf": csrf}
    async with http.post(base + "/login", data=data, headers={"Origin": base}) as r:
        assert r.status == 200, await r.text()
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found is not None
    return found[1]


def checker_of(app: web.Application, which: str) -> Any:
    if which == "api":
        from relay.web.api import TOKEN_CHECKER

        return app[TOKEN_CHECKER]
    from relay.web.pages import PASSWORD_CHECKER

    return app[PASSWORD_CHECKER]


async def smtp_greeting_seconds(relay: Relay) -> float:
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False, timeout=30)
    await client.connect()
    elapsed = time.perf_counter() - started
    await client.quit()
    return elapsed


# --- API bearer tokens -------------------------------------------------------------------


async def test_bogus_token_flood_keeps_the_smtp_greeting_fast(relay, tokens):
    """200 requests with distinct bogus tokens from 200 client addresses at once (sent from
    another thread, as an attacker's machine would): scrypt runs in worker threads, a bounded
    number at a time, the rest hear 503 with Retry-After; an SMTP client connecting meanwhile
    has its greeting well under a second."""
    async with admin(relay, tokens=tokens) as (app, base):
        answered: list[int] = []
        flood_in = threading.Event()

        async def bogus(i: int) -> tuple[int, str | None]:
            async with (
                session(f"127.0.0.{2 + i}") as http,
                http.get(
                    base + "/api/v1/suppression/a@example.org",
                    headers={"Authorization": f"Bearer bogus-{i}"},
                ) as r,
            ):
                answered.append(r.status)
                if len(answered) >= 5:
                    flood_in.set()
                return r.status, r.headers.get("Retry-After")

        async def flood() -> list[tuple[int, str | None]]:
            return await asyncio.gather(*(bogus(i) for i in range(200)))

        attacker = asyncio.create_task(asyncio.to_thread(asyncio.run, flood()))
        # the first answers mean the flood is in and checks are running (or queued)
        assert await asyncio.to_thread(flood_in.wait, 60)
        greeting = await smtp_greeting_seconds(relay)
        answers = await attacker
        assert greeting < 3.0, f"the SMTP greeting took {greeting:.2f} s during the token flood"
        assert {status for status, _ in answers} <= {401, 503}
        busy = [retry for status, retry in answers if status == 503]
        assert busy, "the flood was never told to come back later: unbounded work queued"
        assert all(retry and int(retry) >= 1 for retry in busy)
        # bounded work: far fewer hashes than 200 requests x 2 configured tokens
        assert checker_of(app, "api").scrypt_runs < 200 * len(tokens)


async def test_repeated_bogus_token_is_refused_without_scrypt(relay, tokens):
    """A bogus token costs one scrypt per configured token the first time, none after; the
    good token is hashed once, then served from the cache of verified tokens."""
    async with admin(relay, tokens=tokens) as (app, base), session() as http:

        async def get(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(base + "/api/v1/suppression/a@example.org", headers=headers) as r:
                return r.status

        assert [await get("nope") for _ in range(4)] == [401] * 4
        checker = checker_of(app, "api")
        assert checker.scrypt_runs == len(tokens)
        assert [await get(TOKEN) for _ in range(3)] == [404] * 3  # authorised, not listed
        assert checker.scrypt_runs == 2 * len(tokens)


async def test_api_failures_are_limited_per_client(relay, tokens):
    """Ten wrong tokens from one client, then 429 with Retry-After, even for a token never
    verified; a token verified before still works, and other clients are not affected."""
    async with admin(relay, tokens=tokens) as (_, base):

        async def get(http: aiohttp.ClientSession, token: str) -> tuple[int, str | None]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(base + "/api/v1/suppression/a@example.org", headers=headers) as r:
                return r.status, r.headers.get("Retry-After")

        async with session("127.0.0.5") as http, session("127.0.0.6") as other:
            assert (await get(http, TOKEN))[0] == 404
            assert [(await get(http, f"wrong-{i}"))[0] for i in range(10)] == [401] * 10
            status, retry = await get(http, "wrong-again")
            assert status == 429
            assert retry is not None and int(retry) >= 1
            assert (await get(http, "tok-bi"))[0] == 429  # right, but never verified: waits
            assert (await get(http, TOKEN))[0] == 404  # verified before: no hashing, served
            assert (await get(other, "tok-bi"))[0] == 404


async def test_bearer_token_that_is_not_utf8_is_401(relay, tokens):
    """A token of raw bytes that are not UTF-8 is a wrong token (401), not a 500."""
    async with admin(relay, tokens=tokens) as (_, base):
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /api/v1/suppression/a@example.org HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe-token\r\nConnection: close\r\n\r\n"
        )
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"401", status_line


# --- the login form ----------------------------------------------------------------------


async def test_parallel_wrong_passwords_check_at_most_five(relay, password_hash):
    """60 wrong passwords at once from one client: at most five are checked (scrypt), the
    rest hear 429 with Retry-After."""
    async with admin(relay, password_hash=password_hash) as (app, base), session() as http:
        csrf = await login_csrf(http, base)

        async def guess(i: int) -> tuple[int, str | None]:
            data = {"password": f"guess-{i}", "csrf": csrf}
            async with http.post(base + "/login", data=data, headers={"Origin": base}) as r:
                return r.status, r.headers.get("Retry-After")

        answers = await asyncio.gather(*(guess(i) for i in range(60)))
        statuses = [s for s, _ in answers]
        assert statuses.count(401) <= 5, statuses
        assert statuses.count(429) >= 55, statuses
        assert all(retry and int(retry) >= 1 for s, retry in answers if s == 429)
        assert checker_of(app, "pages").scrypt_runs <= 5


async def test_login_limit_ends_with_its_window(relay, password_hash):
    """After five wrong passwords the right one waits (429); once the window has passed on
    the relay's clock, it logs in."""
    clock = FakeClock()
    async with (
        admin(relay, password_hash=password_hash, clock=clock) as (_, base),
        session() as http,
    ):
        csrf = await login_csrf(http, base)
        for i in range(5):
            data = {"password": f"wrong-{i}", "csrf": csrf}
            async with http.post(base + "/login", data=data, headers={"Origin": base}) as r:
                assert r.status == 401
        data = {"password": PASSWORD, "csrf": csrf}
        async with http.post(base + "/login", data=data, headers={"Origin": base}) as r:
            assert r.status == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 300
        clock.advance(seconds=301)
        await log_in(http, base)


async def test_login_limit_keys_on_the_client_behind_a_trusted_proxy(db_dsn, make_config):
    """With [admin] trusted_proxies (threaded from the config by the relay), the limit keys on
    the right-most X-Forwarded-For address that is not a trusted proxy: a forged left-hand
    entry changes nothing, another client behind the same proxy is not limited. From a peer
    that is not a trusted proxy the header is ignored: it cannot pick a new key per guess."""
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\npassword_hash = "{hash_password(PASSWORD)}"\n'
        'trusted_proxies = ["127.0.0.2/32", "10.9.0.0/16"]\n[delivery]\nenabled = false\n',
        replace_base=True,
    )
    async with (
        Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay,
        session("127.0.0.2") as proxy,
        session("127.0.0.3") as stranger,
    ):
        base = f"http://127.0.0.1:{relay.admin_port}"

        async def attempt(http: aiohttp.ClientSession, forwarded: str, password: str) -> int:
            headers = {"Origin": base, "X-Forwarded-For": forwarded}
            data = {"password": password, "csrf": await login_csrf(http, base)}
            async with http.post(base + "/login", data=data, headers=headers) as r:
                return r.status

        # 203.0.113.7 reached the proxy chain; 10.9.0.1 is an inner proxy (trusted)
        chain = [f"198.51.100.{i}, 203.0.113.7, 10.9.0.1" for i in range(5)]
        assert [await attempt(proxy, hops, "wrong") for hops in chain] == [401] * 5
        assert await attempt(proxy, "203.0.113.7", PASSWORD) == 429
        assert await attempt(proxy, "203.0.113.8", PASSWORD) == 200
        forged = [await attempt(stranger, f"203.0.113.{50 + i}", "wrong") for i in range(6)]
        assert forged == [401] * 5 + [429]


PROXIES = (ip_network("10.0.0.0/8"), ip_network("2001:db8:1::/48"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.9", ["203.0.113.1"], "192.0.2.9"),  # not a proxy: header ignored
        ("10.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.1"], "203.0.113.1"),  # left entry: client-written
        ("10.0.0.1", ["1.1.1.1", "203.0.113.1, 10.0.0.2"], "203.0.113.1"),  # two headers
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all proxies: the last one seen
        ("10.0.0.1", ["203.0.113.1, not-an-ip"], "10.0.0.1"),  # garbage stops the walk
        ("10.0.0.1", [], "10.0.0.1"),
        ("2001:db8:1::5", ["2001:DB8:2::7"], "2001:db8:2::7"),
        ("::ffff:10.0.0.1", ["203.0.113.1"], "203.0.113.1"),  # dual-stack: IPv4 as IPv6
    ],
)
def test_forwarded_client_walks_from_the_right(peer, forwarded, client):
    """The client is the right-most X-Forwarded-For entry not itself a trusted proxy."""
    assert forwarded_client(peer, forwarded, PROXIES) == client


async def test_login_needs_the_forms_csrf_token(relay, password_hash):
    """The right password without the login form's token (or with another form's) is 403 and
    starts no session; with the form's cookie and field it logs in."""
    async with admin(relay, password_hash=password_hash) as (_, base):
        async with session() as http:
            data = {"password": PASSWORD}
            async with http.post(
                base + "/login", data=data, headers={"Origin": base}, allow_redirects=False
            ) as r:
                assert r.status == 403
                assert "br_session" not in r.cookies
        async with session() as attacker:
            foreign = await login_csrf(attacker, base)
        async with session() as http:
            await login_csrf(http, base)  # this browser's own form cookie
            data = {"password": PASSWORD, "csrf": foreign}
            async with http.post(
                base + "/login", data=data, headers={"Origin": base}, allow_redirects=False
            ) as r:
                assert r.status == 403
            await log_in(http, base)


# --- cross-site POSTs and framing --------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page"},
        {},
    ],
    ids=["foreign-origin", "null-origin", "foreign-referer", "neither"],
)
async def test_post_from_another_origin_is_refused(relay, password_hash, headers):
    """A POST whose Origin (or, absent, Referer) is not the admin's own, or that has neither,
    is refused 403 even with the session cookie and CSRF token; the entry stays."""
    await relay.store.add_suppression("kept@example.org", "user_unknown", "hard_bounce")
    async with admin(relay, password_hash=password_hash) as (_, base), session() as http:
        csrf = await log_in(http, base)
        form = {"address": "kept@example.org", "reason": "x", "confirm": "yes", "csrf": csrf}
        async with http.post(
            base + "/suppression/remove", data=form, headers=headers, allow_redirects=False
        ) as r:
            assert r.status == 403
            assert "origin" in (await r.text()).lower()
        assert await relay.store.suppression_reasons([("kept@example.org", "")]) != [None]
        own = {"Referer": base + "/suppression"}
        async with http.post(base + "/suppression/remove", data=form, headers=own) as r:
            assert r.status == 200
            assert "Removed kept@example.org." in await r.text()


async def test_login_post_from_another_origin_is_refused(relay, password_hash):
    async with admin(relay, password_hash=password_hash) as (_, base), session() as http:
        csrf = await login_csrf(http, base)
        data = {"password": PASSWORD, "csrf": csrf}
        headers = {"Origin": "http://evil.example"}
        async with http.post(
            base + "/login", data=data, headers=headers, allow_redirects=False
        ) as r:
            assert r.status == 403


SECURITY_HEADERS: dict[str, Callable[[str], bool]] = {
    "Content-Security-Policy": lambda v: (
        "default-src 'self'" in v and "frame-ancestors 'none'" in v
    ),
    "X-Frame-Options": lambda v: v == "DENY",
    "Cache-Control": lambda v: "no-store" in v,
    "X-Content-Type-Options": lambda v: v == "nosniff",
    "Referrer-Policy": lambda v: v == "same-origin",
}


def assert_hardened(path: str, headers: Any) -> None:
    for name, ok in SECURITY_HEADERS.items():
        assert name in headers and ok(headers[name]), (path, name, headers.get(name))


async def test_every_admin_response_forbids_framing_and_caching(relay, password_hash, tokens):
    """Every page (logged in or not), download and API answer carries the anti-framing,
    no-store, nosniff and referrer headers; pages hold no inline style or script the CSP
    would block, and their stylesheet is served from the admin's own origin."""
    async with (
        admin(relay, password_hash=password_hash, tokens=tokens) as (_, base),
        session() as http,
    ):
        async with http.get(base + "/login") as r:
            assert_hardened("/login", r.headers)
        await log_in(http, base)
        for path in ("/report", "/report.csv", "/suppression", "/queue", "/profile", "/incidents"):
            async with http.get(base + path) as r:
                assert r.status == 200, path
                assert_hardened(path, r.headers)
                text = await r.text()
                if path != "/report.csv":
                    assert "<style" not in text and "<script" not in text and "style=" not in text
                    assert '<link rel="stylesheet" href="/admin.css">' in text
        async with http.get(base + "/admin.css") as r:
            assert r.status == 200 and r.content_type == "text/css"
            assert "font" in await r.text()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(base + "/api/v1/suppression/a@example.org", headers=auth) as r:
            assert_hardened("/api", r.headers)


# --- numbers in parameters ---------------------------------------------------------------

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/suppression?page=%D9%A3", "page"),  # ARABIC-INDIC DIGIT THREE
        ("/suppression?page=-1", "page"),
        ("/suppression?page=0", "page"),
        (f"/suppression?page={HUGE}", "page"),
        ("/suppression?page=1e3", "page"),
        ("/queue?id=%D9%A3", "id"),
        (f"/queue?id={HUGE}", "id"),
        ("/queue?id=+5", "id"),
        ("/report?from=0001-01-01T00:00%2B01:00&to=2026-01-01", "from"),
        ("/profile?address=%40%40%40", "address"),
    ],
)
async def test_bad_numbers_in_pages_are_400(relay, password_hash, path, name):
    """Non-ASCII digits, signs, zero, out-of-range values (and a period past the calendar, an
    address that is not one): 400 naming the parameter, never a 500 or a traceback."""
    async with admin(relay, password_hash=password_hash) as (_, base), session() as http:
        await log_in(http, base)
        async with http.get(base + path) as r:
            text = await r.text()
            assert r.status == 400, (r.status, text[:300])
    assert name in text and "Traceback" not in text


@pytest.mark.parametrize("raw_id", ["%D9%A3", HUGE, "-1", "0"])
async def test_bad_incident_id_in_a_release_is_400(relay, password_hash, raw_id):
    async with admin(relay, password_hash=password_hash) as (_, base), session() as http:
        csrf = await log_in(http, base)
        body = f"id={raw_id}&reason=fixed&confirm=yes&csrf={csrf}"
        async with http.post(
            base + "/incidents/release",
            data=body,
            headers={"Origin": base, "Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        ) as r:
            text = await r.text()
            assert r.status == 400, (r.status, text[:300])
    assert "id" in text and "Traceback" not in text


PERIOD = "from=2026-11-02&to=2026-11-03"


@pytest.mark.parametrize(
    "query",
    [
        f"{PERIOD}&top=%D9%A3",
        f"{PERIOD}&top={HUGE}",
        f"{PERIOD}&top=%2B5",
        f"{PERIOD}&top=%205",
        "from=0001-01-01T00:00%2B01:00&to=2026-11-03",
        "tz=Etc/GMT%2B12&from=2026-11-02&to=9999-12-31T23:00",
    ],
)
async def test_bad_numbers_in_api_reports_are_400(relay, tokens, query):
    """The API's numbers and dates: 400 with a JSON error, never a 500."""
    async with admin(relay, tokens=tokens) as (_, base), session() as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(base + "/api/v1/reports/bounces?" + query, headers=headers) as r:
            assert r.status == 400, (r.status, (await r.text())[:300])
            body = await r.json()
    assert body["error"] and "Traceback" not in body["error"]
