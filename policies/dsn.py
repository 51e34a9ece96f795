"""Bounce messages as values: one ``ParsedBounce`` per received bounce or report.

``parse_bounce(raw)`` reads one message as it came in over SMTP and returns a
``BounceRecipient`` per bounced address, in the order the message lists them.
Three shapes reach us and are tried in this order:

* ``rfc3464``: a ``message/delivery-status`` (or RFC 6533
  ``message/global-delivery-status``) part, wherever it sits: many MTAs put it
  in a ``multipart/mixed`` rather than a ``multipart/report``;
* ``arf``: a ``message/feedback-report`` part (RFC 5965), or a bare
  unsubscribe/complaint notice that carries an unmistakable marker header
  (``X-Apple-Unsubscribe``, ``Feedback-Type`` in the message header);
* ``text``: everything else, read by heuristics that do not know the MTA:
  the lines that name a recipient (an address on its own line, ``<addr>:``,
  ``addr... reason``, ``RCPT TO:<addr>``, "delivered to addr", Exim's
  ``X-Failed-Recipients``), then the first SMTP reply code and RFC 3463 code
  in that recipient's block of text. RFC 3464 fields quoted as plain text
  (a forwarded bounce, a DSN in a ``text/plain`` part) are read as fields.
  Reading stops at the returned original ("This is a copy of the message",
  "Below this line is a copy", "Original message follows", a header block).
  A recipient's failure without any code is its block's first paragraph, not
  the report's boilerplate after it; Exchange 2003's own status codes
  ("MSEXCH:IMS:... (000C05A6) Unknown Recipient") are read as the RFC 3463
  codes they stand for.

Each recipient also carries the SMTP command its reply answered
(``answered_command``), where the bounce says it: Postfix's "(in reply to RCPT
TO command)", Exim's "SMTP error from remote mail server after end of data",
qmail's and DragonFly's sentences ("does not like recipient", "did not like
our RCPT TO"), a Sendmail or Courier session transcript (">>> DATA", "<<< 550
..."). RFC 3464 has no field for it: a DSN's groups learn it from their
diagnostic or the human-readable part. A recipient refused after DATA was
accepted at RCPT: a content filter's or a carrier's refusal, whatever its words.

Status leniency (RFC 3464): the ``Status`` field is the reporting MTA's
summary and is often just ``X.0.0`` ("failed, no idea why") or missing,
while the remote's own words in ``Diagnostic-Code`` carry a precise code
("550 5.1.1 ..."). We take the diagnostic's enhanced code when ``Status`` is
missing, or when it is ``X.0.0`` and the diagnostic's code has the *same
class*: the reporting MTA's verdict on permanence (4 vs 5) always wins,
only the subject/detail are refined. A precise ``Status`` (say 5.2.2 with a
diagnostic saying 5.1.1) is left alone: it is the MTA's considered reading.

Everything here is bounded: the input is cut at ``MAX_BYTES``, MIME nesting
deeper than ``MAX_DEPTH`` or more than ``MAX_PARTS`` parts raise
``MalformedBounce``; a message without a header block raises
``NotAMessage``. Nothing else raises: undecodable bytes, unknown charsets and
broken encodings are read as well as they can be (``errors="replace"``).

The input is hostile (anyone may mail the DSN domain), so every step is linear
in its size: no pattern rescans a run of text from each of its positions (blank
runs are taken possessively, an opening that never closes is looked for once),
no text is built by repeated concatenation, every recipient gets a bounded
share of work (``MAX_RECIPIENTS``, ``_MAX_MENTIONS``), and no pure-Python codec
with quadratic decoding (punycode, IDNA) is used as a charset.
``bench/dsn_parse_bench.py`` measures it on each shape that used to be
quadratic.
"""

from __future__ import annotations

import binascii
import codecs
import email.base64mime
import email.quoprimime
import html
import json
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from policies.smtp_reply import Reply, parse_reply

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_RECIPIENTS",
    "BounceRecipient",
    "MalformedBounce",
    "NotAMessage",
    "ParsedBounce",
    "parse_bounce",
]

MAX_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 10
MAX_PARTS = 500
# A diagnostic is a reply, not a transcript: longer text is cut.
_MAX_DIAGNOSTIC = 1000
# Beyond these a "bounce" is a list dump, not a report: the rest is ignored,
# which keeps the text heuristics linear in practice.
MAX_RECIPIENTS = 500
_MAX_REPORT_LINES = 5000
# A line longer than this names no recipient (a report line is short); also the
# most of a line handed to the reply parser.
_MAX_LINE = 1000
# An address whose own block has no code borrows from at most this many lines
# that name it: bounded work per recipient, whatever the report repeats.
_MAX_MENTIONS = 10
_MAX_TEXT_LOOKUPS = 10


class NotAMessage(ValueError):
    """The input is not an RFC 5322 message at all (no header block, binary garbage)."""


class MalformedBounce(ValueError):
    """A message too deep/too many parts/too large to parse safely (caller drops it)."""


@dataclass(frozen=True)
class BounceRecipient:
    """One bounced (or delayed, delivered, complained-about) recipient."""

    recipient: str | None
    action: str
    status: str | None
    code: int | None
    diagnostic: str
    remote_mta: str | None
    feedback_type: str | None = None
    # The SMTP command the remote's reply answered, as the bounce tells it: "CONNECT",
    # "HELO" (EHLO too), "MAIL", "RCPT", "DATA" (the DATA command or the end of the data);
    # None when the bounce does not say. A recipient refused after DATA was accepted at RCPT.
    answered_command: str | None = None

    @property
    def shown_text(self) -> str:
        """The words a report shows for this recipient: the remote's own (the status when
        it gave none); for a complaint, the feedback type."""
        if self.action == "complaint":
            return f"feedback report: {self.feedback_type or 'unspecified'}"
        return self.diagnostic or self.status or self.action

    def reply(self) -> Reply:
        """A ``Reply`` for ``classify``: ``code`` as found, the enhanced code
        of the diagnostic parsed from its reply code on (the code may follow
        "host X said:"), else ``status``; ``text`` is the diagnostic. Without
        a code, a ``code=0`` reply carrying the status and the words."""
        try:
            return self._reply()
        except Exception:  # a classification input must never raise
            return Reply(code=0, enhanced=self.status, text=self.diagnostic)

    def _reply(self) -> Reply:
        if self.code is None or not 100 <= self.code <= 599:
            return Reply(code=0, enhanced=self.status, text=self.diagnostic or self.status or "")
        enhanced = None
        found = _find_code(self.diagnostic)
        if found is not None and found[0] == self.code:
            parsed = parse_reply(_reply_line(self.diagnostic, found[1]))
            enhanced = parsed.enhanced if parsed.code == self.code else None
        return Reply(code=self.code, enhanced=enhanced or self.status, text=self.diagnostic)


@dataclass(frozen=True)
class ParsedBounce:
    """What one bounce message says, recipient by recipient."""

    format: str
    recipients: tuple[BounceRecipient, ...]
    returned_headers: str
    loop: bool


# --------------------------------------------------------------------------- MIME


@dataclass
class _Part:
    headers: list[tuple[str, str]]
    header_text: str
    ctype: str
    params: dict[str, str]
    body: bytes = b""
    children: list[_Part] = field(default_factory=list)
    _decoded: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def decoded(self, name: str) -> str:
        """The field's value with RFC 2047 words decoded ("" when absent), decoded once
        however many heuristics read it."""
        name = name.lower()
        if name not in self._decoded:
            self._decoded[name] = _header_value(self.get(name) or "")
        return self._decoded[name]

    def text(self) -> str:
        return _decode_text(self.body, self.params.get("charset", "utf-8"))

    def walk(self, *, into_messages: bool = True) -> Iterator[_Part]:
        yield self
        if not into_messages and self.ctype in _MESSAGE_TYPES:
            return
        for child in self.children:
            yield from child.walk(into_messages=into_messages)


_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_MBOX_FROM = re.compile(rb"^>?From ")
_PARAM = re.compile(r';\s*([\w.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_BOUNDARY_LINE = re.compile(rb"^--([!-~]{6,70}?)(?:--)?[ \t\r]*$", re.M)
# Python's punycode codec (and IDNA, built on it) decodes in quadratic time: no mail
# charset anyway.
_SLOW_CODECS = frozenset({"punycode", "idna"})


class _Counter:
    def __init__(self) -> None:
        self.parts = 0

    def bump(self, depth: int) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedBounce(f"more than {MAX_PARTS} MIME parts")
        if depth > MAX_DEPTH:
            raise MalformedBounce(f"MIME nesting deeper than {MAX_DEPTH}")


def _split_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """Header lines (unfolded later) and the body. The header block ends at
    the first empty line, or at the first line that is neither a field nor a
    continuation (lenient, like most MUAs)."""
    # Each field's pieces are joined once at the end: a field folded over many lines
    # must not be copied once per line.
    fields: list[list[bytes]] = []
    pos = 0
    size = len(data)
    body = b""
    while pos < size:
        end = data.find(b"\n", pos)
        if end < 0:
            end = size
        line = data[pos:end].rstrip(b"\r")
        if not line.strip():
            body = data[end + 1 :]
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line.strip())
        elif _HEADER_LINE.match(line) or (not fields and _MBOX_FROM.match(line)):
            fields.append([line])
        else:
            body = data[pos:]
            break
        pos = end + 1
    return [b" ".join(pieces) for pieces in fields], body


