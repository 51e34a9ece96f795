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
                        domain_not_found                 hard       yes         yes
5xx                     any other                        hard       no          yes
no code (an MTA's own   user_unknown, mailbox_disabled,
words, e.g. "Host or    domain_not_found, and no
domain name not found") "try again"/timeout wording      hard       yes         yes
no code                 anything else                    soft       no          no
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

1. vendor codes whose meaning is published and more precise than the words
   around them: Microsoft's 4.7.5xx-6xx (throttling, even when worded
   "Server busy") and 5.7.606-649 (banned IP), Spectrum's ``AUP#I-1310``;
2. text patterns, in the order of ``_TEXT_PATTERNS`` (most specific first:
   a quota or greylisting message often starts "Recipient address rejected:",
   a rate limit often says "blocked"); the whole multi-line reply is read;
3. the enhanced code (RFC 3463 subject.detail and the later codes of the
   IANA registry: X.1.10 null MX, X.7.13 disabled, X.7.2x authentication...);
4. the basic code (421/451/452 service trouble, 552 storage, 556 no mail);
5. ``other``.

Two wordings are deliberately *not* read as a recipient problem even though
they mention one: "message expired" (the upstream gave up; the cause is lost)
and "address verification in progress". A sign that the fault lies with the
sender (its verification, its account, its domain's DNS, a policy refusal)
vetoes the recipient reading, and after a generic prefix ("Recipient address
rejected:") the words that follow decide: "Mailer error", "No relaying", "On
hold" say nothing about the mailbox.

Operator rules
==============

``[[classify.rules]]`` become ``ClassifyRule`` values. The first rule whose
criteria all hold (codes, enhanced prefixes, recipient domains, text regex;
an empty criterion matches anything) overrides what it sets, and wins over
everything above, ``suppress_on`` included. A rule that sets ``kind`` but not
``suppress`` gets the suppression of the table for its new kind and category,
so a rule making a reply soft never suppresses. Rules are not applied to 2xx
replies: a delivery is a delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

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
    kind, category = _base(reply)
    if suppress_on is SuppressOn.ANY_5XX and reply.reply_class == 5 and not reply.synthetic:
        # The literal rule the operator chose: every 5xx is hard, whatever it says.
        kind = Kind.HARD
    for rule in rules:
        if rule.matches(reply, recipient_domain):
            return _apply(rule, reply, kind, category, suppress_on)
    return Verdict(kind, category, _suppress(reply, kind, category, suppress_on))


def category_of(reply: Reply) -> Category:
    """The category the table gives ``reply`` (no operator rules): text
    first, then the enhanced code, then the basic code."""
    return _category(reply)


def _base(reply: Reply) -> tuple[Kind, Category]:
    if reply.synthetic:
        return _synthetic(reply)
    category = _category(reply)
    return _kind(reply, category), category


def _kind(reply: Reply, category: Category) -> Kind:
    reply_class = reply.reply_class
    if reply_class == 5:
        return Kind.SOFT if category in SOFT_CATEGORIES else Kind.HARD
    if reply_class == 0 and category in RECIPIENT_CATEGORIES:
        # An MTA's own words without a code: definite unless they say the
        # lookup is to be tried again (Postfix "Host not found, try again").
        return Kind.SOFT if _TEMPORARY.search(reply.message) else Kind.HARD
    return Kind.SOFT


def _synthetic(reply: Reply) -> tuple[Kind, Category]:
    detail = _subject_detail(reply.enhanced)
    if reply.reply_class == 5 and detail in {"1.2", "1.10"}:
        return Kind.HARD, Category.DOMAIN_NOT_FOUND
    if reply.reply_class == 5 and detail is not None and detail.startswith("6."):
        # The next hop cannot carry this message as it is (RFC 6531 §3.5 / RFC 6152: no
        # SMTPUTF8 for a UTF-8 local part, no 8BITMIME for an 8-bit body): resending won't help.
        return Kind.HARD, Category.CONTENT_REJECTED
    if detail in _TLS_DETAILS or _TLS_FAILURE.search(reply.text):
        return Kind.SOFT, Category.TLS_REQUIRED
    return Kind.SOFT, Category.CONNECTION_FAILED


def _suppress(reply: Reply, kind: Kind, category: Category, suppress_on: SuppressOn) -> bool:
    if kind is not Kind.HARD:
        return False
    if reply.synthetic:
        # Our own failure never condemns an address; only a definite
        # "no such domain" does (see the table).
        return category is Category.DOMAIN_NOT_FOUND
    return suppress_on is SuppressOn.ANY_5XX or category in RECIPIENT_CATEGORIES


def _apply(
    rule: ClassifyRule, reply: Reply, kind: Kind, category: Category, suppress_on: SuppressOn
) -> Verdict:
    kind = rule.kind or kind
    category = rule.category or category
    suppress = rule.suppress
    if suppress is None:
        suppress = _suppress(reply, kind, category, suppress_on)
    return Verdict(kind, category, suppress, rule=rule.name)


# --- category: vendor codes, text, enhanced code, basic code -----------------


def _category(reply: Reply) -> Category:
    message = reply.message
    reply_class = reply.reply_class
    vendor = _vendor_category(reply)
    if vendor is not None:
        return vendor
    for pattern in _TEXT_PATTERNS:
        if pattern.applies(reply_class) and pattern.regex.search(message):
            return pattern.category
    by_enhanced = _enhanced_category(reply.enhanced)
    if by_enhanced is not None:
        return by_enhanced
    return _BY_CODE.get(reply.code, Category.OTHER)


@dataclass(frozen=True)
class _Pattern:
    category: Category
    regex: re.Pattern[str]
    classes: frozenset[int] = frozenset()  # empty: any reply class

    def applies(self, reply_class: int) -> bool:
        return not self.classes or reply_class in self.classes


def _p(category: Category, *alternatives: str, classes: Iterable[int] = ()) -> _Pattern:
    regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
    return _Pattern(category, regex, frozenset(classes))


C = Category
# Order matters: the first pattern that matches decides. Each group says why
# it sits where it does.
_TEXT_PATTERNS: tuple[_Pattern, ...] = (
    # The upstream gave up or is still checking: whatever else the text says
    # (a DNS failure, "recipient address rejected"), it is no verdict on the
    # address.
    _p(C.OTHER, r"too many hops", r"mail(?:ing)? loop", r"loop(?:s)? (?:back|detected)"),
    _p(
        C.OTHER,
        r"\bmessage expired\b",
        r"queue\.expired",
        r"unable to deliver in \d+",
        r"delivery time expired",
    ),
    _p(C.OTHER, r"verification (?:is )?(?:in progress|pending)"),
    # Throttling, before everything that says "blocked", "quota" or
    # "recipients": these are about pace, and pace is soft.
    _p(
        C.GREYLISTED,
        r"gr[ae]y-?list",
        r"gr[ae]ylisting",
        # Mimecast's documented greylisting reply (DOC-1369#451).
        r"internal resource temporarily unavailable",
    ),
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
        r"queue quota",
        r"(?:messages?|mails?|recipients|emails?|connections?) (?:per|an|this|in the last) "
        r"(?:hour|day|minute|second|connection|session)\b",
        r"\bper (?:hour|minute|day)\b",
        r"\bthis hour\b",
        r"exceeded (?:the |their |its )?limit for the number of messages",
        r"max(?:imum)? (?:number of )?messages? per",
        # Sending quotas of the sender's account, often sent as 5xx: pace, not the address.
        r"daily (?:sending |message |mail )?(?:limit|quota)",
        r"sending (?:limit|quota)",
        r"submission quota",
        r"limit on the number of (?:allowed )?outgoing messages",
    ),
    _p(
        C.TOO_MANY_RECIPIENTS,
        r"too many (?:recipients|rcpt)",
        r"recipient limit",
        r"max(?:imum)? (?:number of )?recipients",
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
        r"mailbox size limit",
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
    ),
    # Published multi-provider templates that would otherwise be misread.
    _p(
        C.USER_UNKNOWN,
        # cPanel/Exim recipient verification: the account or domain is gone
        # (it also says "blacklisted", which is a guess of the template).
        r"account or domain may not exist",
        # Exchange Online directory-based edge blocking: not in the directory.
        r"recipient address rejected: access denied",
        # Lotus Domino: "User not listed in public Name & Address Book".
        r"not listed in (?:\S+ ){0,2}(?:name|address|directory)",
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
        r"smtp auth(?:entication)?\b",
        # qmail: "sorry, that domain isn't in my list of allowed rcpthosts".
        r"rcpthosts",
        r"(?:address|identity|identities|domain) (?:is |are )?not verified",
    ),
    # About the message itself, though it names a blocklist ("a domain
    # present in the Spamhaus DBL" is a URL in the body) or an
    # authentication header ("too many X-Authentication-Results headers").
    _p(
        C.CONTENT_REJECTED,
        r"\b(?:ur[il]|link|domain)s? (?:present|found|contained) in\b",
        r"\b(?:uribl|surbl)\b",
        r"spam url",
        r"url in (?:the )?(?:content|message|body)",
        r"(?:too many|multiple|duplicate) (?:\S+ ){0,2}(?:x-)?headers?\b",
    ),
    # Authentication of the sender names its mechanism; that beats the
    # generic "connections not accepted" of an IP block.
    _p(
        C.POLICY_AUTH,
        r"\bdmarc\b",
        r"spf\b",
        r"\bdkim\b",
        r"sender policy framework",
        r"reverse (?:dns|lookup)",
        r"\brdns\b",
        r"\bptr\b",
        r"ip name lookup",
        # Our HELO name or our envelope sender failed the receiver's checks:
        # "Helo command rejected: Host not found" is not about the recipient.
        r"(?:helo|ehlo)(?: command)? rejected",
        r"invalid (?:helo|ehlo)",
        r"(?:helo|ehlo) (?:host)?name",
        r"sender verif(?:y|ication)",
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
        r"reputation",
        r"banned sending",
        r"which is an open relay",
        r"(?:block|blocked|bloquee) (?:for|pour) (?:\w+ )?spam",
        r"(?-i:\bBL\d*\b)",
        r"remote ip check",
        r"^IP=\S+ -",
    ),
    # A 5xx refusal of "the client", "the host", "the service" is aimed at
    # us; the same words in a 4xx are the server's own trouble.
    _p(
        C.SPAM_BLOCK_IP,
        r"(?:client|host|ip|network|connections?)\b(?: \S+){0,4} (?:is |are |has been )?"
        r"(?:blocked|banned|not allowed|not accepted|refused|denied)",
        r"not accepting connections",
        r"service refus",
        classes=[5],
    ),
    _p(
        C.TLS_REQUIRED,
        r"(?:must|need to|required to|please) (?:issue a |use |first )?(?:start)?tls",
        r"(?:start)?tls (?:is )?(?:required|mandatory)",
        r"requires? (?:start)?tls",
        r"(?:does not|doesn't|not) support (?:start)?tls",
        r"encryption (?:is )?required",
        r"tls (?:negotiation|handshake) failed",
    ),
    # The sender side: our identity and authentication. Before the
    # recipient patterns because "Domain of sender address ... does not
    # exist" is about us, and before content because "message rejected due
    # to DMARC" is about authentication.
    _p(
        C.POLICY_AUTH,
        r"authenticat",
        r"(?:sender|mail from|envelope from|return[- ]path)\b(?: \S+){0,4} (?:is |has been |was )?"
        r"(?:rejected|denied|blocked|invalid|disabled|suspended|unknown|not found|does ?n[o']?t "
        r"exist|not (?:allowed|authori[sz]ed|permitted))",
        r"(?:invalid|unknown|unauthori[sz]ed) sender",
        r"domain of sender",
        r"sender domain",
        r"from domain",
        r"mismatches client",
        r"\bspoof",
        r"responsible address",
        r"smtp server of your isp",
        r"dial-?up",
        r"dynamic(?:ally assigned)? ip",
        r"residential",
        r"may not be mail exchanger",
        r"client host rejected",
        r"not authori[sz]ed to send",
        r"list of senders",
        r"senderfilter",
        r"block-?send-?er",
        r"auth(?:entication)? required",
        r"\byour (?:account|access|ip|domain)\b(?: \S+){0,6} (?:disabled|suspended|blocked|locked)",
        # Callout verification of our envelope sender, the sender's own account, a
        # policy refusal: the fault is ours, whatever address the reply names.
        r"\bverification failed for\b",
        r"sender (?:address )?(?:does ?n[o']?t|does not) match",
        r"sending for this account",
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
    ),
    _p(C.RELAY_DENIED, r"\bno relaying\b"),
    _p(C.OTHER, r"\bon hold\b"),
    # The recipient. Disabled before unknown: "invalid mailbox ... account is
    # disabled" is a disabled account.
    _p(
        C.MAILBOX_DISABLED,
        r"\b(?:account|mailbox|address|user|recipient)\b(?: \S+){0,7} (?:is |has been |was )?"
        r"(?:disabled|inactive|deactivated|suspended|frozen|discontinued|locked)\b",
        r"\b(?:disabled|inactive|deactivated|suspended) (?:\w+ )?(?:recipient|account|mailbox"
        r"|user|address)",
        r"recipient (?:account|address|mailbox)\b(?: \S+){0,3} (?:is )?blocked\b",
        r"blocked due to inactivity",
        r"\bis now disabled\b",
        r"not (?:configured|enabled|allowed) to receive",
    ),
    _p(
        C.DOMAIN_NOT_FOUND,
        r"domain (?:name )?not found",
        r"host or domain name not found",
        r"host (?:unknown|not found)",
        r"\bdomain\b(?: \S+){0,3} (?:does not|doesn't) exist",
        r"no such domain",
        r"unknown domain",
        r"invalid domain",
        r"domain is not reachable",
        r"nxdomain",
        r"null ?mx",
        r"domain\b(?: \S+){0,2} does not accept mail",
        r"doesn't receive email",
        r"no-?domain",
        r"unrouteable",
        r"domain (?:is )?not (?:configured|hosted|served)",
        r"mx records point to non-?existent hosts",
        r"nomxhostfound",
        r"no mx (?:record|host)s? (?:found )?for",
        r"indicated no smtp service",
        r"does not accept (?:e-?)?mail\b(?! from)",
    ),
    _p(
        C.USER_UNKNOWN,
        r"(?:user|recipient|addressee|mailbox|address|alias|account)(?:name)? unknown",
        r"unknown (?:or illegal )?(?:user|recipient|mailbox|address|alias|local)",
        r"no such (?:user|recipient|mailbox|address|account|person)",
        r"\b(?:does ?n[o']?t|dosn'?t|do not) exist",
        r"not found by smtp address lookup",
        r"recip(?:ient)?notfound",
        r"(?:user|recipient|mailbox|address|account)(?: \S+){0,2} (?:was |is )?not found",
        r"(?:user|recipient|mailbox|address|account)(?: \S+){0,2} could ?n[o']?t be found",
        r"invalid final delivery userid",
        r"invalid (?:recipient|mailbox|address|user)",
        r"destinataire invalide",
        r"mailbox (?:is |currently )?unavailable",
        r"\bno mailbox\b",
        r"mailbox unallocated",
        r"no longer (?:valid|on server|available|exists)",
        r"(?:does ?n[o']?t|does not) have an? (?:\S+ )?account",
        r"not a valid (?:user|recipient|mailbox)",
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
        r"bulk mail",
    ),
    # Opaque policy wording ("Local Policy Violation", "not accepted for
    # policy reasons") gives no cause; keep it out of the code fallbacks.
    _p(C.OTHER, r"policy violation", r"policy reasons"),
    _p(
        C.SERVICE_UNAVAILABLE,
        r"service (?:is )?(?:currently |temporarily )?(?:not available|unavailable)",
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
    # Last: a bare "recipient (address) rejected" with no reason we know
    # is how most servers word an unknown recipient. Any stated reason
    # (quota, spam, greylisting, relay, policy) has matched above.
    _p(C.USER_UNKNOWN, r"recipient (?:address )?rejected", r"\baddress rejected"),
    # A temporary reply that only asks us to come back later.
    _p(C.SERVICE_UNAVAILABLE, r"try (?:again )?later", r"please retry", classes=[0, 4]),
)
del C

_TEMPORARY = re.compile(r"try again|temporar|timed? ?out|servfail", re.IGNORECASE)
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


def _vendor_category(reply: Reply) -> Category | None:
    microsoft = _microsoft_category(reply.enhanced)
    if microsoft is not None:
        return microsoft
    match = _SPECTRUM_AUP.search(reply.message)
    if match is None:
        return None
    number = int(match.group(1))
    for low, high, category in _SPECTRUM_RANGES:
        if low <= number <= high:
            return category
    return None


def _microsoft_category(enhanced: str | None) -> Category | None:
    """Microsoft's three-digit X.7.5xx/6xx details are precise where its
    words are not ("451 4.7.500 Server busy" is throttling of our IP)."""
    if enhanced is None or enhanced[2:4] != "7.":
        return None
    number = int(enhanced[4:])
    if enhanced[0] == "4" and 500 <= number <= 699:
        return Category.RATE_LIMITED
    if enhanced[0] == "5" and 606 <= number <= 649:
        return Category.SPAM_BLOCK_IP
    return None


# Enhanced subject.detail -> category: RFC 3463, the later IANA registrations
# and Microsoft's published details (2.121/2.122 hourly limits, 4.310 no such
# DNS domain). X.n.0 ("other ... status") is deliberately absent: servers use
# it for anything, so the basic code decides.
_BY_ENHANCED: dict[str, Category] = {
    "1.1": Category.USER_UNKNOWN,
    "1.2": Category.DOMAIN_NOT_FOUND,
    "1.3": Category.USER_UNKNOWN,
    "1.6": Category.USER_UNKNOWN,
    "1.7": Category.POLICY_AUTH,
    "1.8": Category.POLICY_AUTH,
    "1.10": Category.DOMAIN_NOT_FOUND,
    "2.1": Category.MAILBOX_DISABLED,
    "2.2": Category.MAILBOX_FULL,
    "2.3": Category.MESSAGE_TOO_LARGE,
    "2.121": Category.RATE_LIMITED,
    "2.122": Category.RATE_LIMITED,
    "3.4": Category.MESSAGE_TOO_LARGE,
    "4.4": Category.DOMAIN_NOT_FOUND,
    "4.6": Category.OTHER,
    "4.7": Category.OTHER,
    "4.310": Category.DOMAIN_NOT_FOUND,
    "5.3": Category.TOO_MANY_RECIPIENTS,
    "7.7": Category.CONTENT_REJECTED,
    "7.10": Category.TLS_REQUIRED,
    "7.11": Category.TLS_REQUIRED,
    "7.13": Category.MAILBOX_DISABLED,
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
