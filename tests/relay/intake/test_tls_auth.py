"""STARTTLS, require_tls and SMTP AUTH (PLAIN/LOGIN, only after STARTTLS), and what our
Received field says of them."""

from __future__ import annotations

import ssl

import aiosmtplib
import asyncpg
import pytest

from relay.ops.app import Relay

MESSAGE = b"From: app@example.com\r\nSubject: t\r\n\r\nhi\r\n"


async def _connect(relay: Relay, source: str, tls: ssl.SSLContext | None) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port,
        source_address=(source, 0),
        start_tls=False,
        tls_context=tls,
    )
    await client.connect()
    await client.ehlo()
    return client


async def test_auth_is_offered_only_after_starttls(start_tls_relay, client_tls):
    """Before STARTTLS no AUTH is advertised; after it PLAIN and LOGIN are."""
    async with start_tls_relay() as relay:
        client = await _connect(relay, "127.0.0.2", client_tls)
        assert "starttls" in client.esmtp_extensions
        assert "auth" not in client.esmtp_extensions
        await client.starttls()
        await client.ehlo()
        methods = client.server_auth_methods
        await client.quit()
    assert {"plain", "login"} <= set(methods)


async def test_authenticated_client_outside_allowed_clients_may_relay(start_tls_relay, client_tls):
    """From 127.0.0.2 (not allowed) a client that logs in over TLS may relay; PLAIN and LOGIN."""
    async with start_tls_relay() as relay:
        for method in ("plain", "login"):
            client = await _connect(relay, "127.0.0.2", client_tls)
            await client.starttls()
            await client.ehlo()
            await getattr(client, f"auth_{method}")("app", "s3cret-pass")
            _, reply = await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
            await client.quit()
            assert reply.startswith("2.0.0")


async def test_wrong_password_is_refused_and_relaying_stays_denied(start_tls_relay, client_tls):
    """A wrong password gets 535; the unauthenticated outsider still cannot relay."""
    async with start_tls_relay() as relay:
        client = await _connect(relay, "127.0.0.2", client_tls)
        await client.starttls()
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
            await client.auth_plain("app", "wrong")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("app@example.com")
        await client.quit()
    assert failed.value.code == 535
    assert refused.value.code == 550


async def test_require_tls_refuses_mail_in_clear(start_tls_relay, client_tls):
    """With require_tls, MAIL before STARTTLS is refused; after it the message is accepted."""
    async with start_tls_relay("require_tls = true") as relay:
        client = await _connect(relay, "127.0.0.1", client_tls)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("app@example.com")
        await client.starttls()
        await client.ehlo()
        _, reply = await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
        await client.quit()
    assert refused.value.code == 530
    assert reply.startswith("2.0.0")


async def test_auth_required_refuses_allowed_client_without_login(start_tls_relay, client_tls):
    """auth_required: even a client in allowed_clients must log in (530 5.7.0)."""
    async with start_tls_relay("auth_required = true") as relay:
        client = await _connect(relay, "127.0.0.1", client_tls)
        await client.starttls()
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("app@example.com")
        await client.auth_plain("app", "s3cret-pass")
        _, reply = await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
        await client.quit()
    assert refused.value.code == 530
    assert reply.startswith("2.0.0")


@pytest.mark.parametrize(("login", "protocol"), [(False, b"ESMTPS"), (True, b"ESMTPSA")])
async def test_received_field_says_tls_and_auth(
    start_tls_relay, client_tls, db_dsn, login, protocol
):
    """Our Received field's "with" (RFC 3848): ESMTPS after STARTTLS, ESMTPSA after
    STARTTLS and AUTH; the rest of the stored body is the message as sent."""
    async with start_tls_relay() as relay:
        client = await _connect(relay, "127.0.0.1", client_tls)
        await client.starttls()
        await client.ehlo()
        if login:
            await client.auth_plain("app", "s3cret-pass")
        await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
        await client.quit()
    conn = await asyncpg.connect(db_dsn)
    try:
        body = bytes(await conn.fetchval("SELECT body FROM messages"))
    finally:
        await conn.close()
    field, _, rest = body.partition(b";\r\n\t")
    assert field.startswith(b"Received: from ")
    assert f"\tby relay.test with {protocol.decode()} id ".encode() in field
    assert rest.split(b"\r\n", 1)[1] == MESSAGE
