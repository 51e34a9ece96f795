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

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(r'"(?:[^"\\\r\n]|\\.)*"')
_LABEL = re.compile(r"(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)")
_ADDRESS_LITERAL = re.compile(r"\[[A-Za-z0-9:.\-]+\]")


class AddressError(ValueError):
    """The address is not a valid RFC 5321 mailbox; ``why`` says which part."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"malformed address {address!r}: {why}")
        self.address = address
        self.why = why


def validate_address(address: str) -> str:
    """Return ``address`` without angle brackets, or raise ``AddressError``."""
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
