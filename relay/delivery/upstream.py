"""Talking to the next hop (aiosmtplib): connections, transactions, one Reply per recipient.
(Where the next hop is: ``relay.delivery.destinations``.)

Everything that can go wrong on the way becomes a ``Reply``: a refused
connection, a timeout, a TLS failure turn into *synthetic* replies
whose text names the host and the error, so ``policies.classify`` sees one
shape and the report never blames a provider for our network.

Connections are reused per (host, port, source IP): after a transaction the
connection goes back to an idle list and its next MAIL follows straight on (a
finished transaction leaves a clean state, RFC 5321 §4.1.4; an RSET per message
would be one more round trip), up to
``messages_per_connection`` transactions; ``connections_per_destination``
caps concurrent transactions per host:port.

The in-step rule: every reply answers a command we sent, in order, and nothing else
arrives. A delivery counts as delivered only when the end of its data was answered 2xx
on a connection that was in step before and after that reply. Why: a stale line (a
second reply to an earlier command, a line the server sent unasked) would be read as the
answer to the next command; a RCPT's ``250`` taken for the answer to DATA marks mail
delivered that never arrived, the body is then released, and the message is lost.

Once a connection is set up (greeting, EHLO, STARTTLS, AUTH: aiosmtplib), a
``ReplyReader`` (relay.delivery.reply_reader) parses every reply that arrives. To a server
that offers PIPELINING (RFC 2920, ``[delivery] pipelining``) MAIL, every RCPT and DATA go
in one write and their replies are read in order; otherwise one command at a time. Either
way the connection is checked before a command is written and after the last reply it
waits for (``_Connection.ask_all``): a malformed line, a reply the command cannot have
(``354`` to MAIL, anything but ``354`` to DATA when a recipient was accepted), a reply
nobody asked for, or bytes left over fail the transaction in progress soft (``451 4.5.0
... protocol error``, never suppressing: its earlier replies may have been stale lines
too); no reply in time ends it as a lost connection (``421 4.4.2``). Either way the
connection is closed, never pooled. A pooled connection that received anything while
idle is closed, not reused. A ``2xx`` to the end of data followed by a surplus line is not
trusted either: the message is sent again (a duplicate is better than a loss). A
pipelined DATA after a refused MAIL or every RCPT refused must be refused too; a server
that says ``354`` anyway gets a lone dot (RFC 2920 §3.1), an empty message with no
recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import aiosmtplib
import structlog

from policies.addresses import AddressError, ascii_domain
from policies.classify import Category, category_of
from policies.shaping import Key, group_of
from policies.smtp_reply import Reply, reply_from_smtp, synthetic_reply
from relay.config import DeliveryConfig
from relay.delivery.destinations import Destination
from relay.delivery.reply_reader import MalformedReply, ReplyReader
from relay.errors import describe
from relay.wire import wire_form

__all__ = ["Transaction", "TransactionResult", "Upstream", "shaping_key"]

log = structlog.get_logger("relay.upstream")

_IDLE_SECONDS = 10.0


def shaping_key(destination: Destination, source_ip: str) -> Key:
    """The shaping key (``policies.shaping``) a connection to ``destination`` counts in."""
    return Key(group_of(destination.server_name or destination.host), source_ip)


@dataclass(frozen=True)
class Transaction:
    """One message to some recipients that share a route."""

    sender: str
    recipients: tuple[str, ...]
    body: bytes
    smtputf8: bool = False


@dataclass
class TransactionResult:
    replies: dict[str, Reply] = field(default_factory=dict)
    source_ip: str | None = None
    destination: str | None = None
    # Recipients whose reply must never suppress them: a protocol failure's reply carries
    # the server's words, which an operator's classify rule could read as a hard bounce.
    spared: set[str] = field(default_factory=set)
    # Recipients whose reply answered the end of data: the server had accepted them at RCPT,
    # so its "user unknown" then is no evidence that the mailbox does not exist.
    after_data: set[str] = field(default_factory=set)
    # The replies are the server's greeting: it refused the connection itself.
    at_greeting: bool = False


class _ProtocolError(Exception):
    """The upstream's replies are out of step with our commands (see the module
    docstring): nothing more read on this connection can be trusted."""

    recipients: tuple[str, ...] = ()  # those of the transaction it broke into


@dataclass
class _Connection:
    client: aiosmtplib.SMTP  # set up the session (greeting, EHLO, TLS, AUTH); then idle
    source_ip: str
    reader: ReplyReader  # every command after the setup: written and answered here
    pipelining: bool = False  # the server offered PIPELINING and the config allows it
    used: int = 0
    idle_since: float = 0.0
    reused: bool = False
    key: Key | None = None  # counted in Upstream._open while not None

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected

    def out_of_step(self) -> str | None:
        """Why the replies that arrived are not the ones we read, or None when in step."""
        reader = self.reader
        if reader.malformed is not None:
            return f"malformed reply line starting {reader.malformed!r}"
        if reader.surplus:
            return f"{reader.surplus} reply line(s) more than commands sent"
        if reader.unread:
            return f"{reader.unread} reply line(s) sent and never read"
        if reader.partial or _buffered(self.client):
            return "bytes after the last reply that no command asked for"
        return None

    async def ask(self, what: str, command: bytes, timeout: float) -> aiosmtplib.SMTPResponse:
        """Send one command and read its one reply, in step before and after."""
        [response] = await self.ask_all([(what, command)], timeout)
        return response

    async def ask_all(
        self, commands: Sequence[tuple[str, bytes]], timeout: float
    ) -> list[aiosmtplib.SMTPResponse]:
        """Send ``commands`` in one write and read their replies, in order; in step before
        the write and after the last reply (replies waiting to be read in between are the
        pipelined ones). Each reply waits up to ``timeout``."""
        first = commands[0][0]
        self._require_in_step(f"before {first}")
        self.reader.write(b"".join(line for _, line in commands), replies=len(commands))
        responses = []
        for what, _ in commands:
            try:
                responses.append(await self.reader.next_reply(timeout))
            except MalformedReply as exc:
                raise _ProtocolError(f"{what}: {exc}") from exc
        self._require_in_step(f"after the reply to {commands[-1][0]}")
        return responses

    def _require_in_step(self, when: str) -> None:
        why = self.out_of_step()
        if why is not None:
            raise _ProtocolError(f"{why} ({when})")


class _Stale(Exception):
    """A reused connection the server had closed; nothing of the transaction was sent."""


class Upstream:
    """Sends transactions to destinations; owns the connection cache and the TLS contexts."""

    def __init__(self, config: DeliveryConfig, hostname: str) -> None:
        self.config = config
        self.hostname = hostname
        self._idle: dict[tuple[str, int, str], list[_Connection]] = {}
        self._per_destination: dict[tuple[str, int], asyncio.Semaphore] = {}
        # Open connections (busy or idle) per shaping key, and how many this relay may keep
        # (relay.delivery.shaping sets it; None: no cap beyond connections_per_destination).
        self._open: Counter[Key] = Counter()
        self.connection_cap: Callable[[Key], int | None] = lambda key: None
        # One TLS context per kind (verify the certificate or not), shared by every
        # connection. aiosmtplib otherwise builds one per connection, loading the system's
        # CA store each time: 51 ms of CPU and 0.8 MB held for as long as the connection
        # stays open (BENCHMARKS.md, "Realistic delivery").
        self._tls_contexts: dict[bool, asyncio.Future[ssl.SSLContext]] = {}

    async def _tls_context(self, verify: bool) -> ssl.SSLContext:
        """The shared context, built in a thread the first time (reading the CA store is
        slow file work). The CA store is read once per Upstream: a new one (a restart)
        reads it again."""
        future = self._tls_contexts.get(verify)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(_build_tls_context, verify))
            self._tls_contexts[verify] = future
            # One that failed (a CA file that cannot be read, out of file descriptors) is
            # built again for the next connection, not kept failing every STARTTLS.
            future.add_done_callback(partial(self._forget_failed_context, verify))
        # Shielded: a caller cancelled while it is built must not cancel it for the others.
        return await asyncio.shield(future)

    def _forget_failed_context(self, verify: bool, future: asyncio.Future[ssl.SSLContext]) -> None:
        if (future.cancelled() or future.exception() is not None) and self._tls_contexts.get(
            verify
        ) is future:
            del self._tls_contexts[verify]

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await self._close(conn)
        self._idle.clear()

    def open_connections(self, key: Key) -> int:
        """This relay's open connections (busy or idle) counted in shaping key ``key``."""
        return self._open.get(key, 0)

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self, destinations: Sequence[Destination], source_ip: str, transaction: Transaction
    ) -> TransactionResult:
        """Try each destination in order until one answers; a reply per recipient."""
        result = TransactionResult()
        for destination in destinations:
            result = await self._send_to(destination, source_ip, transaction)
            reached = not all(r.synthetic for r in result.replies.values())
            if reached:
                return result
        return result

    async def _send_to(
        self, destination: Destination, source_ip: str, transaction: Transaction
    ) -> TransactionResult:
        key = (destination.host, destination.port)
        slots = self._per_destination.setdefault(
            key, asyncio.Semaphore(self.config.connections_per_destination)
        )
        async with slots:
            fresh = False
            while True:
                try:
                    conn = await self._connection(destination, source_ip, fresh=fresh)
                except _ConnectFailed as failed:
                    return TransactionResult(
                        {r: failed.reply for r in transaction.recipients},
                        source_ip,
                        destination.name,
                        at_greeting=failed.at_greeting,
                    )
                result = TransactionResult(source_ip=conn.source_ip, destination=destination.name)
                try:
                    await self._run(conn, transaction, result)
                    break
                except _Stale:
                    await self._close(conn, polite=False)
                    fresh = True  # once, on a new connection
                except _ProtocolError as error:
                    await self._close(conn, polite=False)
                    _protocol_failure(result, transaction, destination, conn, error)
                    return result
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    reply = synthetic_reply(
                        421,
                        "4.4.2",
                        f"lost connection with {destination.name} ({conn.source_ip}): "
                        f"{describe(exc)}",
                    )
                    for r in transaction.recipients:
                        result.replies.setdefault(r, reply)
                    await self._close(conn, polite=False)
                    return result
                except BaseException:
                    # Anything else (an encoding error, a bug, a cancel) leaves the session in
                    # an unknown state: close it rather than leak the socket, and let it rise.
                    await self._close(conn, polite=False)
                    raise
            self._release(destination, conn)
            return result

    async def _run(
        self, conn: _Connection, transaction: Transaction, result: TransactionResult
    ) -> None:
        """One or more SMTP transactions: recipients refused as "too many" get a new one."""
        replies = result.replies
        pending = list(transaction.recipients)
        stale_possible = conn.reused
        while pending:
            try:
                retry_later = await self._transaction(
                    conn, transaction, pending, result, stale_possible=stale_possible
                )
            except _ProtocolError as error:
                error.recipients = tuple(pending)
                raise
            stale_possible = False
            if len(retry_later) == len(pending):
                return  # the server took none of them: keep its 452/552 as the reply
            for r in retry_later:
                replies.pop(r, None)
            pending = retry_later

    async def _transaction(
        self,
        conn: _Connection,
        transaction: Transaction,
        recipients: list[str],
        result: TransactionResult,
        *,
        stale_possible: bool = False,
    ) -> list[str]:
        """MAIL, RCPT for each of ``recipients``, DATA; their replies in ``result``. Returns
        the recipients refused as "too many", which go in the next transaction.

        To a server that offers PIPELINING (RFC 2920) MAIL, the RCPTs and DATA go in one
        write and their replies are read in order: two round trips a message instead of
        four, which is most of a transaction's time to a server tens of milliseconds away.
        The body still waits for the 354."""
        replies = result.replies
        envelope = _envelope(conn.client, transaction, recipients, replies)
        if envelope is None:
            return []
        sender, wire, options, encoding = envelope
        timeout = self.config.command_timeout.total_seconds()
        mail_line = _command(b"MAIL FROM:", sender, options, encoding)
        send_envelope = _pipelined_envelope if conn.pipelining else _stepped_envelope
        try:
            accepted, too_many, start = await send_envelope(
                conn, mail_line, wire, encoding, replies, timeout
            )
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            # Nothing was delivered: the server went away before it could answer DATA.
            if stale_possible:
                raise _Stale from exc
            raise
        if start is None:
            return too_many  # the server took no recipient: their refusals are in replies
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise _ProtocolError(f"DATA answered {start.code}, not 354{_quoted(start)}")
        reply = await self._body(conn, transaction.body)
        replies.update(dict.fromkeys(accepted, reply))
        result.after_data.update(accepted)
        return too_many

    async def _body(self, conn: _Connection, body: bytes) -> Reply:
        """The body once the server said 354, and the server's word on it. It waits
        data_timeout (RFC 5321 §4.5.3.2.6: ten minutes); the commands before it waited
        command_timeout."""
        wire = wire_form(body)
        timeout = self.config.data_timeout.total_seconds()
        end = await conn.ask("the end of data", wire, timeout)
        _expect(end, "the end of data", _FINAL_CLASSES)
        return reply_from_smtp(end.code, end.message)

    # -- connections ----------------------------------------------------------------------------

    async def _connection(
        self, destination: Destination, source_ip: str, *, fresh: bool = False
    ) -> _Connection:
        idle = self._idle.get((destination.host, destination.port, source_ip), [])
        while idle and not fresh:
            conn = idle.pop()
            if (
                time.monotonic() - conn.idle_since < _IDLE_SECONDS
                and conn.client.is_connected
                and _in_step(destination, conn, "reuse")
            ):
                conn.reused = True
                return conn
            await self._close(conn, polite=False)
        key = shaping_key(destination, source_ip)
        cap = self.connection_cap(key)
        if cap is not None and self._open[key] >= cap:
            await self._close_idle(key)  # another host of the group's, kept idle
        return await self._connect(destination, source_ip)

    async def _close_idle(self, key: Key) -> None:
        for idle in self._idle.values():
            if idle and idle[0].key == key:
                await self._close(idle.pop(0), polite=False)
                return

    async def _close(self, conn: _Connection, *, polite: bool = True) -> None:
        self._forget(conn)
        await _quit_connection(conn, polite=polite)

    def _forget(self, conn: _Connection) -> None:
        """``conn`` is closing: it no longer counts in its shaping key."""
        if conn.key is not None:
            self._open[conn.key] -= 1
            if self._open[conn.key] <= 0:
                del self._open[conn.key]
            conn.key = None

    async def _connect(self, destination: Destination, source_ip: str) -> _Connection:
        cfg = self.config
        tls = destination.tls
        client = aiosmtplib.SMTP(
            hostname=destination.host,
            port=destination.port,
            source_address=(source_ip, 0),
            local_hostname=self.hostname,
            timeout=cfg.command_timeout.total_seconds(),
            start_tls=False,
            validate_certs=tls == "required",
        )
        where = f"{destination.name} from {source_ip}"
        try:
            await client.connect(timeout=cfg.connect_timeout.total_seconds())
            await self._secure(client, destination, where)
            if destination.username:
                await client.login(destination.username, destination.password)
            # Our reader takes over here: aiosmtplib's own buffer check (``_buffered``)
            # covers what the greeting, EHLO and AUTH left behind.
            reader = ReplyReader.install(client)
        except aiosmtplib.SMTPConnectResponseError as exc:
            # The server itself spoke (e.g. 421 or 554 at greeting): a real reply.
            raise _ConnectFailed(reply_from_smtp(exc.code, exc.message), at_greeting=True) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _quit(client, polite=False)
            raise _ConnectFailed(
                synthetic_reply(454, "4.7.0", f"AUTH at {where} failed: {exc.code} {exc.message}")
            ) from exc
        except _ConnectFailed:
            await _quit(client, polite=False)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
            await _quit(client, polite=False)
            raise _ConnectFailed(_failure_reply(where, exc)) from exc
        sockname = client.get_transport_info("sockname")
        used_ip = str(sockname[0]) if sockname else source_ip
        key = shaping_key(destination, source_ip)
        self._open[key] += 1
        pipelining = cfg.pipelining and client.supports_extension("pipelining")
        return _Connection(client, used_ip, reader, pipelining=pipelining, key=key)

    async def _secure(self, client: aiosmtplib.SMTP, destination: Destination, where: str) -> None:
        await client.ehlo()  # learn the extensions (STARTTLS, AUTH, SIZE, SMTPUTF8)
        if destination.tls == "off":
            return
        if not client.supports_extension("starttls"):
            if destination.tls == "required":
                raise _ConnectFailed(
                    synthetic_reply(
                        421, "4.7.10", f"TLS required for {where}, but STARTTLS is not offered"
                    )
                )
            return
        try:
            context = await self._tls_context(destination.tls == "required")
            await client.starttls(
                server_hostname=destination.server_name or destination.host, tls_context=context
            )
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            raise _ConnectFailed(
                synthetic_reply(421, "4.7.0", f"TLS handshake with {where} failed: {describe(exc)}")
            ) from exc
        # RFC 3207 §4.2: what EHLO said before TLS no longer holds, and aiosmtplib forgot
        # it. Ask again now: the extensions decide the MAIL options (8BITMIME, SMTPUTF8),
        # and an EHLO aiosmtplib would slip in before MAIL later is a reply we did not count.
        await client.ehlo()

    def _release(self, destination: Destination, conn: _Connection) -> None:
        conn.used += 1
        key = (destination.host, destination.port, conn.source_ip)
        idle = self._idle.setdefault(key, [])
        if not _in_step(destination, conn, "release"):
            self._forget(conn)
            conn.client.close()
            return
        cap = self.connection_cap(conn.key) if conn.key is not None else None
        if (
            conn.used >= self.config.messages_per_connection
            or not conn.client.is_connected
            or len(idle) >= self.config.connections_per_destination
            or (cap is not None and conn.key is not None and self._open[conn.key] > cap)
        ):
            self._forget(conn)
            task = asyncio.create_task(_quit_connection(conn), name="upstream.quit")
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)