def _header_value(raw: str) -> str:
    """RFC 2047 words decoded; a broken encoded word is kept as written."""
    if "=?" not in raw:
        return raw
    try:
        words = _decode_words(raw)
        if words is None:
            return raw
        return "".join(_decode_text(chunk, charset or "utf-8") for chunk, charset in words)
    except Exception:  # header decoding is best effort
        return raw


# The opening of an RFC 2047 encoded word: "=?charset?Q?" (the email package's ``ecre``
# up to its lazy ``(?P<encoded>.*?)\?=``, which is looked for separately).
_ENCODED_WORD_HEAD = re.compile(r"=\?([^?]*?)\?([qQbB])\?")


class _NextIndex:
    """``text.find(needle, pos)``, remembering the last answer: asked again from a position
    it still answers for, it does not scan again (so a run of queries moving forward scans
    the text once)."""

    def __init__(self, text: str, needle: str) -> None:
        self._text = text
        self._needle = needle
        self._from = len(text) + 1  # the answer below holds for positions from here ...
        self._found = -1  # ... up to it (-1: up to the end)

    def at(self, pos: int) -> int:
        if not (self._from <= pos and (self._found < 0 or pos <= self._found)):
            self._from, self._found = pos, self._text.find(self._needle, pos)
        return self._found


def _encoded_words(text: str) -> Iterator[tuple[re.Match[str], int]]:
    """Each RFC 2047 encoded word as ``ecre`` of ``email.header`` finds it: its opening
    ``=?charset?Q?`` and where its closing ``?=`` starts (the first one after the opening,
    with no line end in between). ecre looked for the closing ``?=`` from every opening,
    quadratic when none follows; here the next ``?=`` and line end are found once for all
    the openings that share them, and with no ``?=`` left no later opening can close."""
    closes, newlines = _NextIndex(text, "?="), _NextIndex(text, "\n")
    search = 0
    while (head := _ENCODED_WORD_HEAD.search(text, search)) is not None:
        close = closes.at(head.end())
        if close < 0:
            return
        newline = newlines.at(head.end())
        if 0 <= newline < close:  # ecre's encoded text (``.*?``) does not cross a line end
            search = head.start() + 1
            continue
        yield head, close
        search = close + 2


def _has_encoded_word(text: str) -> bool:
    return next(_encoded_words(text), None) is not None


def _split_encoded(line: str) -> list[str]:
    """``ecre.split(line)``: text, charset, encoding, encoded text, text, ..."""
    parts: list[str] = []
    pos = 0
    for head, close in _encoded_words(line):
        parts += [line[pos : head.start()], head.group(1), head.group(2), line[head.end() : close]]
        pos = close + 2
    parts.append(line[pos:])
    return parts


def _decode_words(header: str) -> list[tuple[bytes, str | None]] | None:
    """What ``email.header.decode_header`` returns for ``header`` (None where it returns
    the header unchanged: no encoded word), in time linear in its size: the same steps
    without its ``list.pop(0)``, ``del`` in a loop and ``bytes +=``."""
    if not _has_encoded_word(header):
        return None
    words: list[tuple[str, str | None, str | None]] = []
    for line in header.splitlines():
        parts = _split_encoded(line)
        for i in range(0, len(parts), 4):
            unencoded = parts[i].lstrip() if i == 0 else parts[i]
            if unencoded:
                words.append((unencoded, None, None))
            if i + 3 < len(parts):
                words.append((parts[i + 3], parts[i + 2].lower(), parts[i + 1].lower()))
    # Blanks between two encoded words are dropped (RFC 2047 section 6.2).
    dropped = {
        n - 1
        for n, w in enumerate(words)
        if n > 1 and w[1] and words[n - 2][1] and words[n - 1][0].isspace()
    }
    decoded: list[tuple[bytes, str | None]] = []
    for n, (text, encoding, charset) in enumerate(words):
        if n in dropped:
            continue
        if encoding is None:
            decoded.append((text.encode("raw-unicode-escape"), charset))
        elif encoding == "q":
            word = email.quoprimime.header_decode(text)
            decoded.append((word.encode("raw-unicode-escape"), charset))
        else:
            padded = text + "==="[: (4 - len(text) % 4) % 4]
            decoded.append((email.base64mime.decode(padded), charset))
    # (With nothing left the email package returns a None word, which read as "keep it as
    # written".)
    return _collapse(decoded) if decoded else None


def _collapse(words: list[tuple[bytes, str | None]]) -> list[tuple[bytes, str | None]]:
    """Runs of words in one charset joined (unencoded ones with a blank), each run once."""
    out: list[tuple[bytes, str | None]] = []
    run: list[bytes] = []
    charset: str | None = None
    for word, word_charset in words:
        if run and word_charset != charset:
            out.append(((b" " if charset is None else b"").join(run), charset))
            run = []
        charset = word_charset
        run.append(word)
    out.append(((b" " if charset is None else b"").join(run), charset))
    return out


def _parse_entity(data: bytes, depth: int, counter: _Counter, default: str = "text/plain") -> _Part:
    counter.bump(depth)
    raw_lines, body = _split_headers(data)
    headers: list[tuple[str, str]] = []
    texts: list[str] = []
    for raw in raw_lines:
        line = raw.decode("utf-8", "replace")
        texts.append(line)
        name, sep, value = line.partition(":")
        if sep and not _MBOX_FROM.match(raw):
            headers.append((name.strip().lower(), value.strip()))
    part = _Part(headers=headers, header_text="\n".join(texts), ctype=default, params={})
    content_type = part.get("content-type")
    if content_type:
        main = content_type.split(";", 1)[0].strip().lower()
        if "/" in main:
            part.ctype = main
        part.params = {
            k.lower(): v.strip('"').replace('\\"', '"') for k, v in _PARAM.findall(content_type)
        }
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    if part.ctype.startswith("multipart/") and part.params.get("boundary"):
        part.body = body
        child_default = "message/rfc822" if part.ctype == "multipart/digest" else "text/plain"
        chunks = _split_multipart(body, part.params["boundary"], depth, counter)
        if not chunks and (guessed := _guess_boundary(body)) is not None:
            chunks = _split_multipart(body, guessed, depth, counter)
        for chunk in chunks:
            part.children.append(_parse_entity(chunk, depth + 1, counter, child_default))
        return part
    part.body = _decode_body(body, cte)
    if part.ctype in _MESSAGE_TYPES and part.body.strip():
        part.children.append(_parse_entity(part.body.lstrip(b"\n"), depth + 1, counter))
    return part


def _split_multipart(body: bytes, boundary: str, depth: int, counter: _Counter) -> list[bytes]:
    delimiter = re.compile(
        rb"^--" + re.escape(boundary.encode("utf-8", "replace")) + rb"(--)?[ \t\r]*$", re.M
    )
    chunks: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start : match.start()].removesuffix(b"\n"))
            # Refuse early: a 10,000-part bomb must not be materialised.
            if len(chunks) + counter.parts > MAX_PARTS:
                raise MalformedBounce(f"more than {MAX_PARTS} MIME parts")
        if match.group(1):
            start = None
            break
        start = match.end() + 1
    if start is not None and start < len(body):
        chunks.append(body[start:])  # a truncated last part is kept
    if depth + 1 > MAX_DEPTH and chunks:
        raise MalformedBounce(f"MIME nesting deeper than {MAX_DEPTH}")
    return chunks


def _guess_boundary(body: bytes) -> str | None:
    """The boundary actually used when the declared one never occurs (a
    rewritten header): the first ``--token`` line (in the first 200 KB) of
    which there are two after the start. The delimiter lines are counted in one
    pass (counting each candidate over the whole body was quadratic)."""
    lines: Counter[bytes] = Counter()
    candidates: list[bytes] = []
    for match in _BOUNDARY_LINE.finditer(body):
        token = match.group(1)
        if match.start() > 0:
            lines[token] += 1
        if match.start() < 200_000:
            candidates.append(token)
    for token in candidates:
        if lines[token] >= 2:
            return token.decode("ascii", "replace")
    return None


def _decode_body(body: bytes, cte: str) -> bytes:
    try:
        if cte == "base64":
            cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
            return binascii.a2b_base64(cleaned)
        if cte == "quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        return body
    return body


def _decode_text(data: bytes, charset: str) -> str:
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    if name in {"us-ascii", "ascii", "unknown-8bit", "x-unknown", "8bit", "binary"}:
        name = "utf-8"
    try:
        if codecs.lookup(name).name in _SLOW_CODECS:
            name = "utf-8"
    except (LookupError, ValueError, TypeError):
        name = "utf-8"
    try:
        text = data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- regexes

