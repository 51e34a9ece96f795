"""Reply classification: every upstream reply becomes a ``Verdict``.

This module is our ``smtp_trouble.c``: the whole bounce policy in one place.
The longer tables it reads have modules of their own: the wordings of replies
(``policies.reply_wordings``), the codes vendors publish
(``policies.vendor_codes``), and ``Kind`` and ``Category`` themselves
(``policies.categories``, re-exported here).
``classify(reply, recipient_domain, rules=..., suppress_on=...)`` first finds
the *category* (what the reply is about), then reads the table below for the
*kind* (delivered / soft / hard) and whether the recipient is *suppressed*.

Kind and suppression
====================

======================  ===============================  =========  ==========  ========
reply                   category                         kind       suppress    suppress
                                                                    recipient   any_5xx
======================  ===============================  =========  ==========  ========
2xx                     delivered                        delivered  no          no
4xx                     any                              soft       no          no
5xx                     mailbox_full, message_too_large,
                        rate_limited, greylisted,        soft       no          --
                        too_many_recipients              hard (any_5xx)         yes
5xx                     user_unknown, mailbox_disabled,
                        domain_not_found, with proof     hard       yes         yes
                        (see "Evidence")
5xx                     any other                        hard       no          yes
no code (an MTA's own   mailbox_full, message_too_large,
words, e.g. "Host or    rate_limited, greylisted,
domain name not found") too_many_recipients, or words
                        that say it is tried again
                        ("try again", "temporary
                        failure", "deferred", "timed
                        out"), or nothing at all         soft       no          no
no code                 a recipient category with proof  hard       yes         yes
no code                 anything else                    hard       no          no
1xx / 3xx (nonsense     any                              soft       no          no
as a final reply)
synthetic, 5xx X.1.2    domain_not_found                 hard       yes         yes
or X.1.10 (NXDOMAIN,
null MX, RFC 7505)
synthetic, 5xx X.6.x    content_rejected                 hard       no          no
(no SMTPUTF8 / 8BITMIME
downgrade possible)
synthetic, TLS failure  tls_required                     soft       no          no
synthetic, anything     connection_failed                soft       no          no
else
operator rule matched   the rule's kind / category / suppress, see below
======================  ===============================  =========  ==========  ========

A reply without a code is an MTA's summary of a failure in a bounce or log
("all relevant MX records point to non-existent hosts", "Giving up on ..."):
its final word, so hard unless its words or its condition say it passes. A
qmail-style trailing status ("... (#4.4.1)") stands in for the missing code.

The soft 5xx row is the product rule: a full mailbox, a message that is too
big, rate limiting, greylisting and "too many recipients" say nothing against
the address, so they are resent (RFC 5321 §4.5.3.1.10 even asks that a 552
"too many recipients" be treated as temporary). ``any_5xx`` is the literal
rule an operator may choose instead: every 5xx from a server is hard and
suppresses, whatever its category (synthetic replies are still ours, not the
server's, and keep their row).

A synthetic reply is the relay's own failure (refused, timeout, TLS, DNS
SERVFAIL): it is about our path, never about the recipient, so it is soft and
never suppresses, whatever ``suppress_on`` says. The exception is a definite
"this domain takes no mail" that the caller builds as
``synthetic_reply(556, "5.1.10", ...)`` (null MX) or ``(550, "5.1.2", ...)``
(NXDOMAIN): hard ``domain_not_found``, which suppresses like the same answer
from a server would. A synthetic TLS failure gets ``tls_required`` rather
than ``connection_failed`` so that an operator can match it in a retry rule
and see it apart in the report: the fix is the route's ``tls`` setting.

Category
========

The reply's words are the best witness; the enhanced code is often wrong
(5.1.1 for a full mailbox, 5.4.1 or 5.7.1 for an unknown user) and so is the
basic code (450 for a disabled mailbox, 550 for a rate limit). So:

1. codes whose meaning is published and more precise than the words around
   them: RFC 3463 X.1.7, the *sender's* address syntax, and the vendors'
   codes of ``policies.vendor_codes`` (Microsoft's X.7.5xx-7xx, Spectrum's
   and Cox's ``AUP#``, AOL's blocks, NetEase's return fields);
2. the words: the first matching pattern of ``policies.reply_wordings``,
   whose docstring gives the order (most specific first, a stated cause
   before the pace it led to); the whole multi-line reply is read, up to its
   first 4 KB (more than any real reply; a hostile one costs no more);
3. the enhanced code (RFC 3463 subject.detail and the later codes of the
   IANA registry: X.1.10 null MX, X.7.13 disabled, X.7.2x authentication...);
4. the basic code (421/451/452 service trouble, 552 storage, 556 no mail);
5. ``other``.

Evidence
========

A recipient category (user_unknown, mailbox_disabled, domain_not_found)
suppresses only with *proof*: positive evidence that the recipient's mailbox
or domain does not exist or is disabled. The category still says what the
reply is about; the proof says whether it condemns the address.

* Words that say so ("user unknown", "no such user", "domain does not exist",
  "account disabled", "couldn't find any host named") are proof.
* Words that name the recipient but not the cause ("mailbox unavailable",
  "invalid address") are proof only with RFC 5321's mailbox-refusal codes 550
  and 553, or with an enhanced X.1.1 / X.1.3 that names the destination
  mailbox, and no enhanced code that says something else (RFC 5321's 450
  "mailbox unavailable" is a busy mailbox).
* Hedges and guesses are never proof: a bare "Recipient address rejected",
  "Access denied", "unrouteable address", an address-syntax complaint, "no
  valid recipients", a suspension said to be temporary, cPanel's "the
  account or domain may not exist", and DNS statements of someone else's
  resolver ("all relevant MX records point to non-existent hosts", a bare
  "unknown host" with neither a code nor an address, Exchange's
  ``SMTPSEND.DNS.*``).
* A code alone is proof when it says the address is gone by definition:
  enhanced X.1.1, X.1.2, X.1.3, X.1.6, X.1.10, X.2.1, X.7.13, basic 556.
* A vendor's documented refusal of a recipient its directory does not hold
  is proof when the reply carries the vendor's own mark
  (``policies.vendor_codes.directory_mark``): Exchange Online's
  Directory-Based Edge Blocking "5.4.1 Recipient address rejected: Access
  denied" with the stamp of an Exchange Online front end
  (``[... .prod.outlook.com ...]``: the same words from a gateway or a copy
  without the stamp stay a hedge), and Cisco IronPort's LDAP accept query
  refusal, "550 #5.1.0 Address rejected" in its own ``#`` notation.

Whatever the words, these veto the proof: a syntax or sequence code 500-504
(RFC 5321 §4.2.1: about the command, not the mailbox; read as ``other``)
unless the enhanced code names the destination address; an enhanced code
about the sender's address (X.1.7, X.1.8, X.7.27); any sign that the fault
lies elsewhere in the same reply (spam, block lists, reputation, policy,
authentication, quota, "denied", "refused", "temporary"); "message expired"
(the upstream gave up; the cause is lost) and an address verification still
in progress.

Operator rules
==============

``[[classify.rules]]`` become ``ClassifyRule`` values. The first rule whose
criteria all hold (codes, enhanced prefixes, recipient domains, text regex;
an empty criterion matches anything) overrides what it sets, and wins over
everything above, ``suppress_on`` included. A rule that sets ``kind`` but not
``suppress`` gets the suppression of the table for its new kind and category
(a category the rule sets counts as proof: it is the operator's evidence), so
a rule making a reply soft never suppresses. Rules are not applied to 2xx
replies: a delivery is a delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies.addresses import AddressError, ascii_domain
from policies.categories import RECIPIENT_CATEGORIES, SOFT_CATEGORIES, Category, Kind
from policies.reply_wordings import Proof, first_match
from policies.smtp_reply import Reply, enhanced_matches, is_enhanced_pattern
from policies.vendor_codes import (
    DirectoryMark,
    directory_mark,
    vendor_category,
    without_dbeb_wording,
)

__all__ = [
    "RECIPIENT_CATEGORIES",
    "SOFT_CATEGORIES",
    "Category",
    "ClassifyRule",
    "Criteria",
    "Kind",
    "SuppressOn",
    "Verdict",
    "category_of",
    "check_criteria",
    "classify",
]


class SuppressOn(StrEnum):
    RECIPIENT = "recipient"
    ANY_5XX = "any_5xx"


@dataclass(frozen=True)
class Verdict:
    """What to do with one recipient after one reply; ``rule`` names the
    operator rule that decided it, ``None`` when the table did."""

    kind: Kind
    category: Category
    suppress: bool
    rule: str | None = None


@dataclass(frozen=True)
class ClassifyRule:
    """An operator override (``[[classify.rules]]``); build it with ``build``."""

    name: str
    codes: frozenset[int] = frozenset()
    enhanced: tuple[str, ...] = ()
    domains: frozenset[str] = frozenset()
    text: re.Pattern[str] | None = None
    kind: Kind | None = None
    category: Category | None = None
    suppress: bool | None = None

    @classmethod
    def build(
        cls,
        name: str,
        *,
        codes: Iterable[int] = (),
        enhanced: Iterable[str] = (),
        domains: Iterable[str] = (),
        text: str | None = None,
        kind: str | None = None,
        category: str | None = None,
        suppress: bool | None = None,
    ) -> ClassifyRule:
        """Validate config values into a rule; ``ValueError`` names the rule."""
        if not name:
            raise ValueError("classify rule without a name")
        if kind is None and category is None and suppress is None:
            raise ValueError(f"classify rule {name!r}: sets none of kind, category, suppress")
        if suppress is not None and not isinstance(suppress, bool):
            raise ValueError(f"classify rule {name!r}: suppress must be true or false")
        owner = f"classify rule {name!r}"
        criteria = check_criteria(owner, codes=codes, enhanced=enhanced, domains=domains, text=text)
        return cls(
            name=name,
            codes=criteria.codes,
            enhanced=criteria.enhanced,
            domains=criteria.domains,
            text=criteria.text,
            kind=_check_kind(name, kind),
            category=_check_category(name, category),
            suppress=suppress,
        )

    def matches(self, reply: Reply, recipient_domain: str) -> bool:
        """Whether every criterion the rule gives holds for this reply."""
        criteria = Criteria(self.codes, self.enhanced, self.domains, self.text)
        return criteria.hold(reply, recipient_domain)


@dataclass(frozen=True)
class Criteria:
    """The reply criteria shared by classify and retry rules; each one that
    is given must hold, and an empty one matches anything."""

    codes: frozenset[int] = frozenset()
    enhanced: tuple[str, ...] = ()
    domains: frozenset[str] = frozenset()
    text: re.Pattern[str] | None = None

    def hold(self, reply: Reply, recipient_domain: str) -> bool:
        """Whether the reply (to a recipient at ``recipient_domain``) fits."""
        if self.codes and reply.code not in self.codes:
            return False
        if not enhanced_matches(self.enhanced, reply.enhanced):
            return False
        if self.domains and recipient_domain.lower().rstrip(".") not in self.domains:
            return False
        return self.text is None or self.text.search(reply.text) is not None


def check_criteria(
    owner: str,
    *,
    codes: Iterable[int] = (),
    enhanced: Iterable[str] = (),
    domains: Iterable[str] = (),
    text: str | None = None,
) -> Criteria:
    """Validate rule criteria from config; ``ValueError`` starts with
    ``owner`` ("classify rule 'x'"). Domains take the form of every key (IDNA 2008
    A-labels, ``policies.addresses``); ``text`` is
    compiled case-insensitively because servers capitalise at random."""
    return Criteria(
        codes=_check_codes(owner, codes),
        enhanced=_check_enhanced(owner, enhanced),
        domains=_check_domains(owner, domains),
        text=_compile(owner, text),
    )


def classify(
    reply: Reply,
    recipient_domain: str = "",
    *,
    rules: Sequence[ClassifyRule] = (),
    suppress_on: SuppressOn = SuppressOn.RECIPIENT,
) -> Verdict:
    """The verdict for ``reply`` to a recipient at ``recipient_domain``."""
    if reply.reply_class == 2 and not reply.synthetic:
        return Verdict(Kind.DELIVERED, Category.DELIVERED, suppress=False)
    kind, reading = _base(reply)
    if suppress_on is SuppressOn.ANY_5XX and reply.reply_class == 5 and not reply.synthetic:
        # The literal rule the operator chose: every 5xx is hard, whatever it says.
        kind = Kind.HARD
    for rule in rules:
        if rule.matches(reply, recipient_domain):
            return _apply(rule, reply, kind, reading, suppress_on)
    return Verdict(kind, reading.category, _suppress(reply, kind, reading, suppress_on))


def category_of(reply: Reply) -> Category:
    """The category the table gives ``reply`` (no operator rules): vendor codes,
    then the words, then the enhanced code, then the basic code."""
    return _read(reply, _words(reply)).category


@dataclass(frozen=True)
class _Reading:
    """What a reply says: its category, and whether it is positive evidence
    that the recipient's mailbox or domain is gone (``proof``). Only a
    recipient category with proof suppresses (see "Evidence" above)."""

    category: Category
    proof: bool = False


def _base(reply: Reply) -> tuple[Kind, _Reading]:
    if reply.synthetic:
        return _synthetic(reply)
    words = _words(reply)
    reading = _read(reply, words)
    return _kind(reply, reading.category, words), reading


def _kind(reply: Reply, category: Category, words: str) -> Kind:
    reply_class = _reply_class(reply, words)
    if reply_class == 5:
        return Kind.SOFT if category in SOFT_CATEGORIES else Kind.HARD
    if reply_class == 0:
        # An MTA's own words without a code (a bounce's summary line): its
        # final word, unless the condition passes with time or the words say
        # it is to be tried again (Postfix "Host not found, try again"). An
        # empty reply says nothing at all.
        if not words or category in SOFT_CATEGORIES or _TEMPORARY.search(words):
            return Kind.SOFT
        return Kind.HARD
    return Kind.SOFT


def _synthetic(reply: Reply) -> tuple[Kind, _Reading]:
    detail = _subject_detail(reply.enhanced)
    if reply.reply_class == 5 and detail in {"1.2", "1.10"}:
        return Kind.HARD, _Reading(Category.DOMAIN_NOT_FOUND, proof=True)
    if reply.reply_class == 5 and detail is not None and detail.startswith("6."):
        # The next hop cannot carry this message as it is (RFC 6531 §3.5 / RFC 6152: no
        # SMTPUTF8 for a UTF-8 local part, no 8BITMIME for an 8-bit body): resending won't help.
        return Kind.HARD, _Reading(Category.CONTENT_REJECTED)
    if detail in _TLS_DETAILS or _TLS_FAILURE.search(reply.text):
        return Kind.SOFT, _Reading(Category.TLS_REQUIRED)
    return Kind.SOFT, _Reading(Category.CONNECTION_FAILED)


def _suppress(reply: Reply, kind: Kind, reading: _Reading, suppress_on: SuppressOn) -> bool:
    if kind is not Kind.HARD:
        return False
    recipient_gone = reading.category in RECIPIENT_CATEGORIES and reading.proof
    if reply.synthetic:
        # Our own failure never condemns an address; only a definite
        # "no such domain" does (see the table).
        return recipient_gone
    return suppress_on is SuppressOn.ANY_5XX or recipient_gone


def _apply(
    rule: ClassifyRule, reply: Reply, kind: Kind, reading: _Reading, suppress_on: SuppressOn
) -> Verdict:
    kind = rule.kind or kind
    if rule.category is not None:
        # The operator's category is the operator's evidence.
        reading = _Reading(rule.category, proof=True)
    suppress = rule.suppress
    if suppress is None:
        suppress = _suppress(reply, kind, reading, suppress_on)
    return Verdict(kind, reading.category, suppress, rule=rule.name)


# --- category: vendor codes, text, enhanced code, basic code -----------------

# Real replies are a few lines of at most 512 octets (RFC 5321 §4.5.3.1.5); a
# hostile one may be megabytes. Only the first part is read, so classifying
# costs the same for any size.
_READ_LIMIT = 4096


def _words(reply: Reply) -> str:
    """The reply's words (``Reply.message``) from its first ``_READ_LIMIT``
    characters, typographic apostrophes as ASCII ("doesn\u2019t" as "doesn't")."""
    head = Reply(reply.code, reply.enhanced, reply.text[:_READ_LIMIT])
    return head.message.replace("\u2019", "'")


def _read(reply: Reply, words: str) -> _Reading:
    status = _status(reply, words)
    if _directory_refusal(reply, status, words):
        return _Reading(Category.USER_UNKNOWN, proof=True)
    published = _sender_address_category(status) or vendor_category(reply.code, status, words)
    if published is not None:
        return _Reading(published)
    category, proof = _category_and_proof(reply, status, words)
    if category not in RECIPIENT_CATEGORIES:
        return _Reading(category)
    detail = _subject_detail(status)
    if 500 <= reply.code <= 504 and detail not in _DESTINATION_ADDRESS_DETAILS:
        # RFC 5321 §4.2.1/§4.2.3: a syntax or command-sequence error, whatever its
        # words (Mimecast documents "503 user unknown" as a bad sequence), says
        # nothing about a mailbox unless the enhanced code names the destination.
        return _Reading(Category.OTHER)
    if detail in _SENDER_ADDRESS_DETAILS or _NO_VERDICT.search(words):
        # A code about the sender's address; an expiry, a probe in progress or
        # the sending server's own DNS: no verdict on the recipient.
        return _Reading(category)
    return _Reading(category, proof and not _OTHER_FAULT.search(words))


def _directory_refusal(reply: Reply, status: str | None, words: str) -> bool:
    """A vendor's documented refusal of a recipient its directory does not hold, carrying
    the vendor's own mark (see "Evidence")."""
    mark = directory_mark(reply.code, status, words, reply.text[:_READ_LIMIT])
    if mark is DirectoryMark.EXCHANGE_ONLINE:
        # "denied" is DBEB's own word; any other sign of another fault still vetoes.
        return _OTHER_FAULT.search(without_dbeb_wording(words)) is None
    return mark is DirectoryMark.IRONPORT


