"""Never suppress a good address: incidents, confirm_hard probation, dry_run, allowlist, scopes.

Real relays, real PostgreSQL, scripted upstream SMTP servers on loopback; time moves only
through the injected clock.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import aiosmtplib
import pytest

from tests.support.delivery import (
    BODY,
    events_of,
    eventually,
    in_state,
    retry_due,
    send,
    state_of,
)

BLOCK = "550 5.7.1 Service refused: message from [127.0.0.2] rejected by policy (ref 4711)"
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown in virtual mailbox table"

# An IP block bounces every recipient: a guardrail would pause the campaign too (and must
# be released apart, tests/relay/delivery/test_guardrails.py); these tests are about the
# incident alone. ([incidents] stays last: tests add keys to it.)
INCIDENTS = """
[guardrails]
enabled = false

[policy]
suppress_on = "any_5xx"

[incidents]
window = "10m"
min_recipients = 20
min_share = 0.5
defer = "30m"
check_every = "1h"
"""


def recipients(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}@example.org" for i in range(n)]


async def send_all(relay, addresses: list[str], per_message: int = 50) -> None:
    for i in range(0, len(addresses), per_message):
        await send(relay, addresses[i : i + per_message])


async def count(db, sql: str, *args: object) -> int:
    return int(await db.fetchval(sql, *args))


async def test_an_incident_suppresses_nobody_and_is_released_in_one_step(
    upstream, start_relay, db, clock
):
    """550 5.7.1 for 500 recipients from one IP within a minute: every address would be
    suppressed under any_5xx. The first replies open an incident, which lifts what they
    suppressed; the rest defer; one release makes them due and they go out."""
    upstream.rcpt_default = BLOCK
    first, rest = recipients("a", 50), recipients("b", 450)
    async with start_relay(upstream.port, INCIDENTS, source_ips='"127.0.0.2"') as relay:
        await send_all(relay, first)
        await eventually(lambda: _all_in(db, first, "bounced"))
        assert await count(db, "SELECT count(*) FROM suppressions") == 50

        await relay.incident_watch.check()
        [incident] = await db.fetch("SELECT * FROM incidents")
        assert (incident["state"], incident["source_ip"], incident["recipients"]) == (
            "open",
            "127.0.0.2",
            50,
        )
        assert incident["destination"] == f"127.0.0.1:{upstream.port}"
        assert incident["lifted"] == 50
        metrics = relay.metrics.render().decode()
        assert 'bounce_relay_incidents_total{event="opened"} 1.0' in metrics
        assert await count(db, "SELECT count(*) FROM suppressions") == 0
        assert await count(db, "SELECT count(*) FROM profiles WHERE status <> 'active'") == 0
        audit = await db.fetch("SELECT * FROM admin_audit WHERE action = 'suppression.remove'")
        assert len(audit) == 50 and {a["actor"] for a in audit} == {"incident detection"}

        clock.advance(seconds=30)
        await send_all(relay, rest)
        await eventually(lambda: _all_in(db, rest, "queued", attempted=True), timeout=30)
        assert await count(db, "SELECT count(*) FROM suppressions") == 0
        deferred = await db.fetch(
            "SELECT * FROM events WHERE type = 'hard_bounce' AND recipient LIKE 'b%'"
        )
        assert len(deferred) == 450
        assert {e["incident_id"] for e in deferred} == {incident["id"]}
        assert {e["suppress"] for e in deferred} == {False}
        assert {e["retry_at"] for e in deferred} == {clock() + timedelta(minutes=30)}

        # The provider recovers; the operator releases the incident: everything due now.
        upstream.rcpt_default = "250 2.1.5 OK"
        lifted, due_now = await relay.store.release_incident(
            incident["id"], clock(), "ops@example.net", "provider fixed the block"
        )
        assert (lifted, due_now) == (0, 450)
        relay.worker.wake()
        await eventually(lambda: _all_in(db, rest, "delivered"), timeout=30)
    released = await db.fetchrow("SELECT * FROM incidents")
    assert (released["state"], released["released_by"]) == ("released", "ops@example.net")
    assert await count(db, "SELECT count(*) FROM suppressions") == 0


async def test_release_lifts_what_the_incidents_replies_suppressed(
    upstream, start_relay, db, clock
):
    """With lift_on_open = false the first replies' suppressions stay until the release,
    which lifts them all (profiles active again, audited) in one step."""
    upstream.rcpt_default = BLOCK
    first = recipients("a", 30)
    extra = INCIDENTS + "lift_on_open = false\n"
    async with start_relay(upstream.port, extra, source_ips='"127.0.0.2"') as relay:
        await send_all(relay, first)
        await eventually(lambda: _all_in(db, first, "bounced"))
        await relay.incident_watch.check()
        incident_id = await db.fetchval("SELECT id FROM incidents")
        assert await count(db, "SELECT count(*) FROM suppressions") == 30
        assert relay.worker.incidents and relay.worker.incidents[0].id == incident_id

        lifted, due_now = await relay.store.release_incident(
            incident_id, clock(), "ops@example.net", "block lifted"
        )
        assert (lifted, due_now) == (30, 0)
        assert await relay.store.release_incident(incident_id, clock(), "ops", "again") is None
    assert await count(db, "SELECT count(*) FROM suppressions") == 0
    assert await count(db, "SELECT count(*) FROM profiles WHERE status = 'active'") == 30
    assert await count(db, "SELECT lifted FROM incidents") == 30
    actions = await db.fetch("SELECT actor, action FROM admin_audit ORDER BY id")
    assert actions[0]["action"] == "incident.release"
    assert [a["actor"] for a in actions] == ["ops@example.net"] * 31


async def test_everyday_user_unknowns_are_no_incident(upstream, start_relay, db):
    """25 "user unknown" with one template out of 100 recipients at one MX: a share of 25 %
    is a big list's ordinary bad addresses, not an incident; all 25 stay suppressed."""
    bad = recipients("gone", 25)
    for address in bad:
        upstream.on_rcpt(address, UNKNOWN.format(address))
    async with start_relay(upstream.port, INCIDENTS, source_ips='"127.0.0.2"') as relay:
        await send_all(relay, bad + recipients("ok", 75))
        await eventually(lambda: _all_in(db, bad, "bounced"))
        await eventually(lambda: _all_in(db, recipients("ok", 75), "delivered"))
        await relay.incident_watch.check()
    assert await db.fetch("SELECT recipients, attempted FROM incidents") == []
    assert await count(db, "SELECT count(*) FROM suppressions") == 25


