"""Mail address checks and the one normal form of addresses and domains.

``normalise_address`` is the key of the suppression list and of profiles:
the local part is lower-cased (every mailbox provider we send to treats it
case-insensitively, and so do the suppression lists of the commercial
platforms operators migrate from; it is never IDNA-processed) and the domain
is put in its ASCII form by ``ascii_domain``, so ``Bob@Straße.DE`` and
``bob@xn--strae-oqa.de`` are one entry and ``bob@strasse.de`` is another.

``ascii_domain`` is the one normalisation of a domain: UTS 46 non-transitional
processing (IDNA 2008) with the STD3 (host name) rules. IDNA 2003, which is
what ``str.encode("idna")`` does, maps ``ß`` to ``ss`` and final sigma to sigma:
another domain, another MX and another suppression key. Every domain the
relay routes on, looks up or compares goes through it (``domain_pattern`` for
the ``*`` patterns of the config); an address literal (``[192.0.2.1]``,
``[IPv6:2001:db8::1]``) is checked as an IP address and never IDNA-processed.
"""

from __future__ import annotations

import ipaddress
import re

import idna

__all__ = [
    "MAX_DOMAIN_INPUT",
    "AddressError",
    "DomainError",
    "ascii_domain",
    "domain_of",
    "domain_pattern",
    "is_address_literal",
    "normalise_address",
    "search_form",
    "validate_address",
]

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
# A host name label after mapping (lower case). "--" in the 3rd and 4th place is allowed in
# a plain ASCII label: names like r3---sn-abc.example exist and took mail before IDNA 2008.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_ADDRESS_LITERAL = re.compile(r"\[[A-Za-z0-9:.\-]+\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters that show as nothing: a byte order mark (a CSV file's first line), zero-width
# space, direction marks and overrides, word joiner, invisible operators. An address holding
# one looks like another and never matches it, so a suppression entry made from it would
# suppress nobody. Zero-width (non-)joiners stay: scripts such as Persian spell words with
# them.
_INVISIBLE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
MAX_PATH_OCTETS = 256  # RFC 5321 §4.5.3.1.3, angle brackets included
MAX_DOMAIN_OCTETS = 253  # RFC 1035 §2.3.4, in the ASCII form, without the root's dot
MAX_LABEL_OCTETS = 63
# Input longer than this is refused before idna sees it, so the work per domain is bounded.
# No name comes near it: a domain is at most 253 octets once mapped, and what UTS 46 drops
# (soft hyphens, variation selectors) is not padding a real name needs.
MAX_DOMAIN_INPUT = 1000
_TOO_LONG = f"domain longer than {MAX_DOMAIN_OCTETS} octets in its ASCII form"
_NAMED = 80  # characters of a name an error message quotes


class AddressError(ValueError):
    """The address is not a valid RFC 5321 mailbox; ``why`` says which part."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"malformed address {address!r}: {why}")
        self.address = address
        self.why = why


class DomainError(AddressError):
    """The domain has no IDNA 2008 ASCII form; ``why`` (ASCII only) says what is wrong."""

    def __init__(self, domain: str, why: str) -> None:
        ValueError.__init__(self, f"malformed domain {_ascii_text(domain)}: {why}")
        self.address = domain
        self.why = why


# -- domains -----------------------------------------------------------------------------------


def ascii_domain(domain: str) -> str:
    """The ASCII form of ``domain``: its lower-case A-label spelling with no trailing dot
    (UTS 46 non-transitional mapping, IDNA 2008 validity); an address literal checked as
    an IP address and lower-cased. Raises ``DomainError`` saying what is wrong."""
    if len(domain) > MAX_DOMAIN_INPUT:
        raise DomainError(domain[:64] + "...", f"longer than {MAX_DOMAIN_INPUT} characters")
    if not domain:
        raise DomainError(domain, "empty domain")
    if domain.startswith("["):
        return _address_literal(domain)
    mapped = _uts46_map(domain)
    if mapped.endswith("."):
        mapped = mapped[:-1]  # the root's dot ("example.com.") is not part of the name
    # An A-label is never shorter than its U-label: the mapped form may be measured first.
    if len(mapped) > MAX_DOMAIN_OCTETS:
        raise DomainError(domain, _TOO_LONG)
    name = ".".join(_ascii_label(domain, label) for label in mapped.split("."))
    if len(name) > MAX_DOMAIN_OCTETS:
        raise DomainError(domain, _TOO_LONG)
    return name


def domain_pattern(pattern: str) -> str:
    """A route's domain pattern in ASCII form: ``*``, ``*.`` + a domain, or a domain."""
    text = pattern.strip()
    if text == "*":
        return text
    if text.startswith("*."):
        return "*." + ascii_domain(text[2:])
    return ascii_domain(text)


