"""Next hops without SMTPUTF8 or 8BITMIME (RFC 6531, RFC 6152): downgrade what can be
downgraded, fail the rest permanently without suppressing anyone, never loop."""

from __future__ import annotations

import aiosmtplib

from tests.support.delivery import BODY, events_of, eventually, in_state


async def _send(relay, recipients: list[str], body: bytes = BODY, utf8: bool = True) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.sendmail(
        "bounces@mail.example.com",
        recipients,
        body,
        mail_options=["SMTPUTF8"] if utf8 else [],
    )
    await client.quit()


async def test_a_utf8_domain_goes_as_its_a_label_and_a_utf8_local_part_fails(
    upstream, start_relay, db
):
    upstream.smtputf8 = False
    async with start_relay(upstream.port) as relay:
        await _send(relay, ["user@exämple.org", "ünï@example.org"])
        await eventually(in_state(db, "user@xn--exmple-cua.org", "delivered"))
        await eventually(in_state(db, "ünï@example.org", "bounced"))
    [got] = upstream.received
    assert got.recipients == ["user@xn--exmple-cua.org"]
    [bounce] = await events_of(db, "ünï@example.org")
    assert (bounce["code"], bounce["enhanced"], bounce["synthetic"]) == (553, "5.6.7", True)
    assert (bounce["category"], bounce["suppress"]) == ("content_rejected", False)
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_an_8bit_body_to_a_7bit_server_fails_once_and_suppresses_nobody(
    upstream, start_relay, db
):
    upstream.eightbitmime = False
    body = "From: a@mail.example.com\r\nSubject: x\r\n\r\nGrüße\r\n".encode()
    async with start_relay(upstream.port) as relay:
        await _send(relay, ["x@example.org"], body, utf8=False)
        await _send(relay, ["y@example.org"], utf8=False)
        await eventually(in_state(db, "x@example.org", "bounced"))
        await eventually(in_state(db, "y@example.org", "delivered"))
    [bounce] = await events_of(db, "x@example.org")
    assert (bounce["code"], bounce["enhanced"], bounce["attempt"]) == (554, "5.6.3", 1)
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert [r.recipients for r in upstream.received] == [["y@example.org"]]
