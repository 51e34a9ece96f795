"""Bounces mailed back to the DSN domain: VERP return paths out, DSN/ARF intake in.

The scripted upstream says 250 and keeps the envelope; the test then plays the
remote MTA and mails a bounce to the return path it saw, through a real SMTP
client, as the internet would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta

import aiosmtplib
import pytest

from relay.reports.export import parse_filter
from tests.support.bounces import (
    DSN_CONFIG,
    DSN_DOMAIN,
    delivered_with_return_path,
    dsn_message,
    mail_bounce,
)
from tests.support.delivery import events_of, eventually, in_state, send, state_of


def arf_message(return_path: str, recipient: str) -> bytes:
    return (
        "From: fbl@isp.example.net\r\n"
        "To: abuse@bounce.relay.test\r\n"
        "Subject: FW: t\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F1"\r\n\r\n'
        "--F1\r\n"
        "Content-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
        "--F1\r\n"
        "Content-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: ExampleFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n\r\n"
        "--F1\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\n"
        "From: News <news@mail.example.com>\r\n"
        f"To: {recipient}\r\n"
        "Subject: t\r\n\r\nhello\r\n"
        "--F1--\r\n"
    ).encode()


async def test_each_delivery_gets_its_own_signed_return_path(upstream, start_relay, db):
    """One message to two recipients goes out as two transactions, each with its own VERP
    sender; the original sender stays in the message record."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        await send(relay, ["a@example.org", "b@example.org"])
        await eventually(in_state(db, "b@example.org", "delivered"))
        await eventually(in_state(db, "a@example.org", "delivered"))
    senders = {r.recipients[0]: r.sender for r in upstream.received}
    assert len(upstream.received) == 2
    assert senders["a@example.org"] != senders["b@example.org"]
    for sender in senders.values():
        local, _, domain = sender.partition("@")
        assert domain == DSN_DOMAIN
        assert local.startswith("bounces+")
    assert await db.fetchval("SELECT envelope_sender FROM messages") == "bounces@mail.example.com"


async def test_dsn_after_250_hard_bounces_suppresses_and_reaches_the_report(
    upstream, start_relay, db, clock
):
    """The end-to-end run: upstream says 250, then mails a DSN back; the recipient ends up
    suppressed, its profile hard bounced, and the bounce in the report with the remote text."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        reply = await mail_bounce(relay, return_path, dsn_message(return_path, "gone@example.org"))
        assert reply.startswith("2.0.0 OK bounce read")
        assert await state_of(db, "gone@example.org") == "bounced"
        suppression = await db.fetchrow(
            "SELECT source, reason FROM suppressions WHERE address = 'gone@example.org'"
        )
        assert suppression["source"] == "dsn"
        assert suppression["reason"].startswith("user_unknown: 550 5.1.1")
        status = await db.fetchval("SELECT status FROM profiles WHERE address = 'gone@example.org'")
        assert status == "hard_bounced"
        events = await events_of(db, "gone@example.org")
        assert [(e["type"], e["source"]) for e in events] == [
            ("delivered", "smtp"),
            ("hard_bounce", "dsn"),
        ]
        bounce = events[1]
        assert bounce["destination"] == "mx1.example.org"
        assert bounce["source_ip"] == "127.0.0.1"
        assert bounce["category"] == "user_unknown"
        assert "User unknown" in bounce["reply_text"]
        flt = parse_filter(
            start=(clock() - timedelta(days=1)).strftime("%Y-%m-%dT%H:00"),
            end=(clock() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:00"),
            kind="hard",
        )
        rows = [
            row
            async for row in relay.store.iter_bounce_report(
                flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
            )
        ]
        # A second relay transaction to the suppressed address is refused at RCPT.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("bounces@mail.example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await client.rcpt("gone@example.org")
        await client.quit()
    assert [(r.group, r.amount) for r in rows] == [("mail.example.com", 1)]
    assert "User unknown" in rows[0].bounce_text


async def test_a_repeated_dsn_records_nothing_more(upstream, start_relay, db):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        message = dsn_message(return_path, "gone@example.org")
        await mail_bounce(relay, return_path, message)
        await mail_bounce(relay, return_path, message)
    types = [e["type"] for e in await events_of(db, "gone@example.org")]
    assert types == ["delivered", "hard_bounce"]


def delayed_dsn(return_path: str, recipient: str) -> bytes:
    return dsn_message(
        return_path,
        recipient,
        action="delayed",
        status="4.4.1",
        diagnostic="smtp; 451 4.4.1 Connection timed out",
    )


async def test_the_same_delayed_dsn_five_times_is_one_soft_bounce(upstream, start_relay, db):
    """A remote MTA that repeats its delay warning: the delivery counts the delayed report
    once (a delivery and action are recorded once, by a database key); every copy is still
    answered 250, and the final failure that follows counts: it is another action."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "slow@example.org")
        replies = [
            await mail_bounce(relay, return_path, delayed_dsn(return_path, "slow@example.org"))
            for _ in range(5)
        ]
        await mail_bounce(relay, return_path, dsn_message(return_path, "slow@example.org"))
    assert all(r.startswith("2.0.0 OK bounce read") for r in replies)
    types = [e["type"] for e in await events_of(db, "slow@example.org")]
    assert types == ["delivered", "soft_bounce", "hard_bounce"]


