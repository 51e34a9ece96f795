"""Running the ``bounce-relay`` command as a process, for the e2e tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from relay.ops.app import Relay

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``bounce-relay ARGS`` (as ``python -m relay``), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def run_with_config(config: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """``bounce-relay ARGS --config CONFIG``."""
    return run_cli(*args, "--config", str(config))


async def run(config: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """``run_with_config`` off the event loop (a relay may be serving in this process)."""
    return await asyncio.to_thread(run_with_config, config, *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def rcpt_code(relay: Relay, address: str) -> int:
    """The code the relay answers RCPT TO:<address> with."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail("s@example.com")
    try:
        response = await client.rcpt(address)
        code = response.code
    except aiosmtplib.SMTPRecipientRefused as exc:
        code = exc.code
    await client.quit()
    return code
