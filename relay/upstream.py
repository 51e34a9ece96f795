"""Talking to the next hop (aiosmtplib): routes, destinations, one Reply per recipient.

Everything that can go wrong on the way becomes a ``Reply``: a refused
connection, a timeout, a TLS or DNS failure turn into *synthetic* replies
whose text names the host and the error, so ``policies.classify`` sees one
shape and the report never blames a provider for our network.

Connections are reused per (host, port, source IP): after a transaction the
connection goes back to an idle list and its next MAIL follows straight on (a
finished transaction leaves a clean state, RFC 5321 §4.1.4; an RSET per message
would be one more round trip), up to
``messages_per_connection`` transactions; ``connections_per_destination``
caps concurrent transactions per host:port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

from policies.classify import Category, category_of
from policies.replies import Reply, reply_from_smtp, synthetic_reply
from relay.config import DeliveryConfig, RouteConfig
from relay.smtp_data import wire_form

__all__ = ["Destination", "Transaction", "TransactionResult", "Upstream"]

log = structlog.get_logger("relay.upstream")

_IDLE_SECONDS = 10.0


@dataclass(frozen=True)
class Destination:
    host: str  # what we connect to: a name, or the MX host's address we resolved
    port: int
    tls: str = "opportunistic"
    username: str = ""
    password: str = ""
    server_name: str = ""  # the MX host name (TLS SNI, the record); "" when host is a name

    @property
    def name(self) -> str:
        return f"{self.server_name or self.host}:{self.port}"


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


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    source_ip: str
    used: int = 0
    idle_since: float = 0.0
    reused: bool = False


class _Stale(Exception):
    """A reused connection the server had closed; nothing of the transaction was sent."""


class Upstream:
    """Sends transactions to destinations; owns the connection cache and DNS."""

    def __init__(self, config: DeliveryConfig, hostname: str) -> None:
        self.config = config
        self.hostname = hostname
        self._idle: dict[tuple[str, int, str], list[_Connection]] = {}
        self._per_destination: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = list(config.nameservers)
        if config.dns_port:
            self._resolver.port = config.dns_port
        self._resolver.lifetime = config.connect_timeout.total_seconds()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await _quit(conn.client)
        self._idle.clear()

    # -- destinations ---------------------------------------------------------------------------

    async def destinations(self, route: RouteConfig, domain: str) -> list[Destination] | Reply:
        """Where mail for ``domain`` goes on ``route``, or the Reply that ends the attempt."""
        if route.mode != "mx":
            return [
                Destination(h, p, route.tls, route.username, route.password) for h, p in route.hosts
            ]
        return await self._mx_destinations(route, domain)

    async def _mx_destinations(self, route: RouteConfig, domain: str) -> list[Destination] | Reply:
        port = route.mx_port
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return synthetic_reply(550, "5.1.2", f"DNS: domain {domain} does not exist (NXDOMAIN)")
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX -> the domain itself is the implicit MX (if it has A/AAAA).
            return await self._implicit_mx(route, domain, port)
        except (dns.exception.DNSException, OSError) as exc:
            return synthetic_reply(
                451, "4.4.3", f"DNS: MX lookup for {domain} failed: {_describe(exc)}"
            )
        records = sorted(answer, key=lambda r: r.preference)
        if len(records) == 1 and str(records[0].exchange) == ".":
            return synthetic_reply(
                556, "5.1.10", f"DNS: {domain} publishes a null MX (RFC 7505): it accepts no mail"
            )
        hosts = [str(r.exchange).rstrip(".") for r in records if str(r.exchange) != "."]
        destinations: list[Destination] = []
        failure: Reply | None = None
        for host in hosts:
            found = await self._addresses(host)
            if isinstance(found, Reply):
                failure = failure or found
                continue
            destinations += [Destination(ip, port, route.tls, server_name=host) for ip in found]
        return (
            destinations
            or failure
            or synthetic_reply(451, "4.4.3", f"DNS: no address for any MX host of {domain}")
        )

    async def _addresses(self, host: str) -> list[str] | Reply:
        """A and AAAA of ``host`` through our resolver (the one the operator configured)."""
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.DNSException, OSError) as exc:
                return synthetic_reply(
                    451, "4.4.3", f"DNS: {rdtype} lookup for {host} failed: {_describe(exc)}"
                )
            addresses += [r.to_text() for r in answer]
        return addresses

    async def _implicit_mx(
        self, route: RouteConfig, domain: str, port: int
    ) -> list[Destination] | Reply:
        """RFC 5321 §5.1: a domain without MX records is its own mail host."""
        found = await self._addresses(domain)
        if isinstance(found, Reply):
            return found
        if not found:
            return synthetic_reply(550, "5.1.2", f"DNS: {domain} has no MX and no address records")
        return [Destination(ip, port, route.tls, server_name=domain) for ip in found]

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
                    )
                result = TransactionResult(source_ip=conn.source_ip, destination=destination.name)
                try:
                    await self._run(conn, transaction, result.replies)
                    break
                except _Stale:
                    await _quit(conn.client, polite=False)
                    fresh = True  # once, on a new connection
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    reply = synthetic_reply(
                        421,
                        "4.4.2",
                        f"lost connection with {destination.name} ({conn.source_ip}): "
                        f"{_describe(exc)}",
                    )
                    for r in transaction.recipients:
                        result.replies.setdefault(r, reply)
                    await _quit(conn.client, polite=False)
                    return result
                except BaseException:
                    # Anything else (an encoding error, a bug, a cancel) leaves the session in
                    # an unknown state: close it rather than leak the socket, and let it rise.
                    await _quit(conn.client, polite=False)
                    raise
            self._release(destination, conn)
            return result

    async def _run(
        self, conn: _Connection, transaction: Transaction, replies: dict[str, Reply]
    ) -> None:
        """One or more SMTP transactions: recipients refused as "too many" get a new one."""
        pending = list(transaction.recipients)
        first = conn.reused
        while pending:
            retry_later = await self._transaction(
                conn.client, transaction, pending, replies, stale_possible=first
            )
            first = False
            if len(retry_later) == len(pending):
                return  # the server took none of them: keep its 452/552 as the reply
            for r in retry_later:
                replies.pop(r, None)
            pending = retry_later

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        transaction: Transaction,
        recipients: list[str],
        replies: dict[str, Reply],
        *,
        stale_possible: bool = False,
    ) -> list[str]:
        envelope = _envelope(client, transaction, recipients, replies)
        if envelope is None:
            return []
        sender, wire, options, encoding = envelope
        recipients = list(wire)
        try:
            await client.mail(sender, options=options, encoding=encoding)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            if stale_possible:
                raise _Stale from exc
            raise
        except aiosmtplib.SMTPResponseException as exc:
            for r in recipients:
                replies[r] = reply_from_smtp(exc.code, exc.message)
            await _rset(client)
            return []
        accepted, too_many = [], []
        for r in recipients:
            try:
                await client.rcpt(wire[r], encoding=encoding)
                accepted.append(r)
            except aiosmtplib.SMTPResponseException as exc:
                reply = replies[r] = reply_from_smtp(exc.code, exc.message)
                if category_of(reply) is Category.TOO_MANY_RECIPIENTS:
                    # RFC 5321 §4.5.3.1.10: temporary; these go in the next transaction.
                    too_many.append(r)
        if not accepted:
            await _rset(client)
            return too_many
        try:
            response = await _data(
                client, transaction.body, timeout=self.config.data_timeout.total_seconds()
            )
            reply = reply_from_smtp(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            reply = reply_from_smtp(exc.code, exc.message)
        for r in accepted:
            replies[r] = reply
        return too_many

    # -- connections ----------------------------------------------------------------------------

    async def _connection(
        self, destination: Destination, source_ip: str, *, fresh: bool = False
    ) -> _Connection:
        idle = self._idle.get((destination.host, destination.port, source_ip), [])
        while idle and not fresh:
            conn = idle.pop()
            if time.monotonic() - conn.idle_since < _IDLE_SECONDS and conn.client.is_connected:
                conn.reused = True
                return conn
            await _quit(conn.client, polite=False)
        return await self._connect(destination, source_ip)

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
        except aiosmtplib.SMTPConnectResponseError as exc:
            # The server itself spoke (e.g. 421 or 554 at greeting): a real reply.
            raise _ConnectFailed(reply_from_smtp(exc.code, exc.message)) from exc
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
        return _Connection(client, used_ip)

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
            await client.starttls(server_hostname=destination.server_name or destination.host)
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            raise _ConnectFailed(
                synthetic_reply(
                    421, "4.7.0", f"TLS handshake with {where} failed: {_describe(exc)}"
                )
            ) from exc

    def _release(self, destination: Destination, conn: _Connection) -> None:
        conn.used += 1
        key = (destination.host, destination.port, conn.source_ip)
        idle = self._idle.setdefault(key, [])
        if (
            conn.used >= self.config.messages_per_connection
            or not conn.client.is_connected
            or len(idle) >= self.config.connections_per_destination
        ):
            task = asyncio.create_task(_quit(conn.client), name="upstream.quit")
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)


_background: set[asyncio.Task[None]] = set()


class _ConnectFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _describe(exc: BaseException) -> str:
    """A short, stable description: what an operator greps for, not a traceback."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "Connection refused"
        if isinstance(err, TimeoutError | aiosmtplib.SMTPTimeoutError):
            return "timed out"
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _failure_reply(where: str, exc: BaseException) -> Reply:
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return synthetic_reply(421, "4.4.2", f"connect to {where}: timed out")
    if isinstance(exc, ssl.SSLError):
        return synthetic_reply(421, "4.7.0", f"TLS with {where} failed: {_describe(exc)}")
    return synthetic_reply(421, "4.4.1", f"connect to {where}: {_describe(exc)}")


async def _data(client: aiosmtplib.SMTP, body: bytes, timeout: float) -> aiosmtplib.SMTPResponse:
    """aiosmtplib's ``data()`` through its protocol's public commands, with the body in its
    wire form from ``relay.smtp_data`` rather than from aiosmtplib's per-byte regexes."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    wire = wire_form(body)
    try:
        start = await protocol.execute_command(b"DATA", timeout=timeout)
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol.write(wire)
        response = await protocol.read_response(timeout=timeout)  # expects it before any await
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()  # as data() does: the connection is in an unknown state
        raise
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _rset(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await client.rset()


async def _quit(client: aiosmtplib.SMTP, *, polite: bool = True) -> None:
    if polite and client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit(timeout=5)
    with contextlib.suppress(Exception):
        client.close()


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
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
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
