"""Hostile mail to the DSN domain, against a real relay over SMTP.

Anyone may mail the DSN domain. What one bounce message may cost is bounded: it is parsed
in a worker process within a budget, so the event loop greets other clients meanwhile; an
unusable one is one record (whatever its recipients), at most ``[dsn]
max_unmatched_per_client`` a client and hour (then 450 4.7.1, nothing stored), deleted after
``[dsn] unmatched_retention``. The greeting and reply times are generous budgets against a
stall (the stalls they catch were tens of seconds, hours for 2 MB), not performance claims.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import aiosmtplib
import asyncpg
import pytest

from relay.ops.app import Relay
from tests.support.bounces import (
    DSN_CONFIG,
    DSN_DOMAIN,
    delivered_with_return_path,
    dsn_message,
    mail_bounce,
)
from tests.support.delivery import eventually, send
from tests.support.hostile_bounces import SHAPES, hostile_from_header

HOSTILE_SIZE = 2_000_000
GREETING_BUDGET = 1.0  # seconds; a stalled loop greeted after the whole parse
REPLY_BUDGET = 15.0  # seconds for a 2 MB hostile bounce to be answered (a parse is < 2 s)
FORGED = f"bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaaa@{DSN_DOMAIN}"
LIMITED = DSN_CONFIG + "    max_unmatched_per_client = 3\n"


def _reply(reader: BinaryIO) -> str:
    """One SMTP reply (all its lines) from a blocking socket file."""
    lines = []
    while True:
        line = reader.readline().decode("utf-8", "replace")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "".join(lines)


def _send_raw(
    port: int, sender: str, rcpts: list[str], message: bytes, sent: threading.Event
) -> tuple[str, float]:
    """One SMTP transaction from a blocking socket in a thread of its own (so a stalled event
    loop cannot delay the client); ``sent`` is set once the final dot is out. The reply to
    the DATA, and how long it took after the dot."""
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    data = b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = sock.makefile("rb")
        _reply(reader)
        for command in [b"EHLO client.test", f"MAIL FROM:<{sender}>".encode()]:
            sock.sendall(command + b"\r\n")
            _reply(reader)
        for rcpt in rcpts:
            sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
            assert _reply(reader).startswith("250")
        sock.sendall(b"DATA\r\n")
        _reply(reader)
        sock.sendall(data.rstrip(b"\r\n") + b"\r\n.\r\n")
        sent.set()
        start = time.monotonic()
        reply = _reply(reader)
        answered = time.monotonic() - start
        sock.sendall(b"QUIT\r\n")
    return reply, answered


def _greeting_seconds(port: int) -> float:
    """How long a new client waits for the greeting (from a thread: the loop under test
    must not be the one measuring)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        greeting = sock.makefile("rb").readline()
    assert greeting.startswith(b"220"), greeting
    return time.monotonic() - start


def _slowest_greeting(sent: threading.Event, done: threading.Event, port: int) -> float:
    """Once ``sent``, new clients every 50 ms until ``done``: the longest any waited for its
    greeting. (A thread of its own throughout: it must not need the event loop under test
    to start. One client could arrive while the message is still being received; a stream
    of them is there during the read, whenever it happens.)"""
    assert sent.wait(120), "the message was never sent"
    slowest = _greeting_seconds(port)
    while not done.wait(0.05):
        slowest = max(slowest, _greeting_seconds(port))
    return slowest


async def _greeted_while_sending(
    port: int, sender: str, rcpts: list[str], message: bytes
) -> tuple[float, str, float]:
    """Send ``message`` and greet other clients until it is answered: the slowest greeting,
    the reply and how long it took after the final dot."""
    sent, answered = threading.Event(), threading.Event()

    def transaction() -> tuple[str, float]:
        try:
            return _send_raw(port, sender, rcpts, message, sent)
        finally:
            sent.set()
            answered.set()

    (reply, seconds), slowest = await asyncio.gather(
        asyncio.to_thread(transaction), asyncio.to_thread(_slowest_greeting, sent, answered, port)
    )
    return slowest, reply, seconds


async def _unmatched(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT recipient, reply_text, detail FROM events WHERE type = 'dsn_unmatched' ORDER BY id"
    )
    return rows


@pytest.mark.parametrize(
    "shape", ["html_unclosed_script", "folded_encoded_subject", "returned_headers"]
)
async def test_other_clients_are_greeted_while_a_hostile_bounce_is_read(
    upstream, start_relay, db, shape
):
    """A 2 MB hostile bounce is parsed off the event loop: a second client is greeted at
    once meanwhile, the bounce is answered within seconds and kept as unmatched."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        greeting, reply, answered = await _greeted_while_sending(
            relay.port, "", [FORGED], SHAPES[shape](HOSTILE_SIZE)
        )
        rows = await _unmatched(db)
    assert greeting < GREETING_BUDGET, f"a client was greeted after {greeting:.2f} s"
    assert reply.startswith("250 2.0.0"), reply
    assert answered < REPLY_BUDGET, f"answered after {answered:.1f} s"
    assert len(rows) == 1
    assert json.loads(rows[0]["detail"])["size"] > 1_000_000


async def test_a_hostile_from_on_intake_does_not_hold_other_clients(upstream, start_relay, db):
    """Mail to relay whose From is folded over 2 MB: the header summary is bounded, so
    other clients are greeted at once and the message is queued."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        greeting, reply, _ = await _greeted_while_sending(
            relay.port,
            "news@example.com",
            ["someone@example.org"],
            hostile_from_header(HOSTILE_SIZE),
        )
    assert greeting < GREETING_BUDGET, f"greeted after {greeting:.2f} s"
    assert reply.startswith("250 2.0.0 OK queued"), reply
    assert await db.fetchval("SELECT from_domain FROM messages") == "example.com"