def _sender_address_category(enhanced: str | None) -> Category | None:
    """RFC 3463 X.1.7 is the syntax of the *sender's* address: whatever the
    words call it ("Invalid address"), the recipient is not in question."""
    return Category.OTHER if _subject_detail(enhanced) == "1.7" else None


def _category_and_proof(reply: Reply, status: str | None, words: str) -> tuple[Category, bool]:
    """The first of: the words, the enhanced code, the basic code; with whether
    that reading alone would prove a recipient category."""
    reply_class = _reply_class(reply, words)
    pattern = first_match(reply_class, words)
    if pattern is not None:
        return pattern.category, _words_prove(pattern.proof, reply.code, status)
    by_enhanced = _enhanced_category(status)
    if by_enhanced is not None:
        proves = _subject_detail(status) in _PROVING_DETAILS
        return by_enhanced, proves
    by_code = _BY_CODE.get(reply.code, Category.OTHER)
    return by_code, reply.code in _PROVING_CODES


def _status(reply: Reply, words: str) -> str | None:
    """The enhanced code: the parsed one, else for a reply without a code the
    status a qmail-style summary ends with ("... (#5.1.2)")."""
    if reply.enhanced is not None or reply.code:
        return reply.enhanced
    match = _TRAILING_STATUS.search(words)
    return match.group(1) if match else None


