"""A misbehaving upstream never gets mail recorded as delivered that it never received.

Each test talks to ``RawUpstream`` (tests/support/scripted.py), a hand-written SMTP server on
loopback that writes the exact bytes the test gives it: malformed lines, two replies to
one command, a line nobody asked for while the connection sits idle, no reply at all, a
250 to DATA. The relay must close such a connection (never pool it), record the
transaction as a soft, non-suppressing protocol failure, and send the next message on a
new connection. The end-to-end tests compare what the upstream actually received with
the delivery states in the database.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import trustme
import uvloop

from relay.config import DeliveryConfig
from relay.delivery.destinations import Destination
from relay.delivery.upstream import Transaction, Upstream
from tests.support.delivery import BODY, events_of, eventually, retry_due, send, state_of
from tests.support.scripted import Answer, RawUpstream
from tests.support.upstream_checks import SENDER
from tests.support.upstream_checks import assert_protocol_error as _assert_protocol_error
from tests.support.upstream_checks import send_through as _send


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    # Byte by byte: every reply line reaches the relay split over many reads, so the
    # in-step accounting is exercised across read boundaries in every test.
    async with RawUpstream(byte_by_byte=True) as server:
        yield server


@pytest.fixture
async def whole() -> AsyncIterator[RawUpstream]:
    """Each answer in one write: two replies to one command reach the relay in one read."""
    async with RawUpstream() as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    config = DeliveryConfig(
        connect_timeout=timedelta(seconds=2),
        command_timeout=timedelta(seconds=1),
        data_timeout=timedelta(seconds=30),
    )
    up = Upstream(config, "relay.test")
    yield up
    await up.close()


async def _assert_next_goes_on_a_new_connection(up: Upstream, raw: RawUpstream) -> None:
    """The message after a protocol error is sent on a connection of its own, and what
    the relay records for it is what the upstream received."""
    before = raw.connections
    result = await _send(up, raw, "next@example.org")
    assert result.replies["next@example.org"].code == 250
    assert raw.connection_of("next@example.org") == [before + 1]
    [got] = raw.delivered_to("next@example.org")
    assert (got.connection, got.body) == (before + 1, BODY)


@pytest.mark.parametrize(
    ("verb", "line"),
    [
        ("MAIL", b"hello, I am not an SMTP reply\r\n"),
        ("RCPT", b"2_50 2.1.5 OK\r\n"),  # int() in Python reads "2_50" as 250
        ("RCPT", b"250OK glued to its code\r\n"),
        (".", b"25O 2.0.0 queued\r\n"),
    ],
)
async def test_a_malformed_reply_line_is_a_protocol_error(upstream, raw, verb, line):
    """A line that is no SMTP reply: the transaction fails soft, the connection is closed."""
    raw.on(verb, line)
    result = await _send(upstream, raw, "a@example.org")
    _assert_protocol_error(result.replies["a@example.org"], "malformed")
    await _assert_next_goes_on_a_new_connection(upstream, raw)


@pytest.mark.parametrize("byte_by_byte", [False, True])
async def test_two_replies_to_one_rcpt_never_mark_the_message_delivered(upstream, byte_by_byte):
    """RCPT answered twice: the second 250 must not be read as the answer to DATA (the
    body would never be sent and the message recorded delivered). In one write it is
    seen right after the RCPT; written byte by byte it may still be arriving when DATA
    goes out and be read as DATA's reply, which is no 354."""
    async with RawUpstream(byte_by_byte=byte_by_byte) as raw:
        raw.on("RCPT", b"250 2.1.5 OK\r\n250 2.1.5 OK\r\n")
        result = await _send(upstream, raw, "a@example.org")
        reply = result.replies["a@example.org"]
        _assert_protocol_error(reply, *([] if byte_by_byte else ["after the reply to RCPT"]))
        assert raw.received == []
        await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_a_surplus_line_after_ehlo_is_caught_before_mail(upstream, whole):
    """EHLO answered with one reply line too many, in the same write: the line waits in
    aiosmtplib's buffer to be read as MAIL's reply. It is seen before MAIL is sent."""
    whole.on("EHLO", b"250-raw.test\r\n250 8BITMIME\r\n250 2.0.0 surplus\r\n")
    result = await _send(upstream, whole, "a@example.org")
    _assert_protocol_error(result.replies["a@example.org"], "before MAIL")
    assert [line for _, line in whole.commands if line.startswith("MAIL")] == []
    await _assert_next_goes_on_a_new_connection(upstream, whole)


