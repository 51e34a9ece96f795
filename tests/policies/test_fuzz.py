"""No input makes the pure parsers and classifiers raise (hypothesis).

Remote servers and operators' files are the input here: every reply text, every reply code a
socket can carry, every address a client can type, every CSV line. Each function either
answers or raises its documented error, nothing else. Bounce messages (anyone may send them)
are also read in time linear in their size: hostile repetitions parse within a deadline.
"""

from __future__ import annotations

import base64
import email.header
import html
import re
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import dsn
from policies.addresses import AddressError, normalise_address, validate_address
from policies.classify import SuppressOn, classify
from policies.dsn import mime
from policies.hints import hint_for
from policies.outcome import decide_reported
from policies.smtp_reply import parse_reply, reply_from_smtp
from policies.suppression_file import read_suppression_csv
from policies.templates import template_of

# Replies as servers send them: codes, enhanced codes, continuation lines, URLs, IPs,
# addresses, control characters and plain noise, mixed.
_PIECES = st.sampled_from(
    [
        "550",
        "550-",
        "4",
        "5.1.1",
        "4.7.0",
        "#5.0.0",
        "<",
        ">",
        "@",
        "[",
        "]",
        "(",
        ")",
        "http://x.example/?p=NoSuchUser&a=1",
        "[TSS04]",
        "(S3140)",
        "192.0.2.1",
        "::1",
        "user@example.org",
        "\r\n",
        "\n",
        "\t",
        "\x00",
        "\x7f",
        " ",
        "-",
        ".",
        ";",
        ":",
        "Mailbox full",
        "User unknown",
        "gsmtp",
        "quota",
        "\u00e9",
        "\U0001f600",
        "%",
        "\\",
    ]
)
REPLIES = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join),
)
FAST = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@FAST
@given(REPLIES)
def test_reply_parsing_templates_hints_and_classification_never_raise(raw):
    reply = parse_reply(raw)
    template_of(raw)
    hint_for(reply)
    for suppress_on in SuppressOn:
        classify(reply, "example.org", suppress_on=suppress_on)
    decide_reported("failed", reply, "example.org")


@FAST
@given(st.integers(min_value=-1000, max_value=100_000), REPLIES)
def test_replies_from_any_code_never_raise(code, message):
    reply = reply_from_smtp(code, message)
    classify(reply, "example.org")
    template_of(reply.text)


@FAST
@given(st.text(max_size=300))
def test_addresses_either_validate_or_raise_address_error(raw):
    try:
        address = validate_address(raw)
    except AddressError:
        return
    key = normalise_address(address)
    assert key == normalise_address(key)  # one key per mailbox, whatever the spelling


@FAST
@given(st.lists(st.text(max_size=120), max_size=30))
def test_suppression_files_never_raise(lines):
    parsed = read_suppression_csv([line + "\n" for line in lines], "imported")
    assert len(parsed.entries) + len(parsed.errors) + parsed.duplicates <= len(lines) + 1


# --------------------------------------------------------------------------- hostile bounces

# Fragments an attacker repeats: blanks and line ends, openings that never close (tags,
# quotes, parentheses, encoded words), words the heuristics look for, DSN fields.
_HOSTILE_PIECES = st.sampled_from(
    [
        "\n",
        " ",
        "\t",
        "\x0b",
        ":",
        ";",
        '"',
        "(",
        "<",
        ">",
        "-",
        "=",
        "#",
        "*",
        "@",
        ".",
        "550",
        "550-",
        "5.1.1",
        "said: ",
        "host ",
        "user(",
        "<script>",
        "<style>",
        "<p ",
        "<br",
        "</",
        "&amp;",
        "=?utf-8?q?",
        "=?utf-8?q?a?= ",
        "?=",
        "from ",
        "sent by",
        "warning ",
        "Final-Recipient: rfc822; a@b.example\n",
        "Action: failed\n",
        "Status: 5.0.0\n",
        " a\n",
        "\n\n",
        "bob@example.org ",
        "--b0undary\n",
        "original message",
        "> ",
        "RCPT TO:<",
        "recipient",
        ';a="',
        "\\",
        "x",
        "\u00e9",
    ]
)
_HEAD = b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail Returned to Sender\n"
_REPORT = b"<bob@example.org>: host mx.example.org said: 550 5.1.1 unknown\n"


