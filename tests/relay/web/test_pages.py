"""The admin page over HTTP: login, CSRF, rate limit, report, downloads, suppression removal.

Every POST carries the admin's own Origin (as a browser does) and the login form's token;
tests/relay/web/test_hardening.py checks what happens without them."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from html import escape

import aiohttp
import aiosmtplib
import pytest

from relay.ops.app import Relay
from relay.passwords import hash_password
from relay.reports.export import parse_filter, write_csv
from relay.web.pages import COOKIE
from tests.support.admin import PASSWORD, base, browser, logged_in, login_post
from tests.support.report_seeds import QUOTA_T, seed_hostile_bounce, seed_standard


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
async def relay(db_dsn, make_config, password_hash) -> AsyncIterator[Relay]:
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\npassword_hash = "{password_hash}"\n'
        "[delivery]\nenabled = false\n",
        replace_base=True,
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as r:
        yield r


async def test_no_session_redirects_to_login(relay):
    """Every page without a session sends the browser to /login."""
    async with aiohttp.ClientSession() as http:
        for path in ("/report", "/suppression", "/queue", "/profile", "/report.csv"):
            async with http.get(base(relay) + path, allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/login"


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


async def test_report_page_download_and_xss_as_text(relay):
    """The report table shows the rows; the CSV download is the CLI's bytes; a hostile bounce
    text and campaign are rendered as text."""
    await seed_standard(relay.store)
    xss = await seed_hostile_bounce(relay.store, "<b>camp</b>")
    http, _ = await logged_in(relay)
    async with http:
        query = "?from=2026-11-02T00:00&to=2026-11-03T00:00"
        async with http.get(base(relay) + "/report" + query) as r:
            page = await r.text()
        async with http.get(base(relay) + "/report.csv" + query) as r:
            csv_bytes = await r.read()
    assert escape(QUOTA_T) in page
    assert "<script>" not in page
    assert escape(xss) in page
    assert "&lt;b&gt;camp&lt;/b&gt;" in page
    assert "<svg" in page
    flt = parse_filter(start="2026-11-02T00:00", end="2026-11-03T00:00")
    expected = io.StringIO(newline="")
    await write_csv(
        relay.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        ),
        flt,
        expected,
    )
    assert csv_bytes == expected.getvalue().encode()


async def test_remove_needs_csrf_and_works_with_it(relay):
    """POST without the CSRF token is 403; with it the address is removed, audited, and the
    relay accepts it again over SMTP."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay)
    async with http:
        form = {"address": "gone@example.org", "reason": "customer called", "confirm": "yes"}
        own = {"Origin": base(relay)}
        async with http.post(base(relay) + "/suppression/remove", data=form, headers=own) as r:
            assert r.status == 403
        async with http.post(
            base(relay) + "/suppression/remove", data={**form, "csrf": csrf}, headers=own
        ) as r:
            assert r.status == 200
            page = await r.text()
    assert "Removed gone@example.org." in page
    assert "customer called" in page  # the audit log on the same page
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail("s@example.com")
    assert (await client.rcpt("gone@example.org")).code == 250
    await client.quit()


async def test_queue_and_profile_pages(relay):
    """The queue page shows counts and reasons; the profile page looks an address up."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http:
        async with http.get(base(relay) + "/queue") as r:
            queue = await r.text()
        async with http.get(base(relay) + "/profile?address=gone@gmail.com") as r:
            profile = await r.text()
    assert "Top deferral reasons" in queue
    assert "hard_bounce" in profile


async def test_incidents_page_release_and_why_on_the_profile_page(relay, db_dsn):
    """An incident is listed (remote text escaped); releasing it needs the CSRF token and
    lifts the suppression its reply made; the profile page shows why, with the incident."""
    import asyncpg

    hostile = '550 5.7.1 <script>alert("x")</script> blocked'
    conn = await asyncpg.connect(db_dsn)
    try:
        incident_id = await conn.fetchval(
            "INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope,"
            " source_ip, recipients, attempted) VALUES (now(), now(), $1, 'mx.example.org:25',"
            " 'mx', '127.0.0.2', 40, 40) RETURNING id",
            hostile,
        )
        event_id, event_at = await conn.fetchrow(
            "INSERT INTO events (type, recipient, recipient_domain, code, reply_text, template,"
            " source_ip, destination, incident_id, category)"
            " VALUES ('hard_bounce', 'gone@example.org', 'example.org', 550, $1, $1, '127.0.0.2',"
            " 'mx.example.org:25', $2, 'spam_block_ip') RETURNING id, occurred_at",
            hostile,
            incident_id,
        )
    finally:
        await conn.close()
    await relay.store.add_suppression(
        "gone@example.org", "spam_block_ip: 550", "hard_bounce", event_id, event_at
    )
    http, csrf = await logged_in(relay)
    async with http:
        async with http.get(base(relay) + "/incidents") as r:
            listing = await r.text()
        async with http.get(base(relay) + "/profile?address=gone@example.org") as r:
            why = await r.text()
        form = {"id": str(incident_id), "reason": "provider fixed it", "confirm": "yes"}
        own = {"Origin": base(relay)}
        async with http.post(base(relay) + "/incidents/release", data=form, headers=own) as r:
            assert r.status == 403
        async with http.post(
            base(relay) + "/incidents/release", data={**form, "csrf": csrf}, headers=own
        ) as r:
            released = await r.text()
    assert "<script>alert" not in listing and escape(hostile) in listing
    assert "Release</button>" in listing
    assert f'href="/incidents#i{incident_id}">#{incident_id} (open)' in why
    assert "Why: entries that apply" in why and "spam_block_ip: 550" in why
    # Today's rules, as classify --replay asks them: these words condemn nobody.
    assert "hard_bounce (other): does not suppress (other is not about the recipient" in why
    assert f"Incident #{incident_id} released: 1 suppressions lifted" in released
    assert await relay.store.suppression_reasons([("gone@example.org", "")]) == [None]


async def test_the_profile_page_says_what_todays_rules_decide_for_each_bounce(relay, db_dsn):
    """Each bounce behind an entry is judged again by the relay's rules (policies.verdict):
    a user-unknown reply still suppresses, a full mailbox (recorded long ago as hard by other
    rules) would now be soft."""
    import asyncpg

    conn = await asyncpg.connect(db_dsn)
    try:
        for code, enhanced, text, category in (
            (550, "5.1.1", "550 5.1.1 <left@example.org>: User unknown", "user_unknown"),
            (552, "5.2.2", "552 5.2.2 Mailbox full", "mailbox_full"),
        ):
            await conn.execute(
                "INSERT INTO events (type, recipient, recipient_domain, code, enhanced,"
                " reply_text, template, category, source, attempt)"
                " VALUES ('hard_bounce', 'left@example.org', 'example.org', $1, $2, $3, $3,"
                " $4, 'smtp', 1)",
                code,
                enhanced,
                text,
                category,
            )
    finally:
        await conn.close()
    http, _ = await logged_in(relay)
    async with http, http.get(base(relay) + "/profile?address=left@example.org") as r:
        page = await r.text()
    assert "today&#x27;s rules" in page
    assert "hard_bounce (user_unknown): suppresses" in page
    assert "soft_bounce (mailbox_full), rule default: does not suppress" in page


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
