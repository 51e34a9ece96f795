"""What the relay reads from a message's header: From domain, Message-ID, campaign, hops.

Only the header block is parsed (the body is never decoded), and any bytes
are accepted: a broken header costs that field, never the message.

This runs on the intake's event loop for every message, and clients send what
they like, so its cost is bounded whatever the message: only the first
``MAX_HEADER_BYTES`` are read as the header (Postfix's ``header_size_limit``
default; beyond it the header is cut, not refused), lines are found by C-level
pattern scans rather than a Python loop per line, a folded field is joined
once, and the From field given to the address parser is cut at ``_MAX_FIELD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from policies.addresses import domain_of

__all__ = ["MAX_HEADER_BYTES", "HeaderSummary", "count_received", "summarise_headers"]

MAX_HEADER_BYTES = 100 * 1024
_MAX_FIELD = 998  # RFC 5322 line limit; longer values are truncated, not rejected
# The first line that ends the header: neither a continuation, nor an mbox "From " line,
# nor a field (printable ASCII but ":", then ":"), as the email package reads it. Each
# line start is tried once, over its own characters only.
_HEADER_END = re.compile(r"^(?![ \t]|From |[\x21-\x39\x3b-\x7e]*:)", re.M)
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]*")  # printable ASCII but ":"
# A field's value with its continuation lines, taken whole (possessive: no backtracking).
_FOLDED_VALUE = re.compile(r"[^\n]*+(?:\n[ \t][^\n]*+)*+")


@dataclass(frozen=True)
class HeaderSummary:
    from_domain: str | None
    message_id: str | None
    campaign: str | None


def _header_block(raw: bytes) -> bytes:
    """The header block and its blank line, at most MAX_HEADER_BYTES of it."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep, 0, MAX_HEADER_BYTES)
        if end != -1:
            return raw[: end + len(sep)]
    return raw[:MAX_HEADER_BYTES]


def _lines(block: str) -> str:
    """``block`` with every line break (CRLF, CR, LF, as the email package splits lines)
    made an LF, so that patterns can find lines with ``^`` in one scan."""
    return block.replace("\r\n", "\n").replace("\r", "\n")


def _header_end(text: str) -> int:
    """Where the header of ``text`` (LF lines) ends: the start of its first line that is
    neither a field nor a continuation."""
    end = _HEADER_END.search(text)
    return end.start() if end is not None else len(text)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:_MAX_FIELD] or None


def _fields(block: str, wanted: set[str]) -> dict[str, str]:
    """The first value of each wanted field (lower-case names), unfolded (RFC 5322
    §2.2.3), as the email package would read it; the header ends at the first line that is
    neither a field nor a continuation. Hot path: this runs for every message, so each
    wanted field is found by one pattern scan, not by a Python loop over the lines."""
    text = _lines(block)
    end = _header_end(text)
    found: dict[str, str] = {}
    # A name with a character no field name has (a blank, a colon) can never be found.
    valid = [re.escape(name) for name in sorted(wanted) if _FIELD_NAME.fullmatch(name)]
    if not valid:
        return found
    names = "|".join(valid)
    for field in re.finditer(rf"^({names}):", text[:end], re.M | re.I | re.A):
        key = field.group(1).lower()
        if key in found:
            continue
        value = _FOLDED_VALUE.match(text, field.end(), end)
        assert value is not None  # the pattern matches the empty string
        first, _, rest = value.group().partition("\n")
        # Unfolding: the line breaks go, the blanks that start each continuation stay.
        found[key] = first.lstrip(" \t") + rest.replace("\n", "")
        if len(found) == len(wanted):
            break
    return found


def _from_domain(sender: str | None) -> str | None:
    """The domain of the first address of a From value. The address parser is slow on
    long values and recurses on nested comments, so it gets the first _MAX_FIELD
    characters, and a value it cannot read has no domain."""
    if sender is None:
        return None
    try:
        addresses = [addr for _, addr in getaddresses([sender[:_MAX_FIELD]]) if "@" in addr]
    except (RecursionError, ValueError, IndexError, TypeError):
        return None
    return (domain_of(addresses[0]) or None) if addresses else None


def summarise_headers(raw: bytes, campaign_header: str) -> HeaderSummary:
    """Parse the header block of ``raw`` (an RFC 5322 message as received)."""
    # SMTPUTF8 headers are UTF-8 (RFC 6532); anything else undecodable is replaced, not fatal.
    block = _header_block(raw).decode("utf-8", errors="replace")
    campaign_key = campaign_header.lower()
    headers = _fields(block, {"from", "message-id", campaign_key})
    return HeaderSummary(
        from_domain=_from_domain(headers.get("from")),
        message_id=_text(headers.get("message-id")),
        campaign=_text(headers.get(campaign_key)),
    )


def count_received(raw: bytes) -> int:
    """How many ``Received:`` fields the header of ``raw`` has: the hops it made so far.

    RFC 5321 §6.3: counting them is how a server detects a mail loop."""
    text = _lines(_header_block(raw).decode("latin-1"))
    return len(re.findall(r"^received:", text[: _header_end(text)], re.M | re.I | re.A))
