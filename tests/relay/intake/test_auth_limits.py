"""SMTP AUTH under attack: the password check (scrypt) runs off the event loop, failed
attempts are counted per session (``[smtp] max_auth_failures``) and per client address
(``auth_failures_per_client`` inside ``auth_failure_window``), each ending in 421 4.7.0.

AUTH is offered only after STARTTLS, so every client here starts TLS first. The window is
moved with an injected clock, never slept through.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relay.config import Config, load_config
from relay.intake.commit import GroupCommitter
from relay.intake.limits import client_key
from relay.intake.server import IntakeHandler, start_intake
from relay.metrics import Metrics
from relay.ops.app import Relay
from relay.store import create_store
from tests.support.scripted import FakeClock

PASSWORD = "s3cret-pass"
REPLY_SECONDS = 10.0  # a hang fails instead of stalling; scrypt runs in threads meanwhile
SESSION_CUT = "421 4.7.0 Too many failed authentication attempts"


@pytest.fixture
def config_with(
    tls_files: tuple[Path, Path], write_config: Callable[..., Path], user_hash: str
) -> Callable[..., Config]:
    """A relay config offering STARTTLS and AUTH (intake/conftest.py's certificate and user)
    plus ``smtp``; ``password_hash`` replaces the user's hash."""
    cert_path, key_path = tls_files

    def make(smtp: str = "", password_hash: str = user_hash) -> Config:
        return load_config(
            write_config(
                f"""
                [smtp]
                listen = "127.0.0.1:0"
                hostname = "relay.test"
                allowed_clients = ["127.0.0.1/32"]
                tls_cert = "{cert_path}"
                tls_key = "{key_path}"
                {smtp}
                [[smtp.users]]
                name = "app"
                password_hash = "{password_hash}"
                [delivery]
                enabled = false
                [admin]
                listen = "127.0.0.1:0"
                """,
                replace_base=True,
            )
        )

    return make


class Client:
    """One raw SMTP connection over TLS: AUTH commands sent as they are written here."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, tls: ssl.SSLContext, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        client = cls(reader, writer)
        assert (await client.reply())[0] == 220
        assert (await client.cmd("EHLO client.test"))[0] == 250
        assert (await client.cmd("STARTTLS"))[0] == 220
        await writer.start_tls(tls, server_hostname="relay.test")
        assert (await client.cmd("EHLO client.test"))[0] == 250
        return client

    async def reply(self) -> tuple[int, str]:
        async with asyncio.timeout(REPLY_SECONDS):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("connection closed, no reply")
                if line[3:4] != b"-":
                    return int(line[:3]), line.decode().rstrip("\r\n")

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def cmd(self, line: str) -> tuple[int, str]:
        await self.send(line)
        return await self.reply()

    async def plain(self, password: str, login: str = "app") -> tuple[int, str]:
        return await self.cmd(f"AUTH PLAIN {_plain(login, password)}")

    async def login(self, password: str, login: str = "app") -> tuple[int, str]:
        assert (await self.cmd("AUTH LOGIN"))[0] == 334
        assert (await self.cmd(_b64(login)))[0] == 334
        return await self.cmd(_b64(password))

    async def closed(self) -> bool:
        """Whether the relay has closed the connection (having sent nothing more)."""
        async with asyncio.timeout(REPLY_SECONDS):
            rest = await self.reader.read()
        self.writer.close()
        return rest == b""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _plain(login: str, password: str) -> str:
    """The AUTH PLAIN argument (RFC 4616): authorisation id (none), login, password."""
    return _b64("\0".join(["", login, password]))


def _rejected(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("bounce_relay_rejected_total", {"reason": reason})
    return value or 0.0


@asynccontextmanager
async def _relay(config: Config, db_dsn: str) -> AsyncIterator[Relay]:
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        yield relay


def _slow_hash(password: str, p: int = 8) -> str:
    """An scrypt hash ``p`` times as costly to check as ours (p = 8: about a third of a
    second each on the test machine, seconds for ten if they ran on the event loop)."""
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=p, dklen=32)
    encoded = [base64.b64encode(part).decode() for part in (salt, key)]
    return "$".join(["scrypt", str(2**14), "8", str(p), *encoded])


async def test_clients_are_greeted_while_ten_auth_checks_run(config_with, db_dsn, client_tls):
    """Ten sessions send AUTH with a wrong password at once; each check costs a third of a
    second of scrypt. A new client is greeted in well under a second, before any of the
    ten has its 535: the checks run in worker threads, not on the event loop."""
    config = config_with("auth_failures_per_client = 100", password_hash=_slow_hash(PASSWORD, p=16))
    async with _relay(config, db_dsn) as relay:
        loop = asyncio.get_running_loop()
        clients = [await Client.open(relay.port, client_tls) for _ in range(10)]

        async def answered(client: Client) -> tuple[float, int]:
            code, _ = await client.reply()
            return loop.time(), code

        for n, client in enumerate(clients):
            await client.send(f"AUTH PLAIN {_plain('app', f'wrong-{n}')}")
        replies = [asyncio.create_task(answered(c)) for c in clients]
        start = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        async with asyncio.timeout(REPLY_SECONDS):
            greeting = await reader.readline()
        greeted = loop.time()
        writer.close()
        done = await asyncio.gather(*replies)
        for client in clients:
            client.writer.close()
    assert greeting.startswith(b"220 ")
    assert greeted - start < 2.0
    assert [code for _, code in done] == [535] * 10
    assert greeted < min(at for at, _ in done)  # all ten were still being checked


async def test_past_the_checkers_capacity_auth_hears_454_and_counts_nothing(
    config_with, db_dsn, client_tls
):
    """Twenty new passwords at once, each a third of a second of scrypt: two run and
    sixteen wait (relay.passwords.SecretChecker), the last two hear 454 4.7.0 (try
    later) at once instead of queueing without bound; a 454 is not a failed password."""
    config = config_with("auth_failures_per_client = 100", password_hash=_slow_hash(PASSWORD))
    with capture_logs() as logs:
        async with _relay(config, db_dsn) as relay:
            clients = [await Client.open(relay.port, client_tls) for _ in range(20)]
            for n, client in enumerate(clients):
                await client.send(f"AUTH PLAIN {_plain('app', f'wrong-{n}')}")
            done = await asyncio.gather(*(c.reply() for c in clients))
            for client in clients:
                client.writer.close()
    codes = sorted(code for code, _ in done)
    assert codes == [454] * 2 + [535] * 18
    assert {text for code, text in done if code == 454} == {
        "454 4.7.0 Temporary authentication failure, try again later"
    }
    assert len([e for e in logs if e["event"] == "intake.auth_failed"]) == 18


async def test_a_session_is_cut_after_max_auth_failures(config_with, db_dsn, client_tls):
    """max_auth_failures = 3: two typos and the right password log in (and may relay).
    Three wrong passwords (PLAIN or LOGIN) each hear 535; the next AUTH, even with the
    right password, hears 421 4.7.0 and the connection is closed. A malformed AUTH (501)
    is not a failed password and does not count. Each failure is logged as
    intake.auth_failed with the login and the session's count, and counted."""
    with capture_logs() as logs:
        async with _relay(config_with("max_auth_failures = 3"), db_dsn) as relay:
            typist = await Client.open(relay.port, client_tls, source="127.0.0.2")
            assert (await typist.plain("typo"))[0] == 535
            assert (await typist.login("typo"))[0] == 535
            assert (await typist.login(PASSWORD))[0] == 235
            assert (await typist.cmd("MAIL FROM:<app@example.com>"))[0] == 250
            typist.writer.close()
            client = await Client.open(relay.port, client_tls)
            assert (await client.cmd("AUTH PLAIN not-base64!"))[0] == 501
            assert (await client.plain("wrong-1"))[0] == 535
            assert (await client.login("wrong-2"))[0] == 535
            assert (await client.plain("wrong-3", login="root"))[0] == 535
            assert await client.plain(PASSWORD) == (421, SESSION_CUT)
            assert await client.closed()
            failed = _rejected(relay.metrics, "auth_failed")
            cut = _rejected(relay.metrics, "too_many_auth_failures")
            # Another session from the same address still may log in (10 per client).
            again = await Client.open(relay.port, client_tls)
            assert (await again.plain(PASSWORD))[0] == 235
            again.writer.close()
    assert (failed, cut) == (5, 1)
    events = [(e["login"], e["count"]) for e in logs if e["event"] == "intake.auth_failed"]
    assert events == [("app", 1), ("app", 2), ("app", 1), ("app", 2), ("root", 3)]


@asynccontextmanager
async def _intake(
    config: Config, db_dsn: str, clock: FakeClock
) -> AsyncIterator[tuple[IntakeHandler, int]]:
    """The intake alone, on the injected clock (a Relay keeps its clock to itself), and
    its port."""
    async with AsyncExitStack() as stack:
        store = await create_store(db_dsn, min_size=1, max_size=2)
        stack.push_async_callback(store.close)
        committer = GroupCommitter(store, clock=clock)
        stack.push_async_callback(committer.close)
        handler = IntakeHandler(
            store=store,
            committer=committer,
            smtp=config.smtp,
            campaign_header=config.campaign_header,
            clock=clock,
        )
        stack.push_async_callback(handler.close)
        server = await start_intake(handler, config.smtp, ("127.0.0.1", 0))
        stack.callback(server.close)
        yield handler, server.sockets[0].getsockname()[1]


async def test_a_client_address_is_refused_auth_until_its_window_passes(
    config_with, db_dsn, client_tls
):
    """auth_failures_per_client = 4 in 15 minutes: after three failures in one session and
    one in another, a third session from that address hears 421 4.7.0 at AUTH even with the
    right password, 14 minutes later still; another address may log in meanwhile; 16
    minutes after the failures the address may log in again."""
    clock = FakeClock()
    smtp = 'max_auth_failures = 3\nauth_failures_per_client = 4\nauth_failure_window = "15m"'
    with capture_logs() as logs:
        async with _intake(config_with(smtp), db_dsn, clock) as (intake, port):
            first = await Client.open(port, client_tls)
            for n in range(3):
                assert (await first.plain(f"wrong-{n}"))[0] == 535
            first.writer.close()
            second = await Client.open(port, client_tls)
            assert (await second.login("wrong-3"))[0] == 535
            refused = []
            for minutes in (0, 14):
                clock.advance(minutes=minutes)
                third = await Client.open(port, client_tls)
                refused.append(await third.plain(PASSWORD))
                assert await third.closed()
            other = await Client.open(port, client_tls, source="127.0.0.2")
            assert (await other.plain(PASSWORD))[0] == 235
            other.writer.close()
            clock.advance(minutes=2)
            later = await Client.open(port, client_tls)
            assert (await later.plain(PASSWORD))[0] == 235
            later.writer.close()
            blocked = _rejected(intake.metrics, "auth_client_blocked")
    assert [code for code, _ in refused] == [421, 421]
    assert all(text.startswith("421 4.7.0 Too many failed authentication") for _, text in refused)
    assert blocked == 2
    counts = [e["count"] for e in logs if e["event"] == "intake.auth_failed"]
    assert counts == [1, 2, 3, 1]  # each session's own count


def test_a_client_is_an_ipv4_address_or_an_ipv6_64():
    """One host has a whole /64 to pick source addresses from: it is one client. An
    IPv4-mapped address is the IPv4 client it maps."""
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.8") != client_key("192.0.2.7")
