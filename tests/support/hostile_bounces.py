"""Hostile bounce messages of a given size: the shapes that made the parser quadratic.

Each builder returns one message of about ``size`` bytes around a real-looking bounce for
``bob@example.org`` (so what the parser still reads can be checked), padded with one shape
repeated: the shape is what an attacker controls. Every message can be sent over SMTP as it
is (no line longer than 998 characters): a shape that needs a long line travels in a base64
part, which decodes to that line. Used by the parser's tests, the relay's hostile-bounce
tests and ``bench/dsn_parse_bench.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

__all__ = ["HEADER_SHAPES", "SHAPES", "hostile_from_header"]

_HEAD = (
    b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\n"
    b"To: bounces@example.com\n"
    b"Subject: Undelivered Mail Returned to Sender\n"
)
_REPORT = b"<bob@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 User unknown\n"
# In HTML, "<bob@...>" would be a tag.
_HTML_REPORT = b"<p>bob@example.org: host mx.example.org[192.0.2.1] said: 550 5.1.1 unknown</p>\n"


def _repeat(piece: bytes, size: int) -> bytes:
    return piece * max(1, size // len(piece))


def _base64_part(content_type: bytes, body: bytes) -> bytes:
    """Header fields and body of a part whose (long-lined) body travels in base64 (in whole
    quanta: the parser drops a padded last quantum, so the body is padded with line ends)."""
    encoded = base64.encodebytes(body + b"\n" * (-len(body) % 3))  # 76-character lines
    return b"Content-Type: " + content_type + b"\nContent-Transfer-Encoding: base64\n\n" + encoded


def html_unclosed_script(size: int) -> bytes:
    """A text/html bounce full of ``<script>`` tags that never close."""
    body = _HTML_REPORT + _repeat(b"<script>", size * 3 // 4)
    return _HEAD + _base64_part(b"text/html", body)


def html_unclosed_tags(size: int) -> bytes:
    """A text/html bounce full of ``<p`` and ``<`` that never reach a ``>``."""
    body = _HTML_REPORT + _repeat(b"<p <br <", size * 3 // 4)
    return _HEAD + _base64_part(b"text/html", body)


def guessed_boundary(size: int) -> bytes:
    """A multipart whose declared boundary never occurs, and thousands of distinct
    boundary-shaped lines: each one used to be counted over the whole body."""
    lines = b"".join(b"--%06d\n" % i for i in range(min(size, 200_000) // 9))
    filler = _repeat(b"The mail system is unable to deliver your message.\n", size - len(lines))
    return (
        _HEAD
        + b'Content-Type: multipart/mixed; boundary="declared-but-absent"\n\n'
        + _REPORT
        + lines
        + filler
    )


def folded_encoded_subject(size: int) -> bytes:
    """A Subject folded over thousands of lines of RFC 2047 encoded words."""
    words = _repeat(b" =?utf-8?q?Undelivered_mail_?=\n", size)
    return (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: =?utf-8?q?Returned?=\n"
        + words
        + b"Content-Type: text/plain\n\n"
        + _REPORT
    )


def dsn_groups(size: int) -> bytes:
    """An RFC 3464 report with thousands of recipient groups and no diagnostics, and a
    human-readable part whose long lines each name dozens of those recipients: every group
    once read every line that named it, and looked for itself in every line."""
    group = b"Final-Recipient: rfc822; u%05d@example.org\nAction: failed\nStatus: 5.0.0\n\n"
    groups = b"".join(group % i for i in range(min(2000, max(1, size // 500))))
    names = [b"u%05d@example.org" % (i % 500) for i in range(max(40, size // 2 // 19))]
    lines = b"".join(b" ".join(names[i : i + 40]) + b"\n" for i in range(0, len(names), 40))
    return (
        _HEAD + b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        b"--B\nContent-Type: text/plain\n\n" + lines + b"\n--B\n"
        b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        + groups
        + b"--B--\n"
    )


def returned_headers(size: int) -> bytes:
    """A DSN returning an original whose header is megabytes of one field folded over
    hundreds of thousands of lines."""
    folded = b"X-Folded: start\n" + _repeat(b" m\n", size)
    return (
        _HEAD + b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        b"--B\nContent-Type: message/delivery-status\n\n"
        b"Final-Recipient: rfc822; bob@example.org\nAction: failed\nStatus: 5.1.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\n\n"
        b"--B\nContent-Type: text/rfc822-headers\n\n" + folded + b"\n--B--\n"
    )


def whitespace_lines(size: int) -> bytes:
    """Long lines of blanks (and blank lines): patterns anchored at a line start with
    ``\\s*`` used to try every split of the run."""
    line = b" " * 990 + b"x\n"
    return _HEAD + b"\n" + _REPORT + _repeat(line + b"\n" * 5, size)


def unclosed_parameter_quotes(size: int) -> bytes:
    """A Content-Type folded over many lines of ``; a="`` that never close."""
    params = _repeat(b' ;a="\n', size)
    return _HEAD + b"Content-Type: text/plain\n" + params + b"\n" + _REPORT


