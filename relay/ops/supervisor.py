"""Several relay processes behind one port: ``[smtp] processes`` > 1.    ~ Postfix master

One event loop is the ceiling of one Python process. ``serve`` therefore
starts N copies of itself (``python -m relay serve``, a fresh interpreter
each, nothing forked from a running loop), each a complete relay: intake on
the shared port (SO_REUSEPORT, the kernel spreads connections), its own
delivery worker claiming from the shared queue with leases. Only process 0
serves the admin listener. The supervisor itself holds no database
connection and no socket:

- it reports READY to systemd once every process is listening, forwards
  SIGHUP (reload) and SIGTERM (graceful stop) to all, and pings the watchdog;
- a process that fails to start stops the others and ``serve`` exits 1 with
  that process's own error on stderr;
- a process that dies later is started again (after 1 s, backing off to 30 s);
  once its heartbeat has been silent for 10 s the others or its successor take its
  leases over (``relay.delivery.heartbeat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass

import structlog

from policies.retry import scheduled
from relay.config import Config
from relay.ops import systemd

__all__ = [
    "PROCESS_ENV",
    "READY_FD_ENV",
    "ProcessRole",
    "process_role",
    "signal_ready",
    "supervise",
]

log = structlog.get_logger("relay.supervisor")

PROCESS_ENV = "BOUNCE_RELAY_PROCESS"  # "index/count/supervisor pid", set for its children
READY_FD_ENV = "BOUNCE_RELAY_READY_FD"
# What only the supervisor may use: the child's notify calls become no-ops.
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class ProcessRole:
    index: int
    count: int


def process_role() -> ProcessRole | None:
    """This process's place among the supervisor's children; None when run on its own.

    A child dies with its supervisor (Linux parent-death signal), as one relay would:
    a SIGKILLed relay leaves no orphan processes holding the port and claiming work."""
    value = os.environ.get(PROCESS_ENV)
    if not value:
        return None
    index, _, rest = value.partition("/")
    count, _, parent = rest.partition("/")
    _die_with_parent(int(parent))
    return ProcessRole(int(index), int(count))


def _die_with_parent(parent: int) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before the signal was armed
        os._exit(1)


def signal_ready() -> None:
    """Tell the supervisor this process listens (no-op when not supervised)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"R")
            os.close(int(fd))


class _Child:
    def __init__(self, index: int, count: int, config: Config, listen: str | None) -> None:
        self.index = index
        self.count = count
        self.config = config
        self.listen = listen  # serve --listen, handed on to each process
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.ready = False
        # A reload asked for while starting: SIGHUP would kill a process that has no
        # handler yet, so it is sent once the process is ready.
        self.reload_pending = False

    async def start(self) -> bool:
        """Start the process; True once it listens, False when it exited first."""
        self.ready = self.reload_pending = False
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ONLY}
        env[PROCESS_ENV] = f"{self.index}/{self.count}/{os.getpid()}"
        env[READY_FD_ENV] = str(write_fd)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "serve",
                "--config",
                str(self.config.path),
                *(["--listen", self.listen] if self.listen else []),
                env=env,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        try:
            # One byte when it listens; end of file when it exits without doing so.
            self.ready = await asyncio.to_thread(os.read, read_fd, 1) == b"R"
        finally:
            os.close(read_fd)
        if self.ready and self.reload_pending:
            self.reload()
        return self.ready

    def reload(self) -> None:
        if self.ready:
            self.signal(signal.SIGHUP)
        else:
            self.reload_pending = True

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()


async def supervise(config: Config, *, listen: tuple[str, int] | None = None) -> int:
    """Run ``config.smtp.processes`` relay processes until SIGTERM/SIGINT; the exit status.
    ``listen``: ``serve --listen``, instead of ``[smtp] listen`` for this run."""
    count = config.smtp.processes
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    address = listen or config.smtp.listen
    shown = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    children = [_Child(i, count, config, shown if listen else None) for i in range(count)]

    def reload() -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        for child in children:
            child.reload()
        systemd.notify("READY=1")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        started = await asyncio.gather(*(c.start() for c in children))
        if not all(started):
            failed = [c.index for c, ok in zip(children, started, strict=True) if not ok]
            log.error(
                "relay.process_failed_to_start",
                processes=failed,
                action="stopping the others; the process's own error is above",
            )
            await _stop_all(children)
            return 1
        systemd.notify("READY=1", f"STATUS={count} processes listening on {shown}")
        log.info("relay.ready", processes=count, port=address[1])
        watchdog = asyncio.create_task(systemd.watchdog(), name="systemd.watchdog")
        try:
            await _watch(children, stop)
        finally:
            watchdog.cancel()
        systemd.notify("STOPPING=1")
        log.info("relay.stopping", processes=count)
        codes = await _stop_all(children)
        log.info("relay.stopped", exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _watch(children: list[_Child], stop: asyncio.Event) -> None:
    """Until ``stop``: start again any process that exits."""
    stopping = asyncio.create_task(stop.wait())
    waits = {asyncio.create_task(c.wait()): c for c in children}
    try:
        while True:
            done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return
            for task in done:
                child = waits.pop(task)
                delay = scheduled(_RESTART_DELAYS, child.restarts + 1)
                log.error(
                    "relay.process_exited",
                    process=child.index,
                    exit_code=task.result(),
                    action=f"starting it again in {delay:g} s",
                )
                child.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)  # a SIGTERM ends the wait
                if stop.is_set():
                    return
                if await child.start():
                    log.info("relay.process_restarted", process=child.index)
                waits[asyncio.create_task(child.wait())] = child
    finally:
        for task in [stopping, *waits]:
            task.cancel()


async def _stop_all(children: list[_Child]) -> list[int]:
    for child in children:
        child.signal(signal.SIGTERM)
    return [await c.wait() for c in children if c.proc is not None]
