"""SMTP intake against a real relay on loopback and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import asyncpg
import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from relay.config import Config
from relay.intake.server import RelaySMTP
from relay.ops.app import Relay
from tests.support.delivery import after_our_received
from tests.support.pg import database_unreachable

MESSAGE = (
    b"From: Newsletter <news@Mail.Example.COM>\r\n"
    b"To: someone@example.org\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <abc123@mail.example.com>\r\n"
    b"X-Campaign-ID: spring-sale\r\n"
    b"\r\n"
    b"Hello there.\r\n"
)


@pytest.fixture
def start_relay(db_dsn: str, make_config: Callable[..., Config]) -> Callable[..., object]:
    @asynccontextmanager
    async def start(extra: str = "") -> AsyncIterator[Relay]:
        config = make_config(extra + "\n[delivery]\nenabled = false\n")
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            yield relay

    return start


async def _client(relay: Relay, **kwargs: Any) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False, **kwargs)
    await client.connect()
    return client


async def _db(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def test_three_recipients_stored_with_campaign_and_from_domain(start_relay, db_dsn):
    """One message to three recipients: one message row, three queued deliveries, one event."""
    async with start_relay() as relay:
        client = await _client(relay)
        errors, reply = await client.sendmail(
            "sender@mail.example.com", ["a@example.org", "B@Example.ORG", "c@example.net"], MESSAGE
        )
        await client.quit()
    assert errors == {}
    assert reply.startswith("2.0.0 OK queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    conn = await _db(db_dsn)
    try:
        msg = await conn.fetchrow("SELECT * FROM messages WHERE queue_id = $1", queue_id)
        assert msg["campaign"] == "spring-sale"
        assert msg["from_domain"] == "mail.example.com"
        assert msg["message_id"] == "<abc123@mail.example.com>"
        assert msg["envelope_sender"] == "sender@mail.example.com"
        assert after_our_received(bytes(msg["body"])) == MESSAGE
        assert b"\tfor <" not in bytes(msg["body"])  # three recipients: none is named
        rows = await conn.fetch(
            "SELECT recipient, recipient_key, recipient_domain, state FROM deliveries "
            "WHERE message_id = $1 ORDER BY id",
            msg["id"],
        )
        assert [(r["recipient_key"], r["recipient_domain"], r["state"]) for r in rows] == [
            ("a@example.org", "example.org", "queued"),
            ("b@example.org", "example.org", "queued"),
            ("c@example.net", "example.net", "queued"),
        ]
        assert rows[1]["recipient"] == "B@Example.ORG"
        events = await conn.fetch("SELECT type, queue_id, campaign FROM events")
        assert [(e["type"], e["queue_id"], e["campaign"]) for e in events] == [
            ("accepted", queue_id, "spring-sale")
        ]
    finally:
        await conn.close()


async def test_suppressed_recipient_refused_others_accepted(start_relay, db_dsn):
    """RCPT to a suppressed address (any case) gets 550 5.7.1; the rest are queued."""
    async with start_relay() as relay:
        await relay.store.add_suppression("gone@example.org", "user unknown", "manual")
        client = await _client(relay)
        await client.ehlo()
        await client.mail("sender@mail.example.com")
        ok = await client.rcpt("ok@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("Gone@EXAMPLE.org")
        data = await client.data(MESSAGE)
        await client.quit()
    assert ok.code == 250
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1 ")
    assert "suppression list" in refused.value.message
    assert data.code == 250
    conn = await _db(db_dsn)
    try:
        rows = await conn.fetch("SELECT recipient_key FROM deliveries")
        keys = [r["recipient_key"] for r in rows]
        assert keys == ["ok@example.org"]
        event = await conn.fetchrow("SELECT * FROM events WHERE type = 'rejected_suppressed'")
        assert event["recipient"] == "gone@example.org"
        assert event["code"] == 550
    finally:
        await conn.close()


@pytest.fixture
def start_relay_with(db_dsn: str, write_config) -> Callable[..., object]:
    from relay.config import load_config

    @asynccontextmanager
    async def start(config_text: str) -> AsyncIterator[Relay]:
        config = load_config(write_config(config_text, replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            yield relay

    return start


ONLY_LOCALHOST = """
[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
allowed_clients = ["127.0.0.1/32"]
[delivery]
enabled = false
[admin]
listen = "127.0.0.1:0"
"""


async def test_client_not_allowed_gets_5xx_and_nothing_is_stored(start_relay_with, db_dsn):
    """Bound to 127.0.0.2 with only 127.0.0.1 allowed: MAIL is refused with 550 5.7.1."""
    async with start_relay_with(ONLY_LOCALHOST) as relay:
        outsider = await _client(relay, source_address=("127.0.0.2", 0))
        await outsider.ehlo()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await outsider.mail("spammer@example.com")
        await outsider.quit()
        insider = await _client(relay, source_address=("127.0.0.1", 0))
        _, reply = await insider.sendmail("a@example.com", ["b@example.org"], MESSAGE)
        await insider.quit()
    assert refused.value.code == 550
    assert "Relaying denied" in refused.value.message
    assert reply.startswith("2.0.0")
    conn = await _db(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await conn.close()


async def test_database_unreachable_answers_451_and_writes_nothing(start_relay, db_dsn):
    """With the database gone at DATA the client hears 451 4.3.0; no row is half-written."""
    async with start_relay() as relay:
        client = await _client(relay)
        await client.ehlo()
        await client.mail("sender@example.com")
        await client.rcpt("rcpt@example.org")
        async with database_unreachable(db_dsn):
            with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                await client.data(MESSAGE)
            # RCPT needs the database too (suppression check): 451 as well.
            await client.rset()
            await client.mail("sender@example.com")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as rcpt_failed:
                await client.rcpt("rcpt@example.org")
        # Once the database is back the relay recovers without a restart.
        await client.rset()
        _, reply = await client.sendmail("sender@example.com", ["rcpt@example.org"], MESSAGE)
        await client.quit()
    assert failed.value.code == 451
    assert failed.value.message.startswith("4.3.0 ")
    assert "asyncpg" not in failed.value.message.lower()
    assert rcpt_failed.value.code == 451
    assert reply.startswith("2.0.0")
    conn = await _db(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await conn.close()


async def test_oversize_message_gets_552(start_relay, db_dsn):
    """Over max_message_size: 552 5.3.4, whether announced with SIZE or not."""
    big = MESSAGE + (b"x" * 998 + b"\r\n") * 1100
    async with start_relay() as relay:
        client = await _client(relay)
        await client.ehlo()
        assert "size" in client.esmtp_extensions
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as announced:
            await client.mail("s@example.com", options=[f"SIZE={len(big)}"])
        await client.rset()
        await client.mail("s@example.com")
        await client.rcpt("r@example.org")
        with pytest.raises(aiosmtplib.SMTPDataError) as sent:
            await client.data(big)
        await client.quit()
    assert (announced.value.code, announced.value.message[:5]) == (552, "5.3.4")
    assert (sent.value.code, sent.value.message[:5]) == (552, "5.3.4")
    conn = await _db(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()


async def test_malformed_address_and_too_many_recipients(start_relay):
    """A malformed RCPT gets 501 5.1.3; past max_recipients 452 4.5.3."""
    async with start_relay() as relay:
        client = await _client(relay)
        await client.ehlo()
        await client.mail("s@example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as bad:
            await client.rcpt("bad..dots@example.org")
        for i in range(50):
            await client.rcpt(f"r{i}@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as too_many:
            await client.rcpt("r50@example.org")
        await client.quit()
    assert (bad.value.code, bad.value.message[:5]) == (501, "5.1.3")
    assert (too_many.value.code, too_many.value.message[:5]) == (452, "4.5.3")


@pytest.mark.parametrize("path", ['<">', "<1@[>"])
async def test_a_path_that_crashes_the_address_grammar_is_a_syntax_error(start_relay, path):
    """The email package's parser raises on these; the client hears 501/553 5.1.3, not 451."""
    async with start_relay() as relay:
        client = await _client(relay)
        await client.ehlo()
        await client.mail("s@example.com")
        code, message = await client.execute_command(f"RCPT TO:{path}".encode())
        await client.quit()
    assert code in (501, 553)
    assert message.startswith("5.1.3")


async def test_smtputf8_and_8bit_bodies_stored_byte_exact(start_relay, db_dsn):
    """8BITMIME and SMTPUTF8 are accepted; the stored body is our Received field (naming
    the UTF-8 recipient, as RFC 6532 allows in such a message), then the bytes sent."""
    body = (
        "From: José <jose@exämple.com>\r\nSubject: ¡hola!\r\n\r\nÜnïcödé \xff\r\n"
    ).encode() + b"raw \xfe\xff bytes\r\n"
    async with start_relay() as relay:
        client = await _client(relay)
        await client.ehlo()
        assert "8bitmime" in client.esmtp_extensions
        assert "smtputf8" in client.esmtp_extensions
        _, reply = await client.sendmail(
            "jösé@exämple.com",
            ["ünï@exämple.org"],
            body,
            mail_options=["BODY=8BITMIME", "SMTPUTF8"],
        )
        await client.quit()
    conn = await _db(db_dsn)
    try:
        row = await conn.fetchrow("SELECT body, smtputf8, from_domain FROM messages")
        assert after_our_received(bytes(row["body"])) == body
        assert "\tfor <ünï@exämple.org>;\r\n".encode() in bytes(row["body"])
        assert row["smtputf8"] is True
        assert row["from_domain"] == "xn--exmple-cua.com"
        key = await conn.fetchval("SELECT recipient_key FROM deliveries")
        assert key == "ünï@xn--exmple-cua.org"
    finally:
        await conn.close()
    assert reply.startswith("2.0.0")


async def test_fifty_concurrent_clients_every_250_has_its_rows(start_relay, db_dsn):
    """50 clients x 20 messages at once: each 250's queue id is stored once, with its delivery."""

    async def one_client(n: int, relay: Relay) -> list[str]:
        client = await _client(relay)
        ids = []
        for i in range(20):
            _, reply = await client.sendmail(
                f"s{n}@example.com", [f"r{n}.{i}@example.org"], MESSAGE
            )
            ids.append(reply.rsplit(" ", 1)[1])
        await client.quit()
        return ids

    async with start_relay() as relay:
        results = await asyncio.gather(*(one_client(n, relay) for n in range(50)))
    queue_ids = [q for ids in results for q in ids]
    assert len(queue_ids) == 1000
    assert len(set(queue_ids)) == 1000
    conn = await _db(db_dsn)
    try:
        stored = await conn.fetch(
            "SELECT m.queue_id, count(d.id) AS n FROM messages m JOIN deliveries d "
            "ON d.message_id = m.id GROUP BY m.queue_id"
        )
        assert {r["queue_id"] for r in stored} == set(queue_ids)
        assert all(r["n"] == 1 for r in stored)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'accepted'") == 1000
    finally:
        await conn.close()


async def test_accepted_message_is_logged_with_queue_id_and_session(start_relay):
    """The accepted line carries queue id, sender, recipient count, campaign and the session."""
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with start_relay() as relay:
            client = await _client(relay)
            _, reply = await client.sendmail(
                "s@example.com", ["a@example.org", "b@example.org"], MESSAGE
            )
            await client.quit()
            await asyncio.sleep(0.05)  # let the server see the QUIT and close the session
    queue_id = reply.rsplit(" ", 1)[1]
    accepted = [e for e in logs if e["event"] == "intake.accepted"]
    assert len(accepted) == 1
    line = accepted[0]
    assert line["queue_id"] == queue_id
    assert line["sender"] == "s@example.com"
    assert line["recipients"] == 2
    assert line["campaign"] == "spring-sale"
    assert line["session_id"]
    closed = [e for e in logs if e["event"] == "intake.session_closed"]
    assert closed and closed[0]["session_id"] == line["session_id"]
    assert closed[0]["accepted"] == 1


async def test_shutdown_lets_open_transactions_finish_and_tells_new_clients_421(
    db_dsn, make_config
):
    """On shutdown a session mid-DATA still gets its 250 (and its message is stored), while a
    new connection hears 421 4.3.2."""
    async with asyncio.timeout(60):  # a hang is a failure, not a stuck CI
        await _shutdown_mid_data(db_dsn, make_config)


async def _shutdown_mid_data(db_dsn, make_config) -> None:
    config = make_config("[delivery]\nenabled = false\n")
    relay_cm = Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0))
    relay = await relay_cm.__aenter__()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    await reader.readline()
    for command in (
        b"EHLO client.test",
        b"MAIL FROM:<s@example.com>",
        b"RCPT TO:<r@example.org>",
        b"DATA",
    ):
        writer.write(command + b"\r\n")
        while True:
            line = await reader.readline()
            if line[3:4] == b" ":
                break
    assert line.startswith(b"354")
    writer.write(b"Subject: half way\r\n\r\nstill typing")
    await writer.drain()
    stopping = asyncio.create_task(relay_cm.__aexit__(None, None, None))
    await asyncio.sleep(0.2)
    late_reader, late_writer = await asyncio.open_connection("127.0.0.1", relay.port)
    greeting = await late_reader.readline()
    late_writer.close()
    writer.write(b"\r\n.\r\n")
    reply = await reader.readline()
    writer.close()
    await stopping
    assert greeting.startswith(b"421 4.3.2")
    assert reply.startswith(b"250 2.0.0")
    conn = await _db(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await conn.close()


async def test_refuses_to_start_when_commits_would_not_be_durable(db_dsn, make_config):
    """synchronous_commit off (here for this database only): the relay will not start."""
    from relay.errors import UnsafeDatabase

    name = urlsplit(db_dsn).path.lstrip("/")
    conn = await _db(db_dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()
    with pytest.raises(UnsafeDatabase, match="synchronous_commit=off"):
        async with Relay(make_config(), dsn=db_dsn, listen=("127.0.0.1", 0)):
            pass


_PATH_TEXT = st.text(alphabet='ab.-+_@<> \t"\\()[]:é=1S', max_size=30)


@settings(max_examples=500, deadline=None)
@given(_PATH_TEXT)
@example("1@1>(")  # a comment after the path: aiosmtpd's grammar swallows it
def test_the_fast_path_parser_reads_paths_exactly_as_aiosmtpd(arg):
    """RelaySMTP reads plain "<local@domain>" paths itself (hot path); whatever it takes, it
    must read exactly as aiosmtpd's own parser would; where that parser crashes (it does on
    '"'), ours says "not an address" instead."""
    loop = asyncio.new_event_loop()
    try:
        ours = RelaySMTP(object(), loop=loop)
        stock = SMTP(object(), loop=loop)
        for path in (arg, f"<{arg}>", "<a@b.example>", f"<x.{arg}@b.example> SIZE=1"):
            try:
                expected = stock._getaddr(path)
            except Exception:
                expected = (None, None)
            assert ours._getaddr(path) == expected
    finally:
        loop.close()
