"""Intake throughput: messages/s accepted (durably) with 1 and 50 concurrent clients.

Starts `bounce-relay serve` as a subprocess (delivery off, so only the intake
is measured) against the PostgreSQL named by --dsn / $BOUNCE_RELAY_TEST_DSN,
in a fresh database it creates and drops. In the same run it measures a bare
aiosmtpd sink that stores nothing, so the result is also reported as a ratio
against that baseline (absolute numbers drift from run to run).

    python bench/intake_bench.py --messages 2000 --clients 1,50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiosmtplib
import asyncpg

BODY_HEAD = b"From: bench@example.com\r\nSubject: bench\r\nX-Campaign-ID: bench\r\n\r\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


async def _load(port: int, clients: int, messages: int, size: int) -> float:
    line = b"x" * 76 + b"\r\n"
    body = BODY_HEAD + line * max(1, (size - len(BODY_HEAD)) // len(line))
    per_client = messages // clients

    async def one(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        for i in range(per_client):
            await client.sendmail("bench@example.com", [f"r{n}.{i}@example.org"], body)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    return per_client * clients / (time.perf_counter() - start)


def _sink(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio\n"
        "from aiosmtpd.smtp import SMTP\n"
        "class H:\n"
        "    async def handle_DATA(self, s, se, e): return '250 OK'\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        f"    srv = await loop.create_server(lambda: SMTP(H()), '127.0.0.1', {port})\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "BOUNCE_RELAY_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    db = f"br_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    relay_port, sink_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f'[smtp]\nlisten = "127.0.0.1:{relay_port}"\nhostname = "bench"\n'
            f'[store]\ndsn = "{_with_db(args.dsn, db)}"\npool_max_size = 10\n'
            '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n'
            '[log]\nlevel = "warning"\n'
        )
        relay = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", str(config)])
        sink = _sink(sink_port)
        try:
            await _wait_port(relay_port)
            await _wait_port(sink_port)
            for clients in (int(c) for c in args.clients.split(",")):
                base = await _load(sink_port, clients, args.messages, args.size)
                ours = await _load(relay_port, clients, args.messages, args.size)
                print(
                    f"clients={clients} size={args.size} messages={args.messages} "
                    f"relay_msgs_per_sec={ours:.0f} bare_sink_msgs_per_sec={base:.0f} "
                    f"ratio={ours / base:.2f}"
                )
        finally:
            for proc in (relay, sink):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            await admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