async def test_a_protocol_error_in_a_second_transaction_keeps_the_first_delivered(upstream, whole):
    """Too many recipients: b goes in a second transaction on the same connection, whose
    RCPT is answered twice. a, delivered in step by the first, stays delivered; b gets
    the protocol error, and only b is spared any suppression."""
    whole.on(
        "RCPT",
        b"250 2.1.5 OK\r\n",
        b"452 4.5.3 Too many recipients\r\n",
        b"250 2.1.5 OK\r\n250 2.1.5 OK\r\n",
    )
    result = await _send(upstream, whole, "a@example.org", "b@example.org")
    assert result.replies["a@example.org"].code == 250
    _assert_protocol_error(result.replies["b@example.org"], "RCPT")
    assert result.spared == {"b@example.org"}
    assert [r.recipients for r in whole.received] == [["a@example.org"]]


async def test_a_surplus_reply_after_the_data_is_not_read_by_the_next_transaction(upstream, whole):
    """Two replies to the end of data in one write: the connection is out of step. The
    message is resent (an ack with a surplus line is not trusted), and the next message
    never reads the stale 250 as its own reply (it goes on a new connection and arrives)."""
    whole.on(".", b"250 2.0.0 queued\r\n250 2.0.0 queued again\r\n")
    result = await _send(upstream, whole, "a@example.org")
    _assert_protocol_error(result.replies["a@example.org"], "more than commands sent")
    await _assert_next_goes_on_a_new_connection(upstream, whole)


async def test_a_line_sent_while_the_connection_was_idle_keeps_it_out_of_the_pool(upstream, raw):
    """Two messages share one connection (replies split byte by byte are no alarm); then
    an unsolicited line arrives after a delivery, while the connection waits in the pool:
    it is never reused, and the next message opens a new connection."""
    for n in range(2):
        result = await _send(upstream, raw, f"ok{n}@example.org")
        assert result.replies[f"ok{n}@example.org"].code == 250
    assert [r.connection for r in raw.received] == [1, 1]
    raw.on(".", Answer(b"250 2.0.0 queued\r\n", later=b"250 2.0.0 surplus\r\n", delay=0.05))
    result = await _send(upstream, raw, "a@example.org")
    assert result.replies["a@example.org"].code == 250  # acknowledged while in step
    assert [r.connection for r in raw.delivered_to("a@example.org")] == [1]
    await raw.settled()
    await asyncio.sleep(0.05)  # the line crosses loopback to the idle connection
    await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_a_missing_reply_to_data_times_out_on_the_command_timeout(upstream, raw):
    """DATA answered by silence: the transaction ends after command_timeout (1 s), not
    data_timeout (30 s, which is for the end of the data), as a soft failure."""
    raw.on("DATA", Answer(b""))
    result = await _send(upstream, raw, "a@example.org")
    reply = result.replies["a@example.org"]
    assert (reply.code, reply.synthetic) == (421, True)
    assert "timed out" in reply.text
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


@pytest.mark.parametrize(
    "answer",
    [
        b"250 2.0.0 OK\r\n",
        b"220 2.0.0 go on\r\n",
        b"554 5.7.1 not now\r\n",
    ],
)
async def test_anything_but_354_to_data_is_a_protocol_error(upstream, raw, answer):
    """A 2xx (or anything else) to DATA instead of 354: no body was sent, nothing is
    delivered; a soft protocol failure and the connection is closed."""
    raw.on("DATA", answer)
    result = await _send(upstream, raw, "a@example.org")
    code = answer[:3].decode()
    _assert_protocol_error(result.replies["a@example.org"], f"DATA answered {code}, not 354")
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_a_2xx_and_a_354_to_data_is_a_protocol_error(upstream, raw):
    """250 then 354 to one DATA: two replies; the message is not sent on that connection."""
    raw.on("DATA", b"250 2.0.0 OK\r\n354 go ahead\r\n")
    result = await _send(upstream, raw, "a@example.org")
    _assert_protocol_error(result.replies["a@example.org"], "DATA")
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_a_354_to_mail_is_a_protocol_error(upstream, raw):
    """MAIL answered 354 (a reply MAIL cannot have): soft protocol failure, closed."""
    raw.on("MAIL", b"354 go ahead\r\n")
    result = await _send(upstream, raw, "a@example.org")
    _assert_protocol_error(result.replies["a@example.org"], "MAIL answered 354")
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_replies_are_counted_over_starttls_on_either_event_loop(loop):
    """The reply counter sits in front of aiosmtplib on the production loop (uvloop) as on
    asyncio's, and again after STARTTLS (a new transport): a line sent to an idle TLS
    connection keeps it out of the pool. After STARTTLS the relay asks EHLO again, so it
    knows the server takes 8-bit mail (and no EHLO slips in before MAIL uncounted)."""
    run = uvloop.run if loop == "uvloop" else asyncio.run
    run(_idle_line_over_tls())


