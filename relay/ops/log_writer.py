"""Log lines to a file descriptor, written whole, off the event loop.

The relay logs a line per message and stage. Writing each one with its own ``write(2)``
on the event loop costs a system call per line and, when whoever reads stderr falls
behind (journald busy, a pipe nobody drains), stops intake and delivery with it. A
``LineWriter`` takes the rendered lines in a bounded buffer and a thread of its own
writes them, several at a time:

- **Whole lines.** The processes of one relay share stderr. Each ``write(2)`` carries
  whole lines only, and at most ``PIPE_BUF`` bytes (4096 on Linux) unless a single line
  is longer: on a pipe, POSIX makes such a write atomic, so no other process's line
  lands inside one of ours; a stream socket (journald's) takes it in one piece too. A
  longer line is written alone, as before this writer. To a regular file, where the
  kernel writes each ``write(2)`` whole under the file's lock, up to 64 KiB go at once.
- **Bounded, never blocking.** Lines waiting to be written are bounded in bytes. When
  the buffer is full an info or debug line is dropped and counted (``dropped``), and
  the writer logs how many it dropped as soon as it can write again. Warnings and
  errors are kept beyond the bound: they are rare and say what went wrong, so the
  drops fall on the routine lines. Past ``hard_limit`` bytes even they are written by
  the caller, blocking, the back pressure a plain ``write(2)`` always had.
- **Nothing lost on a normal exit.** ``close`` (registered with ``atexit`` by
  ``relay.ops.logging``) writes what is left; ``flush`` waits until all is written.
"""

from __future__ import annotations

import os
import select
import stat
import threading
from collections.abc import Callable

__all__ = ["LineWriter"]

# A write(2) of at most this many bytes to a pipe is atomic (POSIX; 4096 on Linux).
PIPE_BUF = select.PIPE_BUF
_FILE_CHUNK = 64 << 10
# While lines come, the thread wakes on its own this often and writes what gathered: a
# busy relay writes a few thousand bytes per system call rather than a line, and the
# caller never wakes the thread (a notify per idle spell cost more than the line did).
# Each wake-up takes the interpreter lock from the event loop (after up to 5 ms, then a
# forced switch), so they are kept few: 50 a second at most.
_GATHER_SECONDS = 0.02
# After this many empty rounds the thread sleeps until a line comes and wakes it.
_QUIET_ROUNDS = 10


class LineWriter:
    """Writes lines (bytes ending in a newline) to ``fd`` from a thread of its own, or,
    not ``background``, at once from the caller (whole all the same).

    ``capacity``: bytes of lines waiting before routine lines are dropped.
    ``describe_drops(n)``: the line that tells the reader ``n`` lines were dropped."""

    def __init__(
        self,
        fd: int,
        *,
        background: bool = True,
        capacity: int = 4 << 20,
        hard_limit: int = 64 << 20,
        describe_drops: Callable[[int], bytes] | None = None,
    ) -> None:
        self.fd = fd
        self.background = background
        self.chunk = _FILE_CHUNK if _is_regular_file(fd) else PIPE_BUF
        self.capacity = capacity
        self.hard_limit = max(hard_limit, capacity)
        self._describe_drops = describe_drops or _plain_drop_line
        self.dropped = 0  # lines dropped since the start (a metric)
        self._unreported = 0  # dropped lines not yet told in the log
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # lines waiting, or close()
        self._drained = threading.Condition(self._lock)  # nothing waiting, nothing in hand
        # The lines are copied into one buffer rather than queued as they come: a line is
        # then freed by the thread that made it, where the allocator reuses its memory at
        # once (freed by the writer thread, it went to that thread's cache and every new
        # line took fresh memory: 3 us a line, more than the rest of the writer).
        self._buffer = bytearray()
        self._waiting = 0  # bytes not yet written: the buffer's and those in the thread's hands
        self._asleep = False  # until a line comes: the next write() wakes the thread
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if self.background:
            self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._thread.start()

    # -- the caller's side: never blocks while under hard_limit ---------------------------

    def write(self, line: bytes, *, keep: bool = False) -> None:
        """Queue ``line`` (one line, ending in a newline); ``keep`` (warnings, errors)
        exempts it from the bound."""
        if not line.endswith(b"\n"):
            line += b"\n"
        with self._lock:
            size = len(line)
            if self._thread is not None:
                if self._waiting + size <= self.capacity or (
                    keep and self._waiting + size <= self.hard_limit
                ):
                    self._buffer += line
                    self._waiting += size
                    if self._asleep:
                        self._asleep = False
                        self._wake.notify()
                    return
                if not keep:
                    self.dropped += 1
                    self._unreported += 1
                    return
        # Closed, or a kept line past hard_limit: written here, whole, blocking.
        self._write_all(line)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every line queued so far is written; False on timeout."""
        with self._lock:
            if self._thread is None:
                return True
            return self._drained.wait_for(lambda: self._waiting == 0, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Write what is left (within ``timeout`` seconds: a stalled reader must not keep
        the process from exiting) and stop the thread; later lines are written directly."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closing.set()
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork_in_child(self) -> None:
        """A forked child has no writer thread and a lock in an unknown state: start
        afresh. The parent writes the lines it had queued."""
        self._unreported = 0
        self._start()

    # -- the thread's side ----------------------------------------------------------------

    def _run(self) -> None:
        quiet_rounds = 0
        while True:
            with self._lock:
                if not self._buffer and not self._unreported:
                    self._drained.notify_all()
                    if self._closing.is_set():
                        return
                    # Soon more lines, or (after a quiet spell) asleep until write() wakes us.
                    self._asleep = quiet_rounds >= _QUIET_ROUNDS
                    self._wake.wait(None if self._asleep else _GATHER_SECONDS)
                    self._asleep = False
                    quiet_rounds += 1
                    continue
            self._write_waiting()
            quiet_rounds = 0
            self._closing.wait(_GATHER_SECONDS)  # lines gather; close() cuts it short

    def _write_waiting(self) -> None:
        with self._lock:
            data, self._buffer = self._buffer, bytearray()
        with memoryview(data) as view:
            start = 0
            while start < len(data):
                end = len(data)
                if end - start > self.chunk:  # the whole lines that fit, or one longer line
                    end = data.rfind(b"\n", start, start + self.chunk) + 1
                    if end <= start:
                        end = data.index(b"\n", start) + 1
                self._write_all(view[start:end])
                with self._lock:
                    self._waiting -= end - start
                start = end
        with self._lock:
            unreported, self._unreported = self._unreported, 0
        if unreported:
            self._write_all(self._describe_drops(unreported))

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:  # a non-blocking stderr (inherited that way): wait
                select.select([], [self.fd], [])
            except InterruptedError:
                continue
            except OSError:
                # stderr is gone (closed, EPIPE): nothing can be logged any more; count
                # the lines rather than fail the caller.
                with self._lock:
                    self.dropped += max(1, bytes(view).count(b"\n"))
                return


def _is_regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _plain_drop_line(count: int) -> bytes:
    return f"log.lines_dropped dropped={count}\n".encode()