_background: set[asyncio.Task[None]] = set()


class _ConnectFailed(Exception):
    def __init__(self, reply: Reply, *, at_greeting: bool = False) -> None:
        super().__init__(reply.text)
        self.reply = reply
        self.at_greeting = at_greeting


def _failure_reply(where: str, exc: BaseException) -> Reply:
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return synthetic_reply(421, "4.4.2", f"connect to {where}: timed out")
    if isinstance(exc, ssl.SSLError):
        return synthetic_reply(421, "4.7.0", f"TLS with {where} failed: {describe(exc)}")
    return synthetic_reply(421, "4.4.1", f"connect to {where}: {describe(exc)}")


# Replies a MAIL, RCPT or the end of data may have; anything else (1xx, 3xx) is a server
# out of step with us.
_FINAL_CLASSES = frozenset({2, 4, 5})


def _expect(response: aiosmtplib.SMTPResponse, what: str, classes: frozenset[int]) -> None:
    if response.code // 100 not in classes:
        raise _ProtocolError(f"{what} answered {response.code}{_quoted(response)}")


def _quoted(response: aiosmtplib.SMTPResponse) -> str:
    """The server's words for a protocol error's text: its first line, cut short, ASCII."""
    lines = response.message.splitlines()
    first = lines[0][:120].encode("ascii", "replace").decode("ascii") if lines else ""
    return f" ({response.code} {first})" if first else ""


