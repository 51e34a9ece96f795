"""A bounce's human-readable report: cut off at the returned original, the lines that
name each recipient, and each recipient's reply (code, RFC 3463 status, words, remote
host, the command it answered) read from its block of text; Exchange 2003's own status
codes are read as the RFC 3463 codes they stand for.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, replace

from policies.dsn.answered import _answered_in
from policies.dsn.fields import _enhanced_of, _find_code, _fold
from policies.dsn.patterns import (
    _ADDR,
    _ADDR_RE,
    _DAEMON,
    _DSN_FIELD,
    _MAX_LINE,
    _MAX_MENTIONS,
    _MAX_REPORT_LINES,
    _MAX_TEXT_LOOKUPS,
    MAX_RECIPIENTS,
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
