"""Delivery and bounce handling against scripted upstream SMTP servers on loopback."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

import aiosmtplib
import asyncpg
import dns.message
import pytest
import trustme

from relay.config import ConfigErrors, load_config
from relay.ops.app import Relay
from relay.store import OTHER_POOL_MAX_SIZE, OutcomeRecord
from tests.support.delivery import (
    BODY,
    delivered,
    delivery_config,
    events_of,
    eventually,
    expire_leases,
    in_state,
    incoming,
    incoming_to,
    retry_due,
    send,
    state_of,
)
from tests.support.dns_server import ScriptedDNS
from tests.support.scripted import ScriptedUpstream


async def test_250_delivered_straight_after_commit(upstream, start_relay, db):
    """An accepted message is delivered without waiting for a poll; body released after."""
    # The poll would come after an hour: only the hand-over after commit can deliver in time.
    async with start_relay(upstream.port, poll_interval="1h") as relay:
        queue_id = await send(relay, ["ok@example.org"])
        await eventually(in_state(db, "ok@example.org", "delivered"))
    [got] = upstream.received
    assert got.recipients == ["ok@example.org"]
    assert got.body.endswith(BODY)  # after the trace header the intake may prepend
    [event] = await events_of(db, "ok@example.org")
    assert (event["type"], event["code"], event["queue_id"]) == ("delivered", 250, queue_id)
    assert event["source_ip"] == "127.0.0.1"
    assert event["destination"] == f"127.0.0.1:{upstream.port}"
    assert await db.fetchval("SELECT body FROM messages") is None


async def test_user_unknown_suppresses_and_refuses_the_next_message(upstream, start_relay, db):
    """550 5.1.1 at RCPT: hard bounce, suppressed, profile hard_bounced, next RCPT gets 550."""
    upstream.on_rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: User unknown")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["gone@example.org"])
        await eventually(in_state(db, "gone@example.org", "bounced"))
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("bounces@mail.example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("Gone@Example.org")
        await client.quit()
    assert refused.value.code == 550
    event, rejected = await events_of(db, "gone@example.org")
    assert rejected["type"] == "rejected_suppressed"
    assert (event["type"], event["category"], event["enhanced"]) == (
        "hard_bounce",
        "user_unknown",
        "5.1.1",
    )
    assert event["campaign"] == "c1"
    assert event["from_domain"] == "mail.example.com"
    assert event["envelope_sender"] == "bounces@mail.example.com"
    assert event["attempt"] == 1
    entry = await db.fetchrow("SELECT * FROM suppressions WHERE address = 'gone@example.org'")
    assert entry["source"] == "hard_bounce"
    assert entry["event_id"] == event["id"]
    assert (
        await db.fetchval("SELECT status FROM profiles WHERE address = 'gone@example.org'")
        == "hard_bounced"
    )
    assert upstream.received == []


@pytest.mark.parametrize(("policy", "suppressed"), [("recipient", False), ("any_5xx", True)])
async def test_ip_block_suppresses_only_under_any_5xx(
    upstream, start_relay, db, policy, suppressed
):
    """554 5.7.1 IP block is a hard bounce; it suppresses a good address only under any_5xx."""
    upstream.on_rcpt(
        "good@example.org",
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
    )
    async with start_relay(upstream.port, f'[policy]\nsuppress_on = "{policy}"') as relay:
        await send(relay, ["good@example.org"])
        await eventually(in_state(db, "good@example.org", "bounced"))
    [event] = await events_of(db, "good@example.org")
    assert (event["type"], event["category"]) == ("hard_bounce", "spam_block_ip")
    count = await db.fetchval("SELECT count(*) FROM suppressions")
    assert count == (1 if suppressed else 0)


async def test_two_soft_bounces_then_delivered(upstream, start_relay, db, clock):
    """452 4.2.2 twice then 250: two soft_bounce events on the schedule, then delivered."""
    upstream.on_rcpt(
        "full@example.org", "452 4.2.2 Mailbox full", "452 4.2.2 Mailbox full", "250 2.1.5 OK"
    )
    async with start_relay(upstream.port) as relay:
        await send(relay, ["full@example.org"])
        await eventually(lambda: _count_events(db, "full@example.org", "soft_bounce", 1))
        due = await db.fetchval("SELECT next_attempt_at FROM deliveries")
        assert due == clock() + timedelta(minutes=1)
        await retry_due(relay, clock, seconds=30)  # not due yet
        await relay.worker.run_once()
        assert upstream.rcpt_attempts["full@example.org"] == 1
        await retry_due(relay, clock, seconds=31)
        await eventually(lambda: _count_events(db, "full@example.org", "soft_bounce", 2))
        await retry_due(relay, clock, minutes=5, seconds=1)
        await eventually(in_state(db, "full@example.org", "delivered"))
    events = await events_of(db, "full@example.org")
    assert [(e["type"], e["attempt"], e["category"]) for e in events] == [
        ("soft_bounce", 1, "mailbox_full"),
        ("soft_bounce", 2, "mailbox_full"),
        ("delivered", 3, "delivered"),
    ]
    assert all(e["rule"] == "default" for e in events[:2])


async def _count_events(db: asyncpg.Connection, recipient: str, kind: str, n: int) -> bool:
    count: int = await db.fetchval(
        "SELECT count(*) FROM events WHERE recipient = $1 AND type = $2", recipient, kind
    )
    return count == n


async def test_always_451_expires_with_non_delivery(upstream, start_relay, db, clock):
    """A rule with max_attempts 3: three soft bounces, then expired and a non_delivery event."""
    upstream.on_rcpt("later@example.org", "451 4.3.0 Temporary failure, try again")
    extra = """
    [[retry.rules]]
    name = "three-tries"
    match = { code = [451] }
    schedule = ["10s"]
    max_attempts = 3
    """
    async with start_relay(upstream.port, extra) as relay:
        await send(relay, ["later@example.org"])
        for n in (1, 2):
            await eventually(partial(_count_events, db, "later@example.org", "soft_bounce", n))
            await retry_due(relay, clock, seconds=11)
        await eventually(in_state(db, "later@example.org", "expired"))
    events = await events_of(db, "later@example.org")
    assert [(e["type"], e["attempt"]) for e in events] == [
        ("soft_bounce", 1),
        ("soft_bounce", 2),
        ("soft_bounce", 3),
        ("non_delivery", 3),
    ]
    assert {e["rule"] for e in events} == {"three-tries"}
    assert upstream.rcpt_attempts["later@example.org"] == 3


async def test_greylisting_rule_matched_by_text(upstream, start_relay, db, clock):
    """A 451 that says "greylisted" takes the greylisting rule's 30 s step, then delivers."""
    upstream.on_rcpt(
        "grey@example.org",
        "451 4.7.1 <grey@example.org>: Recipient address rejected: Greylisted, "
        "see http://postgrey.schweikert.ch/help/example.org.html",
        "250 2.1.5 OK",
    )
    async with start_relay(upstream.port) as relay:
        await send(relay, ["grey@example.org"])
        await eventually(lambda: _count_events(db, "grey@example.org", "soft_bounce", 1))
        assert await db.fetchval("SELECT next_attempt_at FROM deliveries") == (
            clock() + timedelta(seconds=30)
        )
        await retry_due(relay, clock, seconds=31)
        await eventually(in_state(db, "grey@example.org", "delivered"))
    soft = (await events_of(db, "grey@example.org"))[0]
    assert (soft["category"], soft["rule"]) == ("greylisted", "greylisting")


