"""SMTP replies as values: one ``Reply`` shape for every outcome of an attempt.

A reply reaches us in several forms and all of them must turn into the same
value, because ``classify`` reads only this (cf. postfix
``src/global/dsn_util.c``, which splits "550 5.1.1 text" the same way):

* from the wire through aiosmtplib: a code plus message lines *without* their
  code prefixes (``reply_from_smtp``);
* from a transcript or a bounce: the lines as sent, ``550-5.1.1 a`` /
  ``550 5.1.1 b`` joined by newlines, or joined into one line by Postfix
  ("550-5.1.1 a 550 5.1.1 b"), or just some MTA's own words with no code at
  all (``parse_reply``);
* from the relay itself: a connection refused, a timeout, a TLS or DNS
  failure, which is our judgement and never a provider's words
  (``synthetic_reply``).

Parsing is tolerant because the replies are not ours: a missing code gives
``code=0``, codes outside the RFC 5321 list (403, 511, 540) are kept as sent,
and an enhanced status code (RFC 3463) is found after the reply code, after a
qmail-style ``#``, or, failing that, later in the first line when its class
agrees with the reply code ("553 Mail from x not allowed - 5.7.1 ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "DOMAIN_ABSENT_PREFIX",
    "Reply",
    "enhanced_matches",
    "is_enhanced_pattern",
    "parse_reply",
    "reply_from_smtp",
    "synthetic_reply",
]

# A reply code opens the reply; "smtp;" is how RFC 3464 Diagnostic-Code
# fields prefix it, so a DSN line can be passed as it is.
_CODE = re.compile(r"^\s*(?:smtp;\s*)?([1-5]\d\d)(?=[\s-]|$)", re.IGNORECASE)
# RFC 3463 syntax: class.subject.detail, subject and detail up to 3 digits.
_ENHANCED_SYNTAX = r"[245]\.\d{1,3}\.\d{1,3}"
_ENHANCED_AT_START = re.compile(rf"^\s*#?({_ENHANCED_SYNTAX})(?=[\s,;:)\]]|$)")
# Later in a line we only trust a code whose subject is one RFC 3463 defines
# (0-7) and that is not part of a longer dotted number (an IP address, a
# version string, Yahoo's "#4.16.1").
_ENHANCED_INSIDE = re.compile(r"(?<![\w.])#?([245]\.[0-7]\.\d{1,3})(?![\w]|\.\d)")
_ENHANCED_FULL = re.compile(rf"{_ENHANCED_SYNTAX}")
_PATTERN_PART = re.compile(r"\d{1,3}|[xX*]")


@dataclass(frozen=True)
class Reply:
    """One upstream (or synthetic) reply.

    ``text`` is kept as received, codes included, because it is what the
    bounce record shows and what templates normalise; ``message`` is the same
    words without the line prefixes, for pattern matching.
    """

    code: int
    enhanced: str | None
    text: str
    synthetic: bool = False

    @property
    def reply_class(self) -> int:
        """2, 4 or 5 (also 1 or 3 for odd codes); from the enhanced code when
        there is no reply code; 0 when neither says."""
        if 100 <= self.code <= 599:
            return self.code // 100
        if self.enhanced:
            return int(self.enhanced[0])
        return 0

    @cached_property
    def lines(self) -> tuple[str, ...]:
        """The reply's logical lines, Postfix-joined continuations split apart."""
        return tuple(_logical_lines(self.text))

    @cached_property
    def message(self) -> str:
        """The words of the reply: every line without its reply code and
        enhanced code, joined by single spaces, so that a pattern can match a
        phrase a server broke across lines."""
        words = (_strip_prefixes(line, self.code) for line in self.lines)
        return " ".join(" ".join(words).split())


def parse_reply(raw: str) -> Reply:
    """A ``Reply`` from reply text as found in a transcript, log or bounce."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n").strip()
    lines = _logical_lines(text)
    first = lines[0] if lines else ""
    match = _CODE.match(first)
    code = int(match.group(1)) if match else 0
    rest = first[match.end() :].lstrip("-") if match else first
    return Reply(code=code, enhanced=_find_enhanced(rest, code), text=text)


def reply_from_smtp(code: int, message: str) -> Reply:
    """A ``Reply`` from aiosmtplib's ``SMTPResponse(code, message)``.

    aiosmtplib strips the code from every line, so the text is rebuilt the way
    it crossed the wire ("550-line1\\n550 line2"). aiosmtplib reports a
    garbled reply with a negative code; that becomes ``code=0``.
    """
    if not 100 <= code <= 599:
        code = 0
    message = _readable(message)
    lines = message.replace("\r\n", "\n").split("\n") if message else []
    enhanced = _find_enhanced(lines[0], code) if lines else None
    if code == 0:
        text = "\n".join(lines)
    elif not lines:
        text = str(code)
    else:
        head = [f"{code}-{line}" for line in lines[:-1]]
        text = "\n".join([*head, f"{code} {lines[-1]}"])
    return Reply(code=code, enhanced=enhanced, text=text)


def _readable(message: str) -> str:
    """Text every store and encoder takes. aiosmtplib decodes replies as UTF-8 with
    ``surrogateescape``, so a server answering in Latin-1 ("Message reçu") gives lone
    surrogates, which PostgreSQL refuses: read such bytes as Latin-1, what those servers
    send. A NUL (which PostgreSQL text cannot hold either) becomes U+FFFD."""
    if not message.isascii():
        try:
            raw = message.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that did not come from a byte
            raw = message.encode("utf-8", "replace")
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            message = raw.decode("latin-1")
    return message.replace("\x00", "\ufffd")


def synthetic_reply(code: int, enhanced: str, text: str) -> Reply:
    """A reply the relay makes up for its own failure (refused, timeout, TLS,
    DNS). ``text`` is kept verbatim: it describes what we saw, it is not a
    server's reply line. ``enhanced`` may be "" for none."""
    if code != 0 and not 100 <= code <= 599:
        raise ValueError(f"synthetic reply code {code} is not 0 or 100-599")
    if enhanced and not _ENHANCED_FULL.fullmatch(enhanced):
        raise ValueError(f"synthetic enhanced code {enhanced!r} is not class.subject.detail")
    return Reply(code=code, enhanced=enhanced or None, text=text, synthetic=True)


