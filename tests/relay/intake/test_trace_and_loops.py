"""The relay's own trace header (RFC 5321 §4.4) and the mail loops it ends (§6.3).

Every message the relay accepts is stored with one ``Received:`` field of ours in front
of the bytes the client sent; a message that arrives with ``[smtp] max_hops`` or more
``Received:`` fields is refused 554 5.4.6. A route pointing back at the relay itself then
ends after ``max_hops`` passes with one hard bounce, and suppresses nobody.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest

from policies.headers import count_received
from relay.config import load_config
from relay.ops.app import Relay
from tests.support.delivery import eventually
from tests.support.scripted import FakeClock

MESSAGE = b"From: app@example.com\r\nSubject: hello\r\n\r\nHello there.\r\n"

# Our field, as RFC 5321 §4.4 and RFC 3848 have it, folded at its clauses.
TRACE = re.compile(
    rb"Received: from (?P<helo>\S+) \((?P<tcp>[^)]*)\)\r\n"
    rb"\tby relay\.test with (?P<protocol>E?SMTPS?A?) id (?P<id>[0-9A-F]{16})"
    rb"(?:\r\n\tfor <(?P<rcpt>[^>]*)>)?;\r\n"
    rb"\t(?P<date>[^\r\n]+)\r\n"
)

CONFIG = """
[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
allowed_clients = ["127.0.0.0/8"]
{smtp}

[admin]
listen = "127.0.0.1:0"

[delivery]
enabled = false
"""


@pytest.fixture
def relay_with(db_dsn: str, write_config: Callable[..., Path]) -> Callable[..., object]:
    @asynccontextmanager
    async def start(smtp: str = "") -> AsyncIterator[Relay]:
        config = load_config(write_config(CONFIG.format(smtp=smtp), replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            yield relay

    return start


async def _stored(db: asyncpg.Connection) -> list[bytes]:
    return [bytes(r["body"]) for r in await db.fetch("SELECT body FROM messages ORDER BY id")]


def _trace(body: bytes) -> re.Match[bytes]:
    """Our Received field at the very start of ``body``."""
    match = TRACE.match(body)
    assert match is not None, body[:400]
    return match


async def _raw(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line (with its CRLF) and read the reply's last line; the first is 220."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        async with asyncio.timeout(5):
            replies.append(await reader.readline())
            for line in lines:
                writer.write(line + b"\r\n")
                while (reply := await reader.readline())[3:4] == b"-":
                    pass
                replies.append(reply)
    finally:
        writer.close()
    return replies


async def test_the_stored_message_is_our_received_field_then_the_bytes_sent(relay_with, db):
    """One recipient: "from <EHLO> ([addr]) by <hostname> with ESMTP id <queue id> for
    <rcpt>; <date>", folded at its clauses, then the message exactly as it was sent."""
    async with relay_with() as relay:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=relay.port, start_tls=False, local_hostname="client.test"
        )
        await client.connect()
        _, reply = await client.sendmail("s@example.com", ["R@example.org"], MESSAGE)
        await client.quit()
    [body] = await _stored(db)
    trace = _trace(body)
    assert body[trace.end() :] == MESSAGE
    assert (trace["helo"], trace["tcp"], trace["protocol"]) == (
        b"client.test",
        b"[127.0.0.1]",
        b"ESMTP",
    )
    assert trace["id"].decode() == reply.rsplit(" ", 1)[1]
    assert trace["rcpt"] == b"R@example.org"
    date = parsedate_to_datetime(trace["date"].decode())
    assert abs(date - datetime.now(UTC)) < timedelta(minutes=5)
    assert count_received(body) == 1
    parsed = message_from_bytes(body)
    assert parsed["Subject"] == "hello"
    assert len(parsed.get_all("Received") or []) == 1
    assert max(len(line) for line in body.split(b"\r\n")) <= 78


async def test_several_recipients_are_not_named_and_helo_says_smtp(relay_with, db):
    """No "for" clause with two recipients (a Bcc would show otherwise); a HELO client is
    "with SMTP" (RFC 5321 §4.4), an EHLO one "with ESMTP"."""
    async with relay_with() as relay:
        replies = await _raw(
            relay.port,
            [
                b"HELO old.client.test",
                b"MAIL FROM:<s@example.com>",
                b"RCPT TO:<a@example.org>",
                b"RCPT TO:<b@example.org>",
                b"DATA",
                MESSAGE + b".",
            ],
        )
    assert replies[-1].startswith(b"250 2.0.0")
    [body] = await _stored(db)
    trace = _trace(body)
    assert (trace["helo"], trace["protocol"], trace["rcpt"]) == (b"old.client.test", b"SMTP", None)
    assert body[trace.end() :] == MESSAGE


HOSTILE_EHLO = {
    "control-char": b"evil.example\x01",
    "escape-sequence": b"\x1b[31mred.example",
    "bare-cr": b"a\rReceived: from forged.example",
    "nul": b"evil\x00.example",
    "comment-and-clauses": b"evil.example (forged.example [192.0.2.9]) by mx.victim.example",
    "semicolon": b"evil.example;Mon, 1 Jan 2024",
    "label-over-63": b"a" * 64 + b".example",
    "name-over-255": b".".join([b"a" * 63] * 5),
    "non-ascii": "hôst.example".encode(),
    "invalid-utf8": b"h\xffst.example",
    "bad-literal": b"[999.1.1.1]",
    "not-a-literal": b"[evil]",
    "leading-hyphen": b"-evil.example",
}


