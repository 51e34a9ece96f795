"""An SMTP sink that answers slowly, sometimes "later", and offers STARTTLS: the far end of
the delivery benchmark, standing in for many real receiving servers.

It listens on one port of several loopback addresses (the MX hosts of
bench/scripted_dns.py). Every reply, the greeting included, waits a random
``--min-delay``..``--max-delay`` seconds (20-100 ms: a receiving server's checks and the
network), a ``--tempfail`` share of RCPTs is answered ``451 4.7.1 try again later``, and
with ``--cert``/``--key`` EHLO offers STARTTLS. Nothing is stored.

It is a bare asyncio protocol on uvloop rather than aiosmtpd: the relay, PostgreSQL,
the DNS server and this share the machine's cores, and an aiosmtpd sink costs several
times the CPU per message (it was the bottleneck of bench/backlog.py at 928 msgs/s with no
delay at all). It speaks the subset a relay uses: EHLO/HELO, STARTTLS, MAIL, RCPT, DATA,
RSET, NOOP, QUIT. With ``--pipelining`` EHLO offers PIPELINING (RFC 2920), as the big
mailbox providers' servers do, and the commands that arrived together are answered together
after one delay, as a pipelining server flushes its replies when its input runs dry: the
delay stands for the network's round trip and the server's checks. Commands are handled in
order, one at a time, so the replies come in order. Lines are cut at 1,000 bytes; the end of data is
looked for only in what is new (linear in what arrives).

    python bench/latency_sink.py --hosts 50 --cert c.pem --key k.pem --stats /tmp/s.json

prints ``{"port": N}`` once it listens on every address; on SIGTERM it writes its counters
(connections, TLS handshakes, transactions, RCPTs answered 4xx, messages taken) to
``--stats`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import signal
import ssl
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

_MAX_LINE = 1000
_END_OF_DATA = b"\r\n.\r\n"


class Sink:
    """What every session shares: the policy (delays, failures, TLS) and the counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.min_delay = args.min_delay
        self.max_delay = args.max_delay
        self.tempfail = args.tempfail
        self.pipelining = args.pipelining
        self.unknown = args.unknown
        self.random = random.Random(args.seed)
        self.counts: Counter[str] = Counter()
        self.tls: ssl.SSLContext | None = None
        if args.cert:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(args.cert, args.key)

    def delay(self) -> float:
        return self.random.uniform(self.min_delay, self.max_delay)

    def refuses(self) -> bool:
        return self.random.random() < self.tempfail

    def unknown_user(self, rcpt_line: bytes) -> bool:
        """The ``--unknown`` share of addresses do not exist: chosen by the address (a
        checksum, not a draw), so that a retry meets the same answer."""
        if not self.unknown:
            return False
        return zlib.crc32(bytes(rcpt_line).lower()) % 100_000 < self.unknown * 100_000


