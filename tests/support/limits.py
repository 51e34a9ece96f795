"""An upstream that counts, and may limit, what each source IP does at once, as a large
provider's MX does: the far end of the shaping tests (tests/relay/delivery/test_shaping.py).

``LimitingUpstream`` is a raw asyncio SMTP server on loopback (EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT, one command at a time; neither STARTTLS nor PIPELINING). Per peer IP it
keeps the connections open now (``open``) and the most ever open at once (``peak``), counted
from the moment the server accepts a connection until it sees it closed: what a provider
counting concurrent connections sees, a QUIT still on its way included.

Limits, both settable while it runs:

- ``max_connections``: a connection arriving while that many from its IP are open is greeted
  ``421 4.7.0 Too many connections`` and closed (``refused_connections``); a refused
  connection never counts as open;
- ``max_messages``: once that many messages were accepted (in its window, which lasts until
  the test changes the limit), each further end of data is answered
  ``451 4.7.1 Rate limit exceeded`` (``refused_messages``).

``hold()`` makes each end of data wait for ``release()`` (``waiting`` counts them), so a test
can see how many connections a relay opens when nothing finishes; ``data_delay`` answers each
end of data that many seconds late, a slow upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

CONNECTION_REFUSAL = "421 4.7.0 Too many connections"
RATE_REFUSAL = "451 4.7.1 Rate limit exceeded"
_EHLO = b"250-limits.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10240000\r\n"
_MAX_LINE = 4096


@dataclass(frozen=True)
class Accepted:
    """One message the upstream answered 250 at the end of its data."""

    recipients: tuple[str, ...]
    peer_ip: str


class LimitingUpstream:
    """``async with LimitingUpstream() as up:`` listens on 127.0.0.1:<up.port>."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        max_connections: int | None = None,
        max_messages: int | None = None,
        data_delay: float = 0.0,
    ) -> None:
        self.host = host
        self.port = 0
        self.max_connections = max_connections
        self.max_messages = max_messages
        self.data_delay = data_delay
        self.open: Counter[str] = Counter()  # per peer IP, now
        self.peak: Counter[str] = Counter()  # per peer IP, the most open at once
        self.connections: Counter[str] = Counter()  # per peer IP, accepted (greeted 220)
        self.refused_connections: Counter[str] = Counter()
        self.refused_messages: list[tuple[str, ...]] = []  # the recipients of each
        self.received: list[Accepted] = []
        self.waiting = 0  # ends of data waiting for release()
        self._released = asyncio.Event()
        self._released.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def hold(self) -> None:
        """From now on each end of data waits for ``release()``."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def delivered_to(self, address: str) -> int:
        return sum(1 for m in self.received if address in m.recipients)

    async def __aenter__(self) -> LimitingUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0, limit=_MAX_LINE * 16)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = str(writer.get_extra_info("peername")[0])
        if self.max_connections is not None and self.open[ip] >= self.max_connections:
            self.refused_connections[ip] += 1
            with contextlib.suppress(OSError):
                writer.write(f"{CONNECTION_REFUSAL}\r\n".encode())
                await writer.drain()
            writer.close()
            return
        self.open[ip] += 1
        self.peak[ip] = max(self.peak[ip], self.open[ip])
        self.connections[ip] += 1
        self._writers.add(writer)
        try:
            await self._session(reader, writer, ip)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: this connection is over
        finally:
            self._writers.discard(writer)
            writer.close()
            # Open until the server has seen it go, as a provider counts it.
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.open[ip] -= 1

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str
    ) -> None:
        async def say(line: bytes) -> None:
            writer.write(line)
            await writer.drain()

        await say(b"220 limits.test ESMTP ready\r\n")
        recipients: list[str] = []
        while line := await reader.readline():
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "EHLO":
                await say(_EHLO)
            elif verb == "HELO":
                await say(b"250 limits.test\r\n")
            elif verb == "MAIL":
                recipients = []
                await say(b"250 2.1.0 sender OK\r\n")
            elif verb == "RCPT":
                start, end = text.find("<"), text.find(">")
                recipients.append(text[start + 1 : end].lower())
                await say(b"250 2.1.5 recipient OK\r\n")
            elif verb == "DATA":
                await say(b"354 go ahead\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                await say(await self._end_of_data(tuple(recipients), ip))
                recipients = []
            elif verb in ("RSET", "NOOP"):
                recipients = [] if verb == "RSET" else recipients
                await say(b"250 2.0.0 OK\r\n")
            elif verb == "QUIT":
                await say(b"221 2.0.0 bye\r\n")
                return
            else:
                await say(b"500 5.5.2 command not recognized\r\n")

    async def _end_of_data(self, recipients: tuple[str, ...], ip: str) -> bytes:
        if not self._released.is_set():
            self.waiting += 1
            try:
                await self._released.wait()
            finally:
                self.waiting -= 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)  # a slow upstream, not a test's wait
        if self.max_messages is not None and len(self.received) >= self.max_messages:
            self.refused_messages.append(recipients)
            return f"{RATE_REFUSAL}\r\n".encode()
        self.received.append(Accepted(recipients, ip))
        return b"250 2.0.0 OK queued\r\n"
