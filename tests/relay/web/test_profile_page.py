"""The profile and incidents pages over HTTP: an address's status, evidence, deliveries."""

from __future__ import annotations

from html import escape

import asyncpg

from tests.support.admin import base, logged_in
from tests.support.report_seeds import seed_standard


async def test_incidents_page_release_and_why_on_the_profile_page(relay, db_dsn):
    """An incident is listed (remote text escaped); releasing it needs the CSRF token and
    lifts the suppression its reply made; the profile page shows why, with the incident."""
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


async def test_the_profile_page_looks_an_address_up(relay):
    """The profile page shows a bounced address's bounces."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http, http.get(base(relay) + "/profile?address=gone@gmail.com") as r:
        profile = await r.text()
    assert "hard_bounce" in profile
