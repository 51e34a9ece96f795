"""A delivery that raises something unexpected fails that delivery after bounded attempts
and never blocks the rest of the queue.

Two triggers:

* a bug: ``BOUNCE_RELAY_RAISE_AT=delivery.send=<recipient>`` makes every send to one
  recipient raise (relay/faults.py). The real trigger found first, a non-ASCII sender
  without SMTPUTF8 (``UnicodeEncodeError`` in aiosmtplib), is refused at MAIL now and
  downgraded or failed permanently at delivery, so it no longer reaches the send;
* an upstream that answers in Latin-1: its reply text arrives with undecodable bytes,
  which the database cannot store as text.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.harness import (
    ChaosUpstream,
    Client,
    RelayProcess,
    body,
    free_port,
    half_written,
    record,
    relay_config,
    wait_settled,
)
from tests.support import pg

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

NORMAL = 30
BAD_SEQ = 1000


async def _send_raw(port: int, sender: bytes, rcpt: bytes, data: bytes) -> list[bytes]:
    """One transaction over a bare socket (what aiosmtplib will not send: UTF-8 in MAIL
    without SMTPUTF8); the replies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    for line in (b"EHLO client.test", b"MAIL FROM:<" + sender + b">", b"RCPT TO:<" + rcpt + b">"):
        writer.write(line + b"\r\n")
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
        replies.append(reply)
    writer.write(b"DATA\r\n")
    replies.append(await reader.readline())
    writer.write(data + b"\r\n.\r\n")
    replies.append(await reader.readline())
    writer.write(b"QUIT\r\n")
    await reader.readline()
    writer.close()
    return replies


async def test_relay_error_while_sending_is_bounded(
    pg_server: pg.TestServer, tmp_path: Path
) -> None:
    """A send that raises (a bug hitting one recipient): each attempt ends in a synthetic
    451 ("relay error while sending"), the retry rule gives up after its attempts, and the
    other messages, queued before and after it, are delivered meanwhile."""
    dsn = await pg_server.create_database()
    port = free_port()
    try:
        async with ChaosUpstream() as up:
            relay = RelayProcess(
                relay_config(
                    port, up.port, dsn, retry='schedule = ["1s"]\nmax_attempts = 3\nmax_age = "1h"'
                ),
                tmp_path,
                "relay",
            )
            await relay.start(raise_at="delivery.send=r-bad@example.org")
            client = Client(port)
            client.new(NORMAL // 2)
            await client.send_pending()
            replies = await _send_raw(
                port, b"joe@example.com", b"r-bad@example.org", body(BAD_SEQ).rstrip()
            )
            assert replies[-1].startswith(b"250"), replies
            client.new(NORMAL // 2)
            await client.send_pending()
            states = await wait_settled(dsn, timeout=60)
            await relay.stop()
        db = await asyncpg.connect(dsn)
        try:
            bad = await db.fetchrow(
                "SELECT d.id, d.state, d.attempts, d.last_reply FROM deliveries d"
                " WHERE d.recipient = 'r-bad@example.org'"
            )
            events = [
                r["type"]
                for r in await db.fetch(
                    "SELECT type FROM events WHERE delivery_id = $1 ORDER BY id", bad["id"]
                )
            ]
        finally:
            await db.close()
        broken = await half_written(dsn)
    finally:
        relay.kill()
        await pg_server.drop_database(dsn)
    lost = sorted(client.acked - set(up.received))
    record(
        "Delivery raises an unexpected exception (a bug injected into every send to one recipient)",
        "that delivery fails after the retry rule's attempts (a synthetic 451 each time); "
        "the rest of the queue is delivered meanwhile",
        f"the bad delivery: {bad['state']} after {bad['attempts']} attempts "
        f"({bad['last_reply']!r}); {len(up.received)} of {NORMAL} others delivered",
        accepted=NORMAL + 1,
        delivered=len(up.received),
        lost=len(lost),
        duplicated=up.duplicates(),
        bad_attempts=bad["attempts"],
    )
    assert not lost and len(up.received) == NORMAL
    assert bad["state"] == "expired" and bad["attempts"] == 3, dict(bad)
    assert "relay error while sending: InjectedFault" in bad["last_reply"]
    assert events == ["soft_bounce", "soft_bounce", "soft_bounce", "non_delivery"], events
    assert states == {"delivered": NORMAL, "expired": 1}
    assert not broken, broken


async def test_upstream_reply_in_latin1(pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Replies that are not UTF-8 (a 250 and a 550 in Latin-1) are recorded like any other,
    once: the delivery is not sent again, and the deliveries whose outcomes were written
    in the same batch are not held up by it."""
    dsn = await pg_server.create_database()
    port = free_port()
    rng = random.Random(3)
    latin1 = {n for n in range(NORMAL) if rng.random() < 0.3}
    refused = {n for n in latin1 if n % 2}
    behaviour_calls = {"data": 0}

    def on_data(seq: int) -> str | None:
        behaviour_calls["data"] += 1
        return "250 2.0.0 Message reçu, numéro de file d'attente à venir" if seq in latin1 else None

    def on_rcpt(address: str) -> str | None:
        seq = int(address.removeprefix("r").split("@")[0])
        return "550 5.1.1 Adresse inconnue: vérifiez le destinataire" if seq in refused else None

    try:
        async with ChaosUpstream() as up:
            up.behaviour.on_data = on_data
            up.behaviour.on_rcpt = on_rcpt
            relay = RelayProcess(
                relay_config(port, up.port, dsn, delivery="concurrency = 10"), tmp_path, "relay"
            )
            await relay.start()
            client = Client(port)
            client.new(NORMAL)
            await client.send_pending(clients=6)
            states = await wait_settled(dsn, timeout=30)
            await relay.stop()
        db = await asyncpg.connect(dsn)
        try:
            replies = await db.fetch(
                "SELECT last_reply FROM deliveries WHERE last_reply LIKE '%re_u%'"
                " OR last_reply LIKE '%v_rifiez%'"
            )
        finally:
            await db.close()
        broken = await half_written(dsn)
    finally:
        relay.kill()
        await pg_server.drop_database(dsn)
    delivered = NORMAL - len(refused)
    lost = sorted(client.acked - set(up.received) - refused)
    record(
        "Upstream replies in Latin-1 (bytes that are not UTF-8) to a 250 and a 550",
        "recorded once like any reply; no delivery sent twice; batch-mates unaffected",
        f"{states.get('delivered', 0)} delivered, {states.get('bounced', 0)} bounced of "
        f"{NORMAL}; {len(replies)} Latin-1 replies recorded; duplicated {up.duplicates()}",
        accepted=NORMAL,
        delivered=len(up.received),
        lost=len(lost),
        duplicated=up.duplicates(),
    )
    assert states == {"delivered": delivered, "bounced": len(refused)}, states
    assert not lost, lost
    assert up.duplicates() == 0
    assert len(replies) == len(latin1)
    assert not broken, broken