def _reply_class(reply: Reply, words: str) -> int:
    if reply.reply_class:
        return reply.reply_class
    status = _status(reply, words)
    return int(status[0]) if status else 0


_TRAILING_STATUS = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})\)\W*$")


def _words_prove(proof: Proof, code: int, status: str | None) -> bool:
    if proof is Proof.WORDS:
        return True
    if proof is Proof.NONE:
        return False
    detail = _subject_detail(status)
    if detail in _DESTINATION_MAILBOX_DETAILS:
        return True  # the enhanced code says which address, and that it is bad
    # X.n.0 is "other" within its subject, used for anything: it says nothing
    # else. Any other detail outside the address subject contradicts the words.
    agrees = detail is None or detail.endswith(".0") or detail.startswith("1.") or detail == "2.1"
    return code in _MAILBOX_REFUSAL_CODES and agrees


_MAILBOX_REFUSAL_CODES = frozenset({550, 553})
# RFC 3463 X.1.7 / X.1.8 and RFC 7505 X.7.27: the sender's address or domain.
_SENDER_ADDRESS_DETAILS = frozenset({"1.7", "1.8", "7.27"})
_DESTINATION_ADDRESS_DETAILS = frozenset({"1.1", "1.2", "1.3", "1.10"})
_DESTINATION_MAILBOX_DETAILS = frozenset({"1.1", "1.3"})
# Enhanced codes that say by themselves the address is gone (RFC 3463 X.1.1 bad
# destination mailbox, X.1.2 bad destination system, X.1.3 bad destination
# syntax, X.1.6 moved without forwarding, X.2.1 disabled; RFC 7505 X.1.10 null
# MX; the IANA registry's X.7.13 user account disabled) and basic codes (RFC
# 7504 556: the domain does not accept mail).
_PROVING_DETAILS = frozenset({"1.1", "1.2", "1.3", "1.6", "1.10", "2.1", "7.13"})
_PROVING_CODES = frozenset({556})
# Any sign that the fault lies elsewhere (content, reputation, policy,
# authentication, quota, a refusal, our own HELO, domain or address) vetoes
# the proof, whatever the code: "your domain does not exist" is not about the
# recipient.
_OTHER_FAULT = re.compile(
    r"spam|black ?list|block ?list|blocked (?:using|by|for)|reputation|polic(?:y|ies)|authenticat"
    r"|dmarc|\bspf\b|dkim|quota|rate limit|not (?:allowed|permitted)|prohibit|virus|malware"
    r"|\brbl\b|dnsbl|denied|refused|restrict|temporar|\b(?:helo|ehlo)\b"
    r"|\bsender(?:'s)? (?:domain|address)|\byour (?:e-?mail )?(?:domain|address|account)\b",
    re.IGNORECASE,
)
# The upstream gave up, is still checking, or its own DNS spoke (Exchange's
# SMTPSEND.DNS.*: the sending server's resolver): no verdict on the address.
_NO_VERDICT = re.compile(
    r"message expired|queue\.expired|verification (?:is )?(?:in progress|pending)"
    r"|smtpsend\.dns\.",
    re.IGNORECASE,
)


