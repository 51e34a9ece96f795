"""PIPELINING (RFC 2920): MAIL, every RCPT and DATA of a transaction go out in one batch.

Each test talks to ``RawUpstream(pipelining=True)`` (tests/support/scripted.py), which
advertises PIPELINING. With ``hold_until_data`` it answers none of MAIL, RCPT and DATA
until it has read DATA: a relay that waits for the reply to MAIL before it sends RCPT
never gets one, so a delivery through such a server proves the relay pipelines. The
replies of a batch are paired with its commands in order; a batch out of step (a
surplus line, a malformed one, a missing reply) never marks mail delivered, as without
pipelining (test_upstream_protocol.py). ``relay/delivery/upstream.py`` explains the rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import trustme
import uvloop

from policies.classify import Kind, classify
from policies.smtp_reply import Reply
from relay.config import DeliveryConfig
from relay.delivery.destinations import Destination
from relay.delivery.upstream import Transaction, Upstream
from tests.support.delivery import BODY
from tests.support.scripted import Answer, RawUpstream
from tests.support.upstream_checks import SENDER
from tests.support.upstream_checks import assert_protocol_error as _assert_protocol_error
from tests.support.upstream_checks import send_through as _send

# Recipient names that are no substring of one another (RawUpstream.connection_of).
FIRST, SECOND, THIRD, NEXT = (f"{n}@example.org" for n in ("first", "second", "third", "next"))


def _config() -> DeliveryConfig:
    return DeliveryConfig(
        connect_timeout=timedelta(seconds=2),
        command_timeout=timedelta(seconds=1),
        data_timeout=timedelta(seconds=30),
    )


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    """Every reply written byte by byte: a batch's replies reach the relay over many reads."""
    async with RawUpstream(pipelining=True, byte_by_byte=True) as server:
        yield server


@pytest.fixture
async def whole() -> AsyncIterator[RawUpstream]:
    """Each answer in one write: several replies of a batch may arrive in one read."""
    async with RawUpstream(pipelining=True) as server:
        yield server


@pytest.fixture(params=[False, True], ids=["whole", "byte_by_byte"])
async def holding(request: pytest.FixtureRequest) -> AsyncIterator[RawUpstream]:
    """Answers MAIL, RCPT and DATA only once it has read DATA, all in one write (or
    byte by byte): only a relay that pipelines gets a reply."""
    async with RawUpstream(
        pipelining=True, hold_until_data=True, byte_by_byte=request.param
    ) as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(_config(), "relay.test")  # pipelining: the default
    yield up
    await up.close()


def _assert_soft_synthetic(reply: Reply) -> None:
    """What the relay records when the server stopped answering: ours, soft, sparing."""
    assert reply.code // 100 == 4 and reply.synthetic, reply
    verdict = classify(reply, "example.org")
    assert (verdict.kind, verdict.suppress) == (Kind.SOFT, False), verdict


def _assert_refused(reply: Reply, code: int, enhanced: str) -> None:
    """The server's own refusal, as it gave it."""
    assert (reply.code, reply.enhanced, reply.synthetic) == (code, enhanced, False), reply


async def _assert_next_is_delivered(up: Upstream, raw: RawUpstream) -> None:
    """The next message arrives, on whichever connection, and is recorded delivered."""
    result = await _send(up, raw, NEXT)
    assert result.replies[NEXT].code == 250, result.replies
    [got] = raw.delivered_to(NEXT)
    assert got.body == BODY


async def _assert_next_goes_on_the_same_connection(
    up: Upstream, raw: RawUpstream, earlier: str
) -> None:
    """The connection stayed in step: the next message follows on it and arrives."""
    await _assert_next_is_delivered(up, raw)
    assert raw.connection_of(NEXT) == raw.connection_of(earlier) == [1]


async def _assert_next_goes_on_a_new_connection(up: Upstream, raw: RawUpstream) -> None:
    """The message after a protocol error is sent on a connection of its own, and what
    the relay records for it is what the upstream received."""
    before = raw.connections
    result = await _send(up, raw, NEXT)
    assert result.replies[NEXT].code == 250, result.replies
    assert raw.connection_of(NEXT) == [before + 1]
    [got] = raw.delivered_to(NEXT)
    assert (got.connection, got.body) == (before + 1, BODY)


def test_pipelining_is_on_by_default():
    assert DeliveryConfig().pipelining is True


# -- the relay pipelines, and only when it may ---------------------------------------------


