"""Reading an upstream's SMTP replies ourselves, so that commands can be pipelined.

aiosmtplib reads one reply per command it sends and drops whatever arrives while no
command waits; its ``read_response`` must be awaited once per command written. With
RFC 2920 PIPELINING the replies to MAIL, every RCPT and DATA come back together, often in
one read, so once a connection is set up (greeting, EHLO, STARTTLS, AUTH: aiosmtplib's
work) a ``ReplyReader`` takes its place in front of the transport and parses every reply
that arrives into a queue, in order. ``relay.delivery.upstream`` writes the commands (the
reader counts the replies they are owed) and takes the replies one by one; a reply nobody
is owed (``surplus``) or one not taken (``unread``) is how it tells that an upstream is out
of step (see its module docstring).

Hostile input: the reader looks at each byte once (a ``find`` for the line end, then the
line's first four bytes), holds at most ``MAX_REPLY_BYTES`` of one reply, and stops at
the first line that is no reply. It never raises from ``data_received``: a malformed line
or an oversized reply is recorded and handed to the next ``next_reply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from typing import cast

import aiosmtplib

__all__ = ["MAX_REPLY_BYTES", "MalformedReply", "ReplyReader"]

# "ddd" then a space, a hyphen (more lines follow) or the line's end (RFC 5321 §4.2).
_REPLY_HEAD = re.compile(rb"[1-5][0-9]{2}(?:[ \-\r\n]|$)")

# One reply, all its lines: RFC 5321 §4.5.3.1.5 allows 512 octets a line; a multi-line
# EHLO-sized answer fits many times over. Past this a reply is an attack or a broken peer.
MAX_REPLY_BYTES = 64 * 1024


class MalformedReply(Exception):
    """What arrived is no SMTP reply (or no longer one we can pair with a command)."""


class ReplyReader(asyncio.Protocol):
    """Sits between a connection's transport and aiosmtplib's protocol once the session
    is set up, and parses the replies that arrive. Connection events still reach
    aiosmtplib's protocol (``client.is_connected`` keeps working); data does not."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self.transport = transport
        self.inner = inner
        self.malformed: bytes | None = None  # the start of the first line that is no reply
        self.surplus = 0  # replies that arrived when none was owed (then reading stops)
        self._owed = 0  # replies to the commands written that have not arrived yet
        self._ready: deque[aiosmtplib.SMTPResponse] = deque()
        self._partial = bytearray()  # a line whose end has not arrived
        self._code = 0  # the code of the reply whose lines are arriving (0: none)
        self._lines: list[str] = []
        self._size = 0
        self._lost: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def install(cls, client: aiosmtplib.SMTP) -> ReplyReader:
        """Put a reader in front of ``client``'s protocol (after STARTTLS: the transport
        changes with it). From here on every command goes through the reader."""
        protocol = client.protocol
        transport = protocol.transport if protocol is not None else None
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        reader = cls(cast(asyncio.Transport, transport), protocol)
        transport.set_protocol(reader)
        return reader

    # -- what the connection's owner asks -----------------------------------------------------

    @property
    def unread(self) -> int:
        """Replies that arrived and were not taken: none, when in step."""
        return len(self._ready)

    @property
    def partial(self) -> bool:
        """Whether part of a reply has arrived without its end."""
        return bool(self._partial) or bool(self._lines)

    def write(self, data: bytes, replies: int = 1) -> None:
        """Write ``data``: ``replies`` commands, each owed one reply."""
        if self._lost is not None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._owed += replies
        self.transport.write(data)

    async def next_reply(self, timeout: float) -> aiosmtplib.SMTPResponse:
        """The oldest reply not yet taken, waiting up to ``timeout`` seconds for it."""
        if not self._ready:
            try:
                async with asyncio.timeout(timeout):
                    while not self._ready:
                        self._raise_if_broken()
                        self._waiter = asyncio.get_running_loop().create_future()
                        await self._waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from exc
            finally:
                self._waiter = None
        return self._ready.popleft()

    def _raise_if_broken(self) -> None:
        if self.malformed is not None:
            raise MalformedReply(f"malformed reply line starting {self.malformed!r}")
        if self._lost is not None:
            raise aiosmtplib.SMTPServerDisconnected(f"Connection lost: {self._lost}")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.malformed is not None or self.surplus:
            return  # nothing after that can be paired with a command
        start = 0
        size = len(data)
        while start < size:
            end = data.find(b"\n", start)
            if end == -1:
                self._partial += data[start:]
                if len(self._partial) + self._size > MAX_REPLY_BYTES:
                    self._break(bytes(self._partial[:4]) or b"", "too long")
                break
            if self._partial:
                self._partial += data[start : end + 1]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = data[start : end + 1]
            start = end + 1
            if not self._take(line):
                break
        if self._ready or self.malformed is not None:
            self._wake()

    def _take(self, line: bytes) -> bool:
        """One whole line; False once the stream is broken."""
        head = line[:4]
        if not _REPLY_HEAD.match(head):
            self._break(head, "")
            return False
        code = int(head[:3])
        if self._code and code != self._code:  # RFC 5321 §4.2.1: one code for every line
            self._break(head, "")
            return False
        self._size += len(line)
        if self._size > MAX_REPLY_BYTES:
            self._break(head, "too long")
            return False
        self._code = code
        # Each line's text as aiosmtplib gives it (stripped), so replies read before and
        # after the reader took over compare equal.
        self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
        if head[3:4] != b"-":
            if not self._owed:
                # A reply nobody asked for (a second one to a command, a line sent while the
                # connection sat in the pool): the connection is out of step for good. Stop
                # reading, so that a server flooding it costs neither memory nor CPU.
                self.surplus += 1
                self._stop_reading()
                return False
            self._owed -= 1
            self._ready.append(aiosmtplib.SMTPResponse(code, "\n".join(self._lines)))
            self._code, self._lines, self._size = 0, [], 0
        return True

    def _stop_reading(self) -> None:
        with contextlib.suppress(Exception):  # a transport closing already
            self.transport.pause_reading()

    def _break(self, head: bytes, why: str) -> None:
        self.malformed = head if not why else head + b"... (reply " + why.encode() + b")"
        self._stop_reading()

    def eof_received(self) -> bool | None:
        self._lost = self._lost or ConnectionResetError("the server closed the connection")
        self._wake()
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._lost or exc or ConnectionResetError("connection closed")
        self._wake()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
