"""VERP return paths: ``<prefix>+<token>@<dsn domain>``, one per delivery.

The token names the delivery and carries an HMAC over it, so a bounce can be
tied to exactly one delivery and a forged or mangled return path is worth
nothing: without the secret nobody can make a token that verifies.

Token: base32 (lower case, no padding) of the delivery id (8 bytes, big
endian) followed by the first 10 bytes of HMAC-SHA256(secret, id). Base32 is
case-insensitive, so an MTA that folds the local part to upper or lower case
does not break it. 29 characters; with the prefix the local part stays far
below the 64-octet limit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from policies.addresses import AddressError, ascii_domain

__all__ = ["MIN_SECRET_LENGTH", "ReturnPaths"]

MIN_SECRET_LENGTH = 16
_ID_BYTES = 8
_MAC_BYTES = 10
_TOKEN_CHARS = 29  # ceil((8 + 10) * 8 / 5)
_CONTEXT = b"bounce-relay verp v1:"


@dataclass(frozen=True)
class ReturnPaths:
    """Makes and checks VERP return paths for one ``[dsn]`` configuration."""

    domain: str
    secret: bytes
    prefix: str = "bounces"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the VERP secret must be at least {MIN_SECRET_LENGTH} bytes")

    def address(self, delivery_id: int) -> str:
        """The envelope sender for ``delivery_id``."""
        raw = delivery_id.to_bytes(_ID_BYTES, "big")
        token = base64.b32encode(raw + self._mac(raw)).decode("ascii").rstrip("=").lower()
        return f"{self.prefix}+{token}@{self.domain}"

    def is_ours(self, address: str) -> bool:
        """Whether ``address`` is at the DSN domain (mail to it is read, never relayed)."""
        _, at, domain = address.strip().strip("<>").rpartition("@")
        return bool(at) and self._at_our_domain(domain)

    def delivery_of(self, address: str) -> int | None:
        """The delivery a return path names; None when it is not ours or does not verify."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or not self._at_our_domain(domain):
            return None
        prefix, plus, token = local.rpartition("+")
        if not plus or prefix.lower() != self.prefix.lower():
            return None
        return self._verify(token)

    def _at_our_domain(self, domain: str) -> bool:
        # Any spelling of the domain (U-label, A-label, upper case, trailing dot) is ours;
        # the configured domain is already in the one form (policies.addresses).
        if domain.isascii() and domain.rstrip(".").lower() == self.domain:
            return True  # the common case, without the IDNA work
        try:
            return ascii_domain(domain) == self.domain
        except AddressError:
            return False

    def find_delivery(self, text: str) -> int | None:
        """The first verified return path anywhere in ``text`` (the headers a feedback
        report or a bounce returns: Return-Path, To, Received ``for``)."""
        for match in self._pattern.finditer(text):
            delivery = self._verify(match.group(1))
            if delivery is not None:
                return delivery
        return None

    @property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(
            rf"{re.escape(self.prefix)}\+([a-z2-7]{{{_TOKEN_CHARS}}})@{re.escape(self.domain)}\b",
            re.IGNORECASE,
        )

    def _verify(self, token: str) -> int | None:
        if len(token) != _TOKEN_CHARS:
            return None
        try:
            raw = base64.b32decode(token.upper() + "===")
        except (binascii.Error, ValueError):
            return None
        ident, mac = raw[:_ID_BYTES], raw[_ID_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(ident)):
            return None
        return int.from_bytes(ident, "big")

    def _mac(self, raw_id: bytes) -> bytes:
        return hmac.new(self.secret, _CONTEXT + raw_id, hashlib.sha256).digest()[:_MAC_BYTES]