async def test_an_open_incident_only_catches_its_own_template(upstream, start_relay, db):
    """While an incident is open a different reply (a real user unknown) still suppresses."""
    upstream.rcpt_default = BLOCK
    upstream.on_rcpt("gone@example.org", UNKNOWN.format("gone@example.org"))
    async with start_relay(upstream.port, INCIDENTS, source_ips='"127.0.0.2"') as relay:
        await send_all(relay, recipients("a", 20))
        await eventually(lambda: _all_in(db, recipients("a", 20), "bounced"))
        await relay.incident_watch.check()
        await send(relay, ["gone@example.org"])
        await eventually(in_state(db, "gone@example.org", "bounced"))
    assert await db.fetchval(
        "SELECT reason FROM suppressions WHERE address = 'gone@example.org'"
    ) == "user_unknown: " + UNKNOWN.format("gone@example.org")


async def test_quiet_incidents_close(upstream, start_relay, db, clock):
    upstream.rcpt_default = BLOCK
    async with start_relay(upstream.port, INCIDENTS, source_ips='"127.0.0.2"') as relay:
        await send_all(relay, recipients("a", 20))
        await eventually(lambda: _all_in(db, recipients("a", 20), "bounced"))
        await relay.incident_watch.check()
        clock.advance(hours=2)
        await relay.incident_watch.check()
        assert relay.worker.incidents == []
    assert await db.fetchval("SELECT state FROM incidents") == "closed"


CONFIRM = """
[policy]
confirm_hard = true
confirm_after = "1h"
"""


