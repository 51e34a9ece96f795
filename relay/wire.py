"""Message data on the wire, both ways, with ``bytes`` methods instead of a Python loop turn
per line (reading) or a regular expression over every byte (sending).

Reading: the bytes of one DATA, framed as aiosmtpd frames them.

aiosmtpd reads DATA one line at a time (``readuntil`` plus bookkeeping per line), which at
20 KB is as much CPU as everything else the relay does for a message. ``DataFrame`` takes
whatever the socket delivered and keeps the same rules (``tests/relay/test_smtp_data.py``
compares the two on every framing case):

- the data ends at the first line that is a lone dot: ``<CR><LF>.<CR><LF>``, or ``.<CR><LF>``
  as the very first line. Lines end at CRLF only, so a bare LF or CR never ends anything
  (the intake then refuses the data: ``policies.line_endings``);
- a leading dot is removed from every line (RFC 5321 §4.5.2);
- more than ``size_limit`` bytes is "too much" (552) and a line longer than ``line_limit``
  with its CRLF is "too long" (500); either way the rest is read to the end and dropped, so
  memory stays bounded by the limit;
- bytes after the end marker belong to the next command (pipelining): they are handed back.

Sending: ``wire_form`` is what aiosmtplib's ``data()`` puts on the wire, without its two
regular expressions over every body (a tenth of the delivery's CPU at 20 KB): every line of
what the intake stored ends in CRLF already.
"""

from __future__ import annotations

import enum

from aiosmtplib.protocol import normalize_message_line_endings

from policies.line_endings import bad_line_ending

__all__ = ["END", "DataFrame", "Verdict", "wire_form"]

END = b"\r\n.\r\n"
# The DATA command's own CRLF, so that a first line of "." is found by the same search.
_SENTINEL = b"\r\n"


class Verdict(enum.Enum):
    OK = "ok"
    TOO_MUCH = "too_much"  # 552 5.3.4
    TOO_LONG = "too_long"  # 500 5.5.2 line too long


class DataFrame:
    """One DATA's bytes as they arrive; ``feed`` until it returns the bytes after the end."""

    def __init__(self, *, size_limit: int | None, line_limit: int) -> None:
        self._buffer = bytearray(_SENTINEL)
        self._size_limit = size_limit
        self._line_limit = line_limit
        self._scan_from = 0
        self._dropped = 0  # bytes thrown away once the data was too much
        self.verdict = Verdict.OK
        self.content = b""  # the unstuffed data, once ended with Verdict.OK
        self.ended = False

    def feed(self, data: bytes) -> bytes | None:
        """Take ``data``; once the end marker is in, the bytes after it (maybe b""), else None."""
        assert not self.ended, "the data has ended: the rest is the next command's"
        buffer = self._buffer
        buffer += data
        end = buffer.find(END, self._scan_from)
        if end < 0:
            # The marker may straddle this chunk and the next: look again from its length back.
            self._scan_from = max(0, len(buffer) - len(END) + 1)
            if self._over_size(len(buffer) - len(_SENTINEL)):
                self._drop()
            return None
        rest = bytes(buffer[end + len(END) :])
        self._finish(end)
        return rest

    def _over_size(self, received: int) -> bool:
        # Of what has come, at most ".\r" is marker rather than data; that is the slack.
        return self._size_limit is not None and self._dropped + received - 2 > self._size_limit

    def _drop(self) -> None:
        """Too much: keep only what the end marker could start with."""
        self.verdict = Verdict.TOO_MUCH
        keep = len(END) - 1
        self._dropped += len(self._buffer) - keep
        del self._buffer[:-keep]
        self._scan_from = 0

    def _finish(self, end: int) -> None:
        self.ended = True
        # The data runs to the CRLF before the dot; the sentinel is not data.
        data = bytes(self._buffer[len(_SENTINEL) : end + 2]) if end >= len(_SENTINEL) else b""
        self._buffer = bytearray()
        if self.verdict is Verdict.TOO_MUCH or self._over_size(len(data) + 2):
            self.verdict = Verdict.TOO_MUCH
            return
        if _has_long_line(data, self._line_limit):
            self.verdict = Verdict.TOO_LONG
            return
        # De-transparency (RFC 5321 §4.5.2): the first dot of every line goes.
        if data.startswith(b"."):
            data = data[1:]
        self.content = data.replace(b"\r\n.", b"\r\n")


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line of ``data`` (ending in CRLF) is longer than ``limit`` with its CRLF.

    A line start is followed by a CRLF within ``limit`` bytes, or its line is too long; the
    last CRLF in that window is the next line start to look from. A turn per ``limit``
    bytes, not per line (a twentieth of splitting into lines at 20 KB)."""
    start, end = 0, len(data)
    while end - start >= limit:
        crlf = data.rfind(b"\r\n", start, start + limit)
        if crlf < 0:
            return True
        start = crlf + 2
    return False


def wire_form(body: bytes) -> bytes:
    """``body`` dot-stuffed and ended, ready to follow a 354: exactly what aiosmtplib sends."""
    if bad_line_ending(body) is not None:
        body = normalize_message_line_endings(body)  # never from our intake; aiosmtplib's way
    elif body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if stuffed else b"\r\n.\r\n")
