"""What the fault runs share: a relay subprocess to kill, a client that keeps what it was not
told 250 for (and sends it again, as an MTA would), an upstream that counts what it took,
the database checks, and the JSON-lines record behind RELIABILITY.md.

Every message carries ``Message-ID: <seq-N@chaos.test>`` and ``X-Seq: N``: the upstream
counts bodies by ``X-Seq``, the database keeps the Message-ID after the body is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiosmtplib
import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

WORKTREE = Path(__file__).resolve().parents[2]
OUT_ENV = "BOUNCE_RELAY_RELIABILITY_OUT"
ITERATIONS_ENV = "BOUNCE_RELAY_CHAOS_ITERATIONS"
SOAK_ENV = "BOUNCE_RELAY_CHAOS_SOAK"


def iterations(default: int) -> int:
    """Crashes per window: ``BOUNCE_RELAY_CHAOS_ITERATIONS`` for longer runs."""
    return int(os.environ.get(ITERATIONS_ENV, str(default)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the record ---------------------------------------------------------------------------------


def record(case: str, expected: str, observed: str, **numbers: Any) -> None:
    """One line of results for RELIABILITY.md (only when BOUNCE_RELAY_RELIABILITY_OUT is set)."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rpartition(" (")[0]
    line = {"case": case, "expected": expected, "observed": observed, "test": test, **numbers}
    with Path(out).open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


# -- the relay ----------------------------------------------------------------------------------


def relay_config(
    port: int,
    upstream_port: int,
    dsn: str,
    *,
    delivery: str = "",
    log_level: str = "warning",
    retry: str = 'schedule = ["1s"]\nmax_age = "1h"',
    extra: str = "",
    lease: str = "2s",
) -> str:
    return f"""
[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.test"
processes = 1
[store]
dsn = "{dsn}"
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{upstream_port}"]
tls = "off"
[admin]
listen = "127.0.0.1:0"
[log]
level = "{log_level}"
[retry]
{retry}
[delivery]
poll_interval = "0.2s"
connect_timeout = "2s"
command_timeout = "5s"
lease = "{lease}"
{delivery}
{extra}
"""


class RelayProcess:
    """``python -m relay serve`` from this worktree, stderr kept in a file."""

    def __init__(self, config: str, workdir: Path, name: str) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.log_path = workdir / f"{name}.log"
        self.port = int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', config).group(1))  # type: ignore[union-attr]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, crash_at: str | None = None, raise_at: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
        env.pop("BOUNCE_RELAY_CRASH_AT", None)
        env.pop("BOUNCE_RELAY_RAISE_AT", None)
        if crash_at:
            env["BOUNCE_RELAY_CRASH_AT"] = crash_at
        if raise_at:
            env["BOUNCE_RELAY_RAISE_AT"] = raise_at
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} crash_at={crash_at}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=WORKTREE,
            )
        await self.wait_listening()

    async def wait_listening(self) -> None:
        for _ in range(600):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited early:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"relay on {self.port} did not start:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_dead(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def crashes_at(self, point: str) -> int:
        return self.log_path.read_text(errors="replace").count(f'"name": "{point}"')

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_events(self, event: str) -> int:
        """How many JSON log lines of this relay are ``event`` (read as JSON: the spacing
        is the renderer's business)."""
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and event in line:
                try:
                    count += json.loads(line).get("event") == event
                except ValueError:
                    continue  # a line cut by the kill
        return count

    def acknowledged(self) -> set[str]:
        """Queue ids this relay logged ``intake.accepted`` for (log level info): their 250
        was handed to the kernel in the same step, with no await in between. A SIGKILL can
        take the last lines with it (the log writer thread had not written them): after a
        kill, ``Client.acknowledged`` is the one to believe."""
        ids = set()
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"intake.accepted"' in line:
                ids.add(json.loads(line)["queue_id"])
        return ids

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM and wait; SIGKILL when it does not go (a hung relay fails the test)."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"relay did not stop on SIGTERM:\n{self.log_tail()}") from None
        assert code == 0, f"relay exited {code}:\n{self.log_tail()}"

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


# -- the client ---------------------------------------------------------------------------------


def body(seq: int, extra: bytes = b"") -> bytes:
    return (
        f"From: s@example.com\r\nSubject: chaos {seq}\r\nMessage-ID: <seq-{seq}@chaos.test>\r\n"
        f"X-Seq: {seq}\r\n\r\nbody {seq}\r\n"
    ).encode() + extra