_ATOM = r"\w!#$%&'*+/=?^`{|}~.-"
# An address not glued to a longer word on its left ("mailboxfull@x" is not "full@x").
_ADDR = rf"(?<![@{_ATOM}])[{_ATOM}]+@(?:[\w-]+(?:\.[\w-]+)+|\[[\d.:a-fA-F]+\])"
_ADDR_RE = re.compile(_ADDR)
_ENHANCED = re.compile(r"(?<![\w.#])#?([245]\.\d{1,3}\.\d{1,3})(?![\w]|\.\d)")
_STATUS_FIELD = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
# A reply code where a reply starts: the line start, after "said:"/"]:" and
# the like, after a transcript's "<<<", or any code directly followed by an
# enhanced code of its class.
_CODE_AT = re.compile(
    r"(?:^|(?<=[:;>\]\)'\"(])|(?<=said)|(?<=was)|(?<=reply)|(?<=response)|(?<=error)"
    r"|(?<=returned)|(?<=<<<))[ \t]*['\"(]?([245]\d\d)(?=[ -]|:\s|$)",
    re.I | re.M,
)
_CODE_WITH_ENHANCED = re.compile(r"(?<![\w.])([245]\d\d)[ -]#?([245])\.\d{1,3}\.\d{1,3}\b")
_DAEMON = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|maildaemon|mail-daemon|mail\.?delivery|noreply|no-reply|"
    r"double-bounce)(?:[+.-][^@]*)?@",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|fail|notification|report|problem|has failed)|"
    r"mail delivery|failure notice|returned mail|return(?:ed)? to sender|"
    r"could not (?:be )?deliver|non[- ]?deliver|not delivered|delivery final|"
    r"mail (?:system )?error|"
    r"unable to deliver|failed delivery|mail failure|"
    r"\bbounced?\b|\bdsn\b|zustellbar|rejected|ne peut etre|non remis|"
    r"message (?:delayed|not (?:sent|delivered))|delivery failure|failed mail",
    re.I,
)
# "delayed ... mail" on one line (see _bounce_subject).
_DELAY_WORD = re.compile(r"delayed|warning", re.I)
_MAIL_WORD = re.compile(r"mail|message|deliver", re.I)
_DAEMON_FROM = re.compile(
    r"mailer[-_ ]?daemon|postmaster|mail delivery|delivery subsystem|"
    r"mail administrator|mail system|maildaemon|mail-daemon",
    re.I,
)
_BODY_PHRASE = re.compile(
    r"could ?n[o']t be delivered|undeliverable|permanent(?:ly)? (?:error|fatal|failure|failed)|"
    r"user unknown|unknown user|(?:was|were|has not been|wasn't|was not) (?:not )?delivered|"
    r"unable to deliver|following (?:address|recipient)|failed permanently|qmail-send|"
    r"mail delivery (?:software|system|subsystem)|delivery (?:to the following|has failed|"
    r"failed|status notification|failure)|not be delivered|did not reach|delivery problem|"
    r"does not exist|no such user|mailbox (?:unavailable|full|is full|not found)|"
    r"rejected|returned to (?:the )?sender|has been delayed|not yet been delivered|"
    r"will (?:continue|keep) (?:to )?(?:try|retry)|message (?:expired|timed out)|"
    r"giving up|host unknown|SMTP error|remote (?:host|server) (?:said|returned|replied)|"
    r"delivery attempts? (?:failed|will continue)|transcript of session|delayed|temporary failure|"
    r"\bunknown\b|quota|exceed|no mailbox|not found|error (?:delivering|"
    r"sending)|did not like|delivery error|could not deliver|not delivered",
    re.I,
)
_DELAY_PHRASE = re.compile(
    r"has been delayed|not yet been delivered|will (?:continue|keep) (?:to )?(?:try|retry)|"
    r"will be retried|still (?:be )?trying|delivery (?:is )?delayed|warning: message|"
    r"message (?:has been )?delayed|temporary failure|this is a warning|delayed mail|"
    r"delivery delay|no action is required on your part",
    re.I,
)
_HARD_PHRASE = re.compile(
    r"permanent|given up|giving up|failed permanently|could not be delivered|"
    r"undeliverable|has expired|was not delivered|returned mail|failure notice",
    re.I,
)
# The start of the returned original in a text bounce. (Runs of blanks and of
# rule characters are taken whole, possessively: giving them back one at a
# time cannot help a match, and on a long line each retry rescanned the line.)
_RETURNED_MARKER = re.compile(
    r"^\s*+(?:[-=_*#>]{2,}+.*?\b(?:original|copy|returned|headers?|undelivered message|"
    r"message text|message follows|unsent message)\b"
    r"|.*\bbelow this line is a copy\b"
    r"|(?:the )?(?:original|returned|unsent) message(?: headers?)?(?: (?:follows|below|is "
    r"(?:attached|below|included)))?\s*+:?\s*+$"
    r"|original message (?:headers?|follows)"
    r"|(?:a )?copy of (?:the|your) (?:original )?message(?: (?:is )?(?:below|follows|"
    r"attached))?[.:]?\s*$"
    r"|.*message headers? follows?"
    r"|content-type:\s*message/rfc822)",
    re.I,
)
# A forwarded bounce starts with the bounce's own header block.
_FORWARDED = re.compile(r"forwarded message|message forwarded|^-+\s*forward", re.I)
_TRANSPORT_FIELD = re.compile(
    r"^(?:return-path|received|dkim-signature|message-id|mime-version|x-[\w-]+|arc-[\w-]+|"
    r"authentication-results|delivered-to):",
    re.I,
)
_HEADERS_OF_ORIGINAL = re.compile(
    r"^(?:return-path|received|dkim-signature|message-id|x-[\w-]+|mime-version|"
    r"authentication-results|arc-[\w-]+|delivered-to|date|from|to|subject):\s",
    re.I,
)
_DSN_FIELD = re.compile(
    r"^(final-recipient|original-recipient|action|status|diagnostic-code|remote-mta|"
    r"reporting-mta|x-actual-recipient|last-attempt-date|will-retry-until|"
    r"received-from-mta|arrival-date|x-postfix-[\w-]+|x-[\w-]+-(?:id|queue-id))\s*:",
    re.I,
)
_HOST_PATTERNS = tuple(
    re.compile(p, re.I)
    for p in (
        r"^remote-mta:\s*(?:dns;\s*)?\[?([\w.:-]+)",
        r"\bhost\s+\[?([a-z0-9][\w-]*(?:\.[\w-]+)+)\]?\s*(?:\[|said|:|\()",
        r"while talking to\s+\[?([a-z0-9][\w-]*(?:\.[\w-]+)+?)\.?\]?:",
        r"^([a-z0-9][\w-]*(?:\.[\w-]+)+) does not like recipient",
        r"\bgiving up on\s+\[?([a-z0-9][\w-]*(?:\.[\w-]+)+?)\]?\.?\s*$",
        r"\bconnected to\s+\[?([a-z0-9][\w-]*(?:\.[\w-]+)+?)\]?\s+but\b",
        r"\b(?:remote|receiving|destination) (?:server|mta|host)\s+(?:is\s+)?\[?"
        r"([a-z0-9][\w-]*(?:\.[\w-]+)+?)\]?[\s:;,]",
        r"\bmx\s*(?:host|server)?[:=]\s*\[?([a-z0-9][\w-]*(?:\.[\w-]+)+?)\]?[\s:;,]",
    )
)


# --------------------------------------------------------------------------- entry point


def parse_bounce(raw: bytes) -> ParsedBounce | None:
    """None when the message is not recognisably a bounce or feedback report."""
    data = _prepare(raw)
    try:
        return _interpret(_parse_entity(data, 0, _Counter()))
    except (MalformedBounce, NotAMessage):
        raise
    except RecursionError as exc:
        raise MalformedBounce("message too deeply structured") from exc
    except Exception:  # the heuristics must never take the relay down
        return None


def _prepare(raw: bytes) -> bytes:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise NotAMessage("input is not bytes")
    data = bytes(raw[:MAX_BYTES]).replace(b"\r\n", b"\n")
    data = data.lstrip(b"\r\n\t ")
    if not data:
        raise NotAMessage("empty input")
    first = data.split(b"\n", 1)[0]
    if not (_HEADER_LINE.match(first) or _MBOX_FROM.match(first)):
        raise NotAMessage("no header block")
    blank = re.search(rb"\n[ \t\r]*\n", data)
    head = data[: blank.start()] if blank else data
    if b"\x00" in head:
        raise NotAMessage("NUL byte in the header block")
    return data