@pytest.mark.parametrize("helo", HOSTILE_EHLO.values(), ids=HOSTILE_EHLO.keys())
async def test_a_hostile_ehlo_name_never_reaches_the_header(relay_with, db, helo):
    """Whatever the client calls itself, our field names it only when it is a well-formed
    domain or address literal; otherwise the client's own address literal stands in. The
    field stays one field: no line break, control character or clause of the client's."""
    async with relay_with() as relay:
        replies = await _raw(
            relay.port,
            [
                b"EHLO " + helo,
                b"MAIL FROM:<s@example.com>",
                b"RCPT TO:<r@example.org>",
                b"DATA",
                MESSAGE + b".",
            ],
        )
    assert replies[-1].startswith(b"250 2.0.0"), replies
    [body] = await _stored(db)
    trace = _trace(body)
    assert (trace["helo"], trace["tcp"]) == (b"[127.0.0.1]", b"[127.0.0.1]")
    assert body[trace.end() :] == MESSAGE
    assert count_received(body) == 1


@pytest.mark.parametrize("helo", [b"[127.0.0.1]", b"[IPv6:::1]", b"mail-01.client.example"])
async def test_a_well_formed_ehlo_name_is_kept(relay_with, db, helo):
    """Domains and address literals (RFC 5321 §4.1.3) are named as the client gave them."""
    async with relay_with() as relay:
        await _raw(
            relay.port,
            [
                b"EHLO " + helo,
                b"MAIL FROM:<s@example.com>",
                b"RCPT TO:<r@example.org>",
                b"DATA",
                MESSAGE + b".",
            ],
        )
    [body] = await _stored(db)
    assert _trace(body)["helo"] == helo


def _with_hops(n: int) -> bytes:
    return (
        b"".join(
            b"Received: from hop%d.example ([192.0.2.%d])\r\n\tby other.example; "
            b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
            for i in range(n)
        )
        + MESSAGE
    )


async def test_our_field_counts_toward_max_hops(relay_with, db):
    """max_hops = 5: four Received fields arrive and five are stored (ours on top); five
    arrive and the message is refused 554 5.4.6 (RFC 3463: routing loop detected)."""
    async with relay_with("max_hops = 5") as relay:
        transaction = [b"EHLO client.test", b"MAIL FROM:<s@example.com>", b"RCPT TO:<r@x.org>"]
        ok = await _raw(relay.port, [*transaction, b"DATA", _with_hops(4) + b"."])
        looped = await _raw(relay.port, [*transaction, b"DATA", _with_hops(5) + b"."])
    assert ok[-1].startswith(b"250 2.0.0")
    assert looped[-1] == b"554 5.4.6 Too many hops (mail loop?)\r\n"
    [body] = await _stored(db)
    assert count_received(body) == 5
    assert body[_trace(body).end() :] == _with_hops(4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOOP_CONFIG = """
[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.test"
allowed_clients = ["127.0.0.0/8"]
max_hops = 5

[[pools]]
name = "default"
source_ips = ["127.0.0.1"]

[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{port}"]

[retry]
schedule = ["1h"]
spread = 0

[admin]
listen = "127.0.0.1:0"

[delivery]
poll_interval = "1s"
connect_timeout = "5s"
command_timeout = "10s"
"""


async def test_a_route_back_to_the_relay_itself_ends_after_max_hops_passes(
    db_dsn, write_config, clock: FakeClock, db
):
    """The static route points at the relay's own port: each pass stores one more copy with
    one more Received field of ours, until the fifth copy's delivery hears the relay itself
    refuse it 554 5.4.6. Five copies, not thousands; one hard bounce (a routing loop is no
    fault of the recipient's: nobody is suppressed)."""
    port = _free_port()
    config = load_config(write_config(LOOP_CONFIG.format(port=port), replace_base=True))

    async def bounced() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events WHERE type = 'hard_bounce'"))

    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", port), clock=clock) as relay:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        await client.sendmail("s@example.com", ["loop@example.org"], MESSAGE)
        await client.quit()
        await eventually(bounced, timeout=20)
        assert relay.worker is not None
        await relay.worker.run_once()  # nothing is left to send
    # Bodies are released once delivered or bounced: the rows are what is left to count.
    assert await db.fetchval("SELECT count(*) FROM messages") == 5
    states = await db.fetch("SELECT state FROM deliveries ORDER BY id")
    assert [s["state"] for s in states] == ["delivered"] * 4 + ["bounced"]
    [bounce] = await db.fetch("SELECT * FROM events WHERE type = 'hard_bounce'")
    assert (bounce["code"], bounce["enhanced"], bounce["suppress"]) == (554, "5.4.6", False)
    assert bounce["recipient"] == "loop@example.org"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    status = await db.fetchval("SELECT status FROM profiles WHERE address = 'loop@example.org'")
    assert status in (None, "active")
