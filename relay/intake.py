"""SMTP intake (aiosmtpd): who may relay, RCPT suppression check, DATA commit.

The relay's contract with its clients lives here:
- only clients in ``smtp.allowed_clients`` (or authenticated ones) may relay;
- a suppressed recipient is refused at RCPT with 550 5.7.1, never queued;
- "250 queued as <id>" is sent only after the message, one delivery per
  recipient and the accepted event are committed; any failure answers
  451 4.3.0 and the client keeps the message;
- mail to the DSN domain (``[dsn] domain``) is a bounce coming back: it is
  taken from any client, read by ``relay.bounces`` and never relayed;
- hostile input is refused before anything is stored: addresses SMTP does not allow
  (``policies.addresses``), a non-ASCII address without SMTPUTF8 and, in mail to relay,
  data with a line end other than CRLF or a NUL (``policies.line_endings``: no SMTP
  smuggling through us) or more ``Received:`` fields than ``[smtp] max_hops`` (a loop);
- abusive clients are cut (``relay.limits``) and PROXY headers are honoured only from
  ``[smtp] proxy_protocol_from`` (``relay.proxy``); the SMTP conversation itself is
  ``relay.protocol.RelaySMTP``, which calls the hooks here.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from policies.addresses import AddressError, domain_of, normalise_address, validate_address
from policies.headers import count_received, summarise_headers
from policies.line_endings import bad_line_ending
from relay import faults, replies
from relay.batching import GroupBatcher
from relay.bounces import BounceReader
from relay.commit import GroupCommitter
from relay.config import Rules, SmtpConfig
from relay.errors import ListenError, StoreError
from relay.limits import Limits
from relay.metrics import Metrics
from relay.passwords import verify_password
from relay.protocol import RelaySMTP
from relay.proxy import UnusableHeader, client_behind
from relay.store import IncomingMessage, Recipient, Store

__all__ = ["IntakeHandler", "RelaySMTP", "start_intake"]

log = structlog.get_logger("relay.intake")

# Longer than the store's own statement timeout: this only catches a commit that hangs.
COMMIT_TIMEOUT_SECONDS = 30.0


def _new_id() -> str:
    return secrets.token_hex(8).upper()


@dataclass
class SessionState:
    """What the relay tracks per SMTP connection."""

    session_id: str = field(default_factory=_new_id)
    peer: str = ""
    started: float = field(default_factory=time.monotonic)
    accepted: int = 0
    refused: int = 0
    # The open transaction carries bounces for the DSN domain (True), mail to relay (False),
    # or has no recipient yet (None); the two never mix.
    bounce_transaction: bool | None = None


class IntakeHandler:
    """aiosmtpd handler hooks; one instance serves every session."""

    def __init__(
        self,
        *,
        store: Store,
        committer: GroupCommitter,
        smtp: SmtpConfig,
        campaign_header: str,
        metrics: Metrics | None = None,
        bounces: BounceReader | None = None,
        rules: Callable[[], Rules] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.rules = rules
        self.bounces = bounces
        self.store = store
        self.committer = committer
        self.smtp = smtp
        self.campaign_header = campaign_header
        self.shutting_down = False
        # Sessions with a recipient accepted and no reply to DATA yet: shutdown lets them finish.
        self._open: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._auth_cache: set[tuple[str, bytes]] = set()
        self._sessions: weakref.WeakKeyDictionary[Session, SessionState] = (
            weakref.WeakKeyDictionary()
        )
        # RCPTs of concurrent sessions are checked against the list in one query: (address
        # key, sending domain) pairs, since an entry may hold for one sending domain only.
        self._suppression_checks: GroupBatcher[tuple[str, str], str | None] = GroupBatcher(
            store.suppression_reasons, name="intake.suppression_check", max_batch=512
        )

    async def close(self) -> None:
        await self._suppression_checks.close()

    # -- session bookkeeping ------------------------------------------------------------------

    def _state(self, session: Session) -> SessionState:
        """The session's state; the first hook of a connection binds its log context.

        All hooks of one connection run in one task, so the binding stays inside it.
        """
        state = self._sessions.get(session)
        if state is None:
            state = self._sessions[session] = SessionState(peer=_peer_ip(session))
            structlog.contextvars.bind_contextvars(session_id=state.session_id, peer=state.peer)
        return state

    def session_closed(self, session: Session) -> None:
        state = self._sessions.pop(session, None)
        if state is not None:
            self._close_transaction(state)
            self.metrics.session_duration.observe(time.monotonic() - state.started)
            log.info(
                "intake.session_closed",
                session_id=state.session_id,
                peer=state.peer,
                accepted=state.accepted,
                refused=state.refused,
            )

    def session_cut(self, session: Session, reason: str, **details: object) -> None:
        """A limit (``relay.limits``) ends the session: count it and say why."""
        state = self._state(session)
        self.metrics.rejected.labels(reason).inc()
        log.warning(
            "intake.session_cut",
            reason=reason,
            session_id=state.session_id,
            peer=state.peer,
            action="replied 421 and closed the connection; nothing of an unfinished "
            "message is stored",
            **details,
        )

    def proxy_refused(self, session: Session, error: str) -> None:
        """A PROXY header was missing, malformed or not ours to honour: the session ends."""
        state = self._state(session)
        self.metrics.rejected.labels("proxy_refused").inc()
        log.warning(
            "intake.proxy_refused",
            error=error,
            session_id=state.session_id,
            peer=state.peer,
            action="closed the connection; a proxy must be listed in [smtp] "
            "proxy_protocol_from and send a valid header first",
        )

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData
    ) -> bool:
        """A listed proxy's header: the client it names is the session's peer from now on."""
        proxy = _peer_ip(session)
        try:
            client = client_behind(proxy_data)
        except UnusableHeader as exc:
            self.proxy_refused(session, str(exc))
            return False
        if client is not None:
            session.peer = client  # type: ignore[assignment]  # a peername tuple, as aiosmtpd sets
        self._state(session)  # binds the session's log context with the client as peer
        structlog.contextvars.bind_contextvars(proxy=proxy)
        return True

    def _may_relay(self, session: Session) -> bool:
        if session.authenticated:
            return True
        if self.smtp.auth_required:
            return False
        try:
            ip = ipaddress.ip_address(_peer_ip(session))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.smtp.allowed_clients)

    def _refusal(self, session: Session) -> str:
        self._state(session).refused += 1
        self.metrics.rejected.labels("client_not_allowed").inc()
        log.warning("intake.client_refused", reason="not in allowed_clients")
        if self.smtp.auth_required:
            return replies.AUTH_REQUIRED
        return replies.CLIENT_NOT_ALLOWED.format(peer=_peer_ip(session))

    # -- hooks --------------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self._state(session).bounce_transaction = None
        if self.shutting_down:
            return replies.SHUTTING_DOWN
        if not self._may_relay(session) and self.bounces is None:
            # With a DSN domain anyone may send it bounces; RCPT decides.
            return self._refusal(session)
        if address not in ("", "<>"):
            address, refusal = self._checked(address, envelope, replies.BAD_SENDER)
            if refusal is not None:
                return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.OK

    def _checked(self, address: str, envelope: Envelope, bad: str) -> tuple[str, str | None]:
        """``address`` as SMTP allows it, or the refusal: ``bad`` with why it is malformed,
        or a non-ASCII address without SMTPUTF8."""
        try:
            address = validate_address(address)
        except AddressError as exc:
            self.metrics.rejected.labels("malformed_address").inc()
            return address, bad.format(why=exc.why)
        if not (address.isascii() or envelope.smtp_utf8):
            return address, self._non_ascii(address)
        return address, None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        state = self._state(session)
        address, refusal = self._checked(address, envelope, replies.BAD_ADDRESS)
        if refusal is not None:
            return refusal
        if self.bounces is not None and self.bounces.is_bounce_address(address):
            return self._bounce_rcpt(state, envelope, address)
        if not self._may_relay(session):
            return self._refusal(session)
        if state.bounce_transaction:
            return replies.BOUNCES_SEPARATELY
        if len(envelope.rcpt_tos) >= self.smtp.max_recipients:
            self.metrics.rejected.labels("too_many_recipients").inc()
            return replies.TOO_MANY_RECIPIENTS
        key = normalise_address(address)
        with structlog.contextvars.bound_contextvars(recipient=key):
            try:
                reason = await self._suppression_checks.submit(
                    (key, domain_of(envelope.mail_from or ""))
                )
            except StoreError as exc:
                self.metrics.rejected.labels("store_unavailable").inc()
                return _store_unavailable("rcpt", exc)
            if reason is not None:
                if self.rules is not None and self.rules().dry_run:
                    self.metrics.dry_run.labels("rcpt").inc()
                    log.info("intake.would_reject", suppression_reason=reason, dry_run=True)
                else:
                    return await self._reject_suppressed(session, envelope, address, key, reason)
        envelope.rcpt_tos.append(address)
        self._open_transaction(state, bounces=False)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    def _non_ascii(self, address: str) -> str:
        self.metrics.rejected.labels("non_ascii_address").inc()
        log.info("intake.address_refused", reason="non-ASCII without SMTPUTF8", address=address)
        return replies.NON_ASCII_ADDRESS

    def _bounce_rcpt(self, state: SessionState, envelope: Envelope, address: str) -> str:
        if state.bounce_transaction is False:
            return replies.BOUNCES_SEPARATELY
        if len(envelope.rcpt_tos) >= self.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        self._open_transaction(state, bounces=True)
        return replies.RCPT_OK

    async def _reject_suppressed(
        self, session: Session, envelope: Envelope, address: str, key: str, reason: str
    ) -> str:
        reply = replies.SUPPRESSED.format(address=address, reason=reason)
        state = self._state(session)
        state.refused += 1
        self.metrics.rejected.labels("suppressed").inc()
        log.info("intake.rcpt_rejected", reason="suppressed", suppression_reason=reason)
        try:
            await self.store.record_rejected_suppressed(
                envelope.mail_from or "",
                key,
                domain_of(key),
                reply,
                {"session_id": state.session_id, "peer": state.peer},
            )
        except StoreError as exc:
            # The refusal itself is right; only its record is missing.
            log.warning("intake.rejection_not_recorded", error=str(exc))
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        state = self._state(session)
        try:
            if state.bounce_transaction and self.bounces is not None:
                # Read here, never relayed: no server after us to smuggle to or loop with,
                # and a refused bounce would only come back as a double bounce.
                return await self._read_bounce(state, envelope)
            refusal = self._refuse_data(state, envelope.original_content or b"")
            if refusal is not None:
                return refusal
            return await self._accept(session, envelope)
        finally:
            self._close_transaction(state)

    def _refuse_data(self, state: SessionState, body: bytes) -> str | None:
        """The reply refusing mail to relay as a whole, or None: smuggling, then mail loops."""
        what = bad_line_ending(body)
        if what is not None:
            state.refused += 1
            self.metrics.rejected.labels("bad_line_ending").inc()
            log.warning(
                "intake.data_refused",
                reason="bad_line_ending",
                found=what,
                action="replied 550 5.5.2, nothing stored; the client must send CRLF lines",
            )
            return replies.BAD_LINE_ENDING.format(what=what)
        hops = count_received(body)
        if hops > self.smtp.max_hops:
            state.refused += 1
            self.metrics.rejected.labels("too_many_hops").inc()
            log.warning(
                "intake.data_refused",
                reason="too_many_hops",
                hops=hops,
                max_hops=self.smtp.max_hops,
                action="replied 554 5.4.0, nothing stored; look for a routing loop "
                "(a route or an MX pointing back at a relay that sent it here)",
            )
            return replies.TOO_MANY_HOPS
        return None

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._close_transaction(self._state(session))
        return "250 OK"

    def _open_transaction(self, state: SessionState, *, bounces: bool) -> None:
        """A recipient was accepted: shutdown now waits for this transaction's DATA."""
        state.bounce_transaction = bounces
        self._open.add(state.session_id)
        self._idle.clear()

    def _close_transaction(self, state: SessionState) -> None:
        state.bounce_transaction = None
        self._open.discard(state.session_id)
        if not self._open:
            self._idle.set()

    @property
    def open_transactions(self) -> int:
        return len(self._open)

    async def wait_transactions_finished(self) -> None:
        """Return once no session has an accepted recipient still waiting for its DATA reply."""
        await self._idle.wait()

    async def _accept(self, session: Session, envelope: Envelope) -> str:
        faults.crash_point("intake.after_data")  # tests/chaos: the DATA is in, nothing queued
        queue_id = _new_id()
        body: bytes = envelope.original_content or b""
        recipients: dict[str, Recipient] = {}
        for address in envelope.rcpt_tos:
            key = normalise_address(address)
            recipients.setdefault(key, Recipient(address, key, domain_of(key)))
        summary = summarise_headers(body, self.campaign_header)
        message = IncomingMessage(
            queue_id=queue_id,
            envelope_sender=envelope.mail_from or "",
            recipients=tuple(recipients.values()),
            body=body,
            from_domain=summary.from_domain,
            message_id=summary.message_id,
            campaign=summary.campaign,
            client_address=_peer_ip(session),
            session_id=self._state(session).session_id,
            smtputf8=bool(envelope.smtp_utf8),
        )
        with structlog.contextvars.bound_contextvars(queue_id=queue_id):
            try:
                await asyncio.wait_for(self.committer.commit(message), COMMIT_TIMEOUT_SECONDS)
            except TimeoutError:
                # The commit may still land: the client retries and a duplicate is possible
                # (at-least-once); silence here would be worse.
                log.error(
                    "intake.commit_timeout",
                    seconds=COMMIT_TIMEOUT_SECONDS,
                    action="replied 451; the client keeps the message and retries",
                )
                return replies.TEMPORARY_FAILURE
            except StoreError as exc:
                self.metrics.rejected.labels("store_unavailable").inc()
                return _store_unavailable("data", exc)
            self._state(session).accepted += 1
            self.metrics.accepted.inc()
            log.info(
                "intake.accepted",
                sender=message.envelope_sender,
                recipients=len(recipients),
                campaign=message.campaign,
                from_domain=message.from_domain,
                size=len(body),
            )
        return replies.QUEUED.format(queue_id=queue_id)

    async def _read_bounce(self, state: SessionState, envelope: Envelope) -> str:
        assert self.bounces is not None
        body: bytes = envelope.original_content or b""
        try:
            await asyncio.wait_for(
                self.bounces.read(body, envelope.mail_from or "", envelope.rcpt_tos, state.peer),
                COMMIT_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            log.error("intake.bounce_timeout", action="replied 451; the sender retries")
            return replies.TEMPORARY_FAILURE
        except StoreError as exc:
            return _store_unavailable("bounce", exc)
        state.accepted += 1
        return replies.BOUNCE_READ

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.CancelledError):
            raise error
        log.exception("intake.session_error", error_type=type(error).__name__)
        return replies.TEMPORARY_FAILURE

    # -- AUTH ---------------------------------------------------------------------------------

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        digest = hashlib.sha256(auth_data.password).digest()
        if (login, digest) in self._auth_cache:
            return AuthResult(success=True, auth_data=login)
        for user in self.smtp.users:
            # scrypt is slow on purpose; a verified pair is cached so a busy
            # client does not pay it on every session.
            if user.name == login and verify_password(password, user.password_hash):
                self._auth_cache.add((login, digest))
                return AuthResult(success=True, auth_data=login)
        log.warning("intake.auth_failed", login=login)
        return AuthResult(success=False, handled=False)