class Session(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0  # in DATA: where the search for its end goes on from
        self.busy = False  # a reply is on its way: the next command waits for it
        self.pending = bytearray()  # replies to a pipelined batch, sent with its last
        self.secure = False
        self.recipients = 0
        self.closing = False

    # -- the transport's side ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.sink.counts["connections"] += 1
        self._reply(b"220 sink.bench.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._work()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None

    # -- the dialogue ---------------------------------------------------------------------------

    def _reply(self, line: bytes, then: Any = None) -> None:
        """Answer ``line`` after the delay; ``then`` runs once it is written. With
        pipelining, while another whole command waits in the buffer the reply waits for it."""
        self.pending += line
        if (
            self.sink.pipelining
            and then is None
            and not self.in_data
            and self.buffer.find(b"\n") != -1
        ):
            return
        replies = bytes(self.pending)
        self.pending.clear()
        self.busy = True
        self.loop.call_later(self.sink.delay(), self._send, replies, then)

    def _send(self, line: bytes, then: Any) -> None:
        if self.transport is None or self.closing:
            return
        self.transport.write(line)
        self.busy = False
        if then is not None:
            then()
        else:
            self._work()

    def _work(self) -> None:
        """Handle what is buffered, one command (or one message's data) at a time."""
        while not self.busy and not self.closing and self.transport is not None:
            if self.in_data:
                if not self._take_data():
                    return
                continue
            end = self.buffer.find(b"\n")
            if end == -1:
                if len(self.buffer) > _MAX_LINE:
                    self._reply(b"500 5.5.2 line too long\r\n", self._close)
                return
            line = bytes(self.buffer[: end + 1]).rstrip(b"\r\n")
            del self.buffer[: end + 1]
            self._command(line)

    def _take_data(self) -> bool:
        """Whether the end of the data arrived (then it is answered)."""
        end = self.buffer.find(_END_OF_DATA, max(0, self.scanned - len(_END_OF_DATA)))
        if end == -1:
            self.scanned = len(self.buffer)
            return False
        del self.buffer[: end + len(_END_OF_DATA)]
        self.in_data = False
        self.scanned = 0
        self.recipients = 0
        self.sink.counts["messages"] += 1
        self._reply(b"250 2.0.0 Ok: queued\r\n")
        return True

    def _command(self, line: bytes) -> None:
        verb = bytes(line[:8].split(b" ", 1)[0].upper())
        handler = self._handlers.get(verb)
        if handler is None:
            self._reply(b"502 5.5.2 command not recognized\r\n")
        elif verb == b"RCPT" and self.sink.unknown_user(line):
            self.sink.counts["rcpt_5xx"] += 1
            self._reply(b"550 5.1.1 The email account that you tried to reach does not exist\r\n")
        else:
            handler(self, verb)

    def _hello(self, verb: bytes) -> None:
        self.recipients = 0
        offers = [b"sink.bench.test", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE 52428800"]
        if self.sink.pipelining:
            offers.append(b"PIPELINING")
        if self._offers_tls() and verb == b"EHLO":
            offers.append(b"STARTTLS")
        text = b"".join(b"250-" + o + b"\r\n" for o in offers[:-1])
        self._reply(text + b"250 " + offers[-1] + b"\r\n")

    def _offers_tls(self) -> bool:
        return self.sink.tls is not None and not self.secure

    def _starttls(self, verb: bytes) -> None:
        if self._offers_tls():
            self._reply(b"220 2.0.0 Ready to start TLS\r\n", self._start_tls)
        else:
            self._reply(b"503 5.5.1 TLS not available\r\n")

    def _mail(self, verb: bytes) -> None:
        self.sink.counts["transactions"] += 1
        self.recipients = 0
        self._reply(b"250 2.1.0 Ok\r\n")

    def _rcpt(self, verb: bytes) -> None:
        self.sink.counts["rcpt"] += 1
        if self.sink.refuses():
            self.sink.counts["rcpt_4xx"] += 1
            self._reply(b"451 4.7.1 try again later\r\n")
        else:
            self.recipients += 1
            self._reply(b"250 2.1.5 Ok\r\n")

    def _data(self, verb: bytes) -> None:
        if not self.recipients:
            self._reply(b"503 5.5.1 no valid recipients\r\n")
            return
        self.in_data = True
        # The data follows a line's end: with this CRLF before it, a "." alone on its
        # first line ends it as one on any later line does.
        self.buffer[0:0] = b"\r\n"
        self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def _rset(self, verb: bytes) -> None:
        self.recipients = 0
        self._reply(b"250 2.0.0 Ok\r\n")

    def _noop(self, verb: bytes) -> None:
        self._reply(b"250 2.0.0 Ok\r\n")

    def _quit(self, verb: bytes) -> None:
        self._reply(b"221 2.0.0 Bye\r\n", self._close)

    _handlers: ClassVar[dict[bytes, Callable[[Session, bytes], None]]] = {
        b"EHLO": _hello,
        b"HELO": _hello,
        b"STARTTLS": _starttls,
        b"MAIL": _mail,
        b"RCPT": _rcpt,
        b"DATA": _data,
        b"RSET": _rset,
        b"NOOP": _noop,
        b"QUIT": _quit,
    }

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _start_tls(self) -> None:
        transport = self.transport
        assert transport is not None
        assert self.sink.tls is not None
        # Nothing the client sends from here on is a command of ours: the TLS layer reads it.
        transport.pause_reading()
        self.busy = True
        self.buffer.clear()
        task = self.loop.create_task(self._upgrade(transport, self.sink.tls))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _upgrade(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secure = await self.loop.start_tls(transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            self.sink.counts["tls_failures"] += 1
            transport.abort()
            return
        if secure is None:
            transport.abort()
            return
        self.sink.counts["tls_handshakes"] += 1
        self.transport = secure
        self.secure = True
        self.recipients = 0  # RFC 3207: the session starts over
        self.busy = False
        self._work()


_tasks: set[asyncio.Task[None]] = set()


async def serve(args: argparse.Namespace) -> dict[str, int]:
    """Answer until SIGTERM; the counters."""
    loop = asyncio.get_running_loop()
    sink = Sink(args)
    base = ipaddress.ip_address(args.address_base)
    addresses = [str(base + k + 1) for k in range(args.hosts) if k % args.processes == args.index]
    port = args.port
    servers = []
    for address in addresses:
        server = await loop.create_server(
            lambda: Session(sink), address, port, backlog=1024, reuse_address=True
        )
        port = port or server.sockets[0].getsockname()[1]
        servers.append(server)
    print(json.dumps({"port": port}), flush=True)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    for server in servers:
        server.close()
    return dict(sink.counts)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--hosts", type=int, default=50, help="addresses to listen on")
    parser.add_argument(
        "--address-base", default="127.0.1.0", help="host k listens on this + k + 1"
    )
    parser.add_argument("--processes", type=int, default=1, help="sink processes sharing the hosts")
    parser.add_argument(
        "--index", type=int, default=0, help="this process takes the hosts k with k %% n = i"
    )
    parser.add_argument("--min-delay", type=float, default=0.020)
    parser.add_argument("--max-delay", type=float, default=0.100)
    parser.add_argument("--tempfail", type=float, default=0.05, help="share of RCPTs given 451")
    parser.add_argument(
        "--unknown", type=float, default=0.0, help="share of addresses given 550 5.1.1"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--pipelining",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer PIPELINING and answer a batch of commands together (default: on)",
    )
    parser.add_argument("--cert", default="", help="PEM certificate: offer STARTTLS")
    parser.add_argument("--key", default="")
    parser.add_argument("--stats", default="", help="write the counters here on SIGTERM")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        counts = asyncio.run(serve(args))
    else:
        counts = uvloop.run(serve(args))
    if args.stats:
        Path(args.stats).write_text(json.dumps(counts), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