def _uts46_map(domain: str) -> str:
    if domain.isascii():
        return domain.lower()  # the only UTS 46 mapping of ASCII
    try:
        # Non-transitional (idna's default, and its only mode since 3.11): ß, final sigma,
        # ZWJ and ZWNJ are kept. Full-width letters and dots become ASCII, upper case is
        # folded. The STD3 (host name) rules are ours, per label after mapping, the same
        # whichever Unicode version the installed idna carries.
        return idna.uts46_remap(domain, std3_rules=False)
    except idna.IDNAError as exc:
        raise DomainError(domain, f"not a valid domain (UTS 46): {_brief(str(exc))}") from None


def _ascii_label(domain: str, label: str) -> str:
    if not label:
        raise DomainError(domain, "empty label (a leading dot or two dots in a row)")
    if len(label) > MAX_LABEL_OCTETS:
        # An A-label is never shorter than its U-label: too long either way, and idna
        # (and our messages, which name the label) see at most 63 characters.
        raise DomainError(domain, f"label longer than {MAX_LABEL_OCTETS} octets")
    if label.isascii() and not label.startswith("xn--"):
        return _ldh_label(domain, label)
    try:
        # A U-label is checked (NFC, hyphens, CONTEXTJ/CONTEXTO, bidi) and encoded; an
        # A-label is decoded, checked the same way and must be the canonical encoding.
        return idna.alabel(label).decode("ascii")
    except idna.IDNAError as exc:
        raise DomainError(
            domain,
            f"label {_ascii_text(label)} is not valid IDNA 2008: {_brief(str(exc))}",
        ) from None


def _ldh_label(domain: str, label: str) -> str:
    if label.startswith("-") or label.endswith("-"):
        raise DomainError(domain, f"label {label!r} starts or ends with a hyphen")
    if not _LDH_LABEL.fullmatch(label):
        raise DomainError(
            domain, f"label {label!r} has characters other than letters, digits and hyphens"
        )
    return label


def is_address_literal(domain: str) -> bool:
    """Whether ``domain`` is an address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]")."""
    return domain.startswith("[") and domain.endswith("]")


def _address_literal(domain: str) -> str:
    if not _ADDRESS_LITERAL.fullmatch(domain):
        raise DomainError(domain, "malformed address literal (use [192.0.2.1] or [IPv6:...])")
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise DomainError(
            domain, "address literal is not an IPv4 address or IPv6:<an IPv6 address>"
        ) from None
    return domain.lower()


def _ascii_text(text: str) -> str:
    """``text`` quoted with non-ASCII escaped: replies and logs stay ASCII and readable."""
    return ascii(text if len(text) <= _NAMED else text[:_NAMED] + "...")


def _brief(message: str) -> str:
    """idna's message, ASCII and short enough for one SMTP reply line (it quotes the input)."""
    text = message.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _NAMED * 2 else text[: _NAMED * 2] + "..."


# -- addresses ---------------------------------------------------------------------------------


def validate_address(address: str) -> str:
    """Return ``address`` without angle brackets, or raise ``AddressError``."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        raise AddressError(address, "not valid UTF-8") from None
    if _CONTROL.search(address):
        raise AddressError(address, "control character (NUL, CR, LF, TAB, ...)")
    if _INVISIBLE.search(address):
        raise AddressError(address, "invisible character (byte order mark, zero-width space, ...)")
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
    if not domain:
        raise AddressError(address, "empty domain")
    # Before the domain: the work on it (and the reply naming it) is bounded by the path.
    if len(addr.encode()) + 2 > MAX_PATH_OCTETS:
        raise AddressError(address, f"longer than {MAX_PATH_OCTETS} octets as <path>")
    try:
        ascii_domain(domain)
    except DomainError as exc:
        raise AddressError(address, f"invalid domain: {exc.why}") from None
    return addr


def normalise_address(address: str) -> str:
    """The suppression-list key for ``address`` (see module docstring); raises
    ``AddressError`` when its domain has no ASCII form (``validate_address`` first)."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    local, _, domain = addr.rpartition("@")
    if not local:
        return addr.lower()
    try:
        return f"{local.lower()}@{ascii_domain(domain)}"
    except DomainError as exc:
        raise AddressError(address, f"invalid domain: {exc.why}") from None


def domain_of(address: str) -> str:
    """The normalised domain of ``address``; "" when it has none or it is not a domain (a
    From header may carry anything: it names no domain then, it does not fail the mail)."""
    try:
        normal = normalise_address(address)
    except AddressError:
        return ""
    return normal.rpartition("@")[2] if "@" in normal else ""


def search_form(text: str) -> str:
    """What to look for in suppression keys when an operator searches for ``text``: keys
    hold A-labels, so a U-label in the search (``straße``, ``bob@straße.de``) is turned into
    its A-label form; text with no IDNA 2008 form is searched as written, lower-cased."""
    lowered = text.strip().lower()
    if lowered.isascii():
        return lowered
    local, at, domain = lowered.rpartition("@")
    try:
        return f"{local}@{ascii_domain(domain)}" if at else ascii_domain(lowered)
    except AddressError:
        return lowered