def warning_subject(size: int) -> bytes:
    """A Subject of ``warning`` repeated, folded: ``warning.*mail`` scanned per word."""
    words = _repeat(b" warning warning warning\n", size)
    return (
        b"From: someone@example.net\nSubject: warning\n" + words + b"Content-Type: text/plain\n\n"
        b"could not be delivered\n" + _REPORT
    )


def recipient_phrases(size: int) -> bytes:
    """Lines of ``user(`` that never close (each phrase scanned to the end of its line)."""
    line = b"user(" * 199 + b"\n"
    return _HEAD + b"\n" + _REPORT + _repeat(line, size)


def sender_lead_lines(size: int) -> bytes:
    """Lines of ``from`` followed by blanks: the "sent by" test on every previous line."""
    line = b"from" + b" " * 985 + b"x\n"
    return _HEAD + b"\n" + _REPORT + _repeat(line, size)


def many_text_recipients(size: int) -> bytes:
    """A text bounce naming hundreds of recipients without a code, over a long report."""
    names = b"".join(b"<user%04d@example.org>: mailbox unavailable\n" % i for i in range(600))
    filler = _repeat(b"delivery to the following recipients failed permanently\n", size)
    return _HEAD + b"\n" + names + filler + _REPORT


def reply_continuation_blanks(size: int) -> bytes:
    """A reply continuation ("550-") followed by a long run of blanks: the reply parser split
    its lines with a pattern that retried the run from each of its blanks."""
    body = b"<bob@example.org>: host mx.example.org said: 550-" + b" " * (size * 3 // 4)
    return _HEAD + _base64_part(b"text/plain", body + b"5.1.1 User unknown\nend of report\n")


def quoted_fields_after_blank_lines(size: int) -> bytes:
    """A reply to a bounce (not itself one by its subject) with thousands of blank lines and
    no quoted "Final-Recipient:" field: looking for one took cubic time over them. (It is
    no bounce: the answer is None.)"""
    return (
        b"From: someone@example.net\nSubject: Re: Undelivered Mail Returned to Sender\n"
        b"Auto-Submitted: auto-replied\n\nYour message could not be delivered.\n" + b"\n" * size
    )


def punycode_charset(size: int) -> bytes:
    """A part in the ``punycode`` "charset", whose Python codec is quadratic."""
    body = _REPORT + b"x-" + _repeat(b"ba", size * 3 // 4)
    return _HEAD + _base64_part(b"text/plain; charset=punycode", body)


def amazon_ses_recipients(size: int) -> bytes:
    """An Amazon SES notification (one line of JSON, as SES sends it; here in a base64
    part) listing a hundred thousand bounced recipients."""
    item = b'{"emailAddress": "user@example.org", "status": "5.1.1"},'
    items = _repeat(item, size * 3 // 4).rstrip(b",")
    notification = (
        b'{"notificationType": "Bounce", "bounce": {"bounceType": "Permanent", '
        b'"bouncedRecipients": [' + items + b"]}}\n"
    )
    return _HEAD + _base64_part(b"text/plain", notification)


SHAPES: dict[str, Callable[[int], bytes]] = {
    "html_unclosed_script": html_unclosed_script,
    "html_unclosed_tags": html_unclosed_tags,
    "guessed_boundary": guessed_boundary,
    "folded_encoded_subject": folded_encoded_subject,
    "dsn_groups": dsn_groups,
    "returned_headers": returned_headers,
    "whitespace_lines": whitespace_lines,
    "unclosed_parameter_quotes": unclosed_parameter_quotes,
    "warning_subject": warning_subject,
    "recipient_phrases": recipient_phrases,
    "sender_lead_lines": sender_lead_lines,
    "many_text_recipients": many_text_recipients,
    "reply_continuation_blanks": reply_continuation_blanks,
    "quoted_fields_after_blank_lines": quoted_fields_after_blank_lines,
    "punycode_charset": punycode_charset,
    "amazon_ses_recipients": amazon_ses_recipients,
}


def hostile_from_header(size: int) -> bytes:
    """A message to relay whose ``From:`` is folded over megabytes (intake's header summary)."""
    folded = _repeat(b" x\r\n", size)
    return b"From: News <news@example.com>\r\n" + folded + b"Subject: s\r\n\r\nbody\r\n"


def hostile_received_block(size: int) -> bytes:
    """A message to relay whose header is megabytes of tiny fields (hop counting)."""
    return _repeat(b"a:\r\n", size) + b"Received: x\r\n\r\nbody\r\n"


HEADER_SHAPES: dict[str, Callable[[int], bytes]] = {
    "folded_from": hostile_from_header,
    "tiny_fields": hostile_received_block,
}
