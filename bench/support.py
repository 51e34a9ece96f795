"""What the Python benchmarks share: ports, a scratch database, a relay and a sink as
subprocesses, and an SMTP load generator that can time each RCPT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import aiosmtplib
import asyncpg

DEFAULT_DSN = os.environ.get(
    "BOUNCE_RELAY_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BODY_HEAD = b"From: bench@example.com\r\nSubject: bench\r\nX-Campaign-ID: bench\r\n\r\n"


def database_dsn(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name``."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def run_with_peak_rss(command: list[str], stdout: IO[str] | None = None) -> float:
    """Run ``command``; its own peak RSS in MB (GNU time: the child's, not the bench's)."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *command], stdout=stdout, check=True
        )
        return int(Path(rss.name).read_text().split()[-1]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def scratch_database(dsn: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``dsn`` (dropped afterwards); its DSN."""
    name = f"br_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.contextmanager
def relay_process(config: str) -> Iterator[subprocess.Popen[bytes]]:
    """`bounce-relay serve` with ``config`` (TOML text); SIGTERM at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(config)
        proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", str(path)])
        try:
            yield proc
        finally:
            stop(proc)


SMTP_SINK = Path("/usr/sbin/smtp-sink")


def sink_name() -> str:
    """The sink ``sink_process`` starts: Postfix's where installed (as the peer benchmark)."""
    return "smtp-sink" if SMTP_SINK.exists() else "aiosmtpd"


@contextlib.contextmanager
def sink_process(port: int, data_delay: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """A server that answers 250 and stores nothing: Postfix's smtp-sink (C, so it is never
    what a benchmark measures) where installed, else a bare aiosmtpd. ``data_delay``: whole
    seconds it waits before answering each message's data (a slow upstream; smtp-sink takes
    whole seconds only)."""
    if sink_name() == "smtp-sink":
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        delay = ["-W", f"data:{data_delay}"] if data_delay else []
        proc = subprocess.Popen(
            [str(SMTP_SINK), *user, *delay, "-c", "-m", "1024", f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            stop(proc)
        return
    code = (
        "import asyncio\n"
        "from aiosmtpd.smtp import SMTP\n"
        "class H:\n"
        "    async def handle_DATA(self, s, se, e):\n"
        f"        await asyncio.sleep({data_delay})\n"
        "        return '250 OK'\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        f"    srv = await loop.create_server(lambda: SMTP(H()), '127.0.0.1', {port})\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (a relay with several processes)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def body_of(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return BODY_HEAD + line * max(1, (size - len(BODY_HEAD)) // len(line))


async def load(
    port: int,
    clients: int,
    messages: int,
    size: int,
    recipient: Callable[[int, int], str] = lambda n, i: f"r{n}.{i}@example.org",
    rcpt_seconds: list[float] | None = None,
) -> float:
    """Send ``messages`` over ``clients`` sessions; messages per second. With
    ``rcpt_seconds`` each RCPT's round trip is timed into it."""
    body = body_of(size)
    per_client = messages // clients

    async def one(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        for i in range(per_client):
            if rcpt_seconds is None:
                await client.sendmail("bench@example.com", [recipient(n, i)], body)
                continue
            await client.mail("bench@example.com")
            started = time.perf_counter()
            await client.rcpt(recipient(n, i))
            rcpt_seconds.append(time.perf_counter() - started)
            await client.data(body)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    return per_client * clients / (time.perf_counter() - start)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- for the shell benchmarks (cpu_per_message.sh) -------------------------------------------


async def _admin(dsn: str, statement: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _wait_final(dsn: str, timeout: float) -> None:
    """Until the relay has migrated the database and no delivery is queued or in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            conn = await asyncpg.connect(dsn)
            try:
                open_ = await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'inflight')"
                )
            finally:
                await conn.close()
            if open_ == 0:
                return
        await asyncio.sleep(0.05)
    raise SystemExit(f"deliveries still open after {timeout:.0f} s")


def main(argv: list[str]) -> None:
    """createdb DSN NAME | dropdb DSN NAME | dsn DSN NAME | wait-port PORT SECONDS |
    wait-final DSN SECONDS"""
    match argv:
        case ["createdb", dsn, name]:
            asyncio.run(_admin(dsn, f'CREATE DATABASE "{name}"'))
        case ["dropdb", dsn, name]:
            asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        case ["dsn", dsn, name]:
            print(database_dsn(dsn, name))
        case ["wait-port", port, seconds]:
            asyncio.run(wait_port(int(port), float(seconds)))
        case ["wait-final", dsn, seconds]:
            asyncio.run(_wait_final(dsn, float(seconds)))
        case _:
            raise SystemExit(f"usage: support.py {main.__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])


# -- relays on several loopback addresses (bench/shaping_bench.py) ----------------------------


def free_port_on(host: str) -> int:
    """A free port on ``host`` (a loopback address standing in for a machine)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_listening(host: str, port: int, timeout: float = 120) -> None:
    """Until something accepts connections on ``host``:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout:.0f} s")


async def load_on(
    host: str,
    port: int,
    clients: int,
    messages: int,
    body: bytes,
    recipient: Callable[[int, int], str],
) -> int:
    """Send ``messages`` (spread over ``clients`` sessions, the remainder to the first) to
    ``host``:``port``, one recipient each; how many were sent."""
    counts = [messages // clients + (1 if n < messages % clients else 0) for n in range(clients)]

    async def one(n: int) -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
        await client.connect()
        for i in range(counts[n]):
            await client.sendmail("bench@example.com", [recipient(n, i)], body)
        await client.quit()

    await asyncio.gather(*(one(n) for n in range(clients)))
    return sum(counts)


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM to every process at once, then wait for each (killed after ``timeout``): they
    drain in parallel."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