def _buffered(client: aiosmtplib.SMTP) -> int:
    """Bytes aiosmtplib holds after the last reply it parsed. A second reply that arrived
    in the same read as the first stays there, to be taken for the next command's reply.
    (``_buffer`` is aiosmtplib's own; tests/relay/delivery/test_upstream_protocol.py fails if it
    goes.)"""
    buffer = getattr(client.protocol, "_buffer", b"")
    return len(buffer)


def _in_step(destination: Destination, conn: _Connection, when: str) -> bool:
    why = conn.out_of_step()
    if why is None:
        return True
    log.warning(
        "upstream.out_of_step",
        destination=destination.name,
        source_ip=conn.source_ip,
        why=why,
        at=when,
        action="connection closed, not reused",
    )
    return False


def _protocol_failure(
    result: TransactionResult,
    transaction: Transaction,
    destination: Destination,
    conn: _Connection,
    error: _ProtocolError,
) -> None:
    """Every recipient of the transaction in progress gets a soft, non-suppressing reply,
    whatever it was answered before: those replies may have been stale lines. Recipients
    an earlier transaction of this message ended in step (after "too many recipients")
    keep theirs."""
    reply = synthetic_reply(
        451,
        "4.5.0",
        f"protocol error with {destination.name} ({conn.source_ip}): {error}; connection closed",
    )
    log.warning(
        "upstream.protocol_error",
        destination=destination.name,
        source_ip=conn.source_ip,
        error=str(error),
        action="connection closed; the recipients are retried on a new connection",
    )
    for r in transaction.recipients:
        if r in error.recipients or r not in result.replies:
            result.replies[r] = reply
            result.spared.add(r)


