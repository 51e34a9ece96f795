"""A scripted upstream SMTP server (aiosmtpd) and a settable clock, for delivery tests.

The test picks what the upstream answers: per recipient and per attempt at
RCPT, per attempt at DATA, and per connection at the greeting. Unscripted
steps answer 250. Everything the upstream accepted is kept in ``received``
with the IP address the connection came from; ``commands`` keeps every MAIL and RCPT
line as it came over the wire (before aiosmtpd parses the address).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    body: bytes
    peer_ip: str


class FakeClock:
    """The relay's clock in tests: starts at real now, moves only when told."""

    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@dataclass
class _Script:
    rcpt: dict[str, list[str]] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    data_for: dict[str, list[str]] = field(default_factory=dict)
    greetings: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.up = upstream

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        key = address.lower()
        attempt = self.up.rcpt_attempts.get(key, 0)
        self.up.rcpt_attempts[key] = attempt + 1
        self.up.rcpt_seen.append(key)
        reply = _pick(self.up.script.rcpt.get(key), attempt, self.up.rcpt_default)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.up.data_delay:
            await asyncio.sleep(self.up.data_delay)
        scripted = next(
            (
                self.up.script.data_for[r.lower()]
                for r in envelope.rcpt_tos
                if r.lower() in self.up.script.data_for
            ),
            self.up.script.data,
        )
        attempt = self.up.data_attempts
        self.up.data_attempts += 1
        reply = _pick(scripted, attempt, "250 2.0.0 OK accepted")
        session.transactions = getattr(session, "transactions", 0) + 1
        if reply.startswith("2"):
            self.up.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    str(session.peer[0]),
                )
            )
            if session.ssl is not None:
                self.up.tls_sessions += 1
        return reply


class _ScriptedSMTP(SMTP):
    upstream: ScriptedUpstream

    async def smtp_MAIL(self, arg: str) -> None:
        self.upstream.commands.append(f"MAIL {arg}")
        if self.upstream.drop_reused_mail and getattr(self.session, "transactions", 0):
            # The server gave up on an idle connection just as the client reused it.
            self.upstream.drop_reused_mail -= 1
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.upstream.commands.append(f"RCPT {arg}")
        await super().smtp_RCPT(arg)

    async def push(self, status: AnyStr) -> None:
        if status == "250-8BITMIME" and not self.upstream.eightbitmime:
            return  # an old server: 7-bit only
        if isinstance(status, str) and status.startswith("220 "):
            self.upstream.connections += 1
            if self.upstream.script.greetings:
                greeting = self.upstream.script.greetings.pop(0)
                if not greeting.startswith("220"):
                    await super().push(greeting)
                    if self.transport is not None:
                        self.transport.close()
                    return
        await super().push(status)


def _pick(replies: list[str] | None, attempt: int, default: str) -> str:
    if not replies:
        return default
    return replies[min(attempt, len(replies) - 1)]


class ScriptedUpstream:
    """``async with ScriptedUpstream() as up:`` listens on 127.0.0.1:<up.port>."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.users = users or {}
        self.logins: list[str] = []
        self.tls_sessions = 0
        self.port = 0
        self.script = _Script()
        self.received: list[Received] = []
        self.commands: list[str] = []  # "MAIL FROM:<...> ...", "RCPT TO:<...>" as sent
        self.rcpt_attempts: dict[str, int] = {}
        self.rcpt_default = "250 2.1.5 OK"  # the reply to recipients nobody scripted
        self.rcpt_seen: list[str] = []
        self.data_attempts = 0
        self.data_delay = 0.0
        self.connections = 0
        self.drop_reused_mail = 0  # close this many reused connections at MAIL, no reply
        self.smtputf8 = True  # announce SMTPUTF8 / 8BITMIME (set before connections start)
        self.eightbitmime = True
        self._server: asyncio.Server | None = None

    def on_rcpt(self, address: str, *replies: str) -> None:
        """Replies to successive RCPTs for ``address``; the last one repeats."""
        self.script.rcpt[address.lower()] = list(replies)

    def on_data(self, *replies: str, recipient: str | None = None) -> None:
        """Replies to successive DATA commands (of transactions containing ``recipient``)."""
        if recipient is None:
            self.script.data = list(replies)
        else:
            self.script.data_for[recipient.lower()] = list(replies)

    def on_connect(self, *greetings: str) -> None:
        """Greetings for the next connections (e.g. "421 4.3.2 busy"); then 220."""
        self.script.greetings = list(greetings)

    def delivered_to(self, address: str) -> list[Received]:
        return [r for r in self.received if address.lower() in (x.lower() for x in r.recipients)]

    async def __aenter__(self) -> ScriptedUpstream:
        loop = asyncio.get_running_loop()

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            login = data.login.decode()
            ok = self.users.get(login) == data.password.decode()
            if ok:
                self.logins.append(login)
            return AuthResult(success=ok)

        def factory() -> SMTP:
            proto = _ScriptedSMTP(
                _Handler(self),
                hostname="upstream.test",
                loop=loop,
                enable_SMTPUTF8=self.smtputf8,
                tls_context=self.tls,
                authenticator=authenticate if self.users else None,
                auth_require_tls=self.tls is not None,
            )
            proto.upstream = self
            return proto

        self._server = await loop.create_server(factory, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.close()
