"""Reply classification: every upstream reply becomes a ``Verdict``.

This module is our ``smtp_trouble.c``: the whole bounce policy in one place.
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
   them: Microsoft's 4.7.5xx-6xx (throttling, even when worded "Server busy"),
   5.7.5xx/7xx ("Access denied, ..." for a banned IP, DMARC, a banned
   tenant) and 5.7.606-649 (banned IP); Spectrum's ``AUP#I-1310``, Cox's
   ``AUP#CXBL``, AOL's ``RTR:``/``RLY:`` blocks, NetEase's return fields
   ("421 HL:ICC"); and RFC 3463 X.1.7, the *sender's* address syntax;
2. text patterns, in the order of ``_TEXT_PATTERNS`` (most specific first:
   a quota or greylisting message often starts "Recipient address rejected:",
   a rate limit often says "blocked"); the whole multi-line reply is read,
   up to its first 4 KB (more than any real reply; a hostile one costs no
   more);
3. the enhanced code (RFC 3463 subject.detail and the later codes of the
   IANA registry: X.1.10 null MX, X.7.13 disabled, X.7.2x authentication...);
4. the basic code (421/451/452 service trouble, 552 storage, 556 no mail);
5. ``other``.

A stated cause beats the pace it led to: "rate limited because SPF did not
pass" is authentication, "rate limited due to the very low reputation of the
sending IP" is the IP. After a generic prefix ("Recipient address rejected:")
the words that follow decide: "Mailer error", "No relaying", "On hold",
"Access denied" say nothing about the mailbox.

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
  is proof when the reply carries the vendor's own mark: Exchange Online's
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
from enum import Enum, StrEnum

from policies.addresses import AddressError, ascii_domain
from policies.smtp_reply import Reply, enhanced_matches, is_enhanced_pattern

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


class Kind(StrEnum):
    DELIVERED = "delivered"
    SOFT = "soft"
    HARD = "hard"


class Category(StrEnum):
    USER_UNKNOWN = "user_unknown"
    MAILBOX_DISABLED = "mailbox_disabled"
    DOMAIN_NOT_FOUND = "domain_not_found"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_LARGE = "message_too_large"
    CONTENT_REJECTED = "content_rejected"
    SPAM_BLOCK_IP = "spam_block_ip"
    POLICY_AUTH = "policy_auth"
    RATE_LIMITED = "rate_limited"
    GREYLISTED = "greylisted"
    SERVICE_UNAVAILABLE = "service_unavailable"
    RELAY_DENIED = "relay_denied"
    TLS_REQUIRED = "tls_required"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    CONNECTION_FAILED = "connection_failed"
    COMPLAINT = "complaint"  # a recipient's feedback report (ARF), not a reply
    DELIVERED = "delivered"
    OTHER = "other"


class SuppressOn(StrEnum):
    RECIPIENT = "recipient"
    ANY_5XX = "any_5xx"


# The only causes that speak against the address itself.
RECIPIENT_CATEGORIES = frozenset(
    {Category.USER_UNKNOWN, Category.MAILBOX_DISABLED, Category.DOMAIN_NOT_FOUND}
)
# Conditions that are soft even when sent as 5xx (see the table).
SOFT_CATEGORIES = frozenset(
    {
        Category.MAILBOX_FULL,
        Category.MESSAGE_TOO_LARGE,
        Category.RATE_LIMITED,
        Category.GREYLISTED,
        Category.TOO_MANY_RECIPIENTS,
    }
)


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
    vendor = _vendor_category(reply.code, status, words)
    if vendor is not None:
        return _Reading(vendor)
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


def _category_and_proof(reply: Reply, status: str | None, words: str) -> tuple[Category, bool]:
    """The first of: the words, the enhanced code, the basic code; with whether
    that reading alone would prove a recipient category."""
    reply_class = _reply_class(reply, words)
    for pattern in _TEXT_PATTERNS:
        if pattern.applies(reply_class) and pattern.regex.search(words):
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


class _Proof(Enum):
    """How much a recipient pattern's words prove on their own."""

    WORDS = "words"  # "user unknown", "domain does not exist": the words suffice
    # The words name the recipient but not the cause ("mailbox unavailable",
    # "invalid address"): proof only with RFC 5321's mailbox-refusal codes
    # (550 mailbox unavailable, 553 mailbox name not allowed) and no enhanced
    # code that says something else.
    MAILBOX_CODE = "mailbox_code"
    NONE = "none"  # a hedge, a guess, or someone else's DNS: never proof


@dataclass(frozen=True)
class _Pattern:
    category: Category
    regex: re.Pattern[str]
    classes: frozenset[int] = frozenset()  # empty: any reply class
    proof: _Proof = _Proof.WORDS

    def applies(self, reply_class: int) -> bool:
        return not self.classes or reply_class in self.classes


def _p(
    category: Category,
    *alternatives: str,
    classes: Iterable[int] = (),
    proof: _Proof = _Proof.WORDS,
) -> _Pattern:
    regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
    return _Pattern(category, regex, frozenset(classes), proof)


def _words_prove(proof: _Proof, code: int, status: str | None) -> bool:
    if proof is _Proof.WORDS:
        return True
    if proof is _Proof.NONE:
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