async def test_confirm_hard_puts_a_first_bounce_on_probation_then_confirms(
    upstream, start_relay, db, clock
):
    """First 550 5.1.1: probation, not suppressed; new mail to the address is accepted and
    held, not sent. The probe retried an hour later bounces again: suppressed, the held
    mail cancelled."""
    address = "maybe@example.org"
    upstream.on_rcpt(address, UNKNOWN.format(address))
    async with start_relay(upstream.port, CONFIRM) as relay:
        await send(relay, [address])
        await eventually(lambda: _probation(db, address))
        assert await state_of(db, address) == "queued"
        assert await count(db, "SELECT count(*) FROM suppressions") == 0
        assert await db.fetchval("SELECT status FROM profiles WHERE address = $1", address) == (
            "probation"
        )
        [bounce] = await events_of(db, address)
        assert (bounce["type"], bounce["rule"], bounce["suppress"]) == (
            "hard_bounce",
            "confirm_hard",
            False,
        )

        await send(relay, [address])  # accepted: probation is not suppression
        await eventually(lambda: _next_attempt_after(db, address, clock() + timedelta(hours=1)))
        assert upstream.rcpt_attempts[address] == 1  # the second message was held, not sent

        await retry_due(relay, clock, hours=1, seconds=1)
        await eventually(lambda: _first_in(db, address, "bounced"))
        # The held message is cancelled by the suppression, or, when it was claimed together
        # with the probe, at its next look (PROBATION_RECHECK later).
        await retry_due(relay, clock, minutes=5, seconds=1)
        await eventually(in_state(db, address, "cancelled"))
    assert upstream.rcpt_attempts[address] == 2
    assert await db.fetchval("SELECT source FROM suppressions WHERE address = $1", address) == (
        "hard_bounce"
    )
    assert await count(db, "SELECT count(*) FROM probation") == 0
    states = await db.fetch("SELECT state FROM deliveries ORDER BY id")
    assert [s["state"] for s in states] == ["bounced", "cancelled"]


async def test_confirm_hard_probe_delivered_clears_probation_and_sends_held_mail(
    upstream, start_relay, db, clock
):
    address = "flaky@example.org"
    upstream.on_rcpt(address, UNKNOWN.format(address), "250 2.1.5 OK")
    async with start_relay(upstream.port, CONFIRM) as relay:
        await send(relay, [address])
        await eventually(lambda: _probation(db, address))
        await send(relay, [address])
        await eventually(lambda: _next_attempt_after(db, address, clock() + timedelta(hours=1)))
        await retry_due(relay, clock, hours=1, seconds=1)
        await eventually(lambda: _all_states(db, address, {"delivered"}))
    assert len(upstream.received) == 2
    assert await count(db, "SELECT count(*) FROM suppressions") == 0
    assert await count(db, "SELECT count(*) FROM probation") == 0
    assert await db.fetchval("SELECT status FROM profiles WHERE address = $1", address) == (
        "active"
    )


async def test_confirm_hard_second_bounce_from_another_ip_confirms_at_once(
    upstream, start_relay, db, clock
):
    """The probe is resent from the pool's other IP; a second bounce from there confirms
    even before confirm_after has passed (a single IP's trouble is ruled out)."""
    address = "gone@example.org"
    upstream.on_rcpt(address, UNKNOWN.format(address))
    async with start_relay(upstream.port, CONFIRM, source_ips='"127.0.0.2", "127.0.0.3"') as r:
        await send(r, [address])
        await eventually(lambda: _probation(db, address))
        first_ip = await db.fetchval("SELECT source_ip FROM probation")
        # An operator makes the probe due early (queue retry): it goes from the other IP.
        await db.execute("UPDATE deliveries SET next_attempt_at = now() - interval '1 day'")
        r.worker.wake()
        await eventually(in_state(db, address, "bounced"))
    ips = [e["source_ip"] for e in await events_of(db, address)]
    assert ips[0] == first_ip and ips[1] != first_ip
    assert await count(db, "SELECT count(*) FROM suppressions") == 1


async def test_dry_run_counts_would_be_refusals_and_enforces_nothing(upstream, start_relay, db):
    address = "listed@example.org"
    async with start_relay(upstream.port, "[policy]\ndry_run = true\n") as relay:
        await relay.store.add_suppression(address, "manual: test", "manual", actor="ops")
        await send(relay, [address])
        await eventually(in_state(db, address, "delivered"))
        metrics = relay.metrics.render().decode()
    assert 'bounce_relay_dry_run_would_refuse_total{where="rcpt"} 1.0' in metrics
    assert len(upstream.received) == 1
    assert await count(db, "SELECT count(*) FROM events WHERE type = 'rejected_suppressed'") == 0


