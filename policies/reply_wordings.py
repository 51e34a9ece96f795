"""The wordings of replies, in order: the first pattern that matches a reply's
words names its category (``policies.classify`` reads the words after the
vendors' published codes and before the enhanced and basic codes).

Order matters: the first pattern that matches decides, so the table runs from
the most specific to the most general, and each group of it says why it sits
where it does. The principle:

* What a reply says on top of its generic part decides: a quota or
  greylisting message often starts "Recipient address rejected:", a rate
  limit often says "blocked". After such a prefix the words that follow
  decide: "Mailer error", "No relaying", "On hold", "Access denied" say
  nothing about the mailbox; a bare "recipient address rejected" comes near
  the end, when no stated reason has matched.
* A stated cause beats the pace it led to: "rate limited because SPF did not
  pass" is authentication, "rate limited due to the very low reputation of
  the sending IP" is the IP.
* What is no verdict on the address opens the table: the upstream gave up, is
  looping or is still checking, whatever else the text says.

A recipient pattern also says how much its words prove on their own
(``Proof``); what proof is, and what vetoes it, is in ``policies.classify``
("Evidence").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from policies.categories import Category

__all__ = ["Pattern", "Proof", "first_match"]


class Proof(Enum):
    """How much a recipient pattern's words prove on their own."""

    WORDS = "words"  # "user unknown", "domain does not exist": the words suffice
    # The words name the recipient but not the cause ("mailbox unavailable",
    # "invalid address"): proof only with RFC 5321's mailbox-refusal codes
    # (550 mailbox unavailable, 553 mailbox name not allowed) and no enhanced
    # code that says something else.
    MAILBOX_CODE = "mailbox_code"
    NONE = "none"  # a hedge, a guess, or someone else's DNS: never proof


@dataclass(frozen=True)
class Pattern:
    category: Category
    regex: re.Pattern[str]
    classes: frozenset[int] = frozenset()  # empty: any reply class
    proof: Proof = Proof.WORDS

    def applies(self, reply_class: int) -> bool:
        return not self.classes or reply_class in self.classes


def first_match(reply_class: int, words: str) -> Pattern | None:
    """The first pattern, in table order, that applies to ``reply_class`` (0 for
    a reply without a code) and matches ``words``; ``None`` if none does."""
    for pattern in _PATTERNS:
        if pattern.applies(reply_class) and pattern.regex.search(words):
            return pattern
    return None


def _p(
    category: Category,
    *alternatives: str,
    classes: Iterable[int] = (),
    proof: Proof = Proof.WORDS,
) -> Pattern:
    regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
    return Pattern(category, regex, frozenset(classes), proof)


C = Category
# Order matters: the first pattern that matches decides. Each group says why
# it sits where it does.
_PATTERNS: tuple[Pattern, ...] = (
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
        proof=Proof.NONE,
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
        proof=Proof.NONE,
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
        proof=Proof.NONE,
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
    _p(C.DOMAIN_NOT_FOUND, r"host (?:unknown|not found)|unknown host", proof=Proof.NONE),
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
        proof=Proof.MAILBOX_CODE,
    ),
    # A complaint about the address that does not say it is gone: a syntax
    # complaint, an unroutable address (routing or configuration), no valid
    # recipient left.
    _p(
        C.USER_UNKNOWN,
        r"bad (?:recipient )?address syntax",
        r"unrouteable address",
        r"no (?:valid|correct) recipients",
        proof=Proof.NONE,
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
        proof=Proof.NONE,
    ),
    # A temporary reply that only asks us to come back later.
    _p(C.SERVICE_UNAVAILABLE, r"try (?:again )?later", r"please retry", classes=[0, 4]),
)
del C