def _interpret(root: _Part) -> ParsedBounce | None:
    returned = _returned_part(root)
    returned_headers = ""
    loop = False
    if returned is not None:
        returned_headers, loop = _returned_info(returned)

    dsn_parts = [p for p in root.walk(into_messages=False) if p.ctype in _DSN_TYPES]
    text = _body_text(root)
    if dsn_parts:
        recipients = _from_dsn_parts(dsn_parts, text)
        if recipients:
            return ParsedBounce("rfc3464", recipients, returned_headers, loop)

    reports = [p for p in root.walk(into_messages=False) if p.ctype == "message/feedback-report"]
    if reports:
        return ParsedBounce("arf", _from_arf(reports[0], returned), returned_headers, loop)
    complaint = _bare_complaint(root)
    if complaint is not None:
        return ParsedBounce("arf", (complaint,), returned_headers, loop)

    if not _looks_like_bounce(root, text):
        return None
    section, inline_headers = _cut_section(text)
    if not returned_headers and inline_headers:
        returned_headers = inline_headers
        loop = _headers_loop(_field_pairs(inline_headers))
    recipients = _from_text(root, section, returned_headers)
    if not recipients:
        return None
    return ParsedBounce("text", recipients, returned_headers, loop)


# --------------------------------------------------------------------------- returned original


def _returned_part(root: _Part) -> _Part | None:
    for part in root.walk(into_messages=False):
        if part is root:
            continue
        if part.ctype in _MESSAGE_TYPES or part.ctype in _HEADER_TYPES:
            return part
    return None


def _returned_info(part: _Part) -> tuple[str, bool]:
    if part.ctype in _MESSAGE_TYPES and part.children:
        inner = part.children[0]
        return inner.header_text, _headers_loop(inner.headers)
    text = part.text().strip("\n")
    head = re.split(r"\n[ \t]*\n", text, maxsplit=1)[0]
    return head, _headers_loop(_field_pairs(head))


