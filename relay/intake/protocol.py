"""One intake connection's SMTP conversation: aiosmtpd's protocol, with our replies for the
conditions it answers itself, our limits on abusive clients (``relay.intake.limits``) and PROXY
headers from listed proxies (``relay.intake.proxy``).

What to answer MAIL, RCPT and DATA is the handler's business (``relay.intake.server``); this
class only calls it, times and counts the client, and hangs up on it when a limit is
passed: a 421 and the close, and nothing the client pipelined after it is read.

AUTH (PLAIN and LOGIN, as aiosmtpd reads them) is checked by the handler's
``check_login``, awaited: aiosmtpd's authenticator hook is synchronous, and scrypt on the
event loop would hold up every session. Each wrong password is counted for the session
and for the client address (``relay.intake.limits``); past either limit the next AUTH hears 421
4.7.0 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AnyStr, NamedTuple

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session, syntax

from relay.intake import responses as replies
from relay.intake.limits import INVALID, DataWatch, Limits, client_key, is_invalid
from relay.intake.proxy import HEADER_TIMEOUT_SECONDS, Networks, is_listed
from relay.passwords import CheckerBusy
from relay.wire import DataFrame, Verdict

__all__ = ["RelaySMTP", "peer_ip"]

# "<dot-atom@hostname>": what nearly every MAIL/RCPT carries. aiosmtpd parses each path with
# the email package's header grammar, a tenth of the relay's CPU per message; a path this
# plain reads the same either way (tests/relay/intake/test_server.py checks), anything else still
# goes through aiosmtpd's parser. A "(" after the path opens a comment in that grammar, which
# swallows it: such a path is not plain either.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>(?![ \t]*\()[ \t]*"
)


class _Unchecked(NamedTuple):
    """Credentials aiosmtpd has read and not checked (``RelaySMTP._authenticate``)."""

    credentials: LoginPassword


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies, our limits (``relay.intake.limits``) and PROXY headers.

    ``limits`` None (a parser test) runs without limits; the listener always passes them."""

    def __init__(
        self,
        handler: Any,
        *,
        limits: Limits | None = None,
        proxies: Networks = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._budget = limits.budget() if limits is not None else None
        self._data_watch: DataWatch | None = None
        self._proxies = proxies
        self._admitted = False
        self._data: DataFrame | None = None
        self._data_read: asyncio.Future[None] | None = None
        self._auth_failures = 0  # wrong passwords in this session
        self._password_refused = False  # the AUTH command being answered had a wrong one
        self._idle_deadline = 0.0  # loop time at which the session is idle too long
        self._idle_fired = False

    # -- addresses ----------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.match(arg)
        limit = self.local_part_limit
        if plain is not None and not (limit and len(plain.group(1).rpartition("@")[0]) > limit):
            return plain.group(1), arg[plain.end() :]
        try:
            address, rest = super()._getaddr(arg)  # aiosmtpd is untyped: name the types
        except Exception:
            # The email package's grammar crashes on input like '"' or '1@[' (IndexError,
            # AttributeError): that is a syntax error for the client (501/553), not a 451
            # that invites it to send the same again.
            return None, None
        return address, rest

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        before_starttls = self.session
        if self.transport is None:  # the connection itself; STARTTLS calls this again
            self._admitted = self._limits is None or self._limits.connections.admit()
            if is_listed(transport.get_extra_info("peername"), self._proxies):
                self._proxy_timeout = HEADER_TIMEOUT_SECONDS  # aiosmtpd reads the header
        super().connection_made(transport)
        if before_starttls is not None and before_starttls.proxy_data:
            # STARTTLS starts a new session whose peer is the socket's, the proxy: the client
            # behind the proxy stays the client (or it would relay as the proxy).
            session = self._session()
            session.peer = before_starttls.peer
            session.proxy_data = before_starttls.proxy_data

    async def _handle_client(self) -> None:
        if not self._admitted:
            assert self._limits is not None
            self.event_handler.session_cut(
                self.session, "too_many_connections", limit=self._limits.connections.limit
            )
            self._hang_up(replies.TOO_MANY_CONNECTIONS)
            return
        await super()._handle_client()
        proxy_data = self._session().proxy_data
        if self._proxy_timeout is not None and not proxy_data:
            # aiosmtpd closed the connection: the PROXY header was missing or malformed.
            error = getattr(proxy_data, "error", "") or "no PROXY header"
            self.event_handler.proxy_refused(self.session, error)

    def _session(self) -> Session:
        assert self.session is not None  # set from the first connection_made on
        return self.session

    def connection_lost(self, error: Exception | None) -> None:
        self._stop_data_watch()
        if self._admitted and self._limits is not None:  # no limits: nothing was counted
            self._limits.connections.release()
        self._admitted = False
        if self.session is not None:
            self.event_handler.session_closed(self.session)
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline. aiosmtpd cancels its timer and arms a new one for every
        command; here the deadline moves and the one timer, when it fires early, arms itself
        again for what is left (a timer a session instead of one a command)."""
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and not self._idle_fired:
            if handle.when() <= self._idle_deadline:
                return  # it fires first and re-arms for what is left
            handle.cancel()  # a shorter deadline (the PROXY header's): the timer must move up
        self._idle_fired = False
        self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self._idle_deadline > self.loop.time():
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        self._idle_fired = True  # (the handle stays: aiosmtpd cancels it at connection_lost)
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle session without a word; RFC 5321 §3.8 has the server say 421.
        if self.transport is None or self.transport.is_closing():
            return
        self.event_handler.session_cut(self.session, "idle_timeout")
        self._hang_up(replies.IDLE_TIMEOUT)

    def _hang_up(self, reply: str) -> None:
        """Send ``reply`` and close; nothing the client sent after it is read or answered.

        Cancelling the session task matters: commands already in the read buffer would
        otherwise still be run (and answered) before the close lands."""
        if self.transport is None or self.transport.is_closing():
            return
        self._writer.write(reply.encode("ascii") + b"\r\n")
        self.transport.close()
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    async def _hang_up_now(self, reply: str) -> None:
        """``_hang_up`` from inside the session task: raises CancelledError, here and now."""
        self._hang_up(reply)
        await asyncio.sleep(0)

    # -- commands -----------------------------------------------------------------------------

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        await self._spend("NOOP")
        await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        await self._spend("RSET")
        await super().smtp_RSET(arg)

    async def smtp_PROXY(self, arg: str) -> None:
        """A PROXY header that is not the first line from a listed proxy: never honoured."""
        self.event_handler.proxy_refused(self.session, "PROXY header from a client not listed")
        await self._hang_up_now(replies.PROXY_REFUSED)

    async def _spend(self, kind: str) -> None:
        """Count one command against the session's budget; past it, hang up."""
        if self._budget is None or self._budget.spend(kind):
            return
        if kind == INVALID:
            reason, reply = "too_many_invalid_commands", replies.TOO_MANY_INVALID_COMMANDS
        else:
            reason = f"too_many_{kind.lower()}s"
            reply = replies.TOO_MANY_COMMANDS.format(command=kind)
        self.event_handler.session_cut(self.session, reason, limit=self._budget.limit(kind))
        await self._hang_up_now(reply)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, bytes):
            await super().push(status)
            return
        if self.event_handler.shutting_down and status.startswith("220 "):
            # The listener is closing: a connection that slipped in is told to come back.
            await super().push(replies.SHUTTING_DOWN)
            if self.transport is not None:
                self.transport.close()
            return
        status = replies.rewrite_builtin(status)
        if status == replies.TOO_MANY_INVALID_COMMANDS:
            # aiosmtpd's own limit (five unknown command names) closes the session: say so.
            self.event_handler.session_cut(self.session, "too_many_invalid_commands")
            await self._hang_up_now(status)
        if is_invalid(status):
            await self._spend(INVALID)
        await super().push(status)
        if status.startswith("354 "):
            self._start_data_watch()

    # -- AUTH ---------------------------------------------------------------------------------

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH, counted: an attempt is reserved for the client before anything
        is checked (parallel sessions cannot all guess before the first failure counts)
        and kept only when the password was wrong."""
        if self._limits is None:
            await super().smtp_AUTH(arg)
            return
        client = client_key(peer_ip(self._session()))
        if not await self._auth_allowed(self._limits, client):
            return  # refused (and hung up); nothing reserved, nothing to release
        self._password_refused = False
        try:
            await super().smtp_AUTH(arg)
        finally:
            if not self._password_refused:  # right, malformed, aborted or never checked
                self._limits.auth_failures.release(client)

    async def _auth_allowed(self, limits: Limits, client: str) -> bool:
        """Reserve an attempt for ``client``; else hang up on a session past
        max_auth_failures, or a client past its count, and say no. (A hang-up raises
        CancelledError here, except when the client had closed already: then the False
        still keeps its password from being checked.)"""
        if self._auth_failures >= limits.max_auth_failures:
            self.event_handler.session_cut(
                self.session, "too_many_auth_failures", limit=limits.max_auth_failures
            )
            await self._hang_up_now(replies.AUTH_TOO_MANY_FAILURES)
            return False
        if not limits.auth_failures.reserve(client):
            self.event_handler.session_cut(
                self.session,
                "auth_client_blocked",
                client=client,
                limit=limits.auth_failures.attempts,
                retry_after=limits.auth_failures.retry_after(client),
            )
            await self._hang_up_now(replies.AUTH_CLIENT_BLOCKED)
            return False
        return True

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd's synchronous check, called by its PLAIN and LOGIN readers: hand the
        credentials on unchecked; ``_checked`` awaits the real check."""
        return AuthResult(success=False, handled=False, auth_data=_Unchecked(auth_data))

    async def _checked(self, read: AuthResult) -> AuthResult:
        """The verdict on credentials aiosmtpd has read (anything else: aiosmtpd has
        answered it already, a 501 for bad base64 or an aborted exchange)."""
        if not isinstance(read.auth_data, _Unchecked):
            return read
        credentials = read.auth_data.credentials
        try:
            login = await self.event_handler.check_login(credentials.login, credentials.password)
        except CheckerBusy:
            return AuthResult(success=False, handled=False, message=replies.AUTH_BUSY)
        if login is not None:
            return AuthResult(success=True, auth_data=login)
        self._password_refused = True
        self._auth_failures += 1
        self.event_handler.auth_failed(self._session(), credentials.login, self._auth_failures)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    # -- DATA ---------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the data read in chunks (``relay.wire``)."""
        try:
            await self._data_command(arg)
        finally:
            self._data = self._data_read = None
            self._stop_data_watch()

    async def _data_command(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        frame = await self._read_data()
        if frame.verdict is Verdict.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        elif frame.verdict is Verdict.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
        if frame.verdict is not Verdict.OK:
            self._end_transaction()
            return
        self.envelope.content = self.envelope.original_content = frame.content
        frame.content = b""  # the envelope's reference is the only one: the handler may drop it
        status = await self._call_handler_hook("DATA")
        self._end_transaction()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> DataFrame:
        """The data up to its end marker, fed by ``data_received`` from the socket directly."""
        # Bytes the stream reader holds already (sent before our 354) are data too. read()
        # returns them without waiting, and resumes a transport the reader had paused.
        # asyncio has no public "how much is buffered"
        buffered = len(self._reader._buffer)  # type: ignore[attr-defined]
        early = await self._reader.read(buffered) if buffered else b""
        frame = DataFrame(size_limit=self.data_size_limit, line_limit=self.line_length_limit)
        self._data = frame
        self._data_read = self.loop.create_future()
        if early:
            self._feed_data(early)
        if not frame.ended:
            await self._data_read  # cancelled with the session on EOF or a lost connection
        return frame

    def _end_transaction(self) -> None:
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd is untyped

    def _feed_data(self, data: bytes) -> None:
        assert self._data is not None
        assert self._data_read is not None
        rest = self._data.feed(data)
        if rest is None:
            return
        self._data = None
        if not self._data_read.done():
            self._data_read.set_result(None)
        if rest:  # pipelined commands after the data: the stream reader's again
            super().data_received(rest)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "DATA":
            self._stop_data_watch()  # the client has sent it all; the commit is our time
        status = await super()._call_handler_hook(command, *args)
        accepted = command == "DATA" and isinstance(status, str) and status.startswith("250")
        if accepted and self._budget is not None:
            self._budget.refill()
        return status

    def data_received(self, data: bytes) -> None:
        if self._data_watch is not None:
            self._data_watch.count(len(data))
        if self._data is not None:
            self._feed_data(data)
        else:
            super().data_received(data)

    def _start_data_watch(self) -> None:
        if self._limits is None:
            return
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # DATA has its own clock: the idle one waits
        self._data_watch = self._limits.data_watch(self.loop, self._cut_data)
        self._data_watch.start()

    def _stop_data_watch(self) -> None:
        if self._data_watch is None:
            return
        self._data_watch.stop()
        self._data_watch = None
        if self.transport is not None and not self.transport.is_closing():
            self._reset_timeout()

    def _cut_data(self, reason: str, details: dict[str, float]) -> None:
        self._data_watch = None
        self.event_handler.session_cut(self.session, reason, **details)
        self._hang_up(replies.DATA_TIMEOUT if reason == "data_timeout" else replies.DATA_TOO_SLOW)


def peer_ip(session: Session) -> str:
    """The client's address (the one a PROXY header named, if any)."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