async def _idle_line_over_tls() -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    up = Upstream(DeliveryConfig(command_timeout=timedelta(seconds=1)), "relay.test")
    eight_bit = BODY.replace(b"hello", "grüße".encode())
    try:
        async with RawUpstream(tls=context) as raw:
            destination = Destination("127.0.0.1", raw.port)  # STARTTLS when offered
            raw.on(".", Answer(b"250 2.0.0 queued\r\n", later=b"250 2.0.0 surplus\r\n"))
            for recipient in ("a@example.org", "b@example.org"):
                transaction = Transaction(SENDER, (recipient,), eight_bit)
                result = await asyncio.wait_for(up.send([destination], "127.0.0.1", transaction), 5)
                assert result.replies[recipient].code == 250, result.replies
                await raw.settled()
                await asyncio.sleep(0.05)  # the line crosses loopback to the idle connection
            got = [(r.recipients, r.connection, r.body) for r in raw.received]
            assert got == [(["a@example.org"], 1, eight_bit), (["b@example.org"], 2, eight_bit)]
            assert raw.tls_sessions == 2
    finally:
        await up.close()


# -- end to end: the worker, a real store, what the upstream received ---------------------


async def _delivered_in_db(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT recipient_key FROM deliveries WHERE state = 'delivered'")
    return {r["recipient_key"] for r in rows}


def _received(raw: RawUpstream) -> set[str]:
    return {r for got in raw.received for r in got.recipients}


async def _settled(db: asyncpg.Connection, *recipients: str) -> bool:
    """Whether every one of ``recipients`` has an outcome recorded."""
    for r in recipients:
        if await state_of(db, r) == "inflight" or not await events_of(db, r):
            return False
    return True


@pytest.mark.parametrize(
    ("verb", "answer", "byte_by_byte"),
    [
        ("RCPT", b"250 2.1.5 OK\r\n250 2.1.5 OK\r\n", True),  # read as the reply to DATA
        (".", b"250 2.0.0 queued\r\n250 2.0.0 queued\r\n", False),  # read by the next one
    ],
)
async def test_no_delivery_is_recorded_that_the_upstream_never_received(
    start_relay, db, clock, verb, answer, byte_by_byte
):
    """Two replies to one command, then a second message: every delivery the database
    calls delivered is one the upstream acknowledged receiving; the one caught in the
    protocol error is a soft, non-suppressing bounce and is delivered on its retry."""
    async with RawUpstream(byte_by_byte=byte_by_byte) as raw:
        raw.on(verb, answer)
        async with start_relay(raw.port) as relay:
            await send(relay, ["first@example.org"])
            await eventually(lambda: _settled(db, "first@example.org"))
            assert await _delivered_in_db(db) <= _received(raw)
            await send(relay, ["second@example.org"])
            await eventually(lambda: _settled(db, "second@example.org"))
            assert await _delivered_in_db(db) <= _received(raw)
            assert await state_of(db, "first@example.org") == "queued"
            assert await state_of(db, "second@example.org") == "delivered"
            await retry_due(relay, clock, hours=1)
            await eventually(lambda: _all_delivered(db, "first@example.org"))
        assert await _delivered_in_db(db) <= _received(raw)
    [bounce, delivered] = await events_of(db, "first@example.org")
    assert (bounce["type"], bounce["code"], bounce["enhanced"], bounce["synthetic"]) == (
        "soft_bounce",
        451,
        "4.5.0",
        True,
    )
    assert "protocol error" in bounce["reply_text"]
    assert delivered["type"] == "delivered"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def _all_delivered(db: asyncpg.Connection, *recipients: str) -> bool:
    return all([await state_of(db, r) == "delivered" for r in recipients])


async def test_a_250_to_data_is_never_recorded_delivered(start_relay, db, clock):
    """The upstream answers DATA with 250 and gets no body: the delivery is a soft
    protocol failure, not delivered; its retry goes on a new connection and arrives."""
    async with RawUpstream(byte_by_byte=True) as raw:
        raw.on("DATA", b"250 2.0.0 OK\r\n")
        async with start_relay(raw.port) as relay:
            await send(relay, ["data@example.org"])
            await eventually(lambda: _settled(db, "data@example.org"))
            assert await state_of(db, "data@example.org") == "queued"
            assert raw.received == []
            await retry_due(relay, clock, hours=1)
            await eventually(lambda: _all_delivered(db, "data@example.org"))
        [got] = raw.received
        assert (got.recipients, got.connection) == (["data@example.org"], 2)
    [bounce, _] = await events_of(db, "data@example.org")
    assert bounce["category"] == "connection_failed"
    assert "DATA answered 250, not 354" in bounce["reply_text"]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
