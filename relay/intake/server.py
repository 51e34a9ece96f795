"""SMTP intake (aiosmtpd): who may relay, RCPT suppression check, DATA commit.

The relay's contract with its clients lives here:
- only clients in ``smtp.allowed_clients`` (or authenticated ones) may relay;
- a suppressed recipient is refused at RCPT with 550 5.7.1, never queued;
- "250 queued as <id>" is sent only after the message, one delivery per
  recipient and the accepted event are committed; any failure answers
  451 4.3.0 and the client keeps the message;
- mail to the DSN domain (``[dsn] domain``) is a bounce coming back: it is
  taken from any client, read by ``relay.intake.bounces`` and never relayed;
- hostile input is refused before anything is stored: addresses SMTP does not allow
  (``policies.addresses``), a non-ASCII address without SMTPUTF8 and, in mail to relay,
  data with a line end other than CRLF or a NUL (``policies.line_endings``: no SMTP
  smuggling through us) or ``[smtp] max_hops`` ``Received:`` fields or more (a loop:
  554 5.4.6), and a recipient at an address literal (``user@[192.0.2.1]``) unless its
  route has ``address_literals`` (550 5.1.2): never looked up as a name, never suppressed;
- a recipient domain that is a likely typo of a large provider's (``policies.domain_typos``)
  or, on an ``mx`` route, can receive no mail by DNS (``relay.intake.domain_check``) is
  refused (550 5.1.2, a null MX 556 5.1.10) or accepted with the flag stored on its delivery,
  as ``[recipients]`` says; a DNS fault or a slow answer never refuses;
- every message stored starts with our own ``Received:`` field (RFC 5321 §4.4), so that
  a route or MX pointing back at us is a loop that ``max_hops`` ends; what the client
  says of itself (its EHLO name) is named there only when it is a well-formed domain or
  address literal;
- SMTP AUTH is checked in worker threads (``relay.passwords.SecretChecker``), never on
  the event loop; failed attempts are counted by ``relay.protocol.RelaySMTP``;
- abusive clients are cut (``relay.intake.limits``) and PROXY headers are honoured only from
  ``[smtp] proxy_protocol_from`` (``relay.intake.proxy``); the SMTP conversation itself is
  ``relay.protocol.RelaySMTP``, which calls the hooks here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime

import structlog
from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session

from policies.addresses import (
    AddressError,
    domain_of,
    is_address_literal,
    normalise_address,
    validate_address,
)
from policies.domain_typos import likely_typo_of
from policies.headers import count_received, summarise_headers
from policies.line_endings import bad_line_ending
from policies.verdict import refuses_suppressed
from relay import faults
from relay.batching import GroupBatcher
from relay.clock import Clock, utc_now
from relay.config import RecipientAction, RecipientsConfig, RouteMode, Rules, SmtpConfig
from relay.delivery.routing import literal_ip, route_for
from relay.errors import ListenError, StoreError
from relay.intake import responses as replies
from relay.intake.bounces import BounceReader
from relay.intake.commit import GroupCommitter
from relay.intake.domain_check import DomainCheck, DomainState
from relay.intake.limits import Limits
from relay.intake.protocol import RelaySMTP, peer_ip
from relay.intake.proxy import UnusableHeader, client_behind
from relay.metrics import Metrics
from relay.passwords import SecretChecker
from relay.store import IncomingMessage, Recipient, Store

__all__ = ["IntakeHandler", "RelaySMTP", "start_intake"]

log = structlog.get_logger("relay.intake")

# Longer than the store's own statement timeout: this only catches a commit that hangs.
COMMIT_TIMEOUT_SECONDS = 30.0


# An EHLO name our Received field repeats: an RFC 5321 Domain (LDH labels) in ASCII. Any
# other name, and a longer one, is replaced by the client's address literal.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HELO_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_HELO_NAME = 253  # RFC 1035 §2.3.4
MAX_LOGGED_LOGIN = 100  # bytes of a failed login a log line repeats


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
    # The peer as our Received fields write it ([192.0.2.1]); worked out at the first one.
    address_literal: str = ""
    # Recipients of the open transaction accepted with a flag on their domain ([recipients]
    # "tag"), by normalised address: stored on their deliveries.
    domain_flags: dict[str, str] = field(default_factory=dict)


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
        clock: Clock = utc_now,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.clock = clock  # the date of our Received fields; the AUTH failure window
        self._date: tuple[int, str] = (0, "")  # (second, its RFC 5322 form): made once a second
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
        # scrypt in worker threads; a login verified before is answered from memory.
        self._logins = SecretChecker((u.name, u.password_hash) for u in smtp.users)
        self._sessions: weakref.WeakKeyDictionary[Session, SessionState] = (
            weakref.WeakKeyDictionary()
        )
        # RCPTs of concurrent sessions are checked against the list in one query: (address
        # key, sending domain) pairs, since an entry may hold for one sending domain only.
        self._suppression_checks: GroupBatcher[tuple[str, str], str | None] = GroupBatcher(
            store.suppression_reasons, name="intake.suppression_check", max_batch=512
        )

        # [recipients] no_mail_domain: made at the first lookup, anew when SIGHUP changes its
        # resolver or cache settings.
        self._domain_check: DomainCheck | None = None
        self._domain_check_settings: tuple[object, ...] = ()

    async def close(self) -> None:
        await self._suppression_checks.close()
        if self._domain_check is not None:
            await self._domain_check.close()

    # -- session bookkeeping ------------------------------------------------------------------

    def _state(self, session: Session) -> SessionState:
        """The session's state; the first hook of a connection binds its log context.

        All hooks of one connection run in one task, so the binding stays inside it.
        """
        state = self._sessions.get(session)
        if state is None:
            state = self._sessions[session] = SessionState(peer=peer_ip(session))
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
        """A limit (``relay.intake.limits``) ends the session: count it and say why."""
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
        proxy = peer_ip(session)
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
            ip = ipaddress.ip_address(peer_ip(session))
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
        return replies.CLIENT_NOT_ALLOWED.format(peer=peer_ip(session))

    # -- hooks --------------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        state = self._state(session)
        state.bounce_transaction = None
        state.domain_flags.clear()
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
        refusal = self._literal_refusal(address)
        if refusal is not None:
            return refusal
        key = normalise_address(address)
        # Bound for the checks' log lines. Hot path: the tokens put back what was there, as
        # structlog's bound_contextvars does, without its context copy and generator.
        bound = structlog.contextvars.bind_contextvars(recipient=key)
        try:
            # The pure check first (no database), the DNS one last (suppressed: no lookup).
            refusal = self._typo_refusal(state, address, key)
            if refusal is None:
                refusal = await self._suppression_refusal(session, envelope, address, key)
            if refusal is None and key not in state.domain_flags:
                # (a tagged typo is not looked up: its flag names the domain meant)
                refusal = await self._no_mail_refusal(state, address, key)
            if refusal is not None:
                return refusal
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        envelope.rcpt_tos.append(address)
        self._open_transaction(state, bounces=False)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def _suppression_refusal(
        self, session: Session, envelope: Envelope, address: str, key: str
    ) -> str | None:
        """The refusal of a suppressed recipient (451 when the list cannot be read), or None:
        not suppressed, or [policy] dry_run only counts it."""
        try:
            reason = await self._suppression_checks.submit(
                (key, domain_of(envelope.mail_from or ""))
            )
        except StoreError as exc:
            self.metrics.rejected.labels("store_unavailable").inc()
            return _store_unavailable("rcpt", exc)
        if reason is None:
            return None
        if self.rules is not None and not refuses_suppressed(self.rules()):
            self.metrics.dry_run.labels("rcpt").inc()
            log.info("intake.would_reject", suppression_reason=reason, dry_run=True)
            return None
        return await self._reject_suppressed(session, envelope, address, key, reason)

    # -- [recipients]: typos and domains that receive no mail -----------------------------------

    def _recipients(self) -> RecipientsConfig:
        return self.rules().recipients if self.rules is not None else RecipientsConfig()

    def _typo_refusal(self, state: SessionState, address: str, key: str) -> str | None:
        """The refusal of a recipient at a likely typo of a large provider's domain, or None
        (no typo, or tagged). Pure and a few dict probes: no lookup, no database."""
        action = self._recipients().typo
        if action is RecipientAction.OFF:
            return None
        domain = key.rpartition("@")[2]
        meant = likely_typo_of(domain)
        if meant is None:
            return None
        reply = replies.likely_typo(address, domain, meant)
        return self._flag(state, key, "likely_typo", action, reply, flag=f"likely_typo:{meant}")

    async def _no_mail_refusal(self, state: SessionState, address: str, key: str) -> str | None:
        """The refusal of a recipient whose domain can receive no mail by DNS, or None. Asked
        only on an ``mx`` route (smarthosts and static routes resolve no recipient domain);
        a lookup that fails or takes longer than ``lookup_timeout`` accepts."""
        settings = self._recipients()
        if settings.no_mail_domain is RecipientAction.OFF or self.rules is None:
            return None
        domain = key.rpartition("@")[2]
        route = route_for(self.rules().routes, domain)
        if route is None or route.mode is not RouteMode.MX or is_address_literal(domain):
            return None
        try:
            status = await self._domain_checker(settings).status(domain)
        except Exception as exc:  # a fault of ours must not refuse mail either
            log.warning("intake.domain_check_failed", error=repr(exc)[:200], action="accepted")
            return None
        if not status.receives_no_mail:
            return None
        template = {
            DomainState.NO_SUCH_DOMAIN: replies.NO_SUCH_DOMAIN,
            DomainState.NO_MAIL_HOSTS: replies.NO_MAIL_HOSTS,
            DomainState.NULL_MX: replies.NULL_MX,
        }[status.state]
        reply = replies.no_mail_domain(template, address, domain)
        return self._flag(state, key, status.state.value, settings.no_mail_domain, reply)

    def _flag(
        self,
        state: SessionState,
        key: str,
        reason: str,
        action: RecipientAction,
        reply: str,
        *,
        flag: str | None = None,
    ) -> str | None:
        """Refuse with ``reply`` or tag the recipient (``flag``, else ``reason``), as
        ``action`` says: counted and logged either way."""
        refused = action is RecipientAction.REFUSE
        self.metrics.recipient_domains_flagged.labels(
            reason, "refused" if refused else "tagged"
        ).inc()
        log.info(
            "intake.recipient_domain_flagged",
            reason=reason,
            flag=flag or reason,
            action="refused" if refused else "accepted and tagged",
            reply=reply if refused else None,
        )
        if refused:
            state.refused += 1
            self.metrics.rejected.labels(reason).inc()
            return reply
        state.domain_flags[key] = flag or reason
        return None

    def _domain_checker(self, settings: RecipientsConfig) -> DomainCheck:
        wanted = (
            settings.nameservers,
            settings.dns_port,
            settings.lookup_timeout,
            settings.cache_size,
            settings.cache_ttl,
        )
        if self._domain_check is None or wanted != self._domain_check_settings:
            self._domain_check = DomainCheck(
                nameservers=settings.nameservers,
                dns_port=settings.dns_port,
                timeout=settings.lookup_timeout.total_seconds(),
                cache_size=settings.cache_size,
                cache_ttl=settings.cache_ttl.total_seconds(),
            )
            self._domain_check_settings = wanted
        return self._domain_check

    def _literal_refusal(self, address: str) -> str | None:
        """The refusal of a recipient at an address literal, or None (not a literal, or
        one its route takes). Refused here, it is never stored: never looked up as a name,
        never bounced and never suppressed."""
        domain = domain_of(address)
        if not is_address_literal(domain):
            return None
        try:
            literal_ip(domain)
        except ValueError as exc:
            self.metrics.rejected.labels("malformed_address").inc()
            return replies.BAD_ADDRESS.format(why=f"address literal {domain}: {exc}")
        route = route_for(self.rules().routes, domain) if self.rules is not None else None
        if route is not None and route.address_literals:
            return None
        self.metrics.rejected.labels("address_literal").inc()
        log.info("intake.address_refused", reason="address literal", address=address)
        return replies.ADDRESS_LITERAL_REFUSED

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
        reply = replies.suppressed(address, reason)
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
        if hops >= self.smtp.max_hops:  # ours would make one more than max_hops
            state.refused += 1
            self.metrics.rejected.labels("too_many_hops").inc()
            log.warning(
                "intake.data_refused",
                reason="too_many_hops",
                hops=hops,
                max_hops=self.smtp.max_hops,
                action="replied 554 5.4.6, nothing stored; look for a routing loop "
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
        state.domain_flags.clear()
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
        sent: bytes = envelope.original_content or b""
        recipients: dict[str, Recipient] = {}
        state = self._state(session)
        flags = state.domain_flags
        for address in envelope.rcpt_tos:
            key = normalise_address(address)
            if key in recipients:
                continue
            recipients[key] = Recipient(address, key, domain_of(key), flags.get(key))
        summary = summarise_headers(sent, self.campaign_header)
        trace = self._trace(session, queue_id, list(recipients.values()))
        # The bytes sent follow our field unchanged. That makes a copy: the data as sent
        # goes now (the envelope held the last reference), not after the commit.
        body = trace + sent
        envelope.content = envelope.original_content = None
        del sent
        message = IncomingMessage(
            queue_id=queue_id,
            envelope_sender=envelope.mail_from or "",
            recipients=tuple(recipients.values()),
            body=body,
            from_domain=summary.from_domain,
            message_id=summary.message_id,
            campaign=summary.campaign,
            client_address=peer_ip(session),
            session_id=state.session_id,
            smtputf8=bool(envelope.smtp_utf8),
        )
        # Bound as in handle_RCPT; asyncio.timeout, not wait_for: no task of its own per message.
        bound = structlog.contextvars.bind_contextvars(queue_id=queue_id)
        try:
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                    await self.committer.commit(message)
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
            state.accepted += 1
            self.metrics.accepted.inc()
            log.info(
                "intake.accepted",
                sender=message.envelope_sender,
                recipients=len(recipients),
                campaign=message.campaign,
                from_domain=message.from_domain,
                size=len(body),
            )
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        return replies.QUEUED.format(queue_id=queue_id)

    def _trace(self, session: Session, queue_id: str, recipients: Sequence[Recipient]) -> bytes:
        """Our Received field for a message of ``session`` (``received_field``). Hot path:
        what does not change within a session or a second is worked out once."""
        state = self._state(session)
        if not state.address_literal:
            state.address_literal = _address_literal(state.peer)
        client = state.address_literal
        return received_field(
            helo=_helo_name(session.host_name, client),
            client=client,
            hostname=self.smtp.hostname,
            protocol=_protocol(session),
            queue_id=queue_id,
            recipient=recipients[0].address if len(recipients) == 1 else None,
            date=self._now_rfc5322(),
        )

    def _now_rfc5322(self) -> str:
        now = self.clock()
        second = int(now.timestamp())
        if second != self._date[0]:
            self._date = (second, format_datetime(now))
        return self._date[1]

    async def _read_bounce(self, state: SessionState, envelope: Envelope) -> str:
        assert self.bounces is not None
        body: bytes = envelope.original_content or b""
        try:
            refusal = await asyncio.wait_for(
                self.bounces.read(body, envelope.mail_from or "", envelope.rcpt_tos, state.peer),
                COMMIT_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            log.error("intake.bounce_timeout", action="replied 451; the sender retries")
            return replies.TEMPORARY_FAILURE
        except StoreError as exc:
            return _store_unavailable("bounce", exc)
        if refusal is not None:  # over the client's unmatched limit, or no parser
            state.refused += 1
            return refusal
        state.accepted += 1
        return replies.BOUNCE_READ

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.CancelledError):
            raise error
        log.exception("intake.session_error", error_type=type(error).__name__)
        return replies.TEMPORARY_FAILURE

    # -- AUTH ---------------------------------------------------------------------------------

    async def check_login(self, login: bytes, password: bytes) -> str | None:
        """The user ``login`` names when ``password`` is theirs, else None; raises
        ``CheckerBusy`` when too many new passwords are being checked already. scrypt
        runs in a worker thread, once per new (login, password): a verified pair is
        answered from memory, so a busy client does not pay it on every session."""
        if not self.smtp.users:
            return None  # no one to be: no scrypt (a decoy hides nothing here)
        name = login.decode("utf-8", "surrogateescape")
        # Bytes that are not UTF-8 stay surrogates: they match no configured password.
        secret = password.decode("utf-8", "surrogateescape")
        return await self._logins.match(secret, among=(name,))

    def auth_failed(self, session: Session, login: bytes, count: int) -> None:
        """A wrong password (535): logged with the login and the session's count."""
        state = self._state(session)
        self.metrics.rejected.labels("auth_failed").inc()
        log.warning(
            "intake.auth_failed",
            login=login[:MAX_LOGGED_LOGIN].decode("utf-8", "replace"),
            count=count,
            max_auth_failures=self.smtp.max_auth_failures,
            session_id=state.session_id,
            peer=state.peer,
        )