def _field_pairs(block: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each field of a header block, continuation lines joined with a
    blank (collected and joined once: a field folded over many lines is not copied per
    line)."""
    fields: list[tuple[str, list[str]]] = []
    for line in block.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1].append(line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name.strip():
            fields.append((name.strip().lower(), [value.strip()]))
    return [(name, " ".join(pieces)) for name, pieces in fields]


def _bounce_subject(subject: str) -> bool:
    """Whether a subject reads like a bounce's: one of _BOUNCE_SUBJECT, or "delayed" or
    "warning" with a mail word after it on the same line. The first such word of a line is
    the one to try (a later one ends later); one pass, where ``delayed.*mail`` rescanned
    the line from every "warning" of a subject repeating it."""
    if _BOUNCE_SUBJECT.search(subject):
        return True
    pos = 0
    while (word := _DELAY_WORD.search(subject, pos)) is not None:
        end_of_line = subject.find("\n", word.end())
        if end_of_line < 0:
            end_of_line = len(subject)
        if _MAIL_WORD.search(subject, word.end(), end_of_line):
            return True
        pos = end_of_line + 1
    return False


def _headers_loop(headers: list[tuple[str, str]]) -> bool:
    """Whether the returned original is itself a bounce or a report."""
    values: dict[str, str] = {}
    for name, value in headers:
        values.setdefault(name, value)
    ctype = values.get("content-type", "").lower()
    if ctype.startswith("multipart/report") or "delivery-status" in ctype:
        return True
    if values.get("auto-submitted", "").lower().startswith("auto-replied"):
        return True
    subject = _header_value(values.get("subject", ""))
    if not _bounce_subject(subject) or re.match(r"\s*(?:re|fwd?|aw|wg)\s*:", subject, re.I):
        return False
    path = values.get("return-path")
    if path is not None and (path.strip(" <>") == "" or _DAEMON.match(path.strip(" <>"))):
        return True
    return bool(_DAEMON_FROM.search(values.get("from", "")))


# --------------------------------------------------------------------------- RFC 3464


def _groups(text: str) -> list[list[tuple[str, str]]]:
    """Field groups separated by blank lines; a group that names a second
    recipient without a blank line in between is split there."""
    groups: list[list[tuple[str, str]]] = []
    for block in re.split(r"\n[ \t]*\n", text):
        current: list[tuple[str, str]] = []
        for name, value in _field_pairs(block):
            if name in ("final-recipient", "original-recipient") and any(
                n == name for n, _ in current
            ):
                groups.append(current)
                current = []
            current.append((name, value))
        if current:
            groups.append(current)
    return groups


def _from_dsn_parts(parts: list[_Part], text: str) -> tuple[BounceRecipient, ...]:
    groups: list[list[tuple[str, str]]] = []
    for part in parts:
        groups.extend(_groups(part.text().lstrip("\n")))
    found = _from_groups(groups)
    return _enrich(found, text)


def _from_groups(groups: Iterable[list[tuple[str, str]]]) -> list[BounceRecipient]:
    out: list[BounceRecipient] = []
    for group in groups:
        if len(out) >= MAX_RECIPIENTS:
            break
        fields: dict[str, str] = {}
        for name, value in group:
            fields.setdefault(name, value)
        if not any(k in fields for k in ("final-recipient", "original-recipient", "action")):
            continue  # the per-message group (Reporting-MTA is not the remote MTA)
        if "status" not in fields and "action" not in fields and "diagnostic-code" not in fields:
            continue
        recipient = _address_field(fields.get("final-recipient")) or _address_field(
            fields.get("original-recipient")
        )
        diagnostic = _fold(_strip_type(fields.get("diagnostic-code", "")))
        status = _status_of(fields.get("status", ""), diagnostic)
        code = _code_of(diagnostic)
        action = _action_of(fields.get("action", ""), status, code)
        remote = _host(_strip_type(fields.get("remote-mta", "")))
        out.append(BounceRecipient(recipient, action, status, code, diagnostic, remote))
    return out


def _enrich(found: list[BounceRecipient], text: str) -> tuple[BounceRecipient, ...]:
    """DSN groups that lack a diagnostic borrow the human-readable part's
    words for the same address (Sendmail, Exchange put the reply only there).
    And each group learns the command its reply answered, which RFC 3464 has no
    field for: from its diagnostic, else from the human-readable part (Postfix
    says it there, Sendmail and Courier in their session transcript)."""
    section, _ = _cut_section(text)
    blocks = _text_blocks(section, [r.recipient for r in found if r.recipient])
    transcript = _Transcript(section)
    out = []
    for r in found:
        info = blocks.get((r.recipient or "").lower())
        answered = (
            _answered_in(r.diagnostic)
            or (info.answered if info else None)
            or transcript.answered(r.recipient, r.action)
        )
        if r.diagnostic or info is None or not info.diagnostic:
            out.append(replace(r, answered_command=answered))
            continue
        status = r.status
        if status is None or (
            status.endswith(".0.0") and info.status and info.status[0] == status[0]
        ):
            status = info.status or status
        out.append(
            BounceRecipient(
                r.recipient,
                r.action
                if r.action != "failed" or status is None or status[0] != "4"
                else "delayed",
                status,
                info.code,
                info.diagnostic,
                r.remote_mta or info.remote_mta,
                answered_command=answered,
            )
        )
    return tuple(out)


def _host(value: str) -> str | None:
    """``mx.example.net. (192.0.2.40, the server for ...)`` -> ``mx.example.net``."""
    words = value.split()
    return (words[0].strip("[]").rstrip(".") or None) if words else None


def _address_field(value: str | None) -> str | None:
    if not value:
        return None
    rest = _strip_type(value)
    match = re.search(r"<([^<>]*)>", rest)
    address = (match.group(1) if match else rest).strip().strip("<>\"' ")
    address = address.split()[0] if address.split() else ""
    return address or None


def _strip_type(value: str) -> str:
    """``smtp; 550 ...`` -> ``550 ...``, ``rfc822;a@b`` -> ``a@b``."""
    match = re.match(r"\s*[\w.-]{1,20}\s*;\s*", value)
    return value[match.end() :] if match else value.strip()


def _fold(text: str) -> str:
    return " ".join(text.split())[:_MAX_DIAGNOSTIC]


def _status_of(field_value: str, diagnostic: str) -> str | None:
    match = _STATUS_FIELD.search(field_value)
    status = f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}" if match else None
    if diagnostic and (status is None or status.endswith(".0.0")):
        better = _enhanced_of(diagnostic)
        if better and (status is None or better[0] == status[0]) and not better.endswith(".0.0"):
            return better
        if status is None:
            return better
    return status


def _enhanced_of(text: str) -> str | None:
    found = _find_code(text)
    if found is not None:
        parsed = parse_reply(_reply_line(text, found[1]))
        if parsed.enhanced:
            return parsed.enhanced
    for match in _ENHANCED.finditer(text):
        value = match.group(1)
        subject = int(value.split(".")[1])
        if subject <= 7 and (found is None or value[0] == str(found[0])[0]):
            return value
    return None


def _reply_line(text: str, start: int) -> str:
    """The line of ``text`` from ``start``, at most _MAX_LINE characters: all of the text
    ``parse_reply`` reads its enhanced code from (its first line), and all it should get:
    it splits lines on patterns that are slow on a long run of blanks."""
    end = start + _MAX_LINE
    for stop in ("\n", "\r"):
        found = text.find(stop, start, end)
        if found >= 0:
            end = found
    return text[start:end]


def _find_code(text: str) -> tuple[int, int] | None:
    """The first SMTP reply code where a reply starts, and its offset."""
    best: tuple[int, int] | None = None
    for match in _CODE_AT.finditer(text):
        best = (int(match.group(1)), match.start(1))
        break
    strong = _CODE_WITH_ENHANCED.search(text)
    if (
        strong
        and strong.group(1)[0] == strong.group(2)
        and (best is None or strong.start() < best[1])
    ):
        best = (int(strong.group(1)), strong.start(1))
    return best


def _code_of(text: str) -> int | None:
    found = _find_code(text)
    return found[0] if found else None


def _action_of(value: str, status: str | None, code: int | None) -> str:
    word = value.strip().lower().split(" ")[0] if value.strip() else ""
    for prefix, action in (
        ("fail", "failed"),
        ("delay", "delayed"),
        ("deliver", "delivered"),
        ("relay", "relayed"),
        ("expand", "expanded"),
    ):
        if word.startswith(prefix):
            return action
    klass = status[0] if status else (str(code)[0] if code else "5")
    return {"4": "delayed", "2": "delivered"}.get(klass, "failed")


# --------------------------------------------------------------------------- ARF


def _from_arf(report: _Part, returned: _Part | None) -> tuple[BounceRecipient, ...]:
    fields = _field_pairs(report.text())
    feedback = next((v.strip().lower() for n, v in fields if n == "feedback-type"), None)
    rcpts = [a for n, v in fields if n == "original-rcpt-to" if (a := _address_field(v))]
    rcpts = rcpts[:MAX_RECIPIENTS]
    if not rcpts and returned is not None:
        headers = (
            returned.children[0].headers
            if returned.ctype in _MESSAGE_TYPES and returned.children
            else _field_pairs(returned.text())
        )
        to = next((v for n, v in headers if n == "to"), "")
        rcpts = _ADDR_RE.findall(_header_value(to))[:1]
    if not rcpts:
        return (BounceRecipient(None, "complaint", None, None, "", None, feedback),)
    unique = list(dict.fromkeys(rcpts))
    return tuple(BounceRecipient(a, "complaint", None, None, "", None, feedback) for a in unique)


def _bare_complaint(root: _Part) -> BounceRecipient | None:
    """A complaint sent as a plain message: an ARF ``Feedback-Type`` in the
    header itself, or a mail client's one-click unsubscribe notice (Apple
    Mail's ``X-Apple-Unsubscribe: true``). The complainer is the sender."""
    feedback = root.get("feedback-type") or root.get("x-feedback-type")
    if feedback is None and (root.get("x-apple-unsubscribe") or "").strip().lower() == "true":
        feedback = "opt-out"
    if not feedback:
        return None
    rcpts = _ADDR_RE.findall(_header_value(root.get("original-rcpt-to") or root.get("from") or ""))
    return BounceRecipient(
        rcpts[0] if rcpts else None, "complaint", None, None, "", None, feedback.strip().lower()
    )


# --------------------------------------------------------------------------- text bounces


def _body_text(root: _Part) -> str:
    """The bounce's own words: its text parts, not the returned original's."""
    plain: list[str] = []
    markup: list[str] = []
    for part in root.walk(into_messages=False):
        if part.children or part.ctype in _HEADER_TYPES:
            continue
        if part.ctype == "text/html":
            markup.append(_strip_html(part.text()))
        elif part.ctype.startswith(("text/", "multipart/")) or part.ctype in _DSN_TYPES:
            # (a multipart whose boundary never occurs is read as text)
            plain.append(part.text())
    return "\n\n".join(plain or markup)


def _strip_html(text: str) -> str:
    """The words of an HTML part: scripts and styles dropped, block tags as line breaks,
    other tags as blanks, entities decoded. Each step is one pass: an element or a tag
    that never closes is searched for once, not once per opening after it (``.*?`` and
    ``[^>]*`` patterns did that, quadratic on ``<script>`` or ``<p`` repeated)."""
    text = _drop_elements(text)
    text = _replace_tags(text, _BLOCK_TAG, "\n")
    return html.unescape(_replace_tags(text, _ANY_TAG, " "))


_ELEMENT_OPEN = re.compile(r"<(script|style)\b", re.I)
_ELEMENT_CLOSE = {
    "script": re.compile(r"</script\s*>", re.I),
    "style": re.compile(r"</style\s*>", re.I),
}
_BLOCK_TAG = re.compile(r"<br\s*/?>|</?(?:p|div|tr|li|h\d|table)\b", re.I)
_ANY_TAG = re.compile(r"<")


def _drop_elements(text: str) -> str:
    r"""``re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)`` in one pass: an
    element runs to the first closing tag of its name; once a name has no closing tag
    left, no later opening of it can close either."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()
    search = 0
    while (opening := _ELEMENT_OPEN.search(text, search)) is not None:
        name = opening.group(1).lower()
        close = None if name in unclosed else _ELEMENT_CLOSE[name].search(text, opening.end())
        if close is None:
            unclosed.add(name)
            search = opening.start() + 1
            continue
        out += [text[pos : opening.start()], " "]
        pos = search = close.end()
    out.append(text[pos:])
    return "".join(out)


def _replace_tags(text: str, opening: re.Pattern[str], by: str) -> str:
    """Each tag that ``opening`` starts (a ``<br>`` is whole already) replaced by ``by``, up
    to its ``>``: ``re.sub(opening.pattern + "[^>]*>", by, text)`` in one pass (with no
    ``>`` left, no later opening can close)."""
    out: list[str] = []
    pos = search = 0
    while (tag := opening.search(text, search)) is not None:
        end = tag.end() if tag.group().endswith(">") else text.find(">", tag.end()) + 1
        if end == 0:
            break
        out += [text[pos : tag.start()], by]
        pos = search = end
    out.append(text[pos:])
    return "".join(out)


def _looks_like_bounce(root: _Part, text: str) -> bool:
    subject = root.decoded("subject")
    sender = root.decoded("from")
    path = root.get("return-path")
    auto = (root.get("auto-submitted") or "").lower()
    replied = bool(re.match(r"\s*(?:re|fwd?|aw|wg|tr)\s*:", subject, re.I))
    by_subject = _bounce_subject(subject)
    by_sender = bool(_DAEMON_FROM.search(sender)) or bool(_DAEMON.match(sender.strip(" <>")))
    null_path = path is not None and path.strip(" <>") == ""
    failed_header = root.get("x-failed-recipients") is not None
    if root.ctype == "multipart/report" or failed_header:
        return True
    if _aws_notification(text) is not None:
        return True
    if by_sender and by_subject and not replied:
        return True
    phrase = bool(_BODY_PHRASE.search(text[:20000]))
    if not phrase:
        return False
    if by_sender or (by_subject and not replied):
        return True
    # A forwarded or anonymous bounce: needs two independent signals.
    return (by_subject or null_path or auto.startswith("auto-")) and bool(
        _QUOTED_DSN_FIELD.search(text) or _DAEMON_FROM.search(text[:5000])
    )


# RFC 3464 fields quoted in text. A line's leading blanks, never a line end: ``^\s*``
# would run from each of many blank lines over all those after it.
_QUOTED_DSN_FIELD = re.compile(
    r"^[^\S\n]*+>*+[^\S\n]*+(?:Final-Recipient|Diagnostic-Code)\s*:", re.I | re.M
)
_DSN_RECIPIENT_FIELD = re.compile(r"^[^\S\n]*+(?:final|original)-recipient\s*:", re.I | re.M)


def _unquote(text: str) -> str:
    """A forwarded bounce's ``> `` quoting removed."""
    lines = text.split("\n")
    quoted = sum(1 for line in lines if line.startswith(">"))
    if quoted < max(3, len([line for line in lines if line.strip()]) // 2):
        return text
    return "\n".join(re.sub(r"^(?:> ?)+", "", line) for line in lines)


def _cut_section(text: str) -> tuple[str, str]:
    """The bounce's report (up to the returned original) and, when the
    original follows inline, its header block."""
    lines = _unquote(text).split("\n", _MAX_REPORT_LINES)[:_MAX_REPORT_LINES]
    for i, line in enumerate(lines):
        if i > 0 and _RETURNED_MARKER.match(line) and not _DSN_FIELD.match(line.strip()):
            return "\n".join(lines[:i]), _inline_headers(lines[i + 1 :])
        if (
            i > 0
            and not lines[i - 1].strip()
            and not _FORWARDED.search(_last_text_line(lines, i))
            and _HEADERS_OF_ORIGINAL.match(line)
            and _is_header_block(lines[i : i + 8])
        ):
            return "\n".join(lines[:i]), _inline_headers(lines[i:])
    return "\n".join(lines), ""


def _is_header_block(lines: list[str]) -> bool:
    """At least two fields in a row, one of them a transport field that a
    report's own "Subject: ... / Date: ..." summary would not carry."""
    fields = 0
    strong = False
    for line in lines:
        if line[:1] in (" ", "\t") and line.strip() and fields:
            continue
        if not _HEADERS_OF_ORIGINAL.match(line):
            break
        fields += 1
        strong = strong or bool(_TRANSPORT_FIELD.match(line))
    return fields >= 2 and strong


def _last_text_line(lines: list[str], before: int) -> str:
    for line in reversed(lines[max(0, before - 5) : before]):
        if line.strip():
            return line
    return ""


def _inline_headers(lines: list[str]) -> str:
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    block: list[str] = []
    for line in lines[start:]:
        if not line.strip():
            break
        if not block and not re.match(r"^[!-9;-~]+:", line):
            return ""
        block.append(line)
    return "\n".join(block)


@dataclass(frozen=True)
class _Block:
    diagnostic: str
    status: str | None
    code: int | None
    remote_mta: str | None
    answered: str | None = None  # the command the reply answered (see _answered_in)


def _from_text(root: _Part, section: str, returned: str) -> tuple[BounceRecipient, ...]:
    aws = _aws_notification(section)
    if aws is not None:
        return aws
    # RFC 3464 fields as plain text (a DSN in a text part, a forwarded bounce).
    if _DSN_RECIPIENT_FIELD.search(section):
        fields_text = "\n".join(
            line
            for line in section.split("\n")
            if _DSN_FIELD.match(line.strip()) or not line.strip() or line[:1] in (" ", "\t")
        )
        found = _from_groups(_groups(fields_text))
        if found:
            return _enrich(found, section)
    excluded = _own_addresses(root)
    # The original's sender is who the bounce goes to, never a bounced recipient.
    for name, value in _field_pairs(returned):
        if name in ("from", "return-path", "sender"):
            excluded.update(a.lower() for a in _ADDR_RE.findall(value))
    listed = [a for a in _ADDR_RE.findall(root.get("x-failed-recipients") or "")]
    order = _recipient_lines(section, excluded)
    addresses = list(dict.fromkeys([*(a.lower() for a in listed), *(a for a, _ in order)]))
    addresses = addresses[:MAX_RECIPIENTS]
    delayed = _is_delay(root, section)
    transcript = _Transcript(section)
    if not addresses:
        # Clearly a bounce, but it names no one ("Delivery report unavailable"):
        # one recipient-less result keeps the failure (and any code) visible.
        info = _block_info(section.split("\n"), whole_report=True)
        if info.code is None and info.status is None:
            info = _Block("", None, None, info.remote_mta, info.answered)
        return (_recipient(None, info, delayed, transcript),)
    blocks = _text_blocks(section, addresses, order)
    return tuple(_recipient(a, blocks[a], delayed, transcript) for a in addresses)


def _recipient(
    address: str | None, info: _Block, delayed: bool, transcript: _Transcript
) -> BounceRecipient:
    klass = info.status[0] if info.status else (str(info.code)[0] if info.code else "")
    action = "delayed" if delayed and klass != "5" else "failed"
    if klass == "2":
        action = "delivered"
    return BounceRecipient(
        address,
        action,
        info.status,
        info.code,
        info.diagnostic,
        info.remote_mta,
        answered_command=info.answered or transcript.answered(address, action),
    )


def _is_delay(root: _Part, section: str) -> bool:
    subject = root.decoded("subject")
    if re.search(r"delay|warning|still trying|not yet", subject, re.I):
        return True
    return bool(_DELAY_PHRASE.search(section)) and not _HARD_PHRASE.search(section)


def _own_addresses(root: _Part) -> set[str]:
    """The reporting system's and the bounce's addressee's addresses."""
    own: set[str] = set()
    for name in ("from", "to", "return-path", "sender", "reply-to", "delivered-to"):
        for address in _ADDR_RE.findall(root.get(name) or ""):
            own.add(address.lower())
    return own


# A line's leading blanks are taken whole (``^\s*+``) in these forms: nothing after them
# starts with a blank, and giving them back one at a time cost a long line its length once
# per form.
_LINE_FORMS = (
    # an address on its own line: "  bob@example.com", "<bob@example.com>:"
    re.compile(rf"^\s*+[<\"']?({_ADDR})[>\"']?\s*+:?\s*+$"),
    # "<bob@example.com>: host mx said: 550 ...", "<a@b> (expanded from <c@d>): ..."
    re.compile(rf"^\s*+<({_ADDR})>(?:\s*\([^)]*\))?\s*:\s*\S"),
    re.compile(rf"^\s*+({_ADDR})\s*:\s+\S"),
    # sendmail's "bob@example.com... User unknown"
    re.compile(rf"^\s*+<?({_ADDR})>?\.\.\.\s*\S"),
    # Exchange's "bob@example.com on 29/04/2007 ..."
    re.compile(rf"^\s*+<?({_ADDR})>?\s+on\s+\S+"),
    # "bob@example.com (reason)", "bob@example.com - reason"; only with a reason
    re.compile(rf"^\s*+<?({_ADDR})>?\s+[-(\[]\s*\S"),
    # "bob@example.com Invalid Address, ERROR_CODE :550"
    re.compile(
        rf"^\s*+<?({_ADDR})>?[\s,]++.*(?:invalid|unknown|error|fail|reject|full|exist|denied|"
        rf"refused|disabled|quota|[245]\d\d\b)",
        re.I,
    ),
    # sendmail transcripts: "550 5.1.1 <bob@example.com>... User unknown"
    re.compile(
        rf"^\s*+[245]\d\d[ -](?:#?[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?<?({_ADDR})>?(?:\.\.\.|:)"
    ),
)
_PHRASE_FORMS = (
    re.compile(rf"RCPT\s+TO:\s*<({_ADDR})>", re.I),
    # "User mailbox exceeds allowed size: bob@example.com"
    re.compile(rf"^\s*+\w[^:]{{2,100}}:\s*<?({_ADDR})>?\s*$"),
    # "recipient (expanded from <x>): bob@...": the aside ends at the next parenthesis, so a
    # "(" that never closes is not scanned to the line's end from every keyword before it.
    re.compile(
        rf"(?:recipients?|address(?:es)?|deliver(?:ed|ing|y)? to|(?:message|mail) to|mailbox|"
        rf"failed to|sent to|destination|user|to:)(?:\s*\([^()]*\))?\W{{0,4}}<?({_ADDR})>?",
        re.I,
    ),
)
_SENDER_LEAD = re.compile(r"(?:sent by|\bfrom|sender)\s*+:?\s*+$", re.I)
_CONTACT = re.compile(r"contact|please|questions|administrator|send (?:a )?mail to|write to", re.I)
# "To:", "From:" of a quoted header in the report are the original's, not bounced recipients.
_HEADERISH = re.compile(
    r"^\s*+(?:from|to|cc|sender|reply-to|return-path|envelope-to|delivered-to|received|"
    r"message-id|in-reply-to|references|reporting-mta|x-[\w-]+)\s*:",
    re.I,
)


def _recipient_lines(section: str, excluded: set[str]) -> list[tuple[str, int]]:
    """Each bounced address with the line that names it first, in order."""
    out: dict[str, int] = {}
    previous = ""  # the last non-blank line before this one
    for i, line in enumerate(section.split("\n")):
        if not line.strip() or len(line) > 1000:
            continue
        candidates = _candidates(line, previous)
        previous = line
        for address in candidates:
            key = address.lower().strip(".")
            if key not in excluded and not _DAEMON.match(key) and key not in out:
                out[key] = i
        if len(out) >= MAX_RECIPIENTS:
            break
    return list(out.items())


def _candidates(line: str, previous: str) -> list[str]:
    if _SENDER_LEAD.search(previous):
        return []  # Exim's "A message sent by\n  <sender>"
    found: list[str] = []
    for form in _LINE_FORMS:
        match = form.match(line)
        if match:
            found.append(match.group(1))
            break
    if not found and not _HEADERISH.match(line):
        for form in _PHRASE_FORMS:
            found.extend(form.findall(line))
    if _CONTACT.search(line):
        # "contact postmaster@example.net" names the help desk, not a recipient
        found = [a for a in found if not a.lower().startswith(("postmaster@", "abuse@"))]
    return found


def _text_blocks(
    section: str, addresses: list[str], order: list[tuple[str, int]] | None = None
) -> dict[str, _Block]:
    """Each address's block: from its line to the next address's line; the
    first reply code and RFC 3463 code there. An address whose block says
    nothing borrows from the lines that mention it, else from the whole
    report when it names a single cause. The command a reply answered goes
    with the reply it is borrowed with; the whole report's command is taken
    only in a report about one address (with several, it may be another's).
    Blocks do not overlap, and the mentions are indexed once: the work is
    linear in the report, whatever the number of addresses."""
    lines = section.split("\n")
    wanted = [a.lower() for a in addresses]
    if order is None:
        order = _recipient_lines(section, set())
    wanted_set = set(wanted)
    starts = sorted((line_no, a) for a, line_no in order if a in wanted_set)
    begins: dict[str, int] = {}
    for line_no, a in starts:
        begins.setdefault(a, line_no)
    bounds = [line_no for line_no, _ in starts]
    whole = _block_info(lines, whole_report=True)
    whole_answered = whole.answered if len(wanted_set) == 1 else None
    mentions = _Mentions(lines)
    out: dict[str, _Block] = {}
    for address in wanted:
        info: _Block | None = None
        begin = begins.get(address)
        if begin is not None:
            after = bisect_right(bounds, begin)
            end = min(bounds[after] if after < len(bounds) else len(lines), begin + 25)
            first = _after_address(lines[begin], address)
            info = _block_info([first, *lines[begin + 1 : end]])
        if info is None or (info.code is None and info.status is None):
            by_mention = _block_info(mentions.of(address))
            if by_mention.code is not None or by_mention.status is not None:
                info = _Block(
                    by_mention.diagnostic,
                    by_mention.status,
                    by_mention.code,
                    (info.remote_mta if info else None) or by_mention.remote_mta,
                    (info.answered if info else None) or by_mention.answered,
                )
        if info is None or (info.code is None and info.status is None):
            if info is None or not info.diagnostic:
                info = replace(whole, answered=whole_answered)
            else:
                info = _Block(
                    info.diagnostic,
                    whole.status,
                    whole.code,
                    info.remote_mta or whole.remote_mta,
                    info.answered or whole_answered,
                )
        elif info.answered is None and whole_answered is not None:
            info = replace(info, answered=whole_answered)
        out[address] = info
    return out


class _Mentions:
    """The report lines that name each address: the lines of at most _MAX_LINE characters
    (longer ones name no recipient, see _recipient_lines) indexed once by the addresses
    in them, the first _MAX_MENTIONS per address kept. Looking each address up in every
    line was quadratic with hundreds of recipients. A recipient that is no address to the
    index (a DSN's ``|/usr/bin/procmail``, a file) is looked for as text in each line,
    for the first _MAX_TEXT_LOOKUPS such recipients of a report only. And in all, the
    lines handed out add up to at most the report's own size: hundreds of recipients
    named on the same long lines cannot make each of those lines be read hundreds of
    times (an address past that borrows nothing)."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._index: dict[str, list[str]] | None = None
        self._text_lookups = 0
        self._budget = sum(len(line) + 1 for line in lines)

    def of(self, address: str) -> list[str]:
        found = self._find(address)
        size = sum(len(line) + 1 for line in found)
        if size > self._budget:
            return []
        self._budget -= size
        return found

    def _find(self, address: str) -> list[str]:
        if self._index is None:
            self._index = self._build()
        found = self._index.get(address)
        if found is not None:
            return found
        if self._text_lookups >= _MAX_TEXT_LOOKUPS:
            return []
        self._text_lookups += 1
        found = []
        for line in self._lines:
            if len(line) <= _MAX_LINE and address in line.lower():
                found.append(line)
                if len(found) >= _MAX_MENTIONS:
                    break
        return found

    def _build(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for line in self._lines:
            if "@" not in line or len(line) > _MAX_LINE:
                continue
            for key in {a.lower().strip(".") for a in _ADDR_RE.findall(line)}:
                found = index.setdefault(key, [])
                if len(found) < _MAX_MENTIONS:
                    found.append(line)
        return index


def _after_address(line: str, address: str) -> str:
    pos = line.lower().find(address)
    return line[pos + len(address) :].lstrip(">\"': .") if pos >= 0 else line


def _block_info(lines: list[str], *, whole_report: bool = False) -> _Block:
    """The reply in ``lines`` (an address's block, or the whole report): its code,
    words, RFC 3463 code, remote host and the command it answered."""
    text = "\n".join(line.strip() for line in lines)
    code_at = _find_code(text)
    code = code_at[0] if code_at else None
    if code_at is not None:
        # the reply runs from its code to the next blank line
        end = text.find("\n\n", code_at[1])
        diagnostic = _fold(text[code_at[1] :] if end < 0 else text[code_at[1] : end])
    else:
        # (a whole report's first paragraph is its introduction, not the failure)
        diagnostic = _fold(text if whole_report else _first_paragraph(text))
    status = _enhanced_of(text[code_at[1] :] if code_at else text)
    if status is None and code is None:
        status = _exchange_status(text)
    answered = _answered_in(text)
    remote = None
    for line in lines:
        for pattern in _HOST_PATTERNS:
            match = pattern.search(line.strip())
            if match:
                remote = match.group(1).rstrip(".")
                break
        if remote:
            break
    return _Block(diagnostic, status, code, remote, answered)


# Exchange 5.5 to 2003's Internet Mail Service gives its own status, no SMTP reply:
# "MSEXCH:IMS:<org>:<site>:<server> 0 (000C05A6) Unknown Recipient". Its codes that
# have an RFC 3463 counterpart (Microsoft's knowledge base names them); the "(" that
# ends the server's name is looked for within a line's reach, not to the text's end.
_EXCHANGE_IMS_CODE = re.compile(r"\bMSEXCH:IMS:[^\n(]{0,200}\(([0-9A-F]{8})\)", re.I)
_EXCHANGE_IMS_STATUS = {
    "000C05A6": "5.1.1",  # Unknown Recipient
    "000C0595": "5.1.4",  # Ambiguous Recipient
    "00120270": "5.4.6",  # Too Many Hops (a routing loop)
    "00010256": "5.5.3",  # Too many recipients
}


def _exchange_status(text: str) -> str | None:
    found = _EXCHANGE_IMS_CODE.search(text)
    return _EXCHANGE_IMS_STATUS.get(found.group(1).upper()) if found else None


# ------------------------------------------------------------------ the command a reply answered

# How MTAs say which command a reply answered, each form's words for the command in its
# group. Case is ignored (Exim writes "end of data", Postfix "end of DATA"); runs of
# blanks, line ends included (the text may be wrapped anywhere), are taken possessively.
_ANSWERED_FORMS = tuple(
    re.compile(p, re.I)
    for p in (
        # Postfix: "(in reply to RCPT TO command)", "(in reply to end of DATA command)"
        r"\bin\s++reply\s++to\s++((?:end\s++of\s++)?DATA|RCPT\s++TO|MAIL\s++FROM|[EHL]{2}LO|BDAT)"
        r"\s++command\b",
        # Exim: "SMTP error from remote mail server after RCPT TO:<a>:", "... after end of
        # data:", "... after initial connection:", "... after pipelined MAIL FROM:<s>:";
        # GMX: "SMTP error from remote server after RCPT command"; 1&1: "... for TEXT command"
        r"\bSMTP\s++error\s++from\s++remote\s++(?:mail\s++)?server\s++(?:after|for)\s++"
        r"(?:pipelined\s++)?(initial\s++connection|end\s++of\s++data|MAIL\s++FROM|RCPT\s++TO|"
        r"MAIL|RCPT|DATA|BDAT|TEXT|[EHL]{2}LO)\b",
        # DragonFly: "mx.example.net [192.0.2.1] did not like our RCPT TO:", "... final DATA:"
        r"\bdid\s++not\s++like\s++our\s++(connect|[EHL]{2}LO|MAIL\s++FROM|RCPT\s++TO|"
        r"(?:final\s++)?DATA)\b",
        # "rejected recipient <a> (Error following RCPT command)"
        r"\berror\s++following\s++(MAIL|RCPT|DATA|[EHL]{2}LO)\s++command\b",
        # Yahoo: "Remote host said: 550 5.2.2 <a>... Mailbox Full [RCPT_TO]" (in capitals:
        # a reply's own "[data]" is no such tag)
        r"(?-i:\[(MAIL_FROM|RCPT_TO|DATA)\])",
        # m-FILTER: a section titled "SMTP command" holding the command
        r"\bSMTP\s++command[\s:]++(MAIL\s++FROM|RCPT\s++TO|DATA|[EHL]{2}LO)\b",
    )
)
# qmail-remote's fixed sentences (Postfix's for a refused greeting), each naming one step.
_ANSWERED_SENTENCES = tuple(
    (re.compile(p, re.I), command)
    for p, command in (
        (r"\bdoes\s++not\s++like\s++recipient\b", "RCPT"),
        (r"\bbut\s++sender\s++was\s++rejected\b", "MAIL"),
        (r"\bbut\s++my\s++name\s++was\s++rejected\b", "HELO"),
        (r"\bbut\s++greeting\s++failed\b", "CONNECT"),
        (r"\bfailed\s++on\s++DATA\s++command\b", "DATA"),
        (r"\bfailed\s++after\s++I\s++sent\s++the\s++message\b", "DATA"),
        (r"\brefused\s++to\s++talk\s++to\s++me\b", "CONNECT"),
    )
)


def _command_name(words: str) -> str | None:
    """A command as an MTA names it ("RCPT TO", "end of data", "EHLO", "MAIL_FROM",
    "TEXT", the "." ending the data) as one of CONNECT, HELO, MAIL, RCPT, DATA; None
    for any other (QUIT, RSET, STARTTLS, AUTH: no reply to them is the failure here)."""
    key = " ".join(words.replace("_", " ").split()).upper()
    verb = key.split(" ", 1)[0] if key else ""
    if verb in ("CONNECT", "INITIAL"):
        return "CONNECT"
    if verb in ("EHLO", "HELO", "LHLO"):
        return "HELO"
    if verb in ("MAIL", "RCPT"):
        return verb
    if verb in ("DATA", "BDAT", "TEXT", ".", "END", "FINAL"):
        return "DATA"
    return None


def _answered_in(text: str) -> str | None:
    """The command a reply in ``text`` answered, as the first of the forms above that
    occurs in it says (each form is looked for once: linear in the text)."""
    if not text:
        return None
    first: tuple[int, str | None] | None = None
    for form in _ANSWERED_FORMS:
        match = form.search(text)
        if match and (first is None or match.start() < first[0]):
            first = (match.start(), _command_name(match.group(1)))
    for sentence, command in _ANSWERED_SENTENCES:
        match = sentence.search(text)
        if match and (first is None or match.start() < first[0]):
            first = (match.start(), command)
    return first[1] if first else None


# A session transcript (Sendmail, Courier, KDDI): ">>> " the command sent, "<<< " the reply.
# A quoting ">" may precede either (a forwarded bounce).
_SENT = re.compile(r"^\s*+(?:>\s?)?>>>\s*+(\S.*)$")
_RECEIVED = re.compile(r"^\s*+(?:>\s?)?<<<\s*+([245])\d\d(?:[ -]|$)")
_SESSION = re.compile(r"\bwhile\s++talking\s++to\b", re.I)
# Sendmail's own line after a reply it holds against a recipient:
# "550 5.1.1 <a@example.org>... User unknown", "<a@example.org>... Deferred: 450 ...".
_HELD_AGAINST = re.compile(
    rf"^\s*+(?:>\s?)?(?:[245]\d\d[ -](?:#?[245]\.\d{{1,3}}\.\d{{1,3}}\s++)?)?<?({_ADDR})>?\.\.\.\s"
)


class _Transcript:
    """What a session transcript says each failing reply answered, read in one pass.

    A failing reply (4xx, 5xx) answers the last command sent just before it, or the
    greeting (CONNECT) when it follows "... while talking to host:" directly; after any
    other line, what a reply answers is no longer known. A reply to ``RCPT TO:<a>`` is
    a's. Sendmail writes a line naming the recipient it holds a reply against; after
    ``DATA`` that is a pipelined RCPT's reply, read only once DATA was sent (the DATA
    reply itself follows, "554 no valid recipients"; a refused DATA is followed by
    "554 5.0.0 Service unavailable", which names no one). A reply held against no one
    answered for the whole transaction, every recipient's but those of its session with
    a reply of their own (a DATA refused once every RCPT was is no recipient's failure).
    Sessions with several hosts come in the order they were tried: the last session's
    answer is the one the bounce reports."""

    def __init__(self, section: str) -> None:
        self._of: dict[str, tuple[int, str]] = {}  # (session, command) per address
        self._general: tuple[int, str] | None = None
        self._session = 0
        if ">>>" in section or "<<<" in section:
            self._read(section.split("\n"))

    def answered(self, address: str | None, action: str) -> str | None:
        """The command the address's failing reply answered (None for a success)."""
        if action not in ("failed", "delayed"):
            return None
        own = self._of.get((address or "").lower())
        if own is not None and (self._general is None or own[0] >= self._general[0]):
            return own[1]
        return self._general[1] if self._general else None

    def _read(self, lines: list[str]) -> None:
        command: str | None = None  # what a reply now would answer (None: not known)
        sent_to: str | None = None  # the address of the RCPT TO it would answer
        pending: tuple[str, str | None] | None = None  # a failing reply not yet placed
        for line in lines:
            short = len(line) <= _MAX_LINE
            received = _RECEIVED.match(line) if short else None
            if received:
                # (the continuation lines of a reply already pending are part of it)
                if pending is None and received.group(1) != "2" and command is not None:
                    pending = (command, sent_to)
                continue
            held = _HELD_AGAINST.match(line) if short and pending is not None else None
            if held and pending is not None:
                replied_to = "RCPT" if pending[0] == "DATA" else pending[0]
                self._of[held.group(1).lower()] = (self._session, replied_to)
                pending = None
                continue
            self._place(pending)
            pending = None
            command, sent_to = None, None
            sent = _SENT.match(line) if short else None
            if sent:
                words = sent.group(1)
                name = _command_name(words.split(" ", 1)[0])
                # (QUIT, RSET and the like leave it None: their replies are no failure)
                if name is not None and name != "CONNECT":
                    command = name
                    found = _ADDR_RE.search(words) if name == "RCPT" else None
                    sent_to = found.group(0).lower() if found else None
            elif short and _SESSION.search(line):
                command = "CONNECT"
                self._session += 1
        self._place(pending)

    def _place(self, pending: tuple[str, str | None] | None) -> None:
        if pending is None:
            return
        command, address = pending
        if command != "RCPT":
            self._general = (self._session, command)
        elif address is not None:
            self._of[address] = (self._session, command)


_RULE_CHARACTERS = "-=*_#"


def _first_paragraph(text: str) -> str:
    """A block's failure without a reply code: its first paragraph with words (what
    follows is the report's boilerplate; the "," or "!" left of a greeting's line once
    the address is cut off is none), read on past a lead-in ("For the following
    reason:", "Dear customer,") or a heading ("------- Failure Reasons --------") into
    the paragraph it introduces."""
    start = 0
    end = text.find("\n\n")
    while end >= 0 and not any(c.isalnum() for c in text[start:end]):
        start, end = end, text.find("\n\n", end + 1)
    while start < len(text) and text[start] == "\n":
        start += 1
    end = text.find("\n\n", start)
    while end >= 0:
        last_line = text[text.rfind("\n", start, end) + 1 : end].strip()
        heading = (
            len(last_line) >= 4
            and last_line[0] == last_line[1] in _RULE_CHARACTERS
            and last_line[-1] == last_line[-2] in _RULE_CHARACTERS
        )
        if not (heading or last_line.endswith((":", ","))):
            break
        following = end
        while following < len(text) and text[following] == "\n":
            following += 1
        end = text.find("\n\n", following)
    return text[start:] if end < 0 else text[start:end]


def _aws_notification(text: str) -> tuple[BounceRecipient, ...] | None:
    """Amazon SES notifications (JSON, possibly wrapped in an SNS envelope)."""
    start = text.find("{")
    if start < 0 or not re.search(r'\\?"(?:bounce|complaint|delivery)\\?"\s*:', text):
        return None
    try:
        data = json.loads(text[start : text.rfind("}") + 1], strict=False)
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"], strict=False)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    out: list[BounceRecipient] = []
    bounce = data.get("bounce")
    complaint = data.get("complaint")
    delivery = data.get("delivery")
    if isinstance(bounce, dict):
        delayed = str(bounce.get("bounceType", "")).lower() == "transient"
        for item in _listed(bounce.get("bouncedRecipients")):
            if not isinstance(item, dict):
                continue
            diagnostic = _fold(_strip_type(str(item.get("diagnosticCode") or "")))
            status = _status_of(str(item.get("status") or ""), diagnostic)
            code = _code_of(diagnostic)
            action = str(item.get("action") or ("delayed" if delayed else "failed"))
            out.append(
                BounceRecipient(
                    _address_field(str(item.get("emailAddress") or "")),
                    _action_of(action, status, code),
                    status,
                    code,
                    diagnostic,
                    _strip_type(str(bounce.get("remoteMtaIp") or "")) or None,
                    answered_command=_answered_in(diagnostic),
                )
            )
    elif isinstance(complaint, dict):
        kind = complaint.get("complaintFeedbackType")
        for item in _listed(complaint.get("complainedRecipients")):
            if isinstance(item, dict):
                out.append(
                    BounceRecipient(
                        _address_field(str(item.get("emailAddress") or "")),
                        "complaint",
                        None,
                        None,
                        "",
                        None,
                        str(kind).lower() if kind else None,
                    )
                )
    elif isinstance(delivery, dict):
        diagnostic = _fold(str(delivery.get("smtpResponse") or ""))
        code = _code_of(diagnostic)
        status = _enhanced_of(diagnostic)
        host = delivery.get("remoteMtaIp") or delivery.get("reportingMTA")
        for address in _listed(delivery.get("recipients")):
            out.append(
                BounceRecipient(
                    _address_field(str(address)),
                    "delivered",
                    status,
                    code,
                    diagnostic,
                    str(host) if host else None,
                )
            )
    return tuple(out) or None


def _listed(value: object) -> list[object]:
    """A JSON list of recipients, its first MAX_RECIPIENTS (anything else: none)."""
    return value[:MAX_RECIPIENTS] if isinstance(value, list) else []
