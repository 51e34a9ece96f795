"""A scripted upstream that enforces per-source-IP limits, as a large provider's MX does: the
far end of bench/shaping_bench.py.

Per source IP of the client (the peer address it connects from):

- at most ``--connections N`` concurrent connections: the N+1th is greeted with
  ``421 4.7.0 Too many concurrent connections from <ip>; try again later`` and closed;
- at most ``--per-minute M`` accepted messages in any sliding 60 seconds: a message over
  it is answered ``451 4.7.1 Rate limit exceeded: <ip> sends more than M messages a minute;
  try again later``
  at the end of its data. Refused messages do not count in the window.

``--data-delay SECONDS`` waits that long before answering each end of data (a slow
upstream). EHLO offers neither STARTTLS nor PIPELINING; it speaks EHLO/HELO, MAIL, RCPT,
DATA, RSET, NOOP and QUIT, one command at a time. Lines over 2,000 bytes are answered 500
and the connection closed, so a session's memory is bounded and its time linear in what it
is sent; nothing of a message is kept. A client that goes away at any point (mid-DATA
included) ends its session only.

It counts, per source IP and per ``--bucket-seconds`` of its clock: connections accepted,
connections refused, the most open at once, messages accepted and messages refused.

Imported (what the benchmark and tests do)::

    sink = LimitingSink(connections=20, per_minute=600, clock=fake_clock)
    port = await sink.start()
    ...
    sink.buckets["127.0.0.10"]  # {bucket index: Bucket}
    await sink.close()

As a script, it prints ``{"port": N}`` once it listens; on SIGTERM or SIGINT it writes its
counters as JSON to ``--stats`` (``{ip: {bucket start seconds: counters}}``) and exits::

    python bench/limiting_sink.py --connections 20 --per-minute 600 --stats /tmp/sink.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_LINE = 2000  # bytes, CRLF included; RFC 5321 asks for 1,000 at least
WINDOW_SECONDS = 60.0


@dataclass
class Bucket:
    """What one source IP did in one bucket of time."""

    opened: int = 0  # connections accepted (greeted 220)
    refused_connections: int = 0  # greeted 421 and closed
    max_open: int = 0  # the most connections open at once (refused ones never count)
    accepted: int = 0  # messages answered 250
    refused_messages: int = 0  # messages answered 451 (over the per-minute limit)


class LimitingSink:
    """The listener, the limits and the counters every session shares."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        connections: int,
        per_minute: int,
        data_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        bucket_seconds: float = 1.0,
        hostname: str = "sink.bench.test",
    ) -> None:
        if connections < 1 or per_minute < 1:
            raise ValueError("connections and per_minute must be 1 or more")
        self.host = host
        self.port = port
        self.connections = connections
        self.per_minute = per_minute
        self.data_delay = data_delay
        self.clock = clock
        self.bucket_seconds = bucket_seconds
        self.hostname = hostname
        # ip -> bucket index (clock() // bucket_seconds) -> counters
        self.buckets: dict[str, dict[int, Bucket]] = defaultdict(dict)
        self.open: dict[str, int] = defaultdict(int)
        # ip -> the clock() of each message accepted in the last WINDOW_SECONDS, oldest first
        self._accepted_at: dict[str, deque[float]] = defaultdict(deque)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; the port (chosen by the system when ``port`` was 0)."""
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            # A line longer than this is refused without ever being buffered whole.
            limit=MAX_LINE,
            backlog=1024,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and end every session still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- the limits and the counters ------------------------------------------------------------

    def bucket(self, ip: str) -> Bucket:
        """``ip``'s counters for now; a new bucket starts with the connections open now."""
        key = int(self.clock() // self.bucket_seconds)
        found = self.buckets[ip].get(key)
        if found is None:
            found = self.buckets[ip][key] = Bucket(max_open=self.open[ip])
        return found

    def tick(self) -> None:
        """Start the current bucket of every IP holding connections open: a bucket in which
        nothing happened still shows them (call it once a bucket or more)."""
        for ip, count in self.open.items():
            if count:
                self.bucket(ip)

    def admit_connection(self, ip: str) -> bool:
        """Whether ``ip`` may open one more connection (then it counts as open)."""
        counters = self.bucket(ip)
        if self.open[ip] >= self.connections:
            counters.refused_connections += 1
            return False
        self.open[ip] += 1
        counters.opened += 1
        counters.max_open = max(counters.max_open, self.open[ip])
        return True

    def release_connection(self, ip: str) -> None:
        self.open[ip] -= 1

    def admit_message(self, ip: str) -> bool:
        """Whether ``ip`` may have one more message accepted in the sliding minute (then it
        counts in the window; a refused one does not)."""
        now = self.clock()
        accepted_at = self._accepted_at[ip]
        while accepted_at and accepted_at[0] <= now - WINDOW_SECONDS:
            accepted_at.popleft()
        counters = self.bucket(ip)
        if len(accepted_at) >= self.per_minute:
            counters.refused_messages += 1
            return False
        accepted_at.append(now)
        counters.accepted += 1
        return True

    def totals(self, ip: str) -> Bucket:
        """Every bucket of ``ip`` added up (``max_open``: the most at once)."""
        total = Bucket()
        for counters in self.buckets.get(ip, {}).values():
            total.opened += counters.opened
            total.refused_connections += counters.refused_connections
            total.max_open = max(total.max_open, counters.max_open)
            total.accepted += counters.accepted
            total.refused_messages += counters.refused_messages
        return total

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """The counters as JSON can hold them: ip -> bucket start (seconds of the clock) ->
        counters."""
        return {
            ip: {
                f"{key * self.bucket_seconds:g}": asdict(counters)
                for key, counters in sorted(buckets.items())
            }
            for ip, buckets in self.buckets.items()
        }

    # -- sessions ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else "unknown"
        session = _Session(self, ip, reader, writer)
        try:
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (mid-DATA or anywhere): its session ends, nothing else
        finally:
            session.release()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._sessions.discard(task)


class _Session:
    """One connection's dialogue: one command, one reply, in order."""

    def __init__(
        self,
        sink: LimitingSink,
        ip: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.sink = sink
        self.ip = ip
        self.reader = reader
        self.writer = writer
        self.holds_slot = False
        self.in_transaction = False  # MAIL accepted
        self.recipients = 0

    def release(self) -> None:
        """Give the connection's slot back (once; the session may already have on QUIT)."""
        if self.holds_slot:
            self.holds_slot = False
            self.sink.release_connection(self.ip)

    async def run(self) -> None:
        # Decided before the first await: two connections arriving together cannot both
        # take the last slot.
        if not self.sink.admit_connection(self.ip):
            await self._reply(
                f"421 4.7.0 Too many concurrent connections from {self.ip}; try again later"
            )
            return
        self.holds_slot = True
        await self._reply(f"220 {self.sink.hostname} ESMTP limiting sink")
        while True:
            line = await self._read_line()
            if line is None:
                return
            verb, _, _argument = line.partition(b" ")
            verb = verb.upper()
            if verb in {b"EHLO", b"HELO"}:
                self._reset()
                await self._hello(verb)
            elif verb == b"MAIL":
                await self._mail()
            elif verb == b"RCPT":
                await self._rcpt()
            elif verb == b"DATA":
                if not await self._data():
                    return
            elif verb == b"RSET":
                self._reset()
                await self._reply("250 2.0.0 Ok")
            elif verb == b"NOOP":
                await self._reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                # The slot is free before the client reads 221: a client that quits and
                # connects again at once is not refused for its own old connection.
                self.release()
                await self._reply("221 2.0.0 Bye")
                return
            else:
                await self._reply("502 5.5.2 Command not recognized")

    async def _read_line(self) -> bytes | None:
        """The next line without its line end; None when it was too long (then answered 500:
        the session ends). IncompleteReadError when the client has gone."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await self._reply(f"500 5.5.2 Line longer than {MAX_LINE} bytes")
            return None
        return line.rstrip(b"\r\n")

    async def _reply(self, text: str) -> None:
        self.writer.write(text.encode("ascii") + b"\r\n")
        await self.writer.drain()

    def _reset(self) -> None:
        self.in_transaction = False
        self.recipients = 0

    async def _hello(self, verb: bytes) -> None:
        if verb == b"HELO":
            await self._reply(f"250 {self.sink.hostname}")
            return
        await self._reply(
            f"250-{self.sink.hostname}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
            "250 SIZE 52428800"
        )

    async def _mail(self) -> None:
        if self.in_transaction:
            await self._reply("503 5.5.1 Nested MAIL command")
            return
        self.in_transaction = True
        self.recipients = 0
        await self._reply("250 2.1.0 Ok")

    async def _rcpt(self) -> None:
        if not self.in_transaction:
            await self._reply("503 5.5.1 Need MAIL before RCPT")
            return
        self.recipients += 1
        await self._reply("250 2.1.5 Ok")

    async def _data(self) -> bool:
        """Take one message's data and answer it; False when the session must end (a line
        too long)."""
        if not self.recipients:
            await self._reply("503 5.5.1 Need RCPT before DATA")
            return True
        await self._reply("354 End data with <CR><LF>.<CR><LF>")
        while True:
            line = await self._read_line()
            if line is None:
                return False
            if line == b".":
                break
        self._reset()
        if self.sink.data_delay:
            await asyncio.sleep(self.sink.data_delay)
        # Judged when answered (after the delay), as the reply is what the client counts.
        if self.sink.admit_message(self.ip):
            await self._reply("250 2.0.0 Ok: queued")
        else:
            await self._reply(
                f"451 4.7.1 Rate limit exceeded: {self.ip} sends more than "
                f"{self.sink.per_minute} messages a minute;"
                " try again later"
            )
        return True


async def _serve_until_signalled(args: argparse.Namespace) -> dict[str, dict[str, dict[str, int]]]:
    sink = LimitingSink(
        args.host,
        args.port,
        connections=args.connections,
        per_minute=args.per_minute,
        data_delay=args.data_delay,
        bucket_seconds=args.bucket_seconds,
    )
    port = await sink.start()
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    while not stopping.is_set():
        sink.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=args.bucket_seconds)
    await sink.close()
    return sink.stats()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument(
        "--connections", type=int, default=20, help="concurrent connections per source IP"
    )
    parser.add_argument(
        "--per-minute", type=int, default=600, help="accepted messages per sliding minute per IP"
    )
    parser.add_argument(
        "--data-delay", type=float, default=0.0, help="seconds before answering each end of data"
    )
    parser.add_argument("--bucket-seconds", type=float, default=10.0, help="counters per this")
    parser.add_argument("--stats", default="", help="write the counters here on SIGTERM")
    args = parser.parse_args(argv)
    stats = asyncio.run(_serve_until_signalled(args))
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