C = Category
# Order matters: the first pattern that matches decides. Each group says why
# it sits where it does.
_TEXT_PATTERNS: tuple[_Pattern, ...] = (
    # The upstream gave up, is looping or is still checking: whatever else the
    # text says (a DNS failure, "recipient address rejected"), it is no verdict
    # on the address.
    _p(
        C.OTHER,
        r"too many hops",
        r"hop count",
        r"exceeded \d+ hops",
        r"\bmail(?:ing)? loop",
        r"\bloops? (?:back|detected)",
        r"\blooping\b",
        r"mxloopback",
        r"too many \W?received\W? headers",
        # qmail: the MX points back at the sending host itself.
        r"best-preference mx",
    ),
    # A connection that never opened is the cause of an expiry, not a verdict.
    _p(
        C.SERVICE_UNAVAILABLE,
        r"(?:was ?n[o']?t|was not|unable to|could ?n[o']?t|cannot) (?:be )?(?:able to )?"
        r"(?:establish|open|make) (?:an? )?(?:smtp |tcp )?connection",
    ),
    _p(
        C.OTHER,
        r"\bmessage expired\b",
        r"queue\.expired",
        r"\benvelope expired\b",
        r"unable to deliver in \d+",
        r"delivery time expired",
        r"past the expiration",
        r"in the queue too long",
        r"could not be delivered for too long",
        r"\bretry (?:timeout exceeded|time not reached)",
        r"failing for a long time",
        r"still undelivered",
        r"\bmessage delayed\b",
    ),
    _p(C.OTHER, r"verification (?:is )?(?:in progress|pending)"),
    # Postfix could not finish its probe of the recipient: come back later.
    _p(C.OTHER, r"unverified address", classes=[4]),
    # The client's protocol or the address's form, not the mailbox: syntax and
    # sequence errors, addresses the receiver will not parse.
    _p(
        C.OTHER,
        r"protocol violation",
        r"syntax error",
        r"bad sequence",
        r"out of sequence",
        r"unrecognized command",
        r"too many (?:errors|\w+ commands)",
        r"command unrecognized",
        r"\bunimplemented\b",
        r"fully[- ]qualified",
        r"single[- ]label domain",
        r"source-routed",
        r"at-sign in local-part",
        r"invalid domain (?:name|address)",
        r"dnssec-invalid",
    ),
    # Greylisting before pace, and before "try again later" is read as service
    # trouble: a 4xx whose only words are "try again later" is how greylisting
    # servers answer (hMailServer, Barracuda, ImprovMX).
    _p(
        C.GREYLISTED,
        r"gr[ae]y-?list",
        r"gr[ae]ylisting",
        # Mimecast's documented greylisting reply (DOC-1369#451).
        r"internal resource temporarily unavailable",
    ),
    _p(
        C.GREYLISTED,
        r"^(?:please )?try again later\W*(?:\(#?[\w.-]*\)\W*)?$",
        classes=[4],
    ),
    # A temporary fault named as the cause: "Cannot authenticate due to a
    # temporary system problem" is the receiver's trouble, not our credentials.
    _p(
        C.SERVICE_UNAVAILABLE,
        r"(?:due to|because of) an? (?:temporary|internal) (?:system |server )?"
        r"(?:problem|error|failure)",
    ),
    # A cause named next to the pace: "rate limited because SPF didn't pass",
    # "rate limited due to the very low reputation of the sending IP", "IP
    # blocked for sending too many spam messages". The cause is what to fix.
    _p(
        C.POLICY_AUTH,
        r"rate limited because (?:\S+ ){0,12}?(?:unauthenticated|authenticat|spf|dkim|dmarc)",
        r"\bspf record",
        r"\bdmarc record",
        r"\bdkim signature",
        r"(?:is ?n[o']?t|is not|not) aligned with",
        r"\blog ?in attempts",
        r"fail(?:ed)? authentication",
    ),
    # "Rate limited because this message wasn't sent over a TLS connection".
    _p(
        C.TLS_REQUIRED,
        r"(?:must|need to|required to|please) (?:issue a |use |first |support )?(?:start)?tls",
        r"(?:start)?tls (?:is )?(?:required|mandatory)",
        r"\b(?:tls|ssl)\S* connection (?:is )?required",
        r"requires? (?:start)?tls",
        r"requires? (?:\S+ )?encryption",
        r"(?:does not|doesn't|not) support (?:start)?tls",
        r"encryption (?:is )?required",
        r"(?:over|on|via) (?:an? )?(?:tls|ssl|encrypted|secure) connection",
        r"tls (?:negotiation|handshake) failed",
        r"starttls-not-supported",
        r"high-strength cipher",
        r"\bcertificate\b",
        r"\bdane\b",
        r"\btlsa\b",
    ),
    # The sending IP or host: its reputation, its reverse DNS, its kind of
    # address, a block of it (even "for sending too many spam messages").
    _p(
        C.SPAM_BLOCK_IP,
        r"reputation",
        r"\bptr\b",
        r"pointer \(ptr\)",
        r"reverse (?:dns|lookup|hostname)",
        r"\brdns\b",
        r"ip name lookup",
        r"cannot find your (?:reverse )?hostname",
        r"\bthe ip\b(?: \S+){0,5} (?:is )?not authori[sz]ed",
        # The client's host name is in a reserved or unknown top-level domain.
        r"\bhost\b(?: \S+){0,3} from (?:an? )?(?:unknown tld|rfc ?2606 reserved)",
        r"dial-?up",
        r"dynamic(?:ally assigned)? ip",
        r"transient ip",
        r"residential",
        r"\b(?:this|your|the sending|the) ip(?: address| netblock)?\b(?: \S+){0,3} (?:has been|have"
        r" been|is|was) (?:temporarily |permanently )?(?:blocked|banned|blacklisted|suspended)",
    ),
    # Throttling, before everything that says "blocked", "quota" or
    # "recipients": these are about pace, and pace is soft. Counts per time
    # window first: "too many recipients this hour" is pace, not one message's
    # recipient list.
    _p(
        C.RATE_LIMITED,
        r"(?:messages?|mails?|recipients|emails?|connections?) (?:per|an|this|in the last) "
        r"(?:hour|day|minute|second|connection|session)\b",
        r"\bper (?:hour|minute|day)\b",
        r"\bthis hour\b",
    ),
    _p(
        C.TOO_MANY_RECIPIENTS,
        r"too many (?:recipients|rcpt)",
        r"recipient limit",
        r"max(?:imum)? (?:number of )?recipients",
    ),
    # A mailbox holding too many messages is full, not throttled.
    _p(C.MAILBOX_FULL, r"too many (?:messages|mails) (?:on|in) (?:the |your )?(?:server|mailbox)"),
    _p(
        C.RATE_LIMITED,
        r"rate[- ]?limit",
        r"\brate that prevents",
        r"receiving mail too quickly",
        r"\btoo quickly\b",
        r"frequency limit",
        r"(?:unexpected|excessive|unusual) (?:volume|rate)",
        r"\bthrottl",
        r"slow down",
        r"\btoo (?:many|much) (?:\w+ )?(?:messages|mails?|connections"
        r"|sessions|emails|traffic)\b",
        r"\btoo many recent\b",
        r"too many concurrent",
        r"concurrent connections",
        r"connection rate",
        r"sending rate",
        r"submission rate",
        r"queue quota",
        r"quota for sending",
        r"\b(?:relay|thread) limit",
        r"exceeded (?:the |their |its )?limit for the number of messages",
        r"max(?:imum)? (?:number of )?messages? per",
        # Sending quotas of the sender's account, often sent as 5xx: pace, not the address.
        r"daily (?:sending |message |mail )?(?:limit|quota)",
        r"sending (?:limit|quota)",
        r"submission quota",
        r"limit on the number of (?:allowed )?outgoing messages",
    ),
    # Quota before size ("mailbox size limit") and before disabled ("out of
    # storage space and inactive").
    _p(
        C.MAILBOX_FULL,
        r"over ?quota",
        r"quota (?:exceeded|violation|full)",
        r"disk quota",
        r"exceed(?:ed|s)? (?:\w+ )?(?:storage|quota)",
        r"(?:mailbox|inbox|mail ?box|account)"
        r"(?: \S+){0,3} (?:is |was )?(?:full|over (?:its )?(?:limit|quota))",
        r"(?:mailbox|inbox|account)(?: \S+){0,3} out of (?:storage|space)",
        r"mailbox size (?:limit )?exceeded",
        r"mailbox exceeds",
        r"(?:exhausted|exceeded|used up)(?: \S+){0,3} (?:storage|disk) space",
        r"disk space limit",
        r"\bquotaexceeded",
        r"blocks limit exceeded",
        r"inode limit",
        r"(?:bo[iî]te|boite)(?: \S+){0,3} pleine",
        r"insufficient (?:quota|mailbox)",
    ),
    _p(
        C.MESSAGE_TOO_LARGE,
        r"too (?:large|big)",
        r"size limit",
        r"sizelimit",
        r"(?:message|mail|email|size|length) (?:size |length )?exceed",
        r"larger than",
        r"exceeds? (?:the |our )?(?:fixed )?max(?:imum)? (?:message )?(?:size|length)",
        r"exc?ee?ded the maximum size",
        r"(?:message|attachment|mail)s? (?:is |are )?too long",
        r"exceeds (?:\S+ ){0,3}limit",
    ),
    # Published multi-provider templates that would otherwise be misread.
    # cPanel/Exim's catch-all "the account or domain may not exist, they may be
    # blacklisted, or missing the proper dns entries" only guesses.
    _p(C.OTHER, r"account or domain may not exist"),
    # Lotus Domino: "User not listed in public Name & Address Book".
    _p(C.USER_UNKNOWN, r"not listed in (?:\S+ ){0,2}(?:name|address|directory)"),
    # The sender's own account is suspended or may not send: its fault, even
    # when the reply also says "relay denied".
    _p(
        C.POLICY_AUTH,
        r"\bsending (?:\S+ ){0,2}account\b(?: \S+){0,4} (?:suspended|disabled|blocked|locked)",
        r"\bsending (?:is |has been )?(?:denied|disabled|blocked|suspended|not allowed)",
        r"sending for this account",
        r"\boutbounds?\b(?: \S+){0,2} (?:is |are )?(?:disabled|suspended|blocked)",
    ),
    # The host we talk to does not take mail for this domain from us (wrong
    # MX or smarthost, no SMTP AUTH): says nothing about the mailbox, even
    # when it starts "Recipient address rejected:".
    _p(
        C.RELAY_DENIED,
        r"relay(?:ing)? (?:access )?(?:is )?(?:denied|disallowed|prohibited"
        r"|not (?:allowed|permitted|authori[sz]ed))",
        r"not (?:configured|allowed|authori[sz]ed) to relay",
        r"unable to relay",
        r"\bas a relay\b",
        r"insecure (?:mail )?relay",
        r"we do not relay",
        r"den(?:y|ies) relay",
        r"unauthori[sz]ed relay",
        r"(?:turn on|enable|use) smtp auth",
        # qmail: "sorry, that domain isn't in my list of allowed rcpthosts".
        r"rcpthosts",
        r"list of allowed hosts",
        r"forward path is not allowed",
        r"\blocal users? only\b",
        r"(?:address|identity|identities|domain) (?:is |are )?not verified",
    ),
    # About the message itself, though it names a blocklist ("a domain
    # present in the Spamhaus DBL" is a URL in the body), an authentication
    # header ("too many X-Authentication-Results headers") or an IP ("IP
    # addresses are not allowed as a From: address").
    _p(
        C.CONTENT_REJECTED,
        r"\b(?:ur[il]|link|domain)s? (?:present|found|contained) in\b",
        r"\b(?:uribl|surbl)\b",
        r"spam url",
        r"url in (?:the )?(?:content|message|body)",
        r"(?:too many|multiple|duplicate) (?:\S+ ){0,2}(?:x-)?headers?\b",
        r"\bfrom: ?(?:header|address(?:es)?)\b",
        r"\bfrom header\b",
    ),
    # A block list of senders or recipients kept by the receiver (Mimecast's
    # Blocked Senders, an access map's "sender <x> black listed"): a policy
    # about the sender, not the sending IP, and never proof about the
    # recipient ("recipient <x> black listed" is a local rule, not a dead
    # mailbox).
    _p(
        C.POLICY_AUTH,
        r"\b(?:sender|recipient|user|from)\b(?: \S+){0,2} (?:is )?(?:black|block)[- ]?listed",
        r"\buser in (?:the )?(?:black|block) ?list",
        r"blocked senders?",
        r"block policy",
        r"envelope (?:blocked|rejected)",
        r"administrative prohibition",
        r"block-?send-?er",
        r"block-?rcpt",
    ),
    # Authentication of the sender names its mechanism; that beats the
    # generic "connections not accepted" of an IP block.
    _p(
        C.POLICY_AUTH,
        r"\bdmarc\b",
        r"spf\b",
        r"\bdkim\b",
        r"sender policy framework",
        r"\bsender ?id\b",
        # Our HELO name or our envelope sender failed the receiver's checks:
        # "Helo command rejected: Host not found" is not about the recipient.
        r"(?:helo|ehlo)(?: command)? rejected",
        r"invalid (?:helo|ehlo)",
        r"(?:helo|ehlo) (?:host)?name",
        r"sender verif(?:y|ication)",
        r"may not be mail exchanger",
        r"smtp auth(?:entication)? (?:is )?required",
        r"\bauth(?:entication)? (?:error|failure|failed|mode)",
    ),
    # Blocklists and reputation: about our IP or domain, never the address.
    _p(
        C.SPAM_BLOCK_IP,
        r"rbl\b",
        r"\bdnsbl",
        r"spamhaus",
        r"spamcop",
        r"\bsorbs\b",
        r"cloudmark",
        r"barracudacentral",
        r"block ?list",
        r"black ?list",
        r"\blisted (?:in|on|at|by)\b",
        r"blocked using",
        r"banned sending",
        r"which is an open relay",
        r"openrelay check",
        r"(?:block|blocked|bloquee) (?:for|pour) (?:\w+ )?spam",
        r"(?-i:\bBL\d*\b)",
        r"remote ip check",
        # The receiver's own reputation data: complaints about our mail, a
        # deferral of everything "from" our IP.
        r"\bcomplaints\b",
        r"messages? from \S+ (?:will be )?(?:temporarily |permanently )?deferred",
        r"^IP=\S+ -",
        r"\bblack ?ip\b",
        r"\bip (?:is )?(?:rejected|hangup|blocked|banned|denied)",
        r"\binvalid ip\b",
        r"no access (?:for|from) (?:this|mail server|your) ?(?:ip|\[)",
        r"not allowed to connect",
        r"client host rejected",
    ),
    # A 5xx refusal of "the client", "the host", "the service" is aimed at
    # us; the same words in a 4xx are the server's own trouble.
    _p(
        C.SPAM_BLOCK_IP,
        r"(?:client|host|ip|network|connections?)\b(?: \S+){0,4} (?:is |are |has been )?"
        r"(?:blocked|banned|not allowed|not accepted|refused|denied)",
        r"not accepting connections",
        r"connection rejected",
        classes=[5],
    ),
    # La Poste / Orange "Service refused, please try later" in a 5xx or a
    # summary without a code: their IP block (their 421 is service trouble).
    _p(C.SPAM_BLOCK_IP, r"service refus", classes=[0, 5]),
    # Yandex: the recipient's account is blocked for breaking its terms; it can
    # be unblocked, so no proof.
    _p(
        C.MAILBOX_DISABLED,
        r"policy rejection on the (?:target|recipient) address",
        proof=_Proof.NONE,
    ),
    # The sender side: our identity and authentication. Before the
    # recipient patterns because "Domain of sender address ... does not
    # exist" is about us, and before content because "message rejected due
    # to DMARC" is about authentication.
    _p(
        C.POLICY_AUTH,
        r"authenti(?:fi)?cat",
        r"\bauth\b",
        r"\blog ?in (?:attempts|credentials|failed|failure|with|required)",
        r"\bpasswords?\b",
        r"(?:sender(?:'s)?|mail from|envelope from|return[- ]path)\b(?: \S+){0,4} "
        r"(?:is |has been |was )?"
        r"(?:rejected|denied|blocked|invalid|disabled|suspended|unknown|not found|unvalidated"
        r"|not validated|not owned|does ?n[o']?t exist|not (?:allowed|authori[sz]ed|permitted))",
        r"(?:invalid|unknown|unauthori[sz]ed|fake|forged) sender",
        r"den(?:y|ies) (?:the )?sender",
        r"sender address (?:must|is required)",
        r"sender(?: \S+){0,3} (?:has )?(?:an? )?null mx",
        r"domain of sender",
        r"sender(?:'s)? domain",
        r"from:? ?domain",
        r"mismatches client",
        r"\bspoof",
        r"responsible address",
        r"smtp server of your isp",
        r"not authori[sz]ed to send",
        r"list of senders",
        r"not (?:in|on) (?:the |my |our )?(?:\S+ )?(?:whitelist|allowlist|allowed[- ]senders)",
        r"senderfilter",
        r"auth(?:entication)? required",
        r"\byour (?:e-?mail )?(?:account|access|domain|address)\b(?: \S+){0,6} "
        r"(?:disabled|suspended|blocked|locked|banned|blacklisted)",
        r"no access for this (?:domain|user|sender)",
        r"(?:denied|rejected) by (?:local )?policy",
        r"\bpolicy (?:rejection|error)",
        r"rejected by (?:the )?(?:destination|recipient) (?:domain|organi[sz]ation|server)",
        # Callout verification of our envelope sender, the sender's own account, a
        # policy refusal: the fault is ours, whatever address the reply names.
        r"\bverification failed\b",
        r"sender (?:address )?(?:does ?n[o']?t|does not) match",
        r"due to policy restrictions",
        r"delivery not authori[sz]ed",
        r"invalid dns (?:mx|a)\b",
    ),
    # The receiving side's own trouble, even after "Recipient address rejected:" or with
    # "Host or domain name not found" in front of a resolver's failure.
    _p(
        C.SERVICE_UNAVAILABLE,
        r"malformed or unexpected name server reply",
        r"mailer error",
        r"internal system error",
        r"could not be saved",
        r"local delivery failed",
        r"not enough (?:free |disk )?space",
        r"local error in processing",
        r"no (?:valid )?route to",
        r"network error",
        r"no host found for",
        r"unable to contact",
        r"\bcrashed\b",
        r"licen[cs]e (?:has )?expired",
        r"out of memory",
        r"(?:dns|mx|cname|host ?name|name server) (?:\S+ )?(?:lookup|query) "
        r"(?:failed|failure)(?! permanently)",
        r"(?:queue|database|server|system) (?:is )?(?:temporarily )?unavailable",
    ),
    _p(C.RELAY_DENIED, r"\bno relaying\b"),
    _p(C.OTHER, r"\bon hold\b"),
    # A refusal of us without a reason ("Access denied", Barracuda's bare
    # "Blocked"): the receiver's policy, never proof about the address, even
    # after "Recipient address rejected:" (Microsoft's edge blocking sends it
    # for unknown users, gateways for their own rules).
    _p(
        C.POLICY_AUTH,
        r"\baccess den(?:ied|y)\b",
        r"^blocked\W*$",
    ),
    # The recipient. Disabled before unknown: "invalid mailbox ... account is
    # disabled" is a disabled account. A suspension said to be temporary, or a
    # "hung up" account, may come back: no proof.
    _p(
        C.MAILBOX_DISABLED,
        r"temporarily (?:suspended|disabled|blocked|locked|deactivated)",
        r"\b(?:user|account|mailbox) hang ?up\b",
        proof=_Proof.NONE,
    ),
    _p(
        C.MAILBOX_DISABLED,
        r"\b(?:account|mailbox|address|user|recipient)\b(?: \S+){0,7} (?:is |has been |was )?"
        r"(?:disabled|inactive|deactivated|suspended|frozen|discontinued|locked)\b",
        r"\b(?:disabled|inactive|deactivated|suspended) (?:\w+ )?(?:recipient|account"
        r"|mailbox|user|address)",
        r"\b(?:account|mailbox) (?:is |has been |was )?closed\b",
        r"\bclosed (?:account|mailbox)\b",
        r"recipient (?:account|address|mailbox)\b(?: \S+){0,3} (?:is )?blocked\b",
        r"blocked due to inactivity",
        r"\bis now disabled\b",
        r"administratively (?:disabled|locked|suspended)",
        r"not (?:configured|enabled|allowed) to receive",
        # La Poste: "Boite du destinataire archivee. Archived recipient."
        r"archived (?:recipient|mailbox|account)",
        r"destinataire archiv",
    ),
    # Someone else's resolver or a broken zone: the domain exists but cannot
    # be reached as published ("all relevant MX records point to non-existent
    # hosts", Exim); or a bare "unknown host" without an address or a code,
    # which does not say whose host.
    _p(
        C.DOMAIN_NOT_FOUND,
        r"mx records? point to non-?existent hosts",
        # Postfix: the MX host exists but has no address of the type asked for.
        r"host found but no data record",
        r"lookups? failed permanently",
        r"illegal host/domain name",
        proof=_Proof.NONE,
    ),
    _p(
        C.DOMAIN_NOT_FOUND,
        r"domain (?:name )?not found",
        r"host or domain name not found",
        r"\S@\S+(?: \S+){0,2} (?:unknown host|host unknown)",
        r"\bdomain\b(?: \S+){0,3} (?:does not|doesn't|does ?n[o']?t) exist",
        r"non-?existent domain",
        r"no such domain",
        r"unknown domain",
        r"invalid domain\b",
        r"domain is not reachable",
        r"nxdomain",
        r"null ?mx",
        r"domain\b(?: \S+){0,2} does not accept mail",
        r"doesn't receive email",
        r"no-?domain",
        r"domain (?:is )?not (?:configured|hosted|served)",
        r"nomxhostfound",
        r"no mx (?:record|host)?s? ?(?:found )?for",
        r"indicated no smtp service",
        r"does not accept (?:e-?)?mail\b(?! from| over)",
        # qmail-remote: the recipient's domain has no host, or no MX and no address.
        r"could ?n[o']?t find any host (?:named|by that name)",
        r"could ?n[o']?t find a mail exchanger",
        # Reserved names can never receive mail (RFC 2606 / RFC 6761).
        r"(?:recipient|destination) (?:address|domain) (?:is )?reserved",
    ),
    _p(C.DOMAIN_NOT_FOUND, r"host (?:unknown|not found)|unknown host", classes=[5]),
    _p(C.DOMAIN_NOT_FOUND, r"host (?:unknown|not found)|unknown host", proof=_Proof.NONE),
    # "Currently / temporarily unavailable" says nothing lasting, nor does
    # RFC 5321's 450 "mailbox unavailable" (busy or temporarily blocked).
    _p(C.OTHER, r"(?:mailbox|recipient) (?:is )?(?:currently|temporarily) unavailable"),
    _p(C.OTHER, r"mailbox (?:is )?unavailable", classes=[4]),
    _p(
        C.USER_UNKNOWN,
        r"(?:user|recipient|addressee|mailbox|address|adress|alias|account)(?:name)? unknown",
        r"(?:user|recipient|addressee|mailbox|address|account) not known",
        r"unknown (?:or illegal )?(?:user|recipient|mailbox|address|alias|local)",
        r"no such (?:user|recipient|mailbox|address|account|person)",
        r"\b(?:does ?n[o']?t|dosn'?t|do not|does no|don'?t) exists?\b",
        r"\b(?:user|recipient|mailbox|address|account) (?:is |does )?not exists?\b",
        r"not found by smtp address lookup",
        r"recip(?:ient)?notfound",
        r"(?:user|recipient|mailbox|address|account)(?: \S+){0,2} (?:was |is )?not found",
        r"(?:user|recipient|mailbox|address|account)(?: \S+){0,2} could ?n[o']?t be found",
        r"invalid final delivery userid",
        r"invalid[- ](?:recipient|mailbox|user)",
        r"marked as invalid",
        r"not (?:in|on) (?:the )?(?:valid )?recipients? list",
        r"destinataire invalide",
        r"recipient address\b(?: \S+){0,2} is not a valid",
        r"\bno mailbox\b",
        r"mailbox unallocated",
        r"unavailable (?:mail )?(?:user|recipient|account)\b",
        r"no longer (?:valid|on server|available|exists)",
        r"(?:does ?n[o']?t|does not) have an? (?:\S+ )?account",
        r"not a valid (?:user|recipient|mailbox)",
        r"not (?:a )?user of this (?:server|system|domain|site)",
        # RFC 3463's own words for X.1.1, X.1.3 and X.1.6.
        r"bad destination mailbox address",
        r"mailbox has moved",
        r"no forwarding address",
    ),
    # Words that name the recipient but not the cause: proof only with the
    # mailbox-refusal code (RFC 5321's "550 ... mailbox unavailable").
    _p(
        C.USER_UNKNOWN,
        r"mailbox (?:is )?unavailable",
        r"undeliverable address",
        r"invalid address",
        r"address invalid",
        proof=_Proof.MAILBOX_CODE,
    ),
    # A complaint about the address that does not say it is gone: a syntax
    # complaint, an unroutable address (routing or configuration), no valid
    # recipient left.
    _p(
        C.USER_UNKNOWN,
        r"bad (?:recipient )?address syntax",
        r"unrouteable address",
        r"no (?:valid|correct) recipients",
        proof=_Proof.NONE,
    ),
    _p(
        C.CONTENT_REJECTED,
        r"spam",
        r"unsolicited",
        r"\bube\b",
        r"virus",
        r"malware",
        r"phish",
        r"attachment",
        r"content",
        r"\bheaders?\b",
        r"8-?bit",
        r"rfc ?(?:2822|5322)",
        r"rfc compliant",
        r"(?:message|mail|email)s? (?:was |has been )?(?:rejected|refused|flagged)",
        r"message not allowed",
        r"\bfiltered\b",
        r"bulk mail",
        # Bare line feeds and broken line ends: the sending software's message.
        r"smtplf",
        r"bare lf",
        r"stray newline",
        r"partial final lines",
    ),
    # Opaque policy wording ("Local Policy Violation", "not accepted for
    # policy reasons") gives no cause; keep it out of the code fallbacks.
    _p(C.OTHER, r"policy violation", r"policy reasons"),
    _p(
        C.SERVICE_UNAVAILABLE,
        r"service (?:is )?(?:currently |temporarily )(?:not available|unavailable)",
        r"temporar(?:y|ily) (?:\w+ )?(?:error|failure|unavailable|rejected|problem)",
        r"resources? temporarily unavailable",
        r"internal (?:server )?error",
        r"timeout exceeded",
        r"timed? ?out",
        r"connection (?:refused|reset|lost)",
        r"lost connection",
        r"accept our requests to connect",
        r"insufficient (?:system )?(?:resources|disk space|storage)",
        r"upstream error",
        r"service refus",
        r"not accepting connections",
    ),
    # A bare "service unavailable" is the server's trouble in a 4xx; in a 5xx
    # it is a refusal without a reason (sendmail's summary after a 554).
    _p(C.SERVICE_UNAVAILABLE, r"service (?:is )?(?:not available|unavailable)", classes=[0, 4]),
    # Last: a bare "recipient (address) rejected" gives no reason; any stated
    # reason (quota, spam, greylisting, relay, policy, unknown user) has
    # matched above. It is about the recipient, but no proof it is gone.
    _p(
        C.USER_UNKNOWN,
        r"recipient (?:address )?rejected",
        r"\baddress rejected",
        proof=_Proof.NONE,
    ),
    # A temporary reply that only asks us to come back later.
    _p(C.SERVICE_UNAVAILABLE, r"try (?:again )?later", r"please retry", classes=[0, 4]),
)
del C

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