async def test_two_copies_of_a_dsn_at_once_count_once(upstream, start_relay, db):
    """Two sessions deliver the same delayed DSN at the same moment: one soft bounce (the
    key is taken in the statement that records it, so neither copy can miss the other)."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "slow@example.org")
        message = delayed_dsn(return_path, "slow@example.org")
        await asyncio.gather(*(mail_bounce(relay, return_path, message) for _ in range(4)))
    types = [e["type"] for e in await events_of(db, "slow@example.org")]
    assert types == ["delivered", "soft_bounce"]


async def test_delayed_dsn_is_a_soft_bounce_record_only(upstream, start_relay, db):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "slow@example.org")
        await mail_bounce(
            relay,
            return_path,
            dsn_message(
                return_path,
                "slow@example.org",
                action="delayed",
                status="4.4.1",
                diagnostic="smtp; 451 4.4.1 Connection timed out",
            ),
        )
    assert await state_of(db, "slow@example.org") == "delivered"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    events = await events_of(db, "slow@example.org")
    assert [(e["type"], e["source"]) for e in events] == [
        ("delivered", "smtp"),
        ("soft_bounce", "dsn"),
    ]
    # Nothing was rescheduled: the remote MTA is the one still trying.
    assert len(upstream.received) == 1


async def test_failed_mailbox_full_dsn_is_a_non_delivery_not_a_suppression(
    upstream, start_relay, db
):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "full@example.org")
        await mail_bounce(
            relay,
            return_path,
            dsn_message(
                return_path,
                "full@example.org",
                status="5.2.2",
                diagnostic="smtp; 552 5.2.2 Mailbox full",
            ),
        )
    assert await state_of(db, "full@example.org") == "expired"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    types = [e["type"] for e in await events_of(db, "full@example.org")]
    assert types == ["delivered", "soft_bounce", "non_delivery"]


async def test_ip_block_dsn_never_suppresses(upstream, start_relay, db):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "good@example.org")
        await mail_bounce(
            relay,
            return_path,
            dsn_message(
                return_path,
                "good@example.org",
                status="5.7.1",
                diagnostic="smtp; 550 5.7.1 Service unavailable; Client host [192.0.2.1] "
                "blocked using zen.spamhaus.org",
            ),
        )
    assert await state_of(db, "good@example.org") == "bounced"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_feedback_report_suppresses_with_reason_complaint(upstream, start_relay, db):
    """An ARF report sent to another address of the DSN domain still finds its delivery
    through the return path in the returned headers."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "annoyed@example.org")
        await mail_bounce(
            relay,
            f"abuse@{DSN_DOMAIN}",
            arf_message(return_path, "annoyed@example.org"),
            sender="fbl@isp.example.net",
        )
    row = await db.fetchrow("SELECT source, reason FROM suppressions")
    assert row["source"] == "complaint"
    assert row["reason"] == "complaint: feedback report: abuse"
    assert await db.fetchval("SELECT status FROM profiles") == "complained"
    assert await state_of(db, "annoyed@example.org") == "delivered"
    types = [e["type"] for e in await events_of(db, "annoyed@example.org")]
    assert types == ["delivered", "complaint"]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda rp: rp.replace("+", "+x", 1), "no valid return path token"),
        (lambda rp: "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaaa@" + DSN_DOMAIN, "no valid return path"),
        (lambda rp: f"postmaster@{DSN_DOMAIN}", "no valid return path token"),
    ],
    ids=["mangled", "forged", "missing"],
)
async def test_a_bounce_without_a_valid_token_suppresses_nobody(
    upstream, start_relay, db, mangle, reason
):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        target = mangle(return_path)
        # The returned headers are mangled the same way: no valid token anywhere.
        message = dsn_message(target, "gone@example.org")
        reply = await mail_bounce(relay, target, message)
    assert reply.startswith("2.0.0")
    assert await state_of(db, "gone@example.org") == "delivered"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    row = await db.fetchrow(
        "SELECT source, reply_text, detail FROM events WHERE type = 'dsn_unmatched'"
    )
    assert row["source"] == "dsn"
    assert row["reply_text"].startswith(reason)
    assert json.loads(row["detail"])["format"] == "rfc3464"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x00\x01\x02 not mail at all", "not a mail message"),
        (
            b"From: friend@example.net\r\nSubject: lunch?\r\n\r\nSee you at noon.\r\n",
            "not recognisable as a bounce",
        ),
    ],
    ids=["garbage", "ordinary-mail"],
)
async def test_unusable_messages_to_the_dsn_domain_are_dropped_and_recorded(
    upstream, start_relay, db, message, reason
):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        reply = await mail_bounce(relay, return_path, message)
    assert reply.startswith("2.0.0")
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    text = await db.fetchval("SELECT reply_text FROM events WHERE type = 'dsn_unmatched'")
    assert text.startswith(reason)