async def test_mail_every_rcpt_and_data_go_out_before_any_reply_is_read(upstream, holding):
    """The server answers nothing before DATA: the message is delivered, so the relay
    wrote MAIL, each RCPT and DATA without waiting; the body arrived once."""
    recipients = (FIRST, SECOND, THIRD)
    result = await _send(upstream, holding, *recipients)
    assert {r: result.replies[r].code for r in recipients} == dict.fromkeys(recipients, 250)
    assert [(r.recipients, r.body) for r in holding.received] == [(list(recipients), BODY)]
    assert holding.batches == [(1, ("MAIL", "RCPT", "RCPT", "RCPT", "DATA"))]


async def test_with_pipelining_off_the_relay_waits_for_each_reply():
    """``pipelining = false``: MAIL goes alone and its reply never comes (the server
    holds it until DATA): after command_timeout the recipients get a soft, sparing
    reply; no RCPT was sent and no body arrived."""
    up = Upstream(dataclasses.replace(_config(), pipelining=False), "relay.test")
    try:
        async with RawUpstream(pipelining=True, hold_until_data=True) as holding:
            result = await _send(up, holding, FIRST, SECOND)
            for r in (FIRST, SECOND):
                _assert_soft_synthetic(result.replies[r])
            assert [line for _, line in holding.commands if line.startswith("RCPT")] == []
            assert holding.received == []
    finally:
        await up.close()


async def test_a_server_without_pipelining_gets_one_command_per_reply(upstream):
    """No PIPELINING in the EHLO answer: the relay talks in step, as before."""
    async with RawUpstream(byte_by_byte=True) as plain:
        result = await _send(upstream, plain, FIRST, SECOND)
        assert {r: result.replies[r].code for r in (FIRST, SECOND)} == {FIRST: 250, SECOND: 250}
        assert [(r.recipients, r.body) for r in plain.received] == [([FIRST, SECOND], BODY)]


# -- replies paired with their commands, in order -------------------------------------------


async def test_the_replies_of_a_batch_are_paired_in_order(upstream, holding):
    """250, 550 and 452 to three RCPTs in one batch: the first is delivered, the second
    keeps its 550 (hard), the third goes in a second transaction on the same connection
    (too many recipients) and is delivered."""
    holding.on(
        "RCPT",
        b"250 2.1.5 OK\r\n",
        b"550 5.1.1 user unknown\r\n",
        b"452 4.5.3 too many recipients\r\n",
    )
    result = await _send(upstream, holding, FIRST, SECOND, THIRD)
    assert result.replies[FIRST].code == 250
    _assert_refused(result.replies[SECOND], 550, "5.1.1")
    assert classify(result.replies[SECOND], "example.org").kind is Kind.HARD
    assert result.replies[THIRD].code == 250
    got = [(r.recipients, r.connection, r.body) for r in holding.received]
    assert got == [([FIRST], 1, BODY), ([THIRD], 1, BODY)]
    assert holding.connection_of(THIRD) == [1, 1]
    assert [verbs for _, verbs in holding.batches] == [
        ("MAIL", "RCPT", "RCPT", "RCPT", "DATA"),
        ("MAIL", "RCPT", "DATA"),
    ]


async def test_multi_line_replies_in_a_batch_are_one_reply_each(upstream, holding):
    """A RCPT answered over two lines is one reply, accepted or refused: the replies
    after it still pair with their own commands."""
    holding.on(
        "RCPT",
        b"250-2.1.5 first line\r\n250 2.1.5 second line\r\n",
        b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n",
    )
    result = await _send(upstream, holding, FIRST, SECOND)
    assert result.replies[FIRST].code == 250
    _assert_refused(result.replies[SECOND], 550, "5.1.1")
    assert [(r.recipients, r.body) for r in holding.received] == [([FIRST], BODY)]


# -- refusals inside a batch ------------------------------------------------------------------


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte_by_byte"])
async def test_a_refused_mail_answers_every_recipient_and_keeps_the_connection(
    upstream, byte_by_byte
):
    """MAIL refused: its RCPTs and DATA, sent in the same batch, get 503. Every
    recipient gets the reply to MAIL, no body is sent, and the connection is still in
    step: the next message follows on it (an RSET in between is fine) and arrives."""
    async with RawUpstream(pipelining=True, byte_by_byte=byte_by_byte) as raw:
        raw.on("MAIL", b"550 5.7.1 sender rejected\r\n")
        raw.on("RCPT", b"503 5.5.1 bad sequence\r\n", b"503 5.5.1 bad sequence\r\n")
        raw.on("DATA", b"503 5.5.1 bad sequence\r\n")
        result = await _send(upstream, raw, FIRST, SECOND)
        for r in (FIRST, SECOND):
            _assert_refused(result.replies[r], 550, "5.7.1")
        assert raw.received == []
        await _assert_next_goes_on_the_same_connection(upstream, raw, FIRST)


