"""Message data line endings: CRLF only, no NUL (the SMTP smuggling check)."""

from __future__ import annotations

import pytest

from policies.line_endings import bad_line_ending


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"", None),
        (b"Subject: s\r\n\r\nbody\r\n.\r\n..\r\n", None),
        (b"body\n.\nMAIL FROM:<x@y>\r\n", "a bare LF"),
        (b"body\r.\rMAIL FROM:<x@y>\r\n", "a bare CR"),
        (b"body\r\n\n", "a bare LF"),
        (b"body\r\r\n", "a bare CR"),
        (b"body\n\r", "a bare LF"),
        (b"body\r\n\x00.\r\n", "a NUL byte"),
        (b"\x00", "a NUL byte"),
    ],
)
def test_only_crlf_line_ends_pass(data, found):
    """The first offence is named; data with CRLF line ends only passes."""
    assert bad_line_ending(data) == found
