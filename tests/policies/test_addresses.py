"""Address validation and the suppression-list normal form."""

from __future__ import annotations

import pytest

from policies.addresses import AddressError, domain_of, normalise_address, validate_address


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("bob@example.com", "bob@example.com"),
        ("Bob@Example.COM", "bob@example.com"),
        ("<Bob@Example.COM>", "bob@example.com"),
        ("bob@example.com.", "bob@example.com"),
        ("Bob@Exämple.COM", "bob@xn--exmple-cua.com"),
        ("ünï@exämple.org", "ünï@xn--exmple-cua.org"),
    ],
)
def test_normalise_address(raw, normal):
    """One key per mailbox: case folded, brackets and trailing dot dropped, IDNA domain."""
    assert normalise_address(raw) == normal


@pytest.mark.parametrize(
    "address",
    [
        "a@b.c",
        "first.last+tag@example.co.uk",
        '"with space"@example.com',
        "x@[192.0.2.1]",
        "ünï@exämple.org",
        '"a\\"b"@example.com',
        '"a\\\\b"@example.com',
        '"user@other.example"@example.com',
        "p" * 64 + "@" + ".".join(["d" * 60] * 3) + ".exampl",
    ],
)
def test_valid_addresses(address):
    """Dot-atoms, quoted local parts (escaping only '"' and '\\'), address literals, UTF-8
    (SMTPUTF8) and a path of exactly 256 octets are valid."""
    assert validate_address(f"<{address}>") == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("no-at-sign", "no @domain"),
        ("@example.com", "empty local part"),
        ("a b@example.com", "local part"),
        ("a..b@example.com", "local part"),
        ("a@-bad.com", "invalid domain"),
        ("a@bad..com", "invalid domain"),
        ("a@", "empty domain"),
        ("x" * 65 + "@example.com", "64 octets"),
        ("a\x00b@example.com", "control character"),
        ('"a\tb"@example.com', "control character"),
        ('"a\\\rb"@example.com', "control character"),
        ("a\x85b@example.com", "control character"),
        ("a\udcffb@example.com", "not valid UTF-8"),
        ('"a\\b"@example.com', "local part"),  # a needless escape: aiosmtplib drops it
        ("a@" + ".".join(["d" * 63] * 4) + ".example", "255 octets"),
        ("p" * 64 + "@" + ".".join(["d" * 60] * 3) + ".example", "256 octets"),
    ],
)
def test_malformed_addresses_say_why(address, why):
    """Each malformed address raises AddressError naming the broken part."""
    with pytest.raises(AddressError) as err:
        validate_address(address)
    assert why in err.value.why


def test_domain_of():
    """The domain comes out normalised; an address without one gives ''."""
    assert domain_of("A@Sub.Example.ORG") == "sub.example.org"
    assert domain_of("postmaster") == ""