async def test_mixed_replies_for_three_recipients_in_one_transaction(upstream, start_relay, db):
    """250 / 550 5.1.1 / 452 at RCPT in one transaction: one DATA for the accepted one."""
    upstream.on_rcpt("b@example.org", "550 5.1.1 User unknown")
    upstream.on_rcpt("c@example.org", "452 4.2.2 Mailbox full")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["a@example.org", "b@example.org", "c@example.org"])
        await eventually(in_state(db, "c@example.org", "queued"))
        await eventually(in_state(db, "b@example.org", "bounced"))
        await eventually(in_state(db, "a@example.org", "delivered"))
    assert upstream.connections == 1
    assert upstream.data_attempts == 1
    assert [r.recipients for r in upstream.received] == [["a@example.org"]]
    kinds = {
        r: (await events_of(db, r))[0]["type"]
        for r in ("a@example.org", "b@example.org", "c@example.org")
    }
    assert kinds == {
        "a@example.org": "delivered",
        "b@example.org": "hard_bounce",
        "c@example.org": "soft_bounce",
    }


async def test_data_reply_applies_to_accepted_recipients(upstream, start_relay, db):
    """A 554 at DATA bounces every recipient the upstream had accepted at RCPT."""
    upstream.on_data("554 5.7.1 Message rejected as spam")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["a@example.org", "b@example.org"])
        await eventually(in_state(db, "b@example.org", "bounced"))
        await eventually(in_state(db, "a@example.org", "bounced"))
    for r in ("a@example.org", "b@example.org"):
        [event] = await events_of(db, r)
        assert (event["code"], event["category"]) == (554, "content_rejected")
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_user_unknown_after_data_bounces_but_suppresses_nobody(upstream, start_relay, db):
    """The upstream accepted the recipient at RCPT and says "User unknown" only at the end of
    data (a content filter's, or a Japanese carrier's, way of refusing the sender): a hard
    bounce, but no evidence that the mailbox does not exist."""
    upstream.on_data("550 5.0.0 User unknown")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["filtered@example.org"])
        await eventually(in_state(db, "filtered@example.org", "bounced"))
    [event] = await events_of(db, "filtered@example.org")
    assert (event["type"], event["category"], event["suppress"]) == (
        "hard_bounce",
        "user_unknown",
        False,
    )
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_421_greeting_is_a_soft_bounce_with_the_servers_words(upstream, start_relay, db):
    """421 at connect: soft, the reply is the server's own (not synthetic)."""
    upstream.on_connect("421 4.3.2 Too busy, try later")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["busy@example.org"])
        await eventually(lambda: _count_events(db, "busy@example.org", "soft_bounce", 1))
    [event] = await events_of(db, "busy@example.org")
    assert event["code"] == 421
    assert "Too busy" in event["reply_text"]
    assert event["synthetic"] is False
    assert await state_of(db, "busy@example.org") == "queued"


