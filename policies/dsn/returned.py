"""The returned original: the part that carries it, its header block, and whether it is
itself a bounce or a report (a loop).
"""

from __future__ import annotations

import re

from policies.dsn.fields import _field_pairs
from policies.dsn.mime import _HEADER_TYPES, _MESSAGE_TYPES, _header_value, _Part
from policies.dsn.patterns import _DAEMON, _DAEMON_FROM

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