# Spectrum/Charter publish their "AUP#I-nnnn" / "AUP#O-nnnn" codes
# (spectrum.net "understanding email error codes"); the words around them
# ("sender rejected") do not say which it is.
_SPECTRUM_AUP = re.compile(r"AUP#(?:In?|O)-?(\d{4})\b", re.IGNORECASE)
_SPECTRUM_RANGES: tuple[tuple[int, int, Category], ...] = (
    (1000, 1000, Category.SPAM_BLOCK_IP),  # IP blocked for suspicious activity
    (1010, 1080, Category.POLICY_AUTH),  # sending account blocked / limited
    (1090, 1090, Category.SERVICE_UNAVAILABLE),  # cannot be processed, try later
    (1100, 1150, Category.POLICY_AUTH),  # no full-circle reverse DNS
    (1160, 1190, Category.POLICY_AUTH),  # against the sending domain's policy
    (1200, 1250, Category.SPAM_BLOCK_IP),  # Cloudmark / Spamhaus listing
    (1300, 1340, Category.RATE_LIMITED),  # too many (concurrent) connections
    (1350, 1490, Category.RATE_LIMITED),  # volume limits
    (1500, 1520, Category.POLICY_AUTH),  # sending as someone else
    (1530, 1530, Category.MESSAGE_TOO_LARGE),
    (1540, 1540, Category.RATE_LIMITED),  # too many messages in one session
    (1550, 1550, Category.TOO_MANY_RECIPIENTS),
    (1580, 1580, Category.RATE_LIMITED),  # too many recipients in a short time
)