async def test_connection_refused_is_a_synthetic_soft_bounce(start_relay, db):
    """Nothing listening: soft bounce, marked synthetic, text names host and error."""
    async with ScriptedUpstream() as gone:
        port = gone.port  # closed again below: the port refuses connections
    async with start_relay(port) as relay:
        await send(relay, ["nobody@example.org"])
        await eventually(lambda: _count_events(db, "nobody@example.org", "soft_bounce", 1))
    [event] = await events_of(db, "nobody@example.org")
    assert event["synthetic"] is True
    assert event["category"] == "connection_failed"
    assert f"127.0.0.1:{port}" in event["reply_text"]
    assert "refused" in event["reply_text"].lower()
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_address_suppressed_while_queued_is_cancelled_never_sent(
    upstream, start_relay, db, clock
):
    """A hard bounce on message 2 cancels the queued delivery of message 1 to the same address."""
    upstream.on_rcpt("x@example.org", "451 4.3.0 try later", "550 5.1.1 User unknown")
    async with start_relay(upstream.port) as relay:
        first = await send(relay, ["x@example.org"])
        await eventually(lambda: _count_events(db, "x@example.org", "soft_bounce", 1))
        await send(relay, ["x@example.org"])
        await eventually(lambda: _count_events(db, "x@example.org", "hard_bounce", 1))
        await retry_due(relay, clock, hours=2)
        await relay.worker.run_once()
    assert upstream.rcpt_attempts["x@example.org"] == 2
    rows = await db.fetch(
        "SELECT m.queue_id, d.state FROM deliveries d JOIN messages m ON m.id = d.message_id "
        "ORDER BY d.id"
    )
    assert (rows[0]["queue_id"], rows[0]["state"]) == (first, "cancelled")
    assert [r["state"] for r in rows] == ["cancelled", "bounced"]
    suppressed = await db.fetchrow("SELECT * FROM events WHERE type = 'suppressed'")
    assert suppressed["queue_id"] == first
    assert upstream.received == []


async def test_claim_rechecks_the_suppression_list(upstream, start_relay, db, clock):
    """An address suppressed by an administrator while queued is cancelled at claim, not sent."""
    upstream.on_rcpt("y@example.org", "451 4.3.0 try later", "250 2.1.5 OK")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["y@example.org"])
        await eventually(lambda: _count_events(db, "y@example.org", "soft_bounce", 1))
        await relay.store.add_suppression("y@example.org", "complaint", "manual")
        await retry_due(relay, clock, minutes=2)
        await eventually(in_state(db, "y@example.org", "cancelled"))
    assert upstream.rcpt_attempts["y@example.org"] == 1
    assert upstream.received == []
    types = [e["type"] for e in await events_of(db, "y@example.org")]
    assert types == ["soft_bounce", "suppressed"]


async def test_pool_source_ips_are_recorded_as_the_upstream_saw_them(upstream, start_relay, db):
    """Pool 127.0.0.2 + 127.0.0.3, round-robin: events record the IP the upstream saw."""
    async with start_relay(upstream.port, source_ips='"127.0.0.2", "127.0.0.3"') as relay:
        for n in range(4):
            await send(relay, [f"p{n}@example.org"])
            await eventually(in_state(db, f"p{n}@example.org", "delivered"))
    seen = {r.recipients[0]: r.peer_ip for r in upstream.received}
    recorded = {
        r["recipient"]: r["source_ip"]
        for r in await db.fetch("SELECT recipient, source_ip FROM events WHERE type='delivered'")
    }
    assert recorded == seen
    assert set(seen.values()) == {"127.0.0.2", "127.0.0.3"}


async def test_other_ip_rule_resends_from_another_source_ip(upstream, start_relay, db, clock):
    """A retry rule with source = "other_ip" sends the next attempt from a different pool IP."""
    upstream.on_rcpt(
        "blk@example.org", "451 4.7.1 Temporarily deferred due to IP reputation", "250 2.1.5 OK"
    )
    extra = """
    [[retry.rules]]
    name = "reputation"
    match = { text = "reputation" }
    schedule = ["10s"]
    source = "other_ip"
    """
    async with start_relay(upstream.port, extra, source_ips='"127.0.0.2", "127.0.0.3"') as relay:
        await send(relay, ["blk@example.org"])
        await eventually(lambda: _count_events(db, "blk@example.org", "soft_bounce", 1))
        await retry_due(relay, clock, seconds=11)
        await eventually(in_state(db, "blk@example.org", "delivered"))
    soft, delivered = await events_of(db, "blk@example.org")
    assert soft["rule"] == "reputation"
    assert soft["source_ip"] != delivered["source_ip"]
    assert upstream.received[0].peer_ip == delivered["source_ip"]