# (accepted, refused as "too many", the reply to DATA or None when DATA was not reached)
_Envelope = tuple[list[str], list[str], aiosmtplib.SMTPResponse | None]


async def _stepped_envelope(
    conn: _Connection,
    mail_line: bytes,
    wire: dict[str, str],
    encoding: str,
    replies: dict[str, Reply],
    timeout: float,
) -> _Envelope:
    """MAIL, each RCPT and DATA one at a time, each after the reply to the one before."""
    mail = await conn.ask("MAIL", mail_line, timeout)
    _expect(mail, "MAIL", _FINAL_CLASSES)
    if mail.code // 100 != 2:
        replies.update(dict.fromkeys(wire, reply_from_smtp(mail.code, mail.message)))
        await _reset(conn, timeout)
        return [], [], None
    responses = []
    for address in wire.values():
        response = await conn.ask("RCPT", _command(b"RCPT TO:", address, (), encoding), timeout)
        _expect(response, "RCPT", _FINAL_CLASSES)
        responses.append(response)
    accepted, too_many = _judge_recipients(wire, responses, replies)
    if not accepted:
        await _reset(conn, timeout)
        return [], too_many, None
    return accepted, too_many, await conn.ask("DATA", b"DATA\r\n", timeout)


async def _pipelined_envelope(
    conn: _Connection,
    mail_line: bytes,
    wire: dict[str, str],
    encoding: str,
    replies: dict[str, Reply],
    timeout: float,
) -> _Envelope:
    """MAIL, every RCPT and DATA in one write (RFC 2920), then their replies in order.
    Every reply is checked, as §3.1 requires: DATA may have been accepted although the
    server refused the sender or every recipient."""
    batch = [("MAIL", mail_line)]
    batch += [("RCPT", _command(b"RCPT TO:", a, (), encoding)) for a in wire.values()]
    batch.append(("DATA", b"DATA\r\n"))
    mail, *responses, start = await conn.ask_all(batch, timeout)
    _expect(mail, "MAIL", _FINAL_CLASSES)
    for response in responses:
        _expect(response, "RCPT", _FINAL_CLASSES)
    if mail.code // 100 != 2:
        replies.update(dict.fromkeys(wire, reply_from_smtp(mail.code, mail.message)))
        accepted: list[str] = []
        too_many: list[str] = []
    else:
        accepted, too_many = _judge_recipients(wire, responses, replies)
    if accepted:
        return accepted, too_many, start
    await _refused_data(conn, start, timeout)
    await _reset(conn, timeout)
    return [], too_many, None