# NetEase (163.com, 126.com, yeah.net, qiye.163.com) answers with a short
# return field after the code ("421 HL:ICC") and publishes what each means
# (help.163.com "退信代码说明"); the field is all the reply says.
_NETEASE_FIELD = re.compile(r"^([A-Z]{2}:[A-Z]{3})\b")
_NETEASE: dict[str, Category] = {
    "HL:REP": Category.SPAM_BLOCK_IP,  # IP sends to many non-existent recipients
    "HL:MEP": Category.SPAM_BLOCK_IP,  # IP forges many sender domains
    "HL:ODP": Category.SPAM_BLOCK_IP,
    "HL:IHU": Category.SPAM_BLOCK_IP,  # IP suspended for spam or odd connections
    "HL:IPB": Category.SPAM_BLOCK_IP,  # IP not on the allowed sending list
    "WM:BLI": Category.SPAM_BLOCK_IP,
    "DT:RBL": Category.SPAM_BLOCK_IP,  # IP on one or more RBLs
    "HL:ICC": Category.RATE_LIMITED,  # too many concurrent connections from the IP
    "HL:IFC": Category.RATE_LIMITED,  # too much mail from the IP in a short time
    "MI:DMC": Category.RATE_LIMITED,  # too many messages in this connection
    "MI:SFQ": Category.RATE_LIMITED,  # sender over its 15-minute quota
    "MI:STC": Category.RATE_LIMITED,  # sender over its daily connection count
    "RP:QRC": Category.RATE_LIMITED,  # sender over its short-term recipient count
    "RP:TRC": Category.RATE_LIMITED,  # sender over its daily recipient count
    "RP:DRC": Category.TOO_MANY_RECIPIENTS,  # too many recipients in this connection
    "RP:RCL": Category.TOO_MANY_RECIPIENTS,  # too many recipients in one message
    "WM:BLU": Category.POLICY_AUTH,  # sender not on the allowed sender list
    "MI:SPB": Category.POLICY_AUTH,
    "MI:SPF": Category.POLICY_AUTH,
    "MI:DMA": Category.POLICY_AUTH,
    "DT:SUM": Category.POLICY_AUTH,  # envelope and header senders differ
    "DT:SPM": Category.CONTENT_REJECTED,  # spam-like content
    "RP:FRL": Category.RELAY_DENIED,  # no open relay
    "MI:CEL": Category.OTHER,  # too many erroneous commands
    "MI:CCL": Category.OTHER,  # more commands than normal
    "RP:CEL": Category.OTHER,
    "RP:CCL": Category.OTHER,
    "MI:NHD": Category.OTHER,  # empty HELO
    "MI:IMF": Category.OTHER,  # malformed sender address
}
# AOL's postmaster pages file its block codes by the part before the colon:
# RTR (reputation, dynamic and unallocated IPs, rDNS), RLY (complaint blocks),
# HVU, DYN and DNS (the sending IP's DNS) all block the sending IP; CON is a
# connection threshold.
_AOL_BLOCK = re.compile(r"\b(?:RTR|RLY|HVU|DYN|DNS):[A-Z0-9]{2}\b")
_AOL_PACE = re.compile(r"\bCON:[A-Z0-9]{2}\b")
# Cox's published AUP# codes (postmaster.cox.net "Error Codes").
_COX_AUP = re.compile(r"AUP#(CX[A-Z]+|CDRBL|IPBL\d*)\b", re.IGNORECASE)
_COX: dict[str, Category] = {
    "CXBL": Category.SPAM_BLOCK_IP,  # IP blocked for spam-like behaviour
    "CDRBL": Category.SPAM_BLOCK_IP,  # IP temporarily blocked
    "IPBL": Category.SPAM_BLOCK_IP,  # IP on a DNSBL (IPBL0001 ... IPBL1111)
    "CXCNCT": Category.RATE_LIMITED,  # too many connections
    "CXMXRT": Category.RATE_LIMITED,  # too many messages
    "CXSNDR": Category.POLICY_AUTH,  # sender domain fails DNS or authentication
    "CXMJ": Category.POLICY_AUTH,  # sending account blocked
    "CXDNS": Category.POLICY_AUTH,
}


