"""What the relay reads from a message's header: From domain, Message-ID, campaign.

Only the header block is parsed (the body is never decoded), and any bytes
are accepted: a broken header costs that field, never the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses

from policies.addresses import domain_of

__all__ = ["HeaderSummary", "summarise_headers"]

_PARSER = HeaderParser(policy=compat32)
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


def summarise_headers(raw: bytes, campaign_header: str) -> HeaderSummary:
    """Parse the header block of ``raw`` (an RFC 5322 message as received)."""
    # SMTPUTF8 headers are UTF-8 (RFC 6532); anything else undecodable is replaced, not fatal.
    block = _header_block(raw).decode("utf-8", errors="replace")
    headers = _PARSER.parsestr(block, headersonly=True)
    from_domain = None
    sender = headers.get("From")
    if sender is not None:
        addresses = [addr for _, addr in getaddresses([str(sender)]) if "@" in addr]
        if addresses:
            from_domain = domain_of(addresses[0]) or None
    return HeaderSummary(
        from_domain=from_domain,
        message_id=_text(headers.get("Message-ID")),
        campaign=_text(headers.get(campaign_header)),
    )
