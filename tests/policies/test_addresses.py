"""Address validation and the suppression-list normal form (UTS 46 / IDNA 2008 domains)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.addresses import (
    MAX_DOMAIN_INPUT,
    AddressError,
    DomainError,
    ascii_domain,
    domain_of,
    domain_pattern,
    normalise_address,
    validate_address,
)
from tests.support.addresses import full_width

FINAL_SIGMA, SIGMA = "\u03c2", "\u03c3"


# Four labels of 18 CJK characters (54 octets of UTF-8, 58 as an A-label) and 20 letters.
CJK_LONG = ".".join(["".join(chr(0x4E00 + i * 997) for i in range(18))] * 4 + ["a" * 20])


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("bob@example.com", "bob@example.com"),
        ("Bob@Example.COM", "bob@example.com"),
        ("<Bob@Example.COM>", "bob@example.com"),
        ("bob@example.com.", "bob@example.com"),
        ("Bob@Exämple.COM", "bob@xn--exmple-cua.com"),
        ("ünï@exämple.org", "ünï@xn--exmple-cua.org"),
        ("ÜNÏ@Exämple.org", "ünï@xn--exmple-cua.org"),  # the local part is lower-cased only
        ("bob@straße.de", "bob@xn--strae-oqa.de"),
        ("bob@STRAẞE.DE", "bob@xn--strae-oqa.de"),  # capital sharp s folds to ß, not ss
        ("bob@xn--strae-oqa.de", "bob@xn--strae-oqa.de"),
        ("bob@XN--STRAE-OQA.DE.", "bob@xn--strae-oqa.de"),
        ("bob@strasse.de", "bob@strasse.de"),
        (f"x@{FINAL_SIGMA}.gr", "x@xn--3xa.gr"),  # final sigma kept
        ("x@\u03a3.gr", "x@xn--4xa.gr"),  # capital sigma folds to sigma: another name
        (f"x@{full_width('example.com')}", "x@example.com"),
        (f"x@{full_width('EXAMPLE')}\u3002{full_width('com.')}", "x@example.com"),
        ("x@例え。テスト", "x@xn--r8jz45g.xn--zckzah"),
        ("x@क्\u200cष.example", "x@xn--11b2ezcs70k.example"),  # ZWNJ after a virama
        ("x@r3---sn-abc.example", "x@r3---sn-abc.example"),  # an ASCII name taking mail
        ("x@[192.0.2.1]", "x@[192.0.2.1]"),
        ("X@[IPv6:2001:DB8::1]", "x@[ipv6:2001:db8::1]"),
    ],
)
def test_normalise_address(raw, normal):
    """One key per mailbox: local part lower-cased, brackets and the root's dot dropped, the
    domain in its UTS 46 non-transitional (IDNA 2008) ASCII form; address literals are no
    domain names and only lower-cased as before."""
    assert normalise_address(raw) == normal


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("bob@straße.de", "bob@strasse.de"),
        (f"x@{FINAL_SIGMA}.gr", f"x@{SIGMA}.gr"),
    ],
)
def test_idna_2003_mappings_are_not_applied(one, other):
    """IDNA 2003 (str.encode("idna")) maps these to one another: another domain, another
    MX, another key. IDNA 2008 keeps them apart."""
    assert normalise_address(one) != normalise_address(other)


def test_a_zwnj_idna_2003_would_drop_is_refused():
    """IDNA 2003 drops ZWNJ (a@a<ZWNJ>b.example would be a@ab.example); IDNA 2008 allows it
    only after a virama (CONTEXTJ) and refuses it here."""
    with pytest.raises(AddressError, match="U\\+200C"):
        normalise_address("x@a\u200cb.example")


@pytest.mark.parametrize(
    "spelling",
    ["bob@straße.de", "BOB@STRAẞE.DE", "bob@xn--strae-oqa.de", f"bob@{full_width('straße.de')}"],
)
def test_every_spelling_of_a_domain_has_one_key_both_ways(spelling):
    """U-label and A-label are one key, whichever is written and whichever is stored."""
    key = normalise_address(spelling)
    assert key == "bob@xn--strae-oqa.de"
    assert normalise_address(key) == key
    assert domain_of(spelling) == ascii_domain("straße.de") == "xn--strae-oqa.de"


# name -> (domain, what the error says)
REFUSED_DOMAINS = {
    "zwj-latin": ("a\u200db.example", "U+200D"),  # ZWJ outside the context IDNA 2008 allows
    "zwnj-no-virama": ("a\u200cb.example", "U+200C"),
    "bogus-a-label": ("xn--bogus.example", "not valid IDNA 2008"),
    "a-label-trailing-hyphen": ("xn--zca-.example", "not valid IDNA 2008"),
    "empty-a-label": ("xn--.example", "not valid IDNA 2008"),
    "emoji-a-label": ("xn--ls8h.example", "not valid IDNA 2008"),
    "emoji": ("\U0001f600.example", "not valid IDNA 2008"),
    "leading-hyphen": ("-bad.example", "starts or ends with a hyphen"),
    "trailing-hyphen": ("bad-.example", "starts or ends with a hyphen"),
    "leading-hyphen-u-label": ("-straße.example", "not valid IDNA 2008"),
    "empty-label": ("bad..example", "empty label"),
    "leading-dot": (".example", "empty label"),
    "two-trailing-dots": ("example..", "empty label"),
    "full-width-dot-only": (full_width("."), "empty label"),
    "empty": ("", "empty domain"),
    "underscore": ("exa_mple.com", "letters, digits and hyphens"),
    # U+FF3F maps to "_", which a host name cannot have
    "full-width-low-line": (full_width("exa_mple.com"), "letters, digits and hyphens"),
    "label-64": ("d" * 64 + ".example", "longer than 63 octets"),
    "a-label-over-63": ("ä" * 60 + ".example", "Label too long"),  # 60 characters, 66 ASCII
    "domain-255": (".".join(["d" * 63] * 4), "longer than 253 octets"),
    "u-label-domain-over-253": (CJK_LONG, "longer than 253 octets"),  # 96 chars, 256 ASCII
    "literal-bad-ipv4": ("[192.0.2.300]", "address literal"),
    "literal-leading-zero": ("[01.2.3.4]", "address literal"),
    "literal-ipv6-tag-ipv4": ("[IPv6:1.2.3.4]", "address literal"),
    "literal-ipv6-zone": ("[IPv6:fe80::1%eth0]", "address literal"),
    "literal-general": ("[x400:anything]", "address literal"),
    "absurd-length": ("a" * (MAX_DOMAIN_INPUT + 1), f"longer than {MAX_DOMAIN_INPUT} characters"),
}


@pytest.mark.parametrize(("domain", "why"), REFUSED_DOMAINS.values(), ids=REFUSED_DOMAINS.keys())
def test_domains_without_an_idna_2008_form_are_refused_saying_why(domain, why):
    """Each raises DomainError (an AddressError) naming what is wrong, in ASCII only: the
    text goes into SMTP replies."""
    with pytest.raises(DomainError) as err:
        ascii_domain(domain)
    assert why in err.value.why
    assert err.value.why.isascii()
    assert str(err.value).isascii()


def test_a_refused_domain_is_a_refused_address():
    """validate_address and normalise_address refuse what ascii_domain refuses; domain_of,
    which reads From headers, answers "" instead."""
    for address in ("bob@xn--bogus.example", "bob@a\u200db.example", "bob@-x.example"):
        with pytest.raises(AddressError) as err:
            validate_address(address)
        assert err.value.why.startswith("invalid domain: ")
        with pytest.raises(AddressError):
            normalise_address(address)
        assert domain_of(address) == ""


def test_a_domain_of_absurd_length_is_refused_in_bounded_time():
    """Normalising is linear and bounded: a megabyte of domain is refused at once."""
    for domain in ("ä" * 1_000_000, "a." * 500_000, "\u00ad" * 1_000_000 + "x.example"):
        started = time.process_time()
        with pytest.raises(AddressError):
            normalise_address("bob@" + domain)
        assert time.process_time() - started < 1.0  # CPU time: a busy machine is no failure


# Pieces of domains where IDNA 2003 and 2008 part ways, or where mapping and checks bite:
# sharp s, final sigma, joiners after a virama or not, full-width letters and dots, the
# ideographic full stop, soft hyphen (ignored), combining marks, right-to-left letters,
# hyphens, A-label prefixes and upper case.
_DOMAIN_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "-",
        ".",
        "xn--",
        "XN--",
        "ß",
        "ẞ",
        "\u03c2",
        "\u03a3",
        "\u200c",
        "\u200d",
        "\u094d",
        "\u0915",
        "\uff41",
        "\uff0e",
        "\u3002",
        "\u00ad",
        "\u0301",
        "\u05d0",
        "\u0627",
        "\u0661",
        "\u00e4",
        "zca",
        "strae-oqa",
        "_",
        "[",
        "]",
        "1.2",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_DOMAIN_PIECES, max_size=24).map("".join))
def test_the_ascii_form_is_ascii_and_its_own_ascii_form(domain):
    """Whatever the spelling: either a DomainError, or an ASCII name that maps to itself
    (the key of an A-label is the key of its U-label, both ways)."""
    try:
        name = ascii_domain(domain)
    except DomainError as exc:
        why = exc.why
    else:
        why = ""
        assert name.isascii()
        assert name == name.lower()
        assert ascii_domain(name) == name
    assert why.isascii()


@pytest.mark.parametrize(
    ("pattern", "ascii"),
    [
        ("*", "*"),
        ("*.Straße.DE", "*.xn--strae-oqa.de"),
        (" straße.de. ", "xn--strae-oqa.de"),
        ("xn--strae-oqa.de", "xn--strae-oqa.de"),
    ],
)
def test_domain_patterns_of_the_config_take_the_same_form(pattern, ascii):
    """Route and pool domains are compared with recipient domains in ASCII form."""
    assert domain_pattern(pattern) == ascii


@pytest.mark.parametrize(
    "address",
    [
        "a@b.c",
        "first.last+tag@example.co.uk",
        '"with space"@example.com',
        "x@[192.0.2.1]",
        "x@[IPv6:2001:db8::1]",
        "ünï@exämple.org",
        "bob@straße.de",
        f"bob@{full_width('straße.de')}",
        '"a\\"b"@example.com',
        '"a\\\\b"@example.com',
        '"user@other.example"@example.com',
        "p" * 64 + "@" + ".".join(["d" * 60] * 3) + ".exampl",
    ],
)
def test_valid_addresses(address):
    """Dot-atoms, quoted local parts (escaping only '"' and '\\'), address literals, UTF-8
    (SMTPUTF8) and a path of exactly 256 octets are valid; the address comes back as written
    (the wire form), only its key is normalised."""
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
        ("a@xn--bogus.com", "invalid domain"),
        ("a@[foo]", "invalid domain"),
        ("a@", "empty domain"),
        ("x" * 65 + "@example.com", "64 octets"),
        ("a\x00b@example.com", "control character"),
        ('"a\tb"@example.com', "control character"),
        ('"a\\\rb"@example.com', "control character"),
        ("a\x85b@example.com", "control character"),
        ("\ufeffbob@example.org", "invisible character"),  # a CSV's byte order mark
        ("a\u200bb@example.com", "invisible character"),
        ("a\u202eb@example.com", "invisible character"),
        ("a\udcffb@example.com", "not valid UTF-8"),
        ('"a\\b"@example.com', "local part"),  # a needless escape: aiosmtplib drops it
        ("a@" + CJK_LONG, "253 octets"),  # 240 octets of UTF-8, 256 as ASCII
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
