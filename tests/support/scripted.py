"""Scripted upstream SMTP servers and a settable clock, for delivery tests.

``ScriptedUpstream`` is a well-behaved server (aiosmtpd) whose replies the test
picks: per recipient and per attempt at RCPT, per attempt at DATA, and per
connection at the greeting. Unscripted steps answer 250. Everything the
upstream accepted is kept in ``received`` with the IP address the connection
came from; ``commands`` keeps every MAIL and RCPT line as it came over the wire
(before aiosmtpd parses the address).

``RawUpstream`` is a hand-written server on a raw asyncio stream that writes
the exact bytes a test gives it, so it can misbehave on purpose: malformed
lines, two replies to one command, unsolicited lines while the client is idle,
no reply at all, a 250 to DATA. Its ``received`` holds only the messages whose
end of data it acknowledged with a 2xx: what it actually got. With
``pipelining`` it advertises PIPELINING (RFC 2920); with ``hold_until_data`` it
answers MAIL, RCPT and DATA only once it has read DATA, which only a client that
pipelines ever gets to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
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
    connection: int = 0  # RawUpstream: which connection (1, 2, ...) it came on


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
        self.up.transactions[session] = self.up.transactions.get(session, 0) + 1
        if reply.startswith("2"):
            assert envelope.mail_from is not None  # aiosmtpd reaches DATA only after MAIL
            # aiosmtpd types peer as a string; it holds the socket's (host, port).
            peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
            self.up.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    str(peer),
                )
            )
            if session.ssl is not None:
                self.up.tls_sessions += 1
        return reply


class _ScriptedSMTP(SMTP):
    upstream: ScriptedUpstream

    async def smtp_MAIL(self, arg: str) -> None:
        self.upstream.commands.append(f"MAIL {arg}")
        if (
            self.upstream.drop_reused_mail
            and self.session is not None
            and self.upstream.transactions.get(self.session, 0)
        ):
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
        # Transactions that reached DATA, per session: a MAIL on a session that has one is
        # on a reused connection. (aiosmtpd starts a new session after STARTTLS.)
        self.transactions: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()
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


@dataclass(frozen=True)
class Answer:
    """What ``RawUpstream`` writes for one command: ``now`` at once (``b""``: nothing, a
    missing reply), then ``later`` after ``delay`` seconds (an unsolicited line)."""

    now: bytes
    later: bytes = b""
    delay: float = 0.05


_DEFAULT_ANSWERS = {
    "EHLO": b"250-raw.test greets you\r\n250-8BITMIME\r\n250-SIZE 10240000\r\n250 SMTPUTF8\r\n",
    "HELO": b"250 raw.test\r\n",
    "MAIL": b"250 2.1.0 sender OK\r\n",
    "RCPT": b"250 2.1.5 recipient OK\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ".": b"250 2.0.0 OK queued\r\n",  # the end of the message data
    "RSET": b"250 2.0.0 OK\r\n",
    "NOOP": b"250 2.0.0 OK\r\n",
    "QUIT": b"221 2.0.0 bye\r\n",
}


# What ``RawUpstream(hold_until_data=True)`` answers only once it has read a DATA line.
_HELD_VERBS = frozenset({"MAIL", "RCPT", "DATA", "RSET"})


@dataclass
class _RawSession:
    number: int
    peer_ip: str
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    tls: bool = False
    transactions: int = 0  # ends of data answered on this connection


class RawUpstream:
    """``async with RawUpstream() as up:`` a misbehaving SMTP server on 127.0.0.1:<up.port>.

    ``on(verb, *answers)`` scripts the next commands with that verb (``"MAIL"``,
    ``"RCPT"``, ``"DATA"``, ``"."`` for the end of the message data, ``"RSET"``...),
    on whichever connection they come; after the scripted ones the defaults answer
    again. It enters the data phase after DATA only when its answer holds a ``354``
    line, as a real server would: a body sent after a ``250`` to DATA arrives as
    commands (``500``), and ``commands`` shows it. With ``byte_by_byte`` every
    reply is written one byte at a time, each its own write; with ``tls`` it offers
    STARTTLS.

    With ``pipelining`` its own EHLO answers (before and after TLS; not scripted ones)
    advertise PIPELINING. With ``hold_until_data`` it answers none of MAIL, RCPT,
    DATA and RSET until it has read a DATA line (any command after a held one waits
    too, to keep the order); then it writes the answers to every command it read, in
    order, in one write (unless ``byte_by_byte``), and records their verbs in
    ``batches``. A client that waits for the reply to MAIL before it sends RCPT gets
    no answer at all. (A lone RSET waits for the next DATA: a holding server suits
    transactions that end with DATA.) ``drop_reused_mail`` closes that many
    connections, with no reply, at a MAIL after an earlier transaction on them: the
    server gave up on an idle connection just as the client reused it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        byte_by_byte: bool = False,
        tls: ssl.SSLContext | None = None,
        pipelining: bool = False,
        hold_until_data: bool = False,
    ) -> None:
        self.host = host
        self.byte_by_byte = byte_by_byte
        self.tls = tls  # offer STARTTLS with this context
        self.pipelining = pipelining
        self.hold_until_data = hold_until_data
        self.drop_reused_mail = 0
        # hold_until_data: (connection number, verbs answered together), one per write
        self.batches: list[tuple[int, tuple[str, ...]]] = []
        self.tls_sessions = 0
        self.port = 0
        self.connections = 0
        self.commands: list[tuple[int, str]] = []  # (connection number, line as received)
        self.received: list[Received] = []
        self._script: dict[str, list[bytes | Answer]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def on(self, verb: str, *answers: bytes | Answer) -> None:
        self._script.setdefault(verb.upper(), []).extend(answers)

    def connection_of(self, recipient: str) -> list[int]:
        """The connections on which ``recipient`` was named in a RCPT command."""
        return [
            n for n, line in self.commands if line.upper().startswith("RCPT") and recipient in line
        ]

    def delivered_to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]

    async def settled(self) -> None:
        """Wait until every ``later`` line due so far has been written."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        session = _RawSession(self.connections, str(writer.get_extra_info("peername")[0]))
        held: list[tuple[str, Answer]] = []  # hold_until_data: read, not answered yet
        try:
            await self._write(writer, Answer(b"220 raw.test ESMTP ready\r\n"))
            while line := await reader.readline():
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append((session.number, text))
                verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
                if verb == "MAIL" and session.transactions and self.drop_reused_mail:
                    self.drop_reused_mail -= 1
                    break  # closed in ``finally``, the MAIL unanswered
                answer = self._answer(verb, session)
                self._follow(session, verb, text, answer)
                if self.hold_until_data and (held or verb in _HELD_VERBS):
                    held.append((verb, answer))
                    if verb != "DATA":
                        continue
                    self.batches.append((session.number, tuple(v for v, _ in held)))
                    await self._write(writer, *(a for _, a in held))
                    held = []
                else:
                    await self._write(writer, answer)
                if verb == "QUIT":
                    break
                if verb == "STARTTLS" and self.tls is not None and answer.now.startswith(b"220"):
                    await writer.start_tls(self.tls)
                    session.tls = True
                    self.tls_sessions += 1
                if verb == "DATA" and _has_line(answer.now, b"354"):
                    body = await _read_body(reader)
                    end = self._answer(".", session)
                    await self._write(writer, end)
                    session.transactions += 1
                    if end.now[:1] == b"2":
                        self._keep(session, body)
                    session.sender, session.recipients = None, []
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            # The client went away (or cut TLS short), or sent a line longer than the
            # stream's limit (ValueError from readline): this connection is over.
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, verb: str, session: _RawSession) -> Answer:
        scripted = self._script.get(verb)
        if scripted:
            answer = scripted.pop(0)
            return answer if isinstance(answer, Answer) else Answer(answer)
        default = _DEFAULT_ANSWERS.get(verb, b"500 5.5.2 command not recognized\r\n")
        if self.tls is not None and not session.tls:
            if verb == "EHLO":
                default = b"250-raw.test greets you\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            if verb == "STARTTLS":
                return Answer(b"220 2.0.0 Ready to start TLS\r\n")
        if verb == "EHLO" and self.pipelining:
            first, rest = default.split(b"\r\n", 1)
            default = first + b"\r\n250-PIPELINING\r\n" + rest
        return Answer(default)

    def _follow(self, session: _RawSession, verb: str, text: str, answer: Answer) -> None:
        """The envelope as the server understood it: a 2xx took the sender or recipient."""
        if answer.now[:1] != b"2":
            return
        if verb == "MAIL":
            session.sender, session.recipients = _path(text), []
        elif verb == "RCPT":
            session.recipients.append(_path(text))
        elif verb == "RSET":
            session.sender, session.recipients = None, []

    def _keep(self, session: _RawSession, body: bytes) -> None:
        unstuffed = b"\r\n".join(
            line[1:] if line.startswith(b"..") else line for line in body.split(b"\r\n")
        )
        self.received.append(
            Received(
                session.sender or "",
                list(session.recipients),
                unstuffed,
                session.peer_ip,
                session.number,
            )
        )

    async def _write(self, writer: asyncio.StreamWriter, *answers: Answer) -> None:
        """Each answer's ``now``, all in one write; then each ``later`` when it is due."""
        await self._send(writer, b"".join(answer.now for answer in answers))
        for answer in answers:
            if answer.later:
                task = asyncio.create_task(self._later(writer, answer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _later(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        await asyncio.sleep(answer.delay)
        with contextlib.suppress(OSError):
            await self._send(writer, answer.later)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            return
        pieces = [data[i : i + 1] for i in range(len(data))] if self.byte_by_byte else [data]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if self.byte_by_byte:
                await asyncio.sleep(0)  # let the client read each byte on its own


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    """The message data up to the line ".", which ends it: the data's last line break
    kept, the "." line not. A "." right after DATA is an empty message (RFC 2920 §3.1:
    what a pipelining client sends when the server took none of its recipients)."""
    lines: list[bytes] = []
    while (line := await reader.readline()) != b".\r\n":
        if not line:
            raise asyncio.IncompleteReadError(b"".join(lines), None)
        lines.append(line)
    return b"".join(lines)


def _has_line(data: bytes, code: bytes) -> bool:
    return any(line.startswith(code) for line in data.split(b"\r\n"))


def _path(command: str) -> str:
    """The address inside <...> of a MAIL or RCPT command."""
    start, end = command.find("<"), command.find(">")
    return command[start + 1 : end] if 0 <= start < end else ""