# Exchange Online's Directory-Based Edge Blocking: the recipient is not in the tenant's
# directory (Microsoft Learn, "Email non-delivery reports in Exchange Online", 5.4.1).
# Its front ends stamp the reply "[NAME.region.prod.outlook.com ...]" or
# "[NAME.prod.protection.outlook.com]"; a gateway repeating the words drops the stamp.
_DBEB = re.compile(r"recipient address rejected: access denied", re.IGNORECASE)
_EXCHANGE_ONLINE_STAMP = re.compile(r"\.prod\.(?:protection\.)?outlook\.com\b", re.IGNORECASE)
# Cisco IronPort's refusal of a recipient its LDAP accept query does not find: its
# default text, with the enhanced code in IronPort's own "#5.1.0" notation.
_IRONPORT_LDAP_ACCEPT = re.compile(r"(?:^|\s)#5\.1\.0 Address rejected\.?\s*$")


def _directory_refusal(reply: Reply, status: str | None, words: str) -> bool:
    """A vendor's documented refusal of a recipient its directory does not hold, carrying
    the vendor's own mark (see "Evidence")."""
    text = reply.text[:_READ_LIMIT]
    if status == "5.4.1" and _DBEB.search(words) and _EXCHANGE_ONLINE_STAMP.search(text):
        # "denied" is DBEB's own word; any other sign of another fault still vetoes.
        return _OTHER_FAULT.search(_DBEB.sub("", words)) is None
    return reply.code == 550 and _IRONPORT_LDAP_ACCEPT.search(text) is not None