async def test_allowlisted_addresses_and_domains_are_never_suppressed_automatically(
    upstream, start_relay, db
):
    vip, partner = "ceo@example.org", "ops@partner.example"
    for address in (vip, partner):
        upstream.on_rcpt(address, UNKNOWN.format(address))
    async with start_relay(upstream.port) as relay:
        assert await relay.store.allow(vip, "the CEO", "ops@example.net")
        assert await relay.store.allow("partner.example", "contract", "ops@example.net")
        assert not await relay.store.allow(vip, "again", "ops@example.net")
        await send(relay, [vip, partner])
        await eventually(in_state(db, vip, "bounced"))
        await eventually(in_state(db, partner, "bounced"))
    assert await count(db, "SELECT count(*) FROM suppressions") == 0
    bounces = await db.fetch("SELECT suppress, category FROM events WHERE type = 'hard_bounce'")
    assert [(b["suppress"], b["category"]) for b in bounces] == [(False, "user_unknown")] * 2


async def _rcpt(relay, sender: str, recipient: str) -> int:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail(sender)
    try:
        code = (await client.rcpt(recipient))[0]
    except aiosmtplib.SMTPRecipientRefused as exc:
        code = exc.code
    await client.quit()
    return code


async def test_precedence_manual_entry_then_allowlist_then_automatic_then_scoped(
    upstream, start_relay, db
):
    """1. an administrator's entry refuses even an allowlisted address; 2. the allowlist
    overrides automatic entries; 3. automatic global entries refuse; 4. scoped entries
    refuse only mail from their sending domain."""
    async with start_relay(upstream.port) as relay:
        store = relay.store
        await store.add_suppression("manual@example.org", "manual: asked", "manual", actor="ops")
        await store.allow("manual@example.org", "vip", "ops")
        await store.add_suppression("auto@example.org", "user_unknown: 550", "hard_bounce")
        await store.allow("auto@example.org", "known good", "ops")
        await store.add_suppression("bounced@example.org", "user_unknown: 550", "hard_bounce")
        await store.add_scoped_suppression("scoped@example.org", "shop.example.com", "no", "ops")
        news, shop = "n@news.example.com", "s@shop.example.com"
        assert await _rcpt(relay, news, "manual@example.org") == 550
        assert await _rcpt(relay, news, "auto@example.org") == 250
        assert await _rcpt(relay, news, "bounced@example.org") == 550
        assert await _rcpt(relay, news, "scoped@example.org") == 250
        assert await _rcpt(relay, shop, "Scoped@Example.org") == 550
        assert await store.remove_scoped_suppression(
            "scoped@example.org", "shop.example.com", "ops", "resolved"
        )
        assert await _rcpt(relay, shop, "scoped@example.org") == 250
        assert await store.disallow("auto@example.org", "no longer", "ops")
        assert await _rcpt(relay, news, "auto@example.org") == 550


@pytest.mark.parametrize("dry_run", [False, True])
async def test_scoped_entry_cancels_queued_mail_only_from_its_domain(
    upstream, start_relay, db, clock, dry_run
):
    """An entry added while a message is in flight (after RCPT, before DATA) stops it at
    claim time, by the same precedence and the message's sending domain; dry_run sends it."""
    extra = f"[policy]\ndry_run = {str(dry_run).lower()}\n"
    async with start_relay(upstream.port, extra) as relay:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("bounces@mail.example.com")
        await client.rcpt("x@example.org")
        await client.rcpt("y@example.org")
        await relay.store.add_scoped_suppression("x@example.org", "mail.example.com", "no", "o")
        await client.data(BODY)
        await client.quit()
        await eventually(in_state(db, "y@example.org", "delivered"))
        await eventually(in_state(db, "x@example.org", "delivered", "cancelled"))
    assert await state_of(db, "x@example.org") == ("delivered" if dry_run else "cancelled")


