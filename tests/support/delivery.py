"""Helpers of the delivery tests: a relay config with a static route, a client, polling.

Fixtures built on them live in tests/relay/conftest.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

import aiosmtplib
import asyncpg

from relay.ops.app import Relay
from relay.store import ClaimedDelivery, IncomingMessage, OutcomeRecord, Recipient
from tests.support.scripted import FakeClock

BODY = b"From: News <news@mail.example.com>\r\nX-Campaign-ID: c1\r\nSubject: t\r\n\r\nhello\r\n"


def delivery_config(
    port: int,
    extra: str = "",
    source_ips: str = '"127.0.0.1"',
    route_extra: str = "",
    poll_interval: str = "1s",
) -> str:
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
    {route_extra}

    [retry]
    schedule = ["1m", "5m"]
    spread = 0  # exact retry times in assertions
    max_age = "1d"

    [[retry.rules]]
    name = "greylisting"
    match = {{ category = ["greylisted"] }}
    schedule = ["30s"]
    max_attempts = 4

    [admin]
    listen = "127.0.0.1:0"

    [delivery]
    poll_interval = "{poll_interval}"
    connect_timeout = "5s"
    command_timeout = "10s"
    {extra}
    {"" if "[shaping]" in extra else _NO_SHAPING}
    """


# Shaping is the subject of tests/relay/delivery/test_shaping.py (its config has a [shaping]
# table); elsewhere its rounds and waits would only add timing to tests of other things (a
# test that orders two deliveries by the throttle's token, a canary released at once), as
# [guardrails] is turned off where it is not the subject.
_NO_SHAPING = """
    [shaping]
    enabled = false
"""


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
    state: str | None = await db.fetchval(
        "SELECT state FROM deliveries WHERE recipient_key = $1 ORDER BY id DESC LIMIT 1", recipient
    )
    return state


def in_state(db: asyncpg.Connection, recipient: str, *states: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await state_of(db, recipient) in states

    return check


async def events_of(db: asyncpg.Connection, recipient: str) -> list[asyncpg.Record]:
    events: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM events WHERE recipient = $1 AND type <> 'accepted' ORDER BY occurred_at, id",
        recipient,
    )
    return events


async def expire_leases(db: asyncpg.Connection) -> int:
    """Let every lease run out now, as time passing would: leases are judged by the
    database's clock (a relay's injected clock cannot move them)."""
    status = await db.execute(
        "UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE state = 'inflight'"
    )
    return int(status.split()[-1])


async def retry_due(relay: Relay, clock: FakeClock, **delta: float) -> None:
    clock.advance(**delta)
    assert relay.worker is not None, "the relay runs no delivery worker ([delivery] enabled)"
    relay.worker.wake()


def incoming(
    queue_id: str, recipient: str, sender_domain: str = "mail.example.com", body: bytes = BODY
) -> IncomingMessage:
    """A one-recipient message as the intake hands it to the store."""
    return incoming_to(queue_id, [recipient], sender_domain, body)


def incoming_to(
    queue_id: str,
    recipients: Sequence[str],
    sender_domain: str = "mail.example.com",
    body: bytes = BODY,
) -> IncomingMessage:
    """A message to ``recipients`` (already in their normal form) as the intake hands it
    to the store: also what mail queued before a change of config or intake looks like."""
    return IncomingMessage(
        queue_id=queue_id,
        envelope_sender=f"bounces@{sender_domain}",
        recipients=tuple(Recipient(r, r, r.rpartition("@")[2]) for r in recipients),
        body=body,
        from_domain=sender_domain,
        message_id=None,
        campaign="c1",
        client_address="127.0.0.1",
        session_id="s",
        smtputf8=False,
    )


def delivered(d: ClaimedDelivery) -> OutcomeRecord:
    """The outcome of a 250 for the claimed delivery ``d``."""
    return OutcomeRecord(
        delivery_id=d.id, lease_token=d.lease_token, state="delivered", event="delivered", code=250
    )


def after_our_received(body: bytes) -> bytes:
    """``body`` less the Received field the relay puts in front of every message it stores
    (tests/relay/intake/test_trace_and_loops.py checks the field itself)."""
    assert body.startswith(b"Received: from "), body[:100]
    end = re.compile(rb"\r\n(?![ \t])").search(body)
    assert end is not None
    return body[end.end() :]