def _vendor_category(code: int, status: str | None, words: str) -> Category | None:
    """Published codes whose meaning is more precise than the words around them."""
    precise = _microsoft_category(status) or _sender_address_category(status)
    if precise is not None:
        return precise
    match = _SPECTRUM_AUP.search(words)
    if match is not None:
        number = int(match.group(1))
        for low, high, category in _SPECTRUM_RANGES:
            if low <= number <= high:
                return category
        return None
    if code:
        netease = _NETEASE_FIELD.match(words)
        if netease is not None and netease.group(1) in _NETEASE:
            return _NETEASE[netease.group(1)]
    if _AOL_BLOCK.search(words):
        return Category.SPAM_BLOCK_IP
    if _AOL_PACE.search(words):
        return Category.RATE_LIMITED
    cox = _COX_AUP.search(words)
    if cox is not None:
        name = cox.group(1).upper()
        return _COX.get("IPBL" if name.startswith("IPBL") else name)
    return None


# Microsoft's X.7.5xx/7xx details (Exchange Online's NDR table) name the cause
# where the words say only "Access denied"; 4.7.5xx-6xx is throttling even
# when worded "Server busy", 4.7.850-899 a temporary restriction of the IP.
_MICROSOFT_PERMANENT: dict[int, Category] = {
    501: Category.POLICY_AUTH,  # sending account banned for spam
    502: Category.POLICY_AUTH,
    503: Category.POLICY_AUTH,
    506: Category.OTHER,  # bad HELO (the client named itself as the server)
    507: Category.SPAM_BLOCK_IP,  # the recipient's organisation blocked the IP
    508: Category.RATE_LIMITED,  # the IPv6 range sent too much too fast
    509: Category.POLICY_AUTH,  # DMARC
    510: Category.POLICY_AUTH,  # the recipient takes no mail over IPv6
    511: Category.SPAM_BLOCK_IP,  # banned sending IP
    512: Category.CONTENT_REJECTED,  # no valid From: header
    513: Category.SPAM_BLOCK_IP,  # the recipient domain's block list
    515: Category.POLICY_AUTH,  # authentication level of the sending domain
    708: Category.SPAM_BLOCK_IP,  # traffic not accepted from this IP
}


def _microsoft_category(enhanced: str | None) -> Category | None:
    if enhanced is None or enhanced[2:4] != "7.":
        return None
    number = int(enhanced[4:])
    if enhanced[0] == "4":
        if 500 <= number <= 699:
            return Category.RATE_LIMITED
        if 850 <= number <= 899:
            return Category.SPAM_BLOCK_IP
        return None
    if number in _MICROSOFT_PERMANENT:
        return _MICROSOFT_PERMANENT[number]
    if 321 <= number <= 323:
        return Category.TLS_REQUIRED  # STARTTLS, certificate, DANE of the destination
    if 606 <= number <= 649:
        return Category.SPAM_BLOCK_IP  # banned sending IP
    if 700 <= number <= 750:
        return Category.POLICY_AUTH  # the sending tenant is banned or unprovisioned
    return None


def _sender_address_category(enhanced: str | None) -> Category | None:
    """RFC 3463 X.1.7 is the syntax of the *sender's* address: whatever the
    words call it ("Invalid address"), the recipient is not in question."""
    return Category.OTHER if _subject_detail(enhanced) == "1.7" else None


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
