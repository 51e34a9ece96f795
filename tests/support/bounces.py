"""The remote MTA's side of a bounce: a [dsn] config for the relay, a Postfix-shaped
delivery status notification, and mailing it to the relay's DSN domain over SMTP, for the
tests of bounce intake and of what is built on the bounces it records."""

from __future__ import annotations

import aiosmtplib
import asyncpg

from relay.ops.app import Relay
from tests.support.delivery import eventually, in_state, send
from tests.support.scripted import ScriptedUpstream

DSN_DOMAIN = "bounce.relay.test"
SECRET = "0123456789abcdef-test-secret"
DSN_CONFIG = f"""
    [dsn]
    domain = "{DSN_DOMAIN}"
    secret = "{SECRET}"
"""


def dsn_message(
    return_path: str,
    recipient: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    remote_mta: str = "mx1.example.org",
) -> bytes:
    """A Postfix-shaped RFC 3464 report about one recipient."""
    diag = diagnostic.format(rcpt=recipient)
    return (
        f"Return-Path: <>\r\n"
        f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {return_path}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        f"\r\n"
        f"--B1\r\n"
        f"Content-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"--B1\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Remote-MTA: dns; {remote_mta}\r\n"
        f"Diagnostic-Code: {diag}\r\n\r\n"
        f"--B1\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{return_path}>\r\n"
        f"From: News <news@mail.example.com>\r\n"
        f"To: {recipient}\r\n"
        f"Subject: t\r\n\r\n"
        f"--B1--\r\n"
    ).encode()


async def mail_bounce(relay: Relay, rcpt: str, message: bytes, sender: str = "") -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    _, reply = await client.sendmail(sender, [rcpt], message)
    await client.quit()
    return reply


async def delivered_with_return_path(
    upstream: ScriptedUpstream, relay: Relay, db: asyncpg.Connection, recipient: str
) -> str:
    await send(relay, [recipient])
    await eventually(in_state(db, recipient, "delivered"))
    [got] = upstream.delivered_to(recipient)
    return got.sender