async def test_too_many_recipients_go_in_a_new_transaction(upstream, start_relay, db):
    """452 4.5.3 too many recipients at RCPT: those recipients go in a second transaction."""
    upstream.on_rcpt("c@example.org", "452 4.5.3 Too many recipients", "250 2.1.5 OK")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["a@example.org", "b@example.org", "c@example.org"])
        for r in ("a@example.org", "b@example.org", "c@example.org"):
            await eventually(in_state(db, r, "delivered"))
    assert [sorted(r.recipients) for r in upstream.received] == [
        ["a@example.org", "b@example.org"],
        ["c@example.org"],
    ]
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'soft_bounce'") == 0


async def test_connections_are_reused_between_messages(upstream, start_relay, db):
    """Messages in a row to one destination share one SMTP connection."""
    async with start_relay(upstream.port) as relay:
        for n in range(3):
            await send(relay, [f"r{n}@example.org"])
            await eventually(in_state(db, f"r{n}@example.org", "delivered"))
    assert len(upstream.received) == 3
    assert upstream.connections == 1


async def test_a_reused_connection_the_server_dropped_is_replaced_without_a_bounce(
    upstream, start_relay, db
):
    """Reused connections skip RSET; one that turns out dead at MAIL is replaced once, and
    the message goes out on a new connection with no soft bounce recorded."""
    async with start_relay(upstream.port) as relay:
        await send(relay, ["r0@example.org"])
        await eventually(in_state(db, "r0@example.org", "delivered"))
        upstream.drop_reused_mail = 1
        await send(relay, ["r1@example.org"])
        await eventually(in_state(db, "r1@example.org", "delivered"))
    assert [e["type"] for e in await events_of(db, "r1@example.org")] == ["delivered"]
    assert upstream.connections == 2
    assert upstream.drop_reused_mail == 0


async def test_lease_fencing_keeps_a_late_worker_from_overwriting(upstream, start_relay, db, clock):
    """A worker whose lease ran out and was taken over cannot write its result."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        await send(relay, ["f@example.org"])
        store = relay.store
        [old] = await store.claim_due_deliveries("relay-a", clock(), timedelta(seconds=5), 10)
        assert await expire_leases(db) == 1
        [new] = await store.claim_due_deliveries("relay-b", clock(), timedelta(seconds=5), 10)
        assert new.id == old.id
        assert new.lease_token != old.lease_token
        late = await store.apply_outcomes(
            clock(),
            [
                OutcomeRecord(
                    delivery_id=old.id,
                    lease_token=old.lease_token,
                    state="bounced",
                    event="hard_bounce",
                    suppress=True,
                    code=550,
                )
            ],
        )
        assert (late.applied, late.fenced) == (0, 1)
        current = await store.apply_outcomes(clock(), [delivered(new)])
        assert (current.applied, current.fenced) == (1, 0)
    assert await state_of(db, "f@example.org") == "delivered"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_a_relay_whose_clock_runs_ahead_never_takes_over_a_live_lease(
    upstream, start_relay, db, clock
):
    """Leases are set and judged by the database's clock: a relay whose own clock runs 20
    minutes ahead (past a 15-minute lease) finds nothing to claim while the lease lives,
    and claims the delivery once it has run out by the database's clock."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        await send(relay, ["live@example.org"])
        store = relay.store
        [held] = await store.claim_due_deliveries("relay-a", clock(), timedelta(minutes=15), 10)
        ahead = clock() + timedelta(minutes=20)
        assert await store.claim_due_deliveries("relay-b", ahead, timedelta(minutes=15), 10) == []
        lease_until = await db.fetchval("SELECT lease_until FROM deliveries")
        db_now = await db.fetchval("SELECT now()")
        assert timedelta(minutes=14) < lease_until - db_now <= timedelta(minutes=15)
        assert await expire_leases(db) == 1
        [taken] = await store.claim_due_deliveries("relay-b", ahead, timedelta(minutes=15), 10)
        assert (taken.id, taken.lease_token != held.lease_token) == (held.id, True)


