"""Mail address checks and the one normal form used for suppression.

``normalise_address`` is the key of the suppression list and of profiles:
the whole address is lower-cased (every mailbox provider we send to treats
the local part case-insensitively, and so do the suppression lists of the
commercial platforms operators migrate from) and an internationalised domain
is stored in its IDNA (``xn--``) form, so ``Bob@Exämple.COM`` and
``bob@xn--exmple-cua.com`` are one entry.
"""

from __future__ import annotations

import re

__all__ = ["AddressError", "domain_of", "normalise_address", "validate_address"]

# RFC 6532 UTF8-non-ascii, less the C1 controls and the surrogates (which only stand for
# bytes that were not UTF-8: aiosmtpd decodes with surrogateescape).
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_UTF8}]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
# RFC 5321 §4.1.2 Quoted-string, printable characters only, with the minimum quoting the
# RFC asks senders for: a backslash escapes only a double quote or a backslash. Any other
# escape would be rewritten by aiosmtplib on the way out (email.utils.parseaddr drops the
# backslash): the address delivered would not be the one stored and checked for suppression.
_QUOTED = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\["\\\\])*"')
_LABEL = re.compile(rf"(?!-)[A-Za-z0-9\-{_UTF8}]{{1,63}}(?<!-)")
_ADDRESS_LITERAL = re.compile(r"\[[A-Za-z0-9:.\-]+\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_PATH_OCTETS = 256  # RFC 5321 §4.5.3.1.3, angle brackets included


class AddressError(ValueError):
    """The address is not a valid RFC 5321 mailbox; ``why`` says which part."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"malformed address {address!r}: {why}")
        self.address = address
        self.why = why


def validate_address(address: str) -> str:
    """Return ``address`` without angle brackets, or raise ``AddressError``."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        raise AddressError(address, "not valid UTF-8") from None
    if _CONTROL.search(address):
        raise AddressError(address, "control character (NUL, CR, LF, TAB, ...)")
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if "@" not in addr:
        raise AddressError(address, "no @domain")
    local, _, domain = addr.rpartition("@")
    if not local:
        raise AddressError(address, "empty local part")
    if len(local.encode()) > 64:
        raise AddressError(address, "local part longer than 64 octets")
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise AddressError(address, "local part has characters SMTP does not allow")
    _validate_domain(address, domain)
    if len(addr.encode()) + 2 > MAX_PATH_OCTETS:
        raise AddressError(address, f"longer than {MAX_PATH_OCTETS} octets as <path>")
    return addr


def _validate_domain(address: str, domain: str) -> None:
    if not domain:
        raise AddressError(address, "empty domain")
    if _ADDRESS_LITERAL.fullmatch(domain):
        return
    if len(domain.encode()) > 255:
        raise AddressError(address, "domain longer than 255 octets")
    labels = domain.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(address, f"invalid domain {domain!r}")


def _idna(domain: str) -> str:
    if domain.isascii():
        return domain.lower()
    try:
        return domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        # Not representable in IDNA 2003; the lower-cased Unicode form is
        # still a stable key.
        return domain.lower()


def normalise_address(address: str) -> str:
    """The suppression-list key for ``address`` (see module docstring)."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    local, _, domain = addr.rpartition("@")
    if not local:
        return addr.lower()
    return f"{local.lower()}@{_idna(domain.rstrip('.'))}"


def domain_of(address: str) -> str:
    """The normalised domain of ``address`` ("" when it has none)."""
    normal = normalise_address(address)
    return normal.rpartition("@")[2] if "@" in normal else ""
