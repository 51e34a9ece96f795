"""What the relay reads from a message's header: From domain, Message-ID, campaign, hops.

Only the header block is parsed (the body is never decoded), and any bytes
are accepted: a broken header costs that field, never the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from policies.addresses import domain_of

__all__ = ["HeaderSummary", "count_received", "summarise_headers"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # as the email package splits lines
_FIELD_NAME = re.compile(r"([\x21-\x39\x3b-\x7e]*):")  # printable ASCII but ":"
_MAX_FIELD = 998  # RFC 5322 line limit; longer values are truncated, not rejected


@dataclass(frozen=True)
class HeaderSummary:
    from_domain: str | None
    message_id: str | None
    campaign: str | None


def _header_block(raw: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end != -1:
            return raw[: end + len(sep)]
    return raw


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:_MAX_FIELD] or None


def _fields(block: str, wanted: set[str]) -> dict[str, str]:
    """The first value of each wanted field (lower-case names), unfolded (RFC 5322
    §2.2.3), as the email package would read it; the header ends at the first line that is
    neither a field nor a continuation. Hot path: this runs for every message."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in _LINE_BREAK.split(block):
        if line[:1] in (" ", "\t"):
            if current is not None:
                found[current] += line  # unfolding: the line break goes, the blank stays
            continue
        current = None
        if line.startswith("From "):
            continue  # an mbox separator, skipped as the email package does
        field = _FIELD_NAME.match(line)
        if field is None:
            break
        key, value = field.group(1).lower(), line[field.end() :]
        if key in wanted and key not in found:
            found[key] = value.lstrip(" \t")
            current = key
    return found


def summarise_headers(raw: bytes, campaign_header: str) -> HeaderSummary:
    """Parse the header block of ``raw`` (an RFC 5322 message as received)."""
    # SMTPUTF8 headers are UTF-8 (RFC 6532); anything else undecodable is replaced, not fatal.
    block = _header_block(raw).decode("utf-8", errors="replace")
    campaign_key = campaign_header.lower()
    headers = _fields(block, {"from", "message-id", campaign_key})
    from_domain = None
    sender = headers.get("from")
    if sender is not None:
        addresses = [addr for _, addr in getaddresses([str(sender)]) if "@" in addr]
        if addresses:
            from_domain = domain_of(addresses[0]) or None
    return HeaderSummary(
        from_domain=from_domain,
        message_id=_text(headers.get("message-id")),
        campaign=_text(headers.get(campaign_key)),
    )


def count_received(raw: bytes) -> int:
    """How many ``Received:`` fields the header of ``raw`` has: the hops it made so far.

    RFC 5321 §6.3: counting them is how a server detects a mail loop."""
    count = 0
    for line in _LINE_BREAK.split(_header_block(raw).decode("latin-1")):
        if line[:1] in (" ", "\t") or line.startswith("From "):
            continue
        field = _FIELD_NAME.match(line)
        if field is None:
            break
        if field.group(1).lower() == "received":
            count += 1
    return count
