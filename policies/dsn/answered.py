"""The SMTP command a recipient's reply answered, as the bounce tells it.

Each recipient also carries the SMTP command its reply answered
(``answered_command``), where the bounce says it: Postfix's "(in reply to RCPT
TO command)", Exim's "SMTP error from remote mail server after end of data",
qmail's and DragonFly's sentences ("does not like recipient", "did not like
our RCPT TO"), a Sendmail or Courier session transcript (">>> DATA", "<<< 550
..."). RFC 3464 has no field for it: a DSN's groups learn it from their
diagnostic or the human-readable part. A recipient refused after DATA was
accepted at RCPT: a content filter's or a carrier's refusal, whatever its words.
"""

from __future__ import annotations

import re

from policies.dsn.patterns import _ADDR, _ADDR_RE, _MAX_LINE

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