def _folded(body: bytes) -> bytes:
    return body.replace(b"\n", b"\n ").replace(b"\r", b"")


_HOSTILE_MESSAGES = {
    "text": lambda body: _HEAD + b"\n" + _REPORT + body,
    "base64_line": lambda body: (
        _HEAD
        + b"Content-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(_REPORT + body.replace(b"\n", b" ") + b"\nend\n")
    ),
    "html": lambda body: (
        _HEAD + b"Content-Type: text/html\n\n<p>bob@example.org: 550 5.1.1</p>" + body
    ),
    "subject": lambda body: (
        b"From: someone@example.net\nSubject: Re: undelivered "
        + _folded(body)
        + b"\nAuto-Submitted: auto-replied\n\ncould not be delivered\n"
        + _REPORT
    ),
    "content_type": lambda body: (
        _HEAD + b"Content-Type: text/plain; " + _folded(body) + b"\n\n" + _REPORT
    ),
    "delivery_status": lambda body: (
        _HEAD
        + b'Content-Type: multipart/report; boundary="B"\n\n--B\n'
        + b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; bob@example.org\n"
        + body
        + b"\n--B--\n"
    ),
    "returned_headers": lambda body: (
        _HEAD
        + b'Content-Type: multipart/report; boundary="B"\n\n--B\n'
        + b"Content-Type: text/rfc822-headers\n\nX-Start: "
        + _folded(body)
        + b"\n--B--\n"
    ),
}
# Up to about 700 KB a message (parsed in well under a second); before, shapes of this size
# took from seconds to hours.
HOSTILE = settings(
    max_examples=80,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decoded_by_the_email_package(raw: str) -> str:
    """What the parser read from header values before, with email.header (quadratic)."""
    if "=?" not in raw:
        return raw
    try:
        chunks = email.header.decode_header(raw)
        return "".join(
            mime._decode_text(c, charset or "utf-8") if isinstance(c, bytes) else c
            for c, charset in chunks
        )
    except Exception:
        return raw


def _stripped_by_patterns(text: str) -> str:
    """What the parser read from HTML before, with patterns (quadratic)."""
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</?(?:p|div|tr|li|h\d|table)\b[^>]*>", "\n", text)
    return html.unescape(re.sub(r"<[^>]*>", " ", text))


@HOSTILE
@given(
    where=st.sampled_from(sorted(_HOSTILE_MESSAGES)),
    piece=_HOSTILE_PIECES,
    # short (compared with the old readings) or long (thousands: the hostile size)
    count=st.one_of(st.integers(min_value=1, max_value=60), st.integers(5000, 20_000)),
)
def test_hostile_repetitions_in_bounces_parse_within_the_deadline(where, piece, count):
    """A fragment repeated thousands of times where an attacker puts it is parsed within
    the deadline, and never raises anything but the documented errors; where it is short
    enough for the old quadratic readings to finish, header values and HTML read as they
    did (the one-pass versions change no result)."""
    repeated = piece * count
    raw = _HOSTILE_MESSAGES[where](repeated.encode("utf-8"))
    try:
        parsed = dsn.parse_bounce(raw)
    except (dsn.NotAMessage, dsn.MalformedBounce):
        parsed = None
    for recipient in parsed.recipients if parsed else ():
        recipient.reply()
    if len(repeated) <= 2000:
        assert mime._header_value(repeated) == _decoded_by_the_email_package(repeated)
        assert mime._strip_html(repeated) == _stripped_by_patterns(repeated)