# Words of a summary without a code that say it is to be tried again. Not
# "temporarily suspended" (a state, said to pass or not) nor the giving-up
# "retry timeout exceeded" / "not going to try again".
_TEMPORARY = re.compile(
    r"(?<!not going to )try again|temporar(?:y|ily) (?:\w+ )?(?:failure|error|problem|unavailable)"
    r"|failed temporarily|(?<!retry )time(?:d ?out|out)|servfail|deferred|lost connection"
    r"|still undelivered|unable to contact|lookup failed(?! permanently)",
    re.IGNORECASE,
)

_TLS_DETAILS = frozenset({"7.10", "7.11", "7.30"})
_TLS_FAILURE = re.compile(r"\b(?:start)?tls\b|\bssl\b|certificate|handshake", re.IGNORECASE)

# Enhanced subject.detail -> category: RFC 3463, the later IANA registrations
# and Microsoft's published details (2.121/2.122 hourly limits, 4.310 no such
# DNS domain). X.n.0 ("other ... status") is deliberately absent: servers use
# it for anything, so the basic code decides.
_BY_ENHANCED: dict[str, Category] = {
    "1.1": Category.USER_UNKNOWN,
    "1.2": Category.DOMAIN_NOT_FOUND,
    "1.3": Category.USER_UNKNOWN,
    "1.6": Category.USER_UNKNOWN,
    "1.8": Category.POLICY_AUTH,
    "1.10": Category.DOMAIN_NOT_FOUND,
    "2.1": Category.MAILBOX_DISABLED,
    "2.2": Category.MAILBOX_FULL,
    "2.3": Category.MESSAGE_TOO_LARGE,
    "2.121": Category.RATE_LIMITED,
    "2.122": Category.RATE_LIMITED,
    "3.4": Category.MESSAGE_TOO_LARGE,
    # X.4.4 "unable to route": the category is a domain's, but it proves
    # nothing (see _PROVING_DETAILS): routing data may just be missing.
    "4.4": Category.DOMAIN_NOT_FOUND,
    "4.6": Category.OTHER,
    "4.7": Category.OTHER,
    "4.310": Category.DOMAIN_NOT_FOUND,
    "5.3": Category.TOO_MANY_RECIPIENTS,
    "7.7": Category.CONTENT_REJECTED,
    "7.10": Category.TLS_REQUIRED,
    "7.11": Category.TLS_REQUIRED,
    "7.13": Category.MAILBOX_DISABLED,
    "7.25": Category.SPAM_BLOCK_IP,  # reverse DNS of the sending host failed
    "7.28": Category.RATE_LIMITED,
    "7.30": Category.TLS_REQUIRED,
}
_BY_SUBJECT: dict[str, Category] = {
    "3": Category.SERVICE_UNAVAILABLE,
    "4": Category.SERVICE_UNAVAILABLE,
    "5": Category.OTHER,
    "6": Category.CONTENT_REJECTED,
    "7": Category.POLICY_AUTH,
}
_BY_CODE: dict[int, Category] = {
    421: Category.SERVICE_UNAVAILABLE,
    451: Category.SERVICE_UNAVAILABLE,
    452: Category.SERVICE_UNAVAILABLE,
    530: Category.POLICY_AUTH,
    535: Category.POLICY_AUTH,
    552: Category.MAILBOX_FULL,  # RFC 5321: "exceeded storage allocation"
    556: Category.DOMAIN_NOT_FOUND,  # RFC 7504: domain does not accept mail
}


