"""Line endings of message data: only CRLF, the one thing every SMTP server agrees on.

SMTP smuggling (CVE-2023-51764 and kin) hides a second message behind an end-of-data
that one server reads as ``<CR><LF>.<CR><LF>`` and the next does not: ``<LF>.<LF>``,
``<CR>.<CR>``, a NUL beside the dot. The intake ends DATA only at ``<CR><LF>.<CR><LF>``
(aiosmtpd) and refuses data holding any other line ending or a NUL, as Postfix does with
``smtpd_forbid_bare_newline = reject``: what the relay stores and sends on is then read
the same way by every server after it.
"""

from __future__ import annotations

import re

__all__ = ["bad_line_ending"]

_BAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
_NAMES = {b"\r": "a bare CR", b"\n": "a bare LF", b"\x00": "a NUL byte"}


def bad_line_ending(data: bytes) -> str | None:
    """What is wrong with ``data``'s line endings ("a bare LF", ...), or None if all is CRLF."""
    # Counting runs at memory speed, twenty times the regex: it is the hot path (every
    # message, up to max_message_size); the regex only names what the counts found.
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf and b"\x00" not in data:
        return None
    found = _BAD.search(data)
    assert found is not None
    return _NAMES[found.group()]