def seq_of(data: bytes) -> int:
    match = re.search(rb"X-Seq: (\d+)", data)
    assert match is not None, data[:200]
    return int(match.group(1))


@dataclass
class Client:
    """Sends numbered messages; ``acked`` got 250, the rest stay ``pending`` (sent again)."""

    port: int
    acked: set[int] = field(default_factory=set)
    pending: list[int] = field(default_factory=list)
    replies: Counter[str] = field(default_factory=Counter)
    next_seq: int = 0
    # The queue ids of the 250s this client read ("queued as <id>"): what was acknowledged,
    # as the client saw it. (The relay's own log can lose its last lines to a SIGKILL: its
    # writer thread had not written them yet.)
    acknowledged: set[str] = field(default_factory=set)

    def new(self, count: int) -> None:
        self.pending += range(self.next_seq, self.next_seq + count)
        self.next_seq += count

    async def send_one(self, seq: int) -> str:
        """Send ``seq``; the first digit of the reply ('2', '4', '5') or 'lost' (no reply)."""
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, timeout=20)
        try:
            await client.connect()
            _, reply = await client.sendmail("s@example.com", [f"r{seq}@example.org"], body(seq))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return self._outcome(seq, str(next(iter(exc.recipients)).code)[0])
        except aiosmtplib.SMTPResponseException as exc:
            # 421 closing: the relay is going away (a lost session, like a drop).
            return self._outcome(seq, "lost" if exc.code == 421 else str(exc.code)[0])
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return self._outcome(seq, "lost")
        finally:
            with contextlib.suppress(Exception):
                client.close()
        self.acknowledged.add(reply.rsplit(" ", 1)[-1])
        return self._outcome(seq, "2")

    def _outcome(self, seq: int, kind: str) -> str:
        self.replies[kind] += 1
        if kind == "2":
            self.acked.add(seq)
        return kind

    async def send_pending(
        self, clients: int = 3, stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Send what is pending over ``clients`` concurrent sessions until done or ``stop()``;
        what was not acknowledged stays pending."""
        queue = list(self.pending)
        self.pending = []

        async def worker() -> None:
            while queue and not stop():
                seq = queue.pop(0)
                if await self.send_one(seq) != "2":
                    self.pending.append(seq)

        await asyncio.gather(*(worker() for _ in range(clients)))
        self.pending += queue
        self.pending.sort()


# -- the upstream -------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What the upstream does: answers drawn at random (soak), a hook at the DATA command."""

    rng: random.Random = field(default_factory=lambda: random.Random(1))
    p_4xx: float = 0.0
    p_5xx: float = 0.0
    p_disconnect: float = 0.0
    at_data_command: Callable[[], bool] | None = None  # True: drop the connection
    on_data: Callable[[int], str | None] | None = None  # the reply to this X-Seq, or None
    on_rcpt: Callable[[str], str | None] | None = None  # the reply to this RCPT, or None
    data_delay: float = 0.0


class _Handler:
    def __init__(self, up: ChaosUpstream) -> None:
        self.up = up

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        b = self.up.behaviour
        if b.p_disconnect and b.rng.random() < b.p_disconnect / 2:
            self.up.disconnects += 1
            _abort(server.transport)
            return "421 4.4.2 gone"
        reply = b.on_rcpt(address) if b.on_rcpt is not None else None
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        b = self.up.behaviour
        if b.data_delay:
            await asyncio.sleep(b.data_delay)
        seq = seq_of(envelope.original_content or b"")
        reply = b.on_data(seq) if b.on_data is not None else None
        if reply is not None:
            {"2": self.up.received, "4": self.up.deferred, "5": self.up.refused}[reply[0]][seq] += 1
            return reply
        draw = b.rng.random()
        if draw < b.p_disconnect:
            # The data is in, the reply never goes out: the upstream took no responsibility.
            self.up.disconnects += 1
            _abort(server.transport)
            return "421 4.4.2 gone"
        if draw < b.p_disconnect + b.p_5xx:
            self.up.refused[seq] += 1
            return "554 5.7.1 Message rejected as spam"
        if draw < b.p_disconnect + b.p_5xx + b.p_4xx:
            self.up.deferred[seq] += 1
            return "451 4.3.0 Try again later"
        self.up.received[seq] += 1
        return "250 2.0.0 OK"


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Drop the connection at once, no reply. aiosmtpd types its transport as the base class;
    the stream transports it is given (asyncio's, uvloop's) all have ``abort``."""
    if transport is not None:
        cast(asyncio.WriteTransport, transport).abort()


class _ChaosSMTP(SMTP):
    up: ChaosUpstream

    async def push(self, status: str | bytes) -> None:
        # Some servers still answer in Latin-1: bytes that are not UTF-8 (ASCII is the same
        # bytes either way, which is all aiosmtpd's own push would write).
        await super().push(status.encode("latin-1") if isinstance(status, str) else status)

    async def smtp_DATA(self, arg: str) -> None:
        hook = self.up.behaviour.at_data_command
        if hook is not None and hook():
            # Mid-DATA: the command came, the content never will (the relay is gone).
            self.up.cut_at_data += 1
            _abort(self.transport)
            return
        await super().smtp_DATA(arg)


class ChaosUpstream:
    """An aiosmtpd upstream on 127.0.0.1:``port`` counting accepted messages per X-Seq."""

    def __init__(self, port: int = 0, behaviour: Behaviour | None = None) -> None:
        self.port = port
        self.behaviour = behaviour or Behaviour()
        self.received: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self.deferred: Counter[int] = Counter()
        self.disconnects = 0
        self.cut_at_data = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ChaosUpstream:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            proto = _ChaosSMTP(_Handler(self), hostname="upstream.test", loop=loop)
            proto.up = self
            return proto

        self._server = await loop.create_server(factory, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.received.values() if n > 1)


# -- the database -------------------------------------------------------------------------------


async def wait_settled(dsn: str, timeout: float = 120) -> dict[str, int]:
    """Wait until no delivery is queued or inflight; the count per state."""
    deadline = time.monotonic() + timeout
    db = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await db.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
            states = {r["state"]: r["n"] for r in rows}
            if not states.get("queued") and not states.get("inflight"):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"the queue did not settle: {states}")
            await asyncio.sleep(0.2)
    finally:
        await db.close()


async def stored_rows(dsn: str) -> dict[int, list[str]]:
    """The queue ids of the message rows of each X-Seq in the database."""
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch("SELECT message_id, queue_id FROM messages ORDER BY id")
    finally:
        await db.close()
    seqs: dict[int, list[str]] = {}
    for r in rows:
        match = re.fullmatch(r"<seq-(\d+)@chaos\.test>", r["message_id"] or "")
        assert match is not None, r["message_id"]
        seqs.setdefault(int(match.group(1)), []).append(r["queue_id"])
    return seqs


async def stored_seqs(dsn: str) -> Counter[int]:
    """How many message rows each X-Seq has in the database."""
    return Counter({seq: len(ids) for seq, ids in (await stored_rows(dsn)).items()})


# Rows that may never exist whatever happened to the relay: a message is written whole
# (message, a delivery per recipient, its accepted event) or not at all, and a finished
# delivery has the event that finished it.
HALF_WRITTEN = {
    "message without deliveries": """
        SELECT count(*) FROM messages m
        WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)""",
    "message without its accepted event": """
        SELECT count(*) FROM messages m
        WHERE NOT EXISTS (SELECT 1 FROM events e
                          WHERE e.message_id = m.id AND e.type = 'accepted')""",
    "delivered without a delivered event": """
        SELECT count(*) FROM deliveries d
        WHERE d.state = 'delivered'
          AND NOT EXISTS (SELECT 1 FROM events e
                          WHERE e.delivery_id = d.id AND e.type = 'delivered')""",
    "delivery with two delivered events": """
        SELECT count(*) FROM (SELECT delivery_id FROM events WHERE type = 'delivered'
                              GROUP BY delivery_id HAVING count(*) > 1) x""",
    "final delivery still holding a lease": """
        SELECT count(*) FROM deliveries
        WHERE state NOT IN ('queued', 'inflight') AND lease_token IS NOT NULL""",
    "body kept after every delivery is final": """
        SELECT count(*) FROM messages m
        WHERE m.body IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM deliveries d
                          WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight'))""",
}


async def half_written(dsn: str) -> dict[str, int]:
    """Each invariant above that some rows break, with how many."""
    db = await asyncpg.connect(dsn)
    try:
        found = {name: int(await db.fetchval(sql)) for name, sql in HALF_WRITTEN.items()}
    finally:
        await db.close()
    return {name: n for name, n in found.items() if n}


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
