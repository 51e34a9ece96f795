"""Provider reply families: where one provider words one reply several ways.

``policies.templates`` masks what changes from one bounce to the next by its
shape. Some providers also vary the *words* of one reply: Gmail rewords a
reply over the years ("Our system has detected" / "Gmail has detected") and
sends it in a temporary and a permanent form (``?p=OverQuotaTemp`` /
``?p=OverQuotaPerm``); Postfix names whichever lookup table missed the user;
a DNS failure carries the resolver's answer. A shape cannot tell those from
different replies, so each family is written down here: what identifies the
reply (the provider's own stable identifier where it has one: a help topic,
an Exchange status name, a fixed lead sentence) and what its template is.

Every entry is matched against the masked words (addresses already
``<email>``, and so on) and its template must match its own entry again, so
that a template is its own template (a test holds every entry to that).
Pure data and ``re``; nothing here reads the network or a clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "FAMILIES",
    "HELP_HOSTS",
    "REASON_QUERIES",
    "STOCK",
    "STOCK_LEAD",
    "STOCK_TEXTS",
    "Family",
]


class Family(NamedTuple):
    """One reply family. Where ``pattern`` is found in the words, the match
    becomes ``template`` (``re.Match.expand`` syntax, or a function of the
    match), or, with ``whole``, the words become it. ``code``: only for
    replies with that reply code."""

    provider: str
    pattern: re.Pattern[str]
    template: str | Callable[[re.Match[str]], str]
    code: str = ""
    whole: bool = False
    signed: Callable[[re.Match[str], str], bool] | None = None

    def apply(self, words: str) -> str:
        """The words with this family's template where its pattern is found (and,
        for a family with a ``signed`` test, where the match is the provider's own)."""
        found = self.pattern.search(words)
        if found is None:
            return words
        if self.signed is not None and not self.signed(found, words):
            return words
        template = self.template
        replacement = template(found) if callable(template) else found.expand(template)
        if self.whole:
            return replacement
        return words[: found.start()] + replacement + words[found.end() :]


# Gmail names each reply by a help topic (support.google.com/mail/?p=<Topic>,
# or an answer number). The topic is the reply; a key phrase finds it in a
# copy that lost its URL (a gateway trimmed it, a corpus cut it). Gmail's own
# lead ("The email account that you tried to reach ...") is a key phrase by
# itself; a phrase other servers say too ("inbox is out of storage space") is
# one only in a copy Gmail signed ("- gsmtp"): another server's reply is its
# own. The template is the reply's lead sentence and Gmail's signature. A
# topic of no family here keeps the reply's own words (it has one wording).
_GMAIL_TOPICS: tuple[tuple[str, str, str], ...] = (
    # (topic in the help URL, key phrase, the reply's lead sentence)
    (
        r"\?p=NoSuchUser",
        r"tried to reach does not exist",
        "The email account that you tried to reach does not exist.",
    ),
    (
        r"\?p=DisabledUser",
        r"tried to reach is (?:disabled|inactive)\b",  # both wordings are in use
        "The email account that you tried to reach is disabled.",
    ),
    (
        r"\?p=OverQuota(?:Temp|Perm)?",
        r"tried to reach is over quota|inbox is out of storage space",  # the second: signed
        "The recipient's inbox is out of storage space.",
    ),
    (
        r"\?p=ReceivingRate(?:Temp|Perm)?",
        r"is receiving mail at a rate that prevents",
        "The user you are trying to contact is receiving mail at a rate that prevents "
        "additional messages from being delivered.",
    ),
    (
        r"\?p=UnsolicitedMessageError",
        r"this message is likely unsolicited mail",
        "Gmail has detected that this message is likely unsolicited mail.",
    ),
    (
        r"\?p=UnsolicitedRateLimitError",
        r"an unusual rate of unsolicited mail",
        "Gmail has detected an unusual rate of unsolicited mail originating from your "
        "IP address or domain.",
    ),
    (
        r"\?p=DmarcRejection|answer/2451690",
        r"is not accepted due to domain's DMARC policy",
        "Unauthenticated email from <domain> is not accepted due to domain's DMARC policy.",
    ),
    (
        r"answer/188131",
        r"very low reputation of the sending",
        "Gmail has detected that this message is likely suspicious due to the very low "
        "reputation of the sending IP address or domain.",
    ),
)


def _gmail() -> Family:
    """All topics in one pattern, one scan, and without groups (they would
    cost the scan its literal prefixes): the matched text names the topic."""
    url = r"support\.google\.com/mail/"
    keys = [rf"{url}(?:{topic})(?![\w-])|{phrase}" for topic, phrase, _ in _GMAIL_TOPICS]
    topics = [
        (re.compile(key), f"{words} - gsmtp")
        for key, (_, _, words) in zip(keys, _GMAIL_TOPICS, strict=True)
    ]

    def sentence(found: re.Match[str]) -> str:
        return next(words for key, words in topics if key.fullmatch(found.group()))

    signature = re.compile(rf"\bgsmtp\b|{url}")

    def signed(found: re.Match[str], words: str) -> bool:
        return _GMAIL_OWN_LEAD.match(found.group()) is not None or bool(signature.search(words))

    return Family("gmail", re.compile("|".join(keys)), sentence, whole=True, signed=signed)


