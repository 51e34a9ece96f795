"""Delivery and bounce handling against scripted upstream SMTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import aiosmtplib
import asyncpg
import pytest

from relay.app import Relay
from relay.config import load_config
from tests.scripted import FakeClock, ScriptedUpstream

BODY = b"From: News <news@mail.example.com>\r\nX-Campaign-ID: c1\r\nSubject: t\r\n\r\nhello\r\n"


def delivery_config(port: int, extra: str = "", source_ips: str = '"127.0.0.1"') -> str:
    return f"""
    [smtp]
    listen = "127.0.0.1:0"
    hostname = "relay.test"

    [[pools]]
    name = "default"
    source_ips = [{source_ips}]

    [[routes]]
    domains = ["*"]
    mode = "static"
    hosts = ["127.0.0.1:{port}"]

    [retry]
    schedule = ["1m", "5m"]
    max_age = "1d"

    [[retry.rules]]
    name = "greylisting"
    match = {{ category = ["greylisted"] }}
    schedule = ["30s"]
    max_attempts = 4

    [delivery]
    poll_interval = "1s"
    connect_timeout = "5s"
    command_timeout = "10s"
    {extra}
    """


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def start_relay(db_dsn, write_config, clock):
    @asynccontextmanager
    async def start(port: int, extra: str = "", **kw: str) -> AsyncIterator[Relay]:
        config = load_config(write_config(delivery_config(port, extra, **kw), replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            yield relay

    return start


@pytest.fixture
async def db(db_dsn) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


async def send(relay: Relay, recipients: list[str], body: bytes = BODY) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    _, reply = await client.sendmail("bounces@mail.example.com", recipients, body)
    await client.quit()
    return reply.rsplit(" ", 1)[1]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; the relay works in the background."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def state_of(db: asyncpg.Connection, recipient: str) -> str | None:
    return await db.fetchval(
        "SELECT state FROM deliveries WHERE recipient_key = $1 ORDER BY id DESC LIMIT 1", recipient
    )


def in_state(db: asyncpg.Connection, recipient: str, *states: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await state_of(db, recipient) in states

    return check


async def events_of(db: asyncpg.Connection, recipient: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM events WHERE recipient = $1 AND type <> 'accepted' ORDER BY occurred_at, id",
        recipient,
    )


async def retry_due(relay: Relay, clock: FakeClock, **delta: float) -> None:
    clock.advance(**delta)
    relay.worker.wake()


async def test_250_delivered_straight_after_commit(upstream, start_relay, db):
    """An accepted message is delivered without waiting for a poll; body released after."""
    async with start_relay(upstream.port) as relay:
        queue_id = await send(relay, ["ok@example.org"])
        await eventually(in_state(db, "ok@example.org", "delivered"), timeout=0.9)
    [got] = upstream.received
    assert got.recipients == ["ok@example.org"]
    assert got.body == BODY
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
    return (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE recipient = $1 AND type = $2", recipient, kind
        )
        == n
    )


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
            await eventually(lambda n=n: _count_events(db, "later@example.org", "soft_bounce", n))
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