async def test_a_parse_over_budget_is_kept_as_unmatched_and_the_next_bounce_is_read(
    upstream, start_relay, db
):
    """A bounce whose parse takes longer than its budget: its worker is killed, the sender
    hears 250, the message is kept as unmatched with that reason (never lost silently), and
    the next bounce is read by a new worker."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        return_path = await delivered_with_return_path(upstream, relay, db, "gone@example.org")
        relay.handler.bounces.parse_budget = 0.01  # a 2 MB parse takes a good deal longer
        reply = await mail_bounce(relay, FORGED, SHAPES["dsn_groups"](HOSTILE_SIZE))
        relay.handler.bounces.parse_budget = 30.0
        await mail_bounce(relay, return_path, dsn_message(return_path, "gone@example.org"))
        rows = await _unmatched(db)
        state = await db.fetchval("SELECT state FROM deliveries")
    assert reply.startswith("2.0.0")
    assert [r["reply_text"] for r in rows] == [
        "parse budget exceeded (0.01 s); kept for inspection"
    ]
    assert state == "bounced"


async def test_unusable_bounces_are_limited_per_client_address(upstream, start_relay, db, clock):
    """[dsn] max_unmatched_per_client = 3: the fourth unusable bounce from one address in an
    hour hears 450 4.7.1 and nothing is stored; that address still relays mail, another
    address is not affected, and the first may send bounces again an hour later."""
    async with start_relay(upstream.port, LIMITED) as relay:
        replies = [
            await mail_bounce(relay, FORGED, dsn_message(FORGED, "x@example.org")) for _ in range(3)
        ]
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await mail_bounce(relay, FORGED, dsn_message(FORGED, "x@example.org"))
        kept_at_limit = len(await _unmatched(db))
        queue_id = await send(relay, ["someone@example.org"])  # relaying is not limited
        other = await _mail_from(relay, "127.0.0.2", dsn_message(FORGED, "x@example.org"))
        clock.advance(hours=1, seconds=1)
        later = await mail_bounce(relay, FORGED, dsn_message(FORGED, "x@example.org"))
        peers = [json.loads(r["detail"])["peer"] for r in await _unmatched(db)]
    assert all(r.startswith("2.0.0") for r in replies)
    assert refused.value.code == 450
    assert refused.value.message.startswith("4.7.1 Too many unusable bounce messages")
    assert kept_at_limit == 3
    assert await db.fetchval("SELECT count(*) FROM messages WHERE queue_id = $1", queue_id) == 1
    assert other.startswith("2.0.0")
    assert later.startswith("2.0.0")
    assert peers == ["127.0.0.1"] * 3 + ["127.0.0.2", "127.0.0.1"]


async def _mail_from(relay: Relay, source: str, message: bytes) -> str:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=False, source_address=(source, 0)
    )
    await client.connect()
    _, reply = await client.sendmail("", [FORGED], message)
    await client.quit()
    return reply


async def test_one_message_to_a_thousand_bounce_addresses_is_one_record(upstream, start_relay, db):
    """1,000 RCPTs at the DSN domain, none with a valid token, and a megabyte of returned
    headers: one unmatched record naming them (the first 50 and the count), the returned
    headers searched once (not once per RCPT), answered within seconds."""
    rcpts = [f"bounces+{i:029d}@{DSN_DOMAIN}" for i in range(1000)]
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        sent = threading.Event()
        reply, answered = await asyncio.to_thread(
            _send_raw, relay.port, "", rcpts, SHAPES["returned_headers"](1_000_000), sent
        )
        rows = await _unmatched(db)
    assert reply.startswith("250 2.0.0"), reply
    assert answered < REPLY_BUDGET, f"answered after {answered:.1f} s"
    assert len(rows) == 1
    detail = json.loads(rows[0]["detail"])
    assert detail["rcpt_count"] == 1000
    assert detail["rcpt_tos"] == rcpts[:50]
    assert rows[0]["recipient"] == rcpts[0]


async def test_unusable_bounces_are_deleted_after_the_retention(upstream, start_relay, db, clock):
    """[dsn] unmatched_retention (7 days by default): a bounce message read later than that
    after an unmatched one finds it deleted; younger ones stay."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        await mail_bounce(relay, FORGED, dsn_message(FORGED, "old@example.org"))
        clock.advance(days=7, minutes=11)
        await mail_bounce(relay, FORGED, dsn_message(FORGED, "new@example.org"))
        clock.advance(minutes=11)  # the next expiry pass keeps the young one
        await mail_bounce(relay, FORGED, dsn_message(FORGED, "newer@example.org"))
        kept = [json.loads(r["detail"])["recipients"] for r in await _unmatched(db)]
    assert kept == [["new@example.org"], ["newer@example.org"]]


async def test_unusable_bounces_expire_without_bounce_traffic(upstream, start_relay, db, clock):
    """A relay whose bounces stopped still trims them: the expiry pass runs when the relay
    starts (and every EXPIRY_INTERVAL after), not only when a bounce arrives."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        await mail_bounce(relay, FORGED, dsn_message(FORGED, "old@example.org"))
    assert len(await _unmatched(db)) == 1
    clock.advance(days=7, minutes=1)
    async with start_relay(upstream.port, DSN_CONFIG):
        await eventually(_no_unmatched(db))  # no bounce was sent to this relay


def _no_unmatched(db: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not await _unmatched(db)

    return check
