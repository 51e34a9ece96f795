"""Sending one transaction through ``Upstream`` to a ``RawUpstream``, and what a protocol
failure must look like: shared by the in-step and the pipelining tests."""

from __future__ import annotations

import asyncio

from policies.classify import Kind, classify
from policies.smtp_reply import Reply
from relay.delivery.destinations import Destination
from relay.delivery.upstream import Transaction, TransactionResult, Upstream
from tests.support.delivery import BODY
from tests.support.scripted import RawUpstream

SENDER = "bounces@mail.example.com"


async def send_through(up: Upstream, raw: RawUpstream, *recipients: str) -> TransactionResult:
    """One message from SENDER to ``recipients`` through ``up`` to ``raw`` (no TLS)."""
    destination = Destination("127.0.0.1", raw.port, tls="off")
    transaction = Transaction(SENDER, recipients, BODY)
    # A budget against hangs only: every case settles in well under two seconds.
    return await asyncio.wait_for(up.send([destination], "127.0.0.1", transaction), 5)


def assert_protocol_error(reply: Reply, *words: str) -> None:
    """The synthetic 4xx the relay records for an upstream out of step: soft, never
    suppressing, naming what went wrong."""
    assert (reply.code, reply.enhanced, reply.synthetic) == (451, "4.5.0", True), reply
    assert "protocol error" in reply.text
    for word in words:
        assert word in reply.text, reply.text
    verdict = classify(reply, "example.org")
    assert (verdict.kind, verdict.suppress) == (Kind.SOFT, False)
