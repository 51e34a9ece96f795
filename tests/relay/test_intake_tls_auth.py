"""STARTTLS, require_tls and SMTP AUTH (PLAIN/LOGIN, only after STARTTLS), and what our
Received field says of them."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
import trustme

from relay.config import load_config
from relay.ops.app import Relay
from relay.passwords import hash_password

MESSAGE = b"From: app@example.com\r\nSubject: t\r\n\r\nhi\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def user_hash() -> str:
    return hash_password("s3cret-pass")


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("relay.test", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def start(db_dsn, write_config, tls_files, user_hash):
    @asynccontextmanager
    async def start_relay(extra: str = "") -> AsyncIterator[Relay]:
        cert, key = tls_files
        config = load_config(
            write_config(
                f"""
            [smtp]
            listen = "127.0.0.1:0"
            hostname = "relay.test"
            allowed_clients = ["127.0.0.1/32"]
            tls_cert = "{cert}"
            tls_key = "{key}"
            {extra}
            [[smtp.users]]
            name = "app"
            password_hash = "{user_hash}"
            [delivery]
            enabled = false
            [admin]
            listen = "127.0.0.1:0"
            """,
                replace_base=True,
            )
        )
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            yield relay

    return start_relay


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


async def test_auth_is_offered_only_after_starttls(start, client_tls):
    """Before STARTTLS no AUTH is advertised; after it PLAIN and LOGIN are."""
    async with start() as relay:
        client = await _connect(relay, "127.0.0.2", client_tls)
        assert "starttls" in client.esmtp_extensions
        assert "auth" not in client.esmtp_extensions
        await client.starttls()
        await client.ehlo()
        methods = client.server_auth_methods
        await client.quit()
    assert {"plain", "login"} <= set(methods)


async def test_authenticated_client_outside_allowed_clients_may_relay(start, client_tls):
    """From 127.0.0.2 (not allowed) a client that logs in over TLS may relay; PLAIN and LOGIN."""
    async with start() as relay:
        for method in ("plain", "login"):
            client = await _connect(relay, "127.0.0.2", client_tls)
            await client.starttls()
            await client.ehlo()
            await getattr(client, f"auth_{method}")("app", "s3cret-pass")
            _, reply = await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
            await client.quit()
            assert reply.startswith("2.0.0")


async def test_wrong_password_is_refused_and_relaying_stays_denied(start, client_tls):
    """A wrong password gets 535; the unauthenticated outsider still cannot relay."""
    async with start() as relay:
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


async def test_require_tls_refuses_mail_in_clear(start, client_tls):
    """With require_tls, MAIL before STARTTLS is refused; after it the message is accepted."""
    async with start("require_tls = true") as relay:
        client = await _connect(relay, "127.0.0.1", client_tls)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("app@example.com")
        await client.starttls()
        await client.ehlo()
        _, reply = await client.sendmail("app@example.com", ["r@example.org"], MESSAGE)
        await client.quit()
    assert refused.value.code == 530
    assert reply.startswith("2.0.0")


async def test_auth_required_refuses_allowed_client_without_login(start, client_tls):
    """auth_required: even a client in allowed_clients must log in (530 5.7.0)."""
    async with start("auth_required = true") as relay:
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
async def test_received_field_says_tls_and_auth(start, client_tls, db_dsn, login, protocol):
    """Our Received field's "with" (RFC 3848): ESMTPS after STARTTLS, ESMTPSA after
    STARTTLS and AUTH; the rest of the stored body is the message as sent."""
    async with start() as relay:
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