# What only Gmail says: a topic's help URL, or its lead "The email account that you tried
# to reach ...".
_GMAIL_OWN_LEAD = re.compile(r"support\.google\.com/mail/|tried to reach (?:does|is)\b")


def _family(provider: str, pattern: str, template: str, code: str = "") -> Family:
    return Family(provider, re.compile(pattern), template, code)


FAMILIES: tuple[Family, ...] = (
    _gmail(),
    # Exchange names the reply ("RESOLVER.ADR.RecipientNotFound;"); the
    # explanation after the name may or may not name the recipient.
    _family("exchange", r"^([A-Z]+(?:\.[A-Z]+)+\.[A-Z]\w*;.*?) <email>(?=\s|$)", r"\1"),
    # Postfix names the lookup table that missed: local recipient, virtual
    # alias, virtual mailbox, relay recipient. One reply: user unknown.
    _family("postfix", r"(User unknown) in [a-z]+(?: [a-z]+)? table\b", r"\1"),
    # Postfix's DNS failure: the record type and the resolver's answer
    # ("Host not found", "Host not found, try again") follow the name.
    _family(
        "postfix",
        r"^(Host or domain name not found\. Name service error for name=<domain>) type=.*$",
        r"\1",
    ),
    # Google's outbound DNS failure: a query id, then the lookup and the
    # resolver's answer (NXDOMAIN, or NOERROR with a null MX).
    _family(
        "google",
        r"^DNS Error: (?:<n> )?(DNS type '\w+' lookup of <domain>)(?![\w.]).*$",
        r"DNS Error: \1",
    ),
    # Mail.ru's invalid-mailbox reply ends in the reason it found ("user not
    # found", "account is disabled").
    _family(
        "mailru",
        r"^(Message was not accepted -- invalid mailbox\. Local mailbox <email> is unavailable)"
        r":.*$",
        r"\1",
    ),
    # Rambler's non-standard 540 answers with the account's state
    # ("Inactive", "Blocked").
    _family("rambler", r"^([Rr]ecipient address rejected): [A-Za-z]+$", r"\1", code="540"),
    # T-Online: "IP=<ip> - <reason>. (Ask your postmaster ... <email> ...) (<tag>)".
    _family(
        "t-online",
        r"^IP=<ip> - .*?\b(Ask your postmaster for help or to contact <email>).*$",
        r"IP=<ip> - \1",
    ),
    # QQ: "Ip frequency limited", "Connection frequency limited", one help topic.
    _family("qq", r"^[A-Za-z]+ frequency limited\b", "Frequency limited"),
    # Any DNS failure names the record type it looked up ("type=AAAA", "record type MX",
    # "DNS type 'mx' lookup"): one failure, whichever record it was.
    _family(
        "dns",
        r"\b((?:[Rr]ecord |DNS )?type[= ])'?(?i:A|AAAA|MX|TXT|CNAME|NS|SOA|PTR|SRV|TLSA)'?(?!\w)",
        r"\1<type>",
    ),
)

# Help pages that moved: the old host and the current one are one page.
HELP_HOSTS: dict[str, str] = {
    "postmaster.verizonmedia.com": "senders.yahooinc.com",
    "postmaster.yahooinc.com": "senders.yahooinc.com",
}

# Help pages whose query names a reason inside the page's topic: QQ's
# "help?subtype=1&&id=20022&&no=1000725" is topic 20022 (frequency limited),
# reason 1000725 (per IP) or 1000722 (per connection).
REASON_QUERIES: dict[str, frozenset[str]] = {
    "service.mail.qq.com": frozenset({"no"}),
    "service.exmail.qq.com": frozenset({"no"}),
}

# RFC 5321's stock texts (section 4.2.2), which many servers send as they
# are: the one family that names no provider, so its template keeps the
# codes, which do.
STOCK_TEXTS: tuple[str, ...] = (
    "Service not available, closing transmission channel",
    "Requested mail action not taken: mailbox unavailable",
    "Requested action aborted: local error in processing",
    "Requested action not taken: insufficient system storage",
    "Requested action not taken: mailbox unavailable",
    "Requested mail action aborted: exceeded storage allocation",
    "Requested action not taken: mailbox name not allowed",
    "Transaction failed",
    "Syntax error, command unrecognized",
    "Syntax error in parameters or arguments",
    "Command not implemented",
    "Bad sequence of commands",
    "Command parameter not implemented",
)
STOCK = frozenset(text.casefold() for text in STOCK_TEXTS)
# A stock text with the server's own words after it: the punctuation in
# between is neither's ("...storage allocation, Quota exceeded").
STOCK_LEAD = re.compile(
    "^((?i:" + "|".join(re.escape(text) for text in STOCK_TEXTS) + "))[.,;:]?\\s+(?=\\S)"
)
