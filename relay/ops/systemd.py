"""systemd's notify protocol (sd_notify(3)): a few datagrams on $NOTIFY_SOCKET.

READY=1 once the database is migrated and the listener accepts, RELOADING=1 /
READY=1 around a SIGHUP, STOPPING=1 when shutdown starts, and WATCHDOG=1 every
half $WATCHDOG_USEC while the event loop is alive. Without $NOTIFY_SOCKET
(not under systemd, or Type=simple) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

__all__ = ["notify", "watchdog"]


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. "READY=1") to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        # A notification that cannot be delivered must never stop the relay.
        return False
    return True


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog() -> None:
    """Ping systemd's watchdog until cancelled; returns at once when none is set."""
    interval = _watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def monotonic_usec() -> int:
    return time.monotonic_ns() // 1000