class RecordingDNS(ScriptedDNS):
    """ScriptedDNS that keeps every name it was asked about, in ``asked``."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.asked.append(dns.message.from_wire(data).question[0].name.to_text())
        super().datagram_received(data, addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[RecordingDNS]:
    async with RecordingDNS() as server:
        yield server


def mx_config(upstream_port: int, dns_port: int, route_extra: str = "") -> str:
    return f"""
    [smtp]
    listen = "127.0.0.1:0"
    hostname = "relay.test"
    [[routes]]
    domains = ["*"]
    mode = "mx"
    mx_port = {upstream_port}
    {route_extra}
    [admin]
    listen = "127.0.0.1:0"
    [delivery]
    nameservers = ["127.0.0.1"]
    dns_port = {dns_port}
    connect_timeout = "2s"
    command_timeout = "5s"
    """


@pytest.fixture
def start_mx_relay(db_dsn, write_config, clock, dns_server):
    @asynccontextmanager
    async def start(upstream_port: int, route_extra: str = "") -> AsyncIterator[Relay]:
        text = mx_config(upstream_port, dns_server.port, route_extra)
        config = load_config(write_config(text, replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            yield relay

    return start


async def test_mx_route_resolves_mx_then_address(upstream, dns_server, start_mx_relay, db):
    """MX lookup through the configured nameserver; preference order; the MX host is recorded."""
    dns_server.add("mx.test", "MX", "20 backup.mx.test.", "10 mail.mx.test.")
    dns_server.add("mail.mx.test", "A", "127.0.0.1")
    dns_server.add("backup.mx.test", "A", "127.0.0.9")
    async with start_mx_relay(upstream.port) as relay:
        await send(relay, ["someone@mx.test"])
        await eventually(in_state(db, "someone@mx.test", "delivered"))
    [event] = await events_of(db, "someone@mx.test")
    assert event["destination"] == f"mail.mx.test:{upstream.port}"


async def test_domain_without_mx_uses_its_address(upstream, dns_server, start_mx_relay, db):
    """No MX records but an A record: the domain is its own mail host (RFC 5321 §5.1)."""
    dns_server.add("plain.test", "A", "127.0.0.1")
    async with start_mx_relay(upstream.port) as relay:
        await send(relay, ["someone@plain.test"])
        await eventually(in_state(db, "someone@plain.test", "delivered"))


@pytest.mark.parametrize(
    ("domain", "setup", "state", "category", "suppressed"),
    [
        (
            "nullmx.test",
            lambda d: d.add("nullmx.test", "MX", "0 ."),
            "bounced",
            "domain_not_found",
            True,
        ),
        # A first NXDOMAIN is looked up again later ([policy] nxdomain_confirm_after).
        ("gone.test", lambda d: d.nxdomain.add("gone.test"), "queued", "domain_not_found", False),
        # A resolver that says the parent zone and the root are absent too vouches for
        # nothing: our path's trouble, never the address's.
        (
            "everything.test",
            lambda d: d.nxdomain.update({"everything.test", "test", ""}),
            "queued",
            "connection_failed",
            False,
        ),
        (
            "broken.test",
            lambda d: d.servfail.add("broken.test"),
            "queued",
            "connection_failed",
            False,
        ),
    ],
)
async def test_dns_verdicts(
    upstream, dns_server, start_mx_relay, db, domain, setup, state, category, suppressed
):
    """A null MX is a definite hard bounce; NXDOMAIN waits for a second look; SERVFAIL and a
    resolver that cannot vouch for its NXDOMAIN are soft (our path)."""
    setup(dns_server)
    address = f"user@{domain}"
    async with start_mx_relay(upstream.port) as relay:
        await send(relay, [address])
        await eventually(in_state(db, address, state))
        await eventually(lambda: _has_events(db, address))
    [event] = await events_of(db, address)
    assert event["category"] == category
    assert event["synthetic"] is True
    count = await db.fetchval("SELECT count(*) FROM suppressions WHERE address = $1", address)
    assert count == (1 if suppressed else 0)
    assert upstream.received == []


async def test_nxdomain_still_there_an_hour_later_bounces_and_suppresses(
    upstream, dns_server, start_mx_relay, db, clock
):
    """The second look, nxdomain_confirm_after (1h) later, confirms the first: hard bounce,
    suppressed; the first was a soft bounce that suppressed nobody."""
    dns_server.nxdomain.add("gone.test")
    async with start_mx_relay(upstream.port) as relay:
        await send(relay, ["user@gone.test"])
        await eventually(lambda: _has_events(db, "user@gone.test"))
        await retry_due(relay, clock, minutes=59)
        assert await state_of(db, "user@gone.test") == "queued"  # not due before the hour
        await retry_due(relay, clock, minutes=2)
        await eventually(in_state(db, "user@gone.test", "bounced"))
    first, second = await events_of(db, "user@gone.test")
    assert (first["type"], first["rule"], first["suppress"]) == (
        "soft_bounce",
        "nxdomain_confirm",
        False,
    )
    assert (second["type"], second["category"], second["suppress"]) == (
        "hard_bounce",
        "domain_not_found",
        True,
    )
    count = await db.fetchval("SELECT count(*) FROM suppressions WHERE address = 'user@gone.test'")
    assert count == 1


RESOLVER_INCIDENTS = """
[incidents]
min_recipients = 5
close_after = "3h"
"""


async def test_a_resolver_saying_no_such_domain_for_many_domains_is_an_incident(
    upstream, dns_server, start_mx_relay, db, clock
):
    """A resolver that says NXDOMAIN for six domains at once (while the parent zone answers,
    so it vouches for each) has an incident: the second looks defer instead of bouncing and
    suppress nobody, and a later first look joins the incident (it keeps it open)."""
    domains = [f"d{n}.test" for n in range(7)]
    dns_server.nxdomain.update(domains)
    first, later = [f"user@{d}" for d in domains[:6]], f"user@{domains[6]}"
    async with start_mx_relay(upstream.port, route_extra=RESOLVER_INCIDENTS) as relay:
        await send(relay, first)
        for address in first:
            await eventually(partial(_has_events, db, address))
        assert relay.incident_watch is not None
        await relay.incident_watch.check()
        [incident] = await db.fetch("SELECT * FROM incidents")
        assert (incident["scope"], incident["destination"], incident["source_ip"]) == (
            "resolver",
            "",
            "",
        )
        assert (incident["recipients"], incident["attempted"]) == (6, 6)
        await send(relay, [later])
        await eventually(partial(_has_events, db, later))
        await retry_due(relay, clock, minutes=61)
        for address in first:
            await eventually(partial(_second_look_deferred, db, address))
    joined = (await events_of(db, later))[0]
    assert (joined["type"], joined["rule"], joined["incident_id"]) == (
        "soft_bounce",
        "nxdomain_confirm",
        incident["id"],
    )
    seconds = [(await events_of(db, address))[1] for address in first]
    assert {(e["type"], e["incident_id"], e["suppress"]) for e in seconds} == {
        ("hard_bounce", incident["id"], False)
    }
    assert {await state_of(db, address) for address in first} == {"queued"}
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert upstream.received == []


async def _second_look_deferred(db: asyncpg.Connection, address: str) -> bool:
    rows = await events_of(db, address)
    return len(rows) >= 2 and rows[-1]["rule"] is not None and "incident" in rows[-1]["rule"]


# -- address literals: user@[127.0.0.5] -------------------------------------------------------
# Queued straight into the store, as mail accepted before the intake refused literals (or
# before a route changed) would be: what delivery does with it is the question here.


async def _queue(relay: Relay, clock, queue_id: str, *recipients: str) -> None:
    await relay.store.accept_messages(clock(), [incoming_to(queue_id, recipients)])
    assert relay.worker is not None
    relay.worker.wake()


async def _suppressed(db: asyncpg.Connection, address: str) -> bool:
    entry = await db.fetchval("SELECT count(*) FROM suppressions WHERE address = $1", address)
    status = await db.fetchval("SELECT status FROM profiles WHERE address = $1", address)
    return bool(entry) or status == "hard_bounced"


async def test_an_address_literal_on_an_mx_route_goes_to_that_ip_never_to_dns(
    dns_server, start_mx_relay, db, clock
):
    """An mx route with address_literals: user@[127.0.0.5] is delivered to 127.0.0.5 on
    mx_port, and the resolver is never asked about it (not as an MX, not as A)."""
    async with (
        ScriptedUpstream("127.0.0.5") as at_literal,
        start_mx_relay(at_literal.port, "address_literals = true") as relay,
    ):
        await _queue(relay, clock, "L1", "user@[127.0.0.5]")
        await eventually(in_state(db, "user@[127.0.0.5]", "delivered"))
    [got] = at_literal.received
    assert got.recipients == ["user@[127.0.0.5]"]
    [event] = await events_of(db, "user@[127.0.0.5]")
    assert event["destination"] == f"127.0.0.5:{at_literal.port}"
    assert dns_server.asked == []


async def test_a_5xx_from_a_literal_destination_never_suppresses(
    dns_server, start_mx_relay, db, clock
):
    """550 5.1.1 user unknown from the literal's own IP: a hard bounce, recorded as such,
    and the address is not suppressed (an IP is no mailbox's lasting home)."""
    async with ScriptedUpstream("127.0.0.5") as at_literal:
        at_literal.on_rcpt("user@[127.0.0.5]", "550 5.1.1 <user@[127.0.0.5]>: User unknown")
        async with start_mx_relay(at_literal.port, "address_literals = true") as relay:
            await _queue(relay, clock, "L1", "user@[127.0.0.5]")
            await eventually(in_state(db, "user@[127.0.0.5]", "bounced"))
    [event] = await events_of(db, "user@[127.0.0.5]")
    assert (event["type"], event["category"], event["synthetic"]) == (
        "hard_bounce",
        "user_unknown",
        False,
    )
    assert not await _suppressed(db, "user@[127.0.0.5]")
    assert dns_server.asked == []


async def test_an_address_literal_through_an_mx_route_without_address_literals(
    upstream, dns_server, start_mx_relay, db, clock
):
    """The route does not allow literals: a soft, synthetic failure naming the setting;
    nothing sent, no DNS lookup, never suppressed (the old lookup of "[127.0.0.5]" as a
    name found nothing and suppressed the address as a domain that does not exist)."""
    async with start_mx_relay(upstream.port) as relay:
        await _queue(relay, clock, "L1", "user@[127.0.0.5]")
        await eventually(lambda: _has_events(db, "user@[127.0.0.5]"))
    [event] = await events_of(db, "user@[127.0.0.5]")
    assert (event["type"], event["code"], event["enhanced"], event["synthetic"]) == (
        "soft_bounce",
        550,
        "5.4.4",
        True,
    )
    assert "address_literals = true" in event["reply_text"]
    assert await state_of(db, "user@[127.0.0.5]") == "queued"
    assert not await _suppressed(db, "user@[127.0.0.5]")
    assert dns_server.asked == []
    assert upstream.received == []


def literal_static_config(port: int) -> str:
    return f"""
    [smtp]
    listen = "127.0.0.1:0"
    hostname = "relay.test"
    [[routes]]
    domains = ["[127.0.0.9]"]
    mode = "static"
    hosts = ["127.0.0.1:{port}"]
    address_literals = true
    [[routes]]
    domains = ["*"]
    mode = "static"
    hosts = ["127.0.0.1:{port}"]
    [admin]
    listen = "127.0.0.1:0"
    [delivery]
    connect_timeout = "2s"
    command_timeout = "5s"
    """


async def test_address_literals_on_static_routes(upstream, db_dsn, write_config, db, clock):
    """One message, three recipients. A literal whose route allows it is just a recipient
    the static route's host takes; a literal whose route does not is held back (soft,
    not suppressed) while a name on that same route is delivered: a literal never rides
    in a transaction with names."""
    config = load_config(write_config(literal_static_config(upstream.port), replace_base=True))
    allowed, refused, name = "a@[127.0.0.9]", "b@[127.0.0.8]", "c@example.org"
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
        await _queue(relay, clock, "L1", allowed, refused, name)
        await eventually(in_state(db, allowed, "delivered"))
        await eventually(in_state(db, name, "delivered"))
        await eventually(lambda: _has_events(db, refused))
    assert sorted(r for got in upstream.received for r in got.recipients) == [allowed, name]
    assert f"RCPT TO:<{allowed}>" in upstream.commands
    [event] = await events_of(db, refused)
    assert (event["type"], event["enhanced"], event["synthetic"]) == ("soft_bounce", "5.4.4", True)
    assert await state_of(db, refused) == "queued"
    assert not await _suppressed(db, refused)


async def _has_events(db: asyncpg.Connection, recipient: str) -> bool:
    return bool(await events_of(db, recipient))


async def test_smarthost_with_starttls_and_auth(db_dsn, write_config, clock, db):
    """A smarthost route: STARTTLS (opportunistic) then AUTH with the route's credentials."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    async with ScriptedUpstream(tls=server_ctx, users={"relayuser": "pw"}) as smarthost:
        text = delivery_config(smarthost.port).replace('mode = "static"', 'mode = "smarthost"')
        text = text.replace(
            f'hosts = ["127.0.0.1:{smarthost.port}"]',
            f'hosts = ["127.0.0.1:{smarthost.port}"]\n    username = "relayuser"'
            '\n    password = "env:BR_SMARTHOST_PASSWORD"',
        )
        os.environ["BR_SMARTHOST_PASSWORD"] = "pw"
        try:
            config = load_config(write_config(text, replace_base=True))
        finally:
            del os.environ["BR_SMARTHOST_PASSWORD"]
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            await send(relay, ["viasmarthost@example.org"])
            await eventually(in_state(db, "viasmarthost@example.org", "delivered"))
    assert smarthost.logins == ["relayuser"]
    assert smarthost.tls_sessions == 1


async def test_tls_required_but_not_offered_is_soft(upstream, start_relay, db):
    """tls = "required" and no STARTTLS offered: nothing is sent; a soft tls_required bounce."""
    async with start_relay(upstream.port, route_extra='tls = "required"') as relay:
        await send(relay, ["secure@example.org"])
        await eventually(lambda: _has_events(db, "secure@example.org"))
    [event] = await events_of(db, "secure@example.org")
    assert (event["type"], event["category"], event["synthetic"]) == (
        "soft_bounce",
        "tls_required",
        True,
    )
    assert upstream.received == []


async def test_a_body_is_kept_while_any_delivery_is_open_and_released_with_the_last(
    upstream, start_relay, db, clock
):
    """Delivered and retried recipients of one message: the body stays while the retry is
    queued (it is sent again from it) and goes when the last delivery is final."""
    upstream.on_rcpt("later@example.org", "451 4.2.0 try again", "250 2.1.5 OK")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["now@example.org", "later@example.org"])
        await eventually(in_state(db, "now@example.org", "delivered"))
        await eventually(in_state(db, "later@example.org", "queued"))
        assert await db.fetchval("SELECT body IS NOT NULL FROM messages")
        clock.advance(hours=2)
        relay.worker.wake()
        await eventually(in_state(db, "later@example.org", "delivered"))
        await eventually(lambda: _body_released(db))
        await send(relay, ["alone@example.org"])
        await eventually(in_state(db, "alone@example.org", "delivered"))
        await eventually(lambda: _body_released(db))


async def _body_released(db) -> bool:
    return bool(await db.fetchval("SELECT bool_and(body IS NULL) FROM messages"))


async def test_the_queue_statements_have_a_pool_of_their_own_with_generic_plans(
    upstream, start_relay
):
    """A serving relay plans its queue statements once (relay.store.create_store); reports
    and the admin pages keep PostgreSQL's own choice, on their own connections."""
    async with start_relay(upstream.port) as relay:
        store = relay.store
        assert store.queue is not store.pool
        assert await store.queue.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        assert await store.pool.fetchval("SHOW plan_cache_mode") == "auto"
        assert store.pool.get_max_size() == OTHER_POOL_MAX_SIZE


async def test_deliveries_finishing_within_the_outcome_window_share_one_commit(
    upstream, start_relay, db
):
    """Three messages sent one after another within a window: their three outcomes are
    written by one transaction (the rows' xmin)."""
    async with start_relay(upstream.port, 'outcome_window = "1s"') as relay:
        for n in range(3):
            await send(relay, [f"w{n}@example.org"])
        for n in range(3):
            await eventually(in_state(db, f"w{n}@example.org", "delivered"))
    writers = await db.fetch(
        "SELECT DISTINCT xmin::text FROM events WHERE type = 'delivered' AND recipient LIKE 'w%'"
    )
    assert len(writers) == 1


@pytest.mark.parametrize("grace", ["30s", "0s"])
async def test_shutdown_in_the_outcome_window_still_records_the_outcome(
    upstream, start_relay, db, grace
):
    """The relay stops while a delivery's outcome waits in its window: the outcome is written
    on the way out, not left for the lease to run out and the message to go again. With
    grace the window runs out while shutdown waits; without, shutdown cuts the delivery's
    task and the batcher still sends the batch it holds."""
    extra = f'outcome_window = "1s"\nshutdown_grace = "{grace}"'
    async with start_relay(upstream.port, extra) as relay:
        await send(relay, ["late@example.org"])
        await eventually(lambda: _outcome_decided(relay))
        assert await state_of(db, "late@example.org") == "inflight"
    assert await state_of(db, "late@example.org") == "delivered"
    assert len(upstream.delivered_to("late@example.org")) == 1


async def _outcome_decided(relay: Relay) -> bool:
    """Whether an outcome ``delivered`` was decided (it is then handed to the batcher)."""
    [family] = relay.metrics.deliveries.collect()
    return any(
        s.name.endswith("_total") and s.labels["outcome"] == "delivered" and s.value
        for s in family.samples
    )


def test_outcome_window_is_read_in_milliseconds_and_bounded(make_config):
    assert make_config('[delivery]\noutcome_window = "5ms"\n').delivery.outcome_window == (
        timedelta(milliseconds=5)
    )
    assert make_config().delivery.outcome_window == timedelta(milliseconds=20)
    with pytest.raises(ConfigErrors, match=r"outcome_window '2s' is too long"):
        make_config('[delivery]\noutcome_window = "2s"\n')


async def test_the_last_two_deliveries_finished_at_once_release_the_body(
    upstream, start_relay, db, db_dsn, clock
):
    """Two transactions finish the last two deliveries of one message together, each
    snapshot taken before the other commits: each sees the other's delivery as open and
    keeps the body. The release after the commit sees both and drops it. (A third
    connection holds both rows so that the two statements start before either commits.)"""
    async with start_relay(upstream.port, "enabled = false") as relay:
        store = relay.store
        await send(relay, ["one@example.org", "two@example.org"])
        claimed = await store.claim_due_deliveries("relay-a", clock(), timedelta(minutes=5), 10)
        assert len(claimed) == 2
        holder = await asyncpg.connect(db_dsn)
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM deliveries WHERE id = ANY($1::bigint[]) FOR UPDATE",
                [d.id for d in claimed],
            )
            both = asyncio.gather(*(store.apply_outcomes(clock(), [delivered(d)]) for d in claimed))
            await eventually(lambda: _waiting_for_locks(db, 2))
            await lock.commit()
            results = await both
        finally:
            await holder.close()
    assert [r.applied for r in results] == [1, 1]
    assert await _body_released(db)