def _store_unavailable(phase: str, exc: StoreError) -> str:
    """Log what failed and answer 451: the client keeps the message and retries."""
    log.error(
        "intake.store_unavailable",
        phase=phase,
        error=str(exc),
        action="replied 451; the client keeps the message and retries",
    )
    return replies.TEMPORARY_FAILURE


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    if smtp.tls_cert is None or smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(smtp.tls_cert), str(smtp.tls_key))
    return context


async def start_intake(
    handler: IntakeHandler,
    smtp: SmtpConfig,
    listen: tuple[str, int] | None = None,
    *,
    shared: bool = False,
) -> asyncio.Server:
    """Listen for SMTP clients; the returned server's sockets tell the bound port.

    ``shared``: other relay processes listen on the same port (SO_REUSEPORT); the kernel
    spreads new connections over them."""
    tls = _tls_context(smtp)
    loop = asyncio.get_running_loop()
    host, port = listen or smtp.listen
    limits = Limits.from_config(smtp)

    def factory() -> SMTP:
        return RelaySMTP(
            handler,
            limits=limits,
            proxies=smtp.proxy_protocol_from,
            data_size_limit=smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=smtp.hostname,
            ident="bounce-relay",
            tls_context=tls,
            require_starttls=smtp.require_tls,
            timeout=smtp.session_timeout.total_seconds(),
            auth_required=smtp.auth_required,
            auth_require_tls=True,
            authenticator=handler.authenticate if smtp.users else None,
            loop=loop,
        )

    try:
        return await loop.create_server(
            factory, host, port, reuse_address=True, reuse_port=shared or None
        )
    except OSError as exc:
        raise ListenError("smtp.listen", (host, port), exc) from exc