def _store_unavailable(phase: str, exc: StoreError) -> str:
    """Log what failed and answer 451: the client keeps the message and retries."""
    log.error(
        "intake.store_unavailable",
        phase=phase,
        error=str(exc),
        action="replied 451; the client keeps the message and retries",
    )
    return replies.TEMPORARY_FAILURE


def received_field(
    *,
    helo: str,
    client: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    date: str,
) -> bytes:
    """Our trace field (RFC 5321 §4.4), folded before each clause: ``helo`` and ``client``
    must be checked already (``_helo_name``, ``_address_literal``); ``recipient`` is named
    only when the message has exactly one (naming one of several would show Bcc's)."""
    to = f"\r\n\tfor <{recipient}>" if recipient is not None else ""
    return (
        f"Received: from {helo} ({client})\r\n"
        f"\tby {hostname} with {protocol} id {queue_id}{to};\r\n"
        f"\t{date}\r\n"
    ).encode("utf-8", "surrogateescape")


def _helo_name(helo: str | None, client: str) -> str:
    """What the client called itself, if it is a domain or an address literal; else
    ``client``, its own address literal: a hostile EHLO name never reaches a header."""
    if helo and len(helo) <= MAX_HELO_NAME:
        if _HELO_DOMAIN.fullmatch(helo):
            return helo
        if is_address_literal(helo):
            try:
                literal_ip(helo)
            except ValueError:
                return client
            return helo
    return client


def _address_literal(address: str) -> str:
    """The client's address as RFC 5321 writes it: [192.0.2.1], [IPv6:2001:db8::1]."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"  # no TCP peer address (never over TCP): nothing of it is repeated
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"[IPv6:{ip.compressed}]"
        ip = ip.ipv4_mapped
    return f"[{ip}]"


def _protocol(session: Session) -> str:
    """The "with" keyword (RFC 5321 §4.4, RFC 3848): SMTP after HELO, ESMTP after EHLO,
    plus S with STARTTLS and A with AUTH."""
    if not session.extended_smtp:
        return "SMTP"
    tls = "S" if session.ssl is not None else ""
    auth = "A" if session.authenticated else ""
    return f"ESMTP{tls}{auth}"


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
    limits = Limits.from_config(smtp, handler.clock)

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
            auth_require_tls=True,  # RelaySMTP asks handler.check_login, off the event loop
            loop=loop,
        )

    try:
        return await loop.create_server(
            factory, host, port, reuse_address=True, reuse_port=shared or None
        )
    except OSError as exc:
        raise ListenError("smtp.listen", (host, port), exc) from exc