# Our own "this domain takes no mail because it is not there" (NXDOMAIN, or neither MX nor
# address records): the verdict confirms it by a second look before it suppresses, and
# knows the first look again from the delivery's last reply, which keeps only code and text.
DOMAIN_ABSENT_PREFIX = "DNS: no such domain: "


def domain_absent_reply(domain: str, detail: str) -> Reply:
    """The synthetic reply for a recipient domain our resolver says is absent."""
    return synthetic_reply(550, "5.1.2", f"{DOMAIN_ABSENT_PREFIX}{domain} {detail}")


def says_domain_absent(code: int | None, text: str | None) -> bool:
    """Whether a reply (or a delivery's last code and text) is ``domain_absent_reply``'s."""
    return code == 550 and (text or "").startswith(DOMAIN_ABSENT_PREFIX)


def is_enhanced_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is usable with ``enhanced_matches``: one to three
    dot-separated parts, each a number or a wildcard ``x``/``X``/``*``, with
    an optional trailing dot ("5.7.", "5.7.1", "x.1.1", "4")."""
    parts = pattern.removesuffix(".").split(".")
    return 1 <= len(parts) <= 3 and all(_PATTERN_PART.fullmatch(p) for p in parts)


def enhanced_matches(patterns: tuple[str, ...], enhanced: str | None) -> bool:
    """Whether ``enhanced`` fits one of ``patterns``; no patterns match anything.

    A pattern matches part by part from the left: "5.7." and "5.7" match every
    5.7.x, "5.7.1" only 5.7.1 (not 5.7.10), "x.1.1" both 4.1.1 and 5.1.1. A
    reply without an enhanced code matches no pattern.
    """
    if not patterns:
        return True
    if enhanced is None:
        return False
    have = enhanced.split(".")
    return any(_pattern_fits(p.removesuffix(".").split("."), have) for p in patterns)


def _pattern_fits(want: list[str], have: list[str]) -> bool:
    if len(want) > len(have):
        return False
    return all(w in "xX*" or w == h for w, h in zip(want, have, strict=False))


def _logical_lines(text: str) -> list[str]:
    """Physical lines, with Postfix-joined continuations split back apart.

    Postfix reports a multi-line reply on one line ("550-5.1.1 a 550-5.1.1 b
    550 5.1.1 c"). Only a line that itself opens with a continuation
    ("NNN-") is split, and only before the same code, so a reply quoting
    another server ("... said: 550 5.1.1 ...") stays whole.
    """
    out: list[str] = []
    for line in text.split("\n"):
        match = re.match(r"\s*(?:smtp;\s*)?([1-5]\d\d)-", line, re.IGNORECASE)
        if match is None:
            out.append(line)
            continue
        # (?<!\s): a split starts at the first blank of a run, so a long blank run costs
        # one scan, not one per blank (quadratic).
        out.extend(re.split(rf"(?<!\s)\s+(?={match.group(1)}(?:[ -]|$))", line))
    return out


def _strip_prefixes(line: str, code: int) -> str:
    rest = line.strip()
    match = _CODE.match(rest)
    if match and int(match.group(1)) == code:
        rest = rest[match.end() :].lstrip("-").strip()
    enhanced = _ENHANCED_AT_START.match(rest)
    if enhanced:
        rest = rest[enhanced.end() :]
    return rest


def _find_enhanced(after_code: str, code: int) -> str | None:
    """The enhanced code right after the reply code, else (when there is a
    reply code) the first one of the same class later in the line."""
    head = _ENHANCED_AT_START.match(after_code)
    if head:
        return head.group(1)
    if not 100 <= code <= 599:
        return None
    for match in _ENHANCED_INSIDE.finditer(after_code):
        if match.group(1)[0] == str(code)[0]:
            return match.group(1)
    return None