async def _all_in(db, addresses: list[str], state: str, attempted: bool = False) -> bool:
    n = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE recipient_key = ANY($1) AND state = $2"
        " AND (NOT $3 OR attempts > 0)",
        addresses,
        state,
        attempted,
    )
    return bool(n == len(addresses))


async def _first_in(db, address: str, state: str) -> bool:
    first = await db.fetchval(
        "SELECT state FROM deliveries WHERE recipient_key = $1 ORDER BY id LIMIT 1", address
    )
    return bool(first == state)


async def _all_states(db, address: str, states: set[str]) -> bool:
    rows = await db.fetch("SELECT state FROM deliveries WHERE recipient_key = $1", address)
    return {r["state"] for r in rows} == states


async def _probation(db, address: str) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM probation WHERE address = $1", address))


async def _next_attempt_after(db, address: str, at) -> bool:
    rows = await db.fetch(
        "SELECT next_attempt_at, state, attempts FROM deliveries WHERE recipient_key = $1"
        " ORDER BY id",
        address,
    )
    return (
        len(rows) == 2
        and all(r["state"] == "queued" for r in rows)
        and (rows[1]["next_attempt_at"] >= at)
    )


TS04 = (
    "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume"
    " or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)


async def test_yahoo_ts04_schedules_per_the_hint_and_pauses_the_destination(
    upstream, start_relay, db, clock
):
    """[TSS04]: the next attempt comes when Yahoo says (2 h), not on the schedule (1 m), and
    the domain is paused: other mail to it waits, untried, until the pause ends."""
    upstream.on_rcpt("a@yahoo.example", TS04, "250 2.1.5 OK")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["a@yahoo.example"])
        await eventually(lambda: _attempted(db, "a@yahoo.example"))
        [bounce] = await events_of(db, "a@yahoo.example")
        assert (bounce["type"], bounce["rule"]) == ("soft_bounce", "yahoo-ts04")
        assert bounce["retry_at"] == clock() + timedelta(hours=2)

        await send(relay, ["b@yahoo.example"])
        await eventually(lambda: _due_at(db, "b@yahoo.example", clock() + timedelta(hours=2)))
        assert "b@yahoo.example" not in upstream.rcpt_attempts  # held back, not tried
        limits = relay.worker.throttle.limits("yahoo.example")
        assert limits.paused_until == clock() + timedelta(hours=2)
        assert limits.concurrency == 5  # halved from connections_per_destination = 10

        await retry_due(relay, clock, hours=2, seconds=1)
        # After the pause the domain is rate-limited (1/s at first): a and b are due at the
        # same instant and go one after the other, in either order, a second or two apart.
        both = [in_state(db, r, "delivered") for r in ("a@yahoo.example", "b@yahoo.example")]
        for _ in range(20):
            with contextlib.suppress(AssertionError):
                await eventually(lambda: _all(both), timeout=1.0)
                break
            await retry_due(relay, clock, seconds=2)
        assert await _all(both), "a and b not both delivered after the pause"
    assert [e["type"] for e in await events_of(db, "b@yahoo.example")] == ["delivered"]


async def _all(checks) -> bool:
    return all([await check() for check in checks])


async def _attempted(db, address: str) -> bool:
    return bool(
        await db.fetchval("SELECT attempts > 0 FROM deliveries WHERE recipient_key = $1", address)
    )


async def _due_at(db, address: str, at) -> bool:
    return bool(
        await db.fetchval(
            "SELECT state = 'queued' AND next_attempt_at = $2 FROM deliveries"
            " WHERE recipient_key = $1",
            address,
            at,
        )
    )


async def test_a_reply_with_nul_and_control_characters_is_recorded(upstream, start_relay, db):
    """A hostile upstream's NUL (which PostgreSQL text refuses) must not keep the outcome from
    landing (it would be retried for ever); the text is kept with the NUL replaced."""
    upstream.on_rcpt("x@example.org", "550 5.1.1 <x@example.org> no such\x00user \x1b[31m")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["x@example.org"])
        await eventually(in_state(db, "x@example.org", "bounced"))
    [bounce] = await events_of(db, "x@example.org")
    assert "\x00" not in bounce["reply_text"] and "no such\ufffduser" in bounce["reply_text"]