def _judge_recipients(
    wire: dict[str, str], responses: Sequence[aiosmtplib.SMTPResponse], replies: dict[str, Reply]
) -> tuple[list[str], list[str]]:
    """The RCPT replies, in the order of ``wire``: (accepted, refused as "too many");
    refusals in ``replies``."""
    accepted: list[str] = []
    too_many: list[str] = []
    for r, response in zip(wire, responses, strict=True):
        if response.code // 100 == 2:
            accepted.append(r)
            continue
        reply = replies[r] = reply_from_smtp(response.code, response.message)
        if category_of(reply) is Category.TOO_MANY_RECIPIENTS:
            # RFC 5321 §4.5.3.1.10: temporary; these go in the next transaction.
            too_many.append(r)
    return accepted, too_many


async def _refused_data(conn: _Connection, start: aiosmtplib.SMTPResponse, timeout: float) -> None:
    """A pipelined DATA after a refused MAIL or every RCPT refused. RFC 2920 §3.1: the
    server must refuse it; one that said 354 anyway gets a lone dot (an empty message with
    no recipient), so the connection stays in step. Any other answer DATA cannot have is
    a protocol error."""
    if start.code == aiosmtplib.SMTPStatus.start_input:
        end = await conn.ask("the end of an empty data", b".\r\n", timeout)
        _expect(end, "the end of an empty data", _FINAL_CLASSES)
    elif start.code // 100 not in (4, 5):
        raise _ProtocolError(f"DATA answered {start.code}{_quoted(start)}")


