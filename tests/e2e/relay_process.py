"""Running `bounce-relay serve` as a subprocess in tests: config, start, wait, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg


def relay_config(port: int, upstream_port: int, dsn: str, extra: str = "") -> str:
    return f"""
[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.test"
[store]
dsn = "{dsn}"
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{upstream_port}"]
[admin]
listen = "127.0.0.1:0"
[delivery]
poll_interval = "0.2s"
connect_timeout = "5s"
command_timeout = "10s"
{extra}
"""


async def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, "relay exited early"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"relay on {port} did not start")


def start(path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def send(port: int, rcpt: str, n: int = 0) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    body = f"Subject: {n}\r\nX-Seq: {n}\r\n\r\nbody\r\n".encode()
    await client.sendmail("s@example.com", [rcpt], body)
    await client.quit()


async def stop(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """SIGTERM, expect exit 0; the relay's JSON log lines."""
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, None, 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]


async def wait_delivered(dsn: str, count: int, timeout: float = 30) -> None:
    db = await asyncpg.connect(dsn)
    try:
        for _ in range(int(timeout * 10)):
            done = await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
            if done >= count:
                return
            await asyncio.sleep(0.1)
        states = await db.fetch("SELECT state, count(*) FROM deliveries GROUP BY 1")
        raise AssertionError(f"only {done} of {count} delivered: {[tuple(s) for s in states]}")
    finally:
        await db.close()