async def _waiting_for_locks(db, n: int) -> bool:
    """Whether ``n`` statements on this database wait for a lock."""
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting >= n


async def test_a_hard_bounce_releases_the_bodies_of_the_mail_it_cancels(
    upstream, start_relay, db, clock
):
    """A hard bounce cancels the other mail queued to that address; a cancelled message
    with nothing else open has its body released like a delivered one."""
    upstream.on_rcpt("gone@example.org", "451 4.2.0 later", "550 5.1.1 no such user")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["gone@example.org"])
        await eventually(in_state(db, "gone@example.org", "queued"))
        async with relay.store.queue.acquire() as conn:  # a second message, queued behind it
            await conn.execute(
                "UPDATE deliveries SET next_attempt_at = $1", clock() + timedelta(days=1)
            )
        await relay.store.accept_messages(clock(), [incoming("Q2", "gone@example.org")])
        await retry_due(relay, clock, hours=2)
        await eventually(lambda: _states(db, "gone@example.org", {"bounced", "cancelled"}))
        await eventually(lambda: _body_released(db))


async def _states(db, recipient: str, states: set[str]) -> bool:
    rows = await db.fetch("SELECT state FROM deliveries WHERE recipient_key = $1", recipient)
    return {r["state"] for r in rows} == states


async def test_purging_a_queued_delivery_releases_its_body(upstream, start_relay, db):
    async with start_relay(upstream.port, "enabled = false") as relay:
        await send(relay, ["purge@example.org"])
        delivery_id = await db.fetchval("SELECT id FROM deliveries")
        assert await relay.store.purge_delivery(delivery_id, "ops", "test")
    assert await state_of(db, "purge@example.org") == "cancelled"
    assert await _body_released(db)