async def _reset(conn: _Connection, timeout: float) -> None:
    """RSET after an envelope the server refused. A ``421`` to it (a server shutting
    down) or a lost connection keeps the refusals, which were read in step, and closes
    the connection. Any other reply but ``250`` (RFC 5321 §4.1.1.5) is a protocol error:
    after a pipelined batch it may be a late reply to the batch, every reply before it
    shifted by one, so the refusals are not kept either."""
    try:
        response = await conn.ask("RSET", b"RSET\r\n", timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError):
        conn.client.close()
        return
    if response.code == aiosmtplib.SMTPStatus.domain_unavailable:  # 421
        conn.client.close()
        return
    if response.code // 100 != 2:
        raise _ProtocolError(f"RSET answered {response.code}{_quoted(response)}")


async def _quit(client: aiosmtplib.SMTP, *, polite: bool = True) -> None:
    """End a session still being set up (aiosmtplib reads its replies)."""
    if polite and client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit(timeout=5)
    with contextlib.suppress(Exception):
        client.close()


async def _quit_connection(conn: _Connection, *, polite: bool = True) -> None:
    """End a set-up session: its replies are the reader's."""
    try:
        if polite and conn.is_connected:
            with contextlib.suppress(
                aiosmtplib.SMTPException, OSError, TimeoutError, MalformedReply
            ):
                conn.reader.write(b"QUIT\r\n")
                await conn.reader.next_reply(5)
    finally:  # a cancel while waiting for the 221 still closes the socket
        with contextlib.suppress(Exception):
            conn.client.close()