async def test_every_rcpt_refused_and_data_refused_keeps_the_connection(upstream, whole):
    """Every RCPT refused, so DATA gets 554 "no valid recipients": the recipients keep
    their 550, no body is sent, and the next message follows on the same connection."""
    whole.on("RCPT", b"550 5.1.1 user unknown\r\n", b"550 5.1.1 user unknown\r\n")
    whole.on("DATA", b"554 5.5.1 no valid recipients\r\n")
    result = await _send(upstream, whole, FIRST, SECOND)
    for r in (FIRST, SECOND):
        _assert_refused(result.replies[r], 550, "5.1.1")
    assert whole.received == []
    await _assert_next_goes_on_the_same_connection(upstream, whole, FIRST)


async def test_a_rset_answered_5xx_after_refusals_keeps_none_of_them(upstream, whole):
    """RSET must be answered 250 (RFC 5321 §4.1.1.5). A 5xx to it after a batch may be a
    late reply to the batch, every reply before it shifted by one: the refusals are not
    kept (no 550 that could suppress), the recipient gets the soft protocol error."""
    whole.on("RCPT", b"550 5.1.1 user unknown\r\n")
    whole.on("DATA", b"554 5.5.1 no valid recipients\r\n")
    whole.on("RSET", b"550 5.1.1 user unknown\r\n")
    result = await _send(upstream, whole, FIRST)
    _assert_protocol_error(result.replies[FIRST], "RSET answered 550")
    assert FIRST in result.spared


async def test_a_421_to_rset_keeps_the_refusals_and_closes(upstream, whole):
    """A server shutting down answers RSET 421: the refusals read in step are kept and the
    next message goes on a new connection."""
    whole.on("RCPT", b"550 5.1.1 user unknown\r\n")
    whole.on("DATA", b"554 5.5.1 no valid recipients\r\n")
    whole.on("RSET", b"421 4.3.2 shutting down\r\n")
    result = await _send(upstream, whole, FIRST)
    _assert_refused(result.replies[FIRST], 550, "5.1.1")
    await _assert_next_goes_on_a_new_connection(upstream, whole)


async def test_every_rcpt_refused_but_data_answered_354_sends_an_empty_message(upstream, raw):
    """A broken server says 354 to DATA after refusing every RCPT: the relay ends the
    data at once (RFC 2920 §3.1: a lone "."), the recipients keep their 550, nothing
    arrives for them, and the next message is delivered."""
    raw.on("RCPT", b"550 5.1.1 user unknown\r\n", b"550 5.1.1 user unknown\r\n")
    result = await _send(upstream, raw, FIRST, SECOND)
    for r in (FIRST, SECOND):
        _assert_refused(result.replies[r], 550, "5.1.1")
        assert raw.delivered_to(r) == []
    # The lone dot arrived: one empty message with nobody to deliver it to.
    assert [(got.recipients, got.body) for got in raw.received] == [([], b"")], raw.received
    await _assert_next_is_delivered(upstream, raw)


@pytest.mark.parametrize(
    "answer", [b"451 4.3.0 try later\r\n", b"554 5.5.1 no valid recipients\r\n"]
)
async def test_anything_but_354_to_data_after_an_accepted_rcpt_is_a_protocol_error(
    upstream, raw, answer
):
    """A recipient accepted, yet DATA answered without 354: no body was sent, nothing
    is delivered; every recipient of the transaction gets the soft protocol failure
    (as without pipelining) and the connection is closed."""
    raw.on("RCPT", b"250 2.1.5 OK\r\n", b"550 5.1.1 user unknown\r\n")
    raw.on("DATA", answer)
    result = await _send(upstream, raw, FIRST, SECOND)
    code = answer[:3].decode()
    for r in (FIRST, SECOND):
        _assert_protocol_error(result.replies[r], f"DATA answered {code}, not 354")
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