def _subject_detail(enhanced: str | None) -> str | None:
    return enhanced.split(".", 1)[1] if enhanced else None


def _enhanced_category(enhanced: str | None) -> Category | None:
    detail = _subject_detail(enhanced)
    if enhanced is None or detail is None:
        return None
    subject, _, number = detail.partition(".")
    if detail in _BY_ENHANCED:
        return _BY_ENHANCED[detail]
    if number == "0":
        return None
    if subject == "3" and enhanced[0] == "5":
        # A permanent "mail system" status (X.3.x) is a configuration problem
        # of one side or the other, not service trouble that passes.
        return Category.OTHER
    return _BY_SUBJECT.get(subject)


# --- rule validation --------------------------------------------------------


def _check_domains(owner: str, domains: Iterable[str]) -> frozenset[str]:
    try:
        return frozenset(ascii_domain(d) for d in domains)
    except AddressError as exc:
        raise ValueError(f"{owner}: domain {exc.address!r}: {exc.why}") from None


def _check_codes(owner: str, codes: Iterable[int]) -> frozenset[int]:
    out = frozenset(codes)
    for code in out:
        if isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599:
            raise ValueError(f"{owner}: code {code!r} is not 200-599")
    return out


def _check_enhanced(owner: str, patterns: Iterable[str]) -> tuple[str, ...]:
    out = tuple(patterns)
    for pattern in out:
        if not isinstance(pattern, str) or not is_enhanced_pattern(pattern):
            raise ValueError(f"{owner}: enhanced {pattern!r} is not like '5.7.' or '5.1.1'")
    return out


def _compile(owner: str, text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{owner}: text regex {text!r} does not compile: {exc}") from exc


def _check_kind(name: str, kind: str | None) -> Kind | None:
    if kind is None:
        return None
    allowed = (Kind.SOFT, Kind.HARD)
    if kind not in allowed:
        raise ValueError(f"classify rule {name!r}: kind {kind!r} is not one of soft, hard")
    return Kind(kind)


def _check_category(name: str, category: str | None) -> Category | None:
    if category is None:
        return None
    allowed = [c.value for c in Category if c is not Category.DELIVERED]
    if category not in allowed:
        raise ValueError(
            f"classify rule {name!r}: category {category!r} is not one of {', '.join(allowed)}"
        )
    return Category(category)