async def test_a_bounce_of_a_bounce_is_dropped(upstream, start_relay, db):
    """The returned original is itself a delivery report: a loop, nothing suppressed."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        inner = dsn_message(return_path, "gone@example.org").decode()
        outer = (
            "From: MAILER-DAEMON@mx2.example.net\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="O1"\r\n\r\n'
            "--O1\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\r\n"
            "--O1\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx2.example.net\r\n\r\n"
            "Final-Recipient: rfc822; MAILER-DAEMON@mx.example.net\r\n"
            "Action: failed\r\nStatus: 5.1.1\r\n\r\n"
            "--O1\r\nContent-Type: message/rfc822\r\n\r\n"
            f"{inner}\r\n"
            "--O1--\r\n"
        ).encode()
        await mail_bounce(relay, return_path, outer)
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    text = await db.fetchval("SELECT reply_text FROM events WHERE type = 'dsn_unmatched'")
    assert text.startswith("a bounce of a bounce")


async def test_bounce_and_relay_recipients_do_not_mix(upstream, start_relay, db):
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("")
        await client.rcpt(f"bounces+x@{DSN_DOMAIN}")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("someone@example.org")
        await client.quit()
    assert refused.value.code == 452


async def test_any_client_may_send_bounces_but_not_relay(upstream, start_relay, db):
    """Outside allowed_clients, mail to the DSN domain is taken; nothing else is relayed."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        # From here on the test client is a stranger on the internet.
        relay.handler.smtp = dataclasses.replace(relay.handler.smtp, allowed_clients=())
        reply = await mail_bounce(relay, return_path, dsn_message(return_path, "gone@example.org"))
        assert reply.startswith("2.0.0")
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("victim@example.org")
        await client.quit()
    assert refused.value.code == 550
    assert await state_of(db, "gone@example.org") == "bounced"


async def test_without_a_dsn_domain_the_return_path_is_the_original_sender(
    upstream, start_relay, db
):
    async with start_relay(upstream.port) as relay:
        await send(relay, ["a@example.org"])
        await eventually(in_state(db, "a@example.org", "delivered"))
    assert upstream.received[0].sender == "bounces@mail.example.com"
