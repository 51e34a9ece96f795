"""Fixtures of the intake tests that speak TLS: a throwaway CA (trustme), the relay's
certificate from it, a client context that trusts it, a user ``app`` with the password
``s3cret-pass``, and a relay that offers STARTTLS and AUTH."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from relay.config import load_config
from relay.ops.app import Relay
from relay.passwords import hash_password

PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def user_hash() -> str:
    return hash_password(PASSWORD)


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
def start_tls_relay(db_dsn, write_config, tls_files, user_hash):
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
