"""The profile and incidents pages over HTTP: an address's status, evidence, deliveries."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import escape

import asyncpg
import pytest

from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store
from relay.web.pages.profile import DELIVERIES_SHOWN
from tests.support.admin import NOW, base, logged_in
from tests.support.report_seeds import seed_standard

T0 = NOW - timedelta(days=5)  # the relay's clock is NOW (tests/relay/web/conftest.py)


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


async def profile(relay, address: str) -> tuple[int, str]:
    http, _ = await logged_in(relay)
    async with http, http.get(base(relay) + "/profile", params={"address": address}) as r:
        return r.status, await r.text()


async def send(store: Store, at: datetime, recipient: str, queue_id: str, **message: str) -> None:
    """A message to ``recipient`` accepted at ``at`` (From bounces@news.example.com)."""
    envelope = {"envelope_sender": "bounces@news.example.com", "campaign": "spring", **message}
    await store.accept_messages(
        at,
        [
            IncomingMessage(
                queue_id=queue_id,
                recipients=(Recipient(recipient, recipient.lower(), "example.org"),),
                body=b"Subject: x\r\n\r\nx\r\n",
                from_domain=envelope["envelope_sender"].rpartition("@")[2],
                message_id=None,
                client_address="127.0.0.1",
                session_id="s",
                smtputf8=False,
                **envelope,
            )
        ],
    )


async def attempt(store: Store, at: datetime, reply: str, ip: str, *, final: bool) -> int:
    """The one due delivery is tried at ``at`` and answered ``reply``: deferred (due again at
    once) or, ``final``, a hard bounce that suppresses. Its id."""
    [d] = await store.claim_due_deliveries("test", at, timedelta(minutes=5), 1)
    code = int(reply[:3])
    await store.apply_outcomes(
        at,
        [
            OutcomeRecord(
                delivery_id=d.id,
                lease_token=d.lease_token,
                state="bounced" if final else "queued",
                event="hard_bounce" if final else "soft_bounce",
                next_attempt_at=None if final else at,
                suppress=final,
                suppress_reason="user_unknown: 550" if final else "",
                code=code,
                enhanced=reply[4:9],
                reply_text=reply,
                category="user_unknown" if final else "mailbox_full",
                source_ip=ip,
                destination="mx.example.org:25",
            )
        ],
    )
    return d.id


async def test_an_address_never_seen_is_nothing_known(relay):
    """No profile, entry, bounce or delivery: "nothing known", not "active", and none of the
    evidence tables; the form keeps the address typed."""
    status, page = await profile(relay, "Nobody@Example.org")
    assert status == 200
    assert "<b>nobody@example.org</b>: nothing known." in page
    assert "active" not in page and "Why: entries that apply" not in page
    assert 'name="address" value="Nobody@Example.org"' in page


async def test_a_bounced_address_shows_each_delivery_with_its_attempts(relay):
    """Two deliveries to the address: the older delivered, the newer deferred twice then
    hard-bounced (which suppressed it). Status hard bounced; the Deliveries section lists the
    newer first, each linked to its queue history, with From, campaign and created, and each
    attempt's time, result, code, reply and source IP in order; the entry stays listed."""
    await send(relay.store, T0, "Pat@example.org", "Q1", campaign="welcome")
    [first] = await relay.store.claim_due_deliveries("test", T0, timedelta(minutes=5), 1)
    await relay.store.apply_outcomes(
        T0,
        [
            OutcomeRecord(
                delivery_id=first.id,
                lease_token=first.lease_token,
                state="delivered",
                event="delivered",
                code=250,
                reply_text="250 2.0.0 OK",
                source_ip="127.0.0.9",
            )
        ],
    )
    later = T0 + timedelta(days=2)
    await send(relay.store, later, "pat@example.org", "Q2", envelope_sender="news@shop.example")
    await attempt(relay.store, later, "452 4.2.2 <script>full</script>", "127.0.0.2", final=False)
    await attempt(
        relay.store, later + timedelta(hours=1), "452 4.2.2 still full", "127.0.0.3", final=False
    )
    second = await attempt(
        relay.store, later + timedelta(hours=5), "550 5.1.1 no such user", "127.0.0.2", final=True
    )
    status, page = await profile(relay, "pat@example.org")
    assert status == 200
    assert "<b>pat@example.org</b>: hard bounced since" in page
    assert "user_unknown: 550" in page  # the entry, in the table of entries that apply
    deliveries = page.split("<h2>Deliveries</h2>")[1]
    newer, older = deliveries.split("<section>")[1:]
    assert f'<a href="/queue/delivery?id={second}">Delivery #{second}</a>' in newer
    assert f'<a href="/queue/delivery?id={first.id}">Delivery #{first.id}</a>' in older
    assert "bounced · From news@shop.example · campaign spring" in newer
    assert f"created {later:%Y-%m-%d %H:%M}" in newer and "3 attempts" in newer
    assert "delivered · From bounces@news.example.com · campaign welcome" in older
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([a-z_]+)</td><td class=\"n\">(\d*)</td>", newer)
    assert rows == [
        (f"{later:%Y-%m-%d %H:%M}", "soft_bounce", "1"),
        (f"{later + timedelta(hours=1):%Y-%m-%d %H:%M}", "soft_bounce", "2"),
        (f"{later + timedelta(hours=5):%Y-%m-%d %H:%M}", "hard_bounce", "3"),
    ]
    assert escape("452 4.2.2 <script>full</script>") in newer and "<script>" not in page
    assert "<td>550 5.1.1</td><td>550 5.1.1 no such user</td><td>127.0.0.2</td>" in newer
    assert "<td>250</td><td>250 2.0.0 OK</td><td>127.0.0.9</td>" in older


async def test_the_deliveries_shown_are_the_newest_and_the_page_says_when_cut(relay):
    """More deliveries than the page shows: the newest DELIVERIES_SHOWN, and a line saying
    older ones are left out; a delivery not yet tried says so."""
    for n in range(DELIVERIES_SHOWN + 1):
        await send(relay.store, T0 + timedelta(minutes=n), "many@example.org", f"M{n}")
    _, page = await profile(relay, "many@example.org")
    assert "<b>many@example.org</b>: active" in page
    assert f"The newest {DELIVERIES_SHOWN} deliveries; older ones are left out." in page
    assert page.count("<section>") == DELIVERIES_SHOWN
    assert page.count("Not attempted yet.") == DELIVERIES_SHOWN
    assert f"created {T0:%Y-%m-%d %H:%M}" not in page  # the oldest
    assert f"created {T0 + timedelta(minutes=DELIVERIES_SHOWN):%Y-%m-%d %H:%M}" in page


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("no-at-sign", "Address: no @domain."),
        ("ann@", "Address: empty domain."),
        ("x" * 70 + "@example.org", "Address: local part longer than 64 octets."),
        ("ann@exa mple.org", "Address: invalid domain"),
    ],
)
async def test_an_address_that_is_not_one_is_refused_with_the_form_kept(relay, typed, why):
    """400 with what is wrong with it, and the form showing what was typed."""
    status, page = await profile(relay, typed)
    assert status == 400
    assert '<p class="err" role="alert">' + why in page
    assert f'name="address" value="{escape(typed)}"' in page