# -- a batch out of step never marks mail delivered ------------------------------------------


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte_by_byte"])
async def test_a_surplus_reply_in_a_batch_never_marks_mail_delivered(upstream, byte_by_byte):
    """MAIL answered twice: every later reply of the batch is one off (the RCPT's 250
    would pass for DATA's). The recipient gets the soft protocol failure, never 250;
    the next message goes on a new connection and arrives."""
    async with RawUpstream(pipelining=True, byte_by_byte=byte_by_byte) as raw:
        raw.on("MAIL", b"250 2.1.0 ok\r\n250 2.1.0 ok\r\n")
        result = await _send(upstream, raw, FIRST)
        _assert_protocol_error(result.replies[FIRST])
        assert raw.received == []
        await _assert_next_goes_on_a_new_connection(upstream, raw)


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte_by_byte"])
async def test_a_malformed_reply_to_a_rcpt_in_a_batch_is_a_protocol_error(upstream, byte_by_byte):
    """The second RCPT of a batch answered with a line that is no SMTP reply: every
    recipient of the transaction fails soft, the connection is closed."""
    async with RawUpstream(pipelining=True, byte_by_byte=byte_by_byte) as raw:
        raw.on("RCPT", b"250 2.1.5 OK\r\n", b"2_50 2.1.5 OK\r\n")
        result = await _send(upstream, raw, FIRST, SECOND)
        for r in (FIRST, SECOND):
            _assert_protocol_error(result.replies[r], "malformed")
        assert raw.received == []
        await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_missing_replies_in_a_batch_time_out_on_the_command_timeout(upstream, raw):
    """RCPT and DATA answered by silence: the transaction ends after command_timeout
    (1 s), not data_timeout (30 s), as a soft failure; nothing is delivered."""
    raw.on("RCPT", Answer(b""))
    raw.on("DATA", Answer(b""))
    result = await _send(upstream, raw, FIRST)
    reply = result.replies[FIRST]
    assert (reply.code, reply.synthetic) == (421, True), reply
    assert "timed out" in reply.text
    _assert_soft_synthetic(reply)
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


async def test_one_missing_reply_in_a_batch_shifts_the_rest_and_delivers_nothing(upstream, raw):
    """RCPT answered by silence, DATA by 354: the 354 arrives where the RCPT's reply
    belongs. Whether the relay sees a reply RCPT cannot have or waits out the timeout,
    the recipient gets a soft, sparing reply and no body is sent."""
    raw.on("RCPT", Answer(b""))
    result = await _send(upstream, raw, FIRST)
    _assert_soft_synthetic(result.replies[FIRST])
    assert raw.received == []
    await _assert_next_goes_on_a_new_connection(upstream, raw)


# -- TLS, and a reused connection the server dropped ---------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelining_after_starttls_on_either_event_loop(loop):
    """PIPELINING advertised after STARTTLS (asked again by EHLO on the new transport):
    the holding server gets the whole batch and the message is delivered, twice on one
    connection, on the production loop (uvloop) as on asyncio's."""
    run = uvloop.run if loop == "uvloop" else asyncio.run
    run(_pipelined_over_tls())


async def _pipelined_over_tls() -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    up = Upstream(_config(), "relay.test")
    try:
        async with RawUpstream(tls=context, pipelining=True, hold_until_data=True) as holding:
            destination = Destination("127.0.0.1", holding.port)  # STARTTLS when offered
            for recipient in (FIRST, SECOND):
                transaction = Transaction(SENDER, (recipient,), BODY)
                send = up.send([destination], "127.0.0.1", transaction)
                result = await asyncio.wait_for(send, 5)
                assert result.replies[recipient].code == 250, result.replies
            got = [(r.recipients, r.connection, r.body) for r in holding.received]
            assert got == [([FIRST], 1, BODY), ([SECOND], 1, BODY)]
            assert holding.tls_sessions == 1
            assert holding.batches == [(1, ("MAIL", "RCPT", "DATA"))] * 2
    finally:
        await up.close()


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte_by_byte"])
async def test_a_reused_connection_the_server_dropped_is_replaced(upstream, byte_by_byte):
    """The server closes a reused connection at its MAIL, unanswered, while the rest of
    the batch is on its way: the message goes out once more on a new connection and is
    delivered, not failed."""
    async with RawUpstream(pipelining=True, byte_by_byte=byte_by_byte) as raw:
        result = await _send(upstream, raw, FIRST)
        assert result.replies[FIRST].code == 250
        raw.drop_reused_mail = 1
        result = await _send(upstream, raw, SECOND)
        assert result.replies[SECOND].code == 250, result.replies
        assert raw.drop_reused_mail == 0
        got = [(r.recipients, r.connection, r.body) for r in raw.received]
        assert got == [([FIRST], 1, BODY), ([SECOND], 2, BODY)]