# What may not appear in an address on a command line: a CR or LF would end the command
# early and start another (command injection). The intake refuses such addresses; this
# is the last line of defence, as aiosmtplib's own check was.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _command(verb: bytes, address: str, options: Sequence[str], encoding: str) -> bytes:
    """``MAIL FROM:<address> OPTIONS`` / ``RCPT TO:<address>`` as a line on the wire."""
    if _CONTROL.search(address):
        raise ValueError(f"address {address!r} contains a control character")
    line = verb + b"<" + address.encode(encoding) + b">"
    if options:
        line += b" " + " ".join(options).encode("ascii")
    return line + b"\r\n"


def _build_tls_context(verify: bool) -> ssl.SSLContext:
    """What aiosmtplib would build for ``validate_certs=verify``: the default context
    (system CA store, or SSL_CERT_FILE), checking the certificate and host name or not."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = verify
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return context


# What a next hop without SMTPUTF8 / 8BITMIME cannot take: permanent (RFC 6531 §3.5, RFC 6152),
# never about the recipient's existence, so they suppress nobody (policies/classify.py).
NO_SMTPUTF8_SENDER = synthetic_reply(
    550, "5.6.7", "the next hop has no SMTPUTF8 and the sender's local part is not ASCII"
)
NO_SMTPUTF8_RECIPIENT = synthetic_reply(
    553, "5.6.7", "the next hop has no SMTPUTF8 and this recipient's local part is not ASCII"
)
NO_8BITMIME = synthetic_reply(
    554, "5.6.3", "the next hop has no 8BITMIME and the message has 8-bit content"
)


def downgrade_address(address: str) -> str | None:
    """The form of ``address`` a server without SMTPUTF8 can take (RFC 6531 §3.2): ASCII as
    it is, a UTF-8 domain as its IDNA A-label; None when the local part is not ASCII (no
    downgrade exists) or the domain has no A-label."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{ascii_domain(domain)}"  # IDNA 2008, as every key (policies.addresses)
    except AddressError:
        return None


def _envelope(
    client: aiosmtplib.SMTP,
    transaction: Transaction,
    recipients: list[str],
    replies: dict[str, Reply],
) -> tuple[str, dict[str, str], list[str], str] | None:
    """(sender, {recipient: address on the wire}, MAIL options, encoding) for this server;
    recipients it cannot take get their reply in ``replies``; None when nothing can go."""
    utf8 = transaction.smtputf8 and client.supports_extension("smtputf8")
    options = ["SMTPUTF8"] if utf8 else []
    if client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    elif not transaction.body.isascii():
        # RFC 6152: 8-bit data only to a server that announced 8BITMIME. We do not rewrite
        # the MIME structure (it would break DKIM signatures anyway).
        replies.update(dict.fromkeys(recipients, NO_8BITMIME))
        return None
    sender = transaction.sender if utf8 else downgrade_address(transaction.sender)
    if sender is None:
        replies.update(dict.fromkeys(recipients, NO_SMTPUTF8_SENDER))
        return None
    wire: dict[str, str] = {}
    for r in recipients:
        address = r if utf8 else downgrade_address(r)
        if address is None:
            replies[r] = NO_SMTPUTF8_RECIPIENT
        else:
            wire[r] = address
    return (sender, wire, options, "utf-8" if utf8 else "ascii") if wire else None
