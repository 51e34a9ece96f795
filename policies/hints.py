"""Provider throttling hints: what a well-known deferral asks of the sender.

Yahoo, Gmail and Microsoft put codes of their own in their replies
(``[TSS04]``, ``?p=UnsolicitedRateLimitError``, ``(S3140)``). Such a code
says more than the reply's class and words: how long the provider wants us
to stay away, whether it wants less traffic, and whether the trouble is our
source IP. ``hint_for(reply)`` reads those codes into a ``ProviderHint``; the
delivery worker may schedule the next attempt from it and slow the
destination down (``relay.delivery.throttle``). A hint never changes what
``classify`` says: a 550 S3140 stays a hard bounce and a 421 TSS04 a soft
one.

Hints
=====

=====================  ==================  =======  =====  =====  ==============================
token                  name                retry    other  slow   source
                                           after    IP     down
=====================  ==================  =======  =====  =====  ==============================
[TS01] [TSS01]         yahoo-ts01          4h       no     yes    Yahoo TS01 help text ("retry
                                                                  approximately four hours
                                                                  after"); help.yahoo.com
                                                                  SLN26151 (4xx: resend 4 hours
                                                                  after the error)
[TS02] [TSS02]         yahoo-ts02          4h       no     yes    help.yahoo.com SLN3326
                                                                  (unusual traffic from the IP);
                                                                  SLN26151 for the delay
[TS03] [TSS03]         yahoo-ts03          24h      yes    no     help.yahoo.com SLN3436 ("All
                                                                  messages from x.x.x.x
                                                                  permanently deferred": do not
                                                                  resend until practices change)
[TS04] [TSS04]         yahoo-ts04          2h       no     yes    KumoMTA shaping.toml (regex
[IPTS04]                                                          "TS?S04": suspend 2 hours) and
                                                                  KumoCorp/kumomta#51
                                                                  ("two hours, as per Yahoo's
                                                                  recommendation")
[TSS05] [IPTS05]       yahoo-ts05          2h       no     yes    KumoCorp/kumomta#376 (Yahoo:
                                                                  treat like TSS04)
[TS06] [TSS06]         yahoo-ts06          24h      yes    no     553 5.7.2 "[TSS06] All messages
                                                                  from x.x.x.x will be
                                                                  permanently deferred; Retrying
                                                                  will NOT succeed"; SLN3436
?p=UnsolicitedRate-    gmail-4.7.28        1h       no     yes    Gmail SMTP errors (Workspace
LimitError, or 4.7.28  (gmail-4.7.0 for                           answer 3726730): "temporarily
from Google            the older 4.7.0                            rate limited"; no published
                       wording)                                   duration, 1h is ours
?p=ReceivingRate       gmail-4.2.1         1h       no     no     answer 3726730: 450 4.2.1 "the
                                                                  user ... is receiving mail at a
                                                                  rate that prevents additional
                                                                  messages"; one recipient's
                                                                  limit, 1h is ours
?p=ReceivingRatePerm   gmail-5.2.1         4h       no     no     the same limit, which Gmail
                                                                  calls lasting; 4h is ours
(S3113) (S3114)        microsoft-s3113,    90m      no     yes    451 4.7.650/4.7.651
                       microsoft-s3114                            "temporarily rate limited due
                                                                  to IP reputation"; KumoMTA
                                                                  shaping.toml slows that
                                                                  wording for 90 minutes
4.7.650 4.7.651 (no    microsoft-4.7.650,  90m      no     yes    the same replies with another
S code above)          microsoft-4.7.651                          S code (S775, S843)
(S3140) (S3150)        microsoft-s3140,    1h       yes    no     550 5.7.1 "part of their
                       microsoft-s3150                            network is on our block list";
                                                                  listed until delisted
                                                                  (sender.office.com); 1h is ours
=====================  ==================  =======  =====  =====  ==============================

Why the columns say what they say:

* ``slow_down`` is for limits on *volume* (Yahoo's deferrals for volume or
  complaints, Gmail's and Microsoft's rate limits): the destination as a
  whole wants less from us, so the whole destination pauses and slows.
* ``other_ip`` is for *blocks of an IP* (Yahoo's "permanently deferred",
  Microsoft's block list): another IP of the pool may well be welcome, so
  pausing the destination for every IP would be wrong (``slow_down`` no).
  A rate limit never asks for another IP: moving the same traffic to a
  fresh IP is what providers call snowshoeing, and it spreads the damage.
* Gmail's receiving-rate replies are about one recipient's mailbox, not about
  us: the recipient waits, the destination does not.

Matching reads the provider's code tokens, never whole sentences: a Yahoo
code only inside brackets or parentheses (``[TSS04]``, ``(TSS04)``), a
Microsoft S code only in the same way (so ``(AS77712344)`` is not one), and
Gmail's help-link parameter with nothing word-like after it (a URL-defence
rewrite ``?p=ReceivingRate__;`` still counts). Tokens are read anywhere in the
text, so multi-line replies, Postfix-joined continuations and DSN folding do
not matter. A 2xx reply or a synthetic one (our own words) never gives a
hint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from policies.smtp_reply import Reply

__all__ = ["HINTS", "ProviderHint", "hint_for"]


@dataclass(frozen=True)
class ProviderHint:
    """What a provider's throttling reply asks of us (see the module table)."""

    name: str  # stable id, e.g. "yahoo-ts04"
    provider: str  # "yahoo", "gmail", "microsoft"
    retry_after: timedelta  # when to try this destination (or recipient) again
    other_ip: bool  # the block is about our source IP: prefer another IP of the pool
    slow_down: bool  # the destination wants less traffic from us
    why: str  # one line for logs and the operator


_M = timedelta(minutes=1)
_H = timedelta(hours=1)


def _yahoo(number: str, retry_after: timedelta, *, blocked: bool, why: str) -> ProviderHint:
    return ProviderHint(
        f"yahoo-ts{number}", "yahoo", retry_after, other_ip=blocked, slow_down=not blocked, why=why
    )


def _ms(name: str, retry_after: timedelta, *, blocked: bool, why: str) -> ProviderHint:
    return ProviderHint(
        f"microsoft-{name}",
        "microsoft",
        retry_after,
        other_ip=blocked,
        slow_down=not blocked,
        why=why,
    )


_VOLUME = "deferred for unusual volume or user complaints"
_MS_RATE = "rate limited due to IP reputation; slow down, Microsoft re-evaluates"
_MS_BLOCK = "our IP's network is on Microsoft's block list; retry from another IP"
_ALL: tuple[ProviderHint, ...] = (
    _yahoo("01", 4 * _H, blocked=False, why=f"Yahoo TS01: {_VOLUME}; Yahoo asks for ~4h"),
    _yahoo("02", 4 * _H, blocked=False, why=f"Yahoo TS02: {_VOLUME}; Yahoo asks for ~4h"),
    _yahoo("03", 24 * _H, blocked=True, why="Yahoo TS03: this IP is deferred until it changes"),
    _yahoo("04", 2 * _H, blocked=False, why=f"Yahoo TS04: {_VOLUME}; stay away ~2h"),
    _yahoo("05", 2 * _H, blocked=False, why=f"Yahoo TS05: {_VOLUME}; stay away ~2h"),
    _yahoo("06", 24 * _H, blocked=True, why="Yahoo TS06: this IP is refused; retrying fails"),
    ProviderHint(
        "gmail-4.7.28",
        "gmail",
        _H,
        other_ip=False,
        slow_down=True,
        why="Gmail 4.7.28: unusual rate of unsolicited mail; temporarily rate limited",
    ),
    ProviderHint(
        "gmail-4.7.0",
        "gmail",
        _H,
        other_ip=False,
        slow_down=True,
        why="Gmail 4.7.0: unusual rate of unsolicited mail; temporarily rate limited",
    ),
    ProviderHint(
        "gmail-4.2.1",
        "gmail",
        _H,
        other_ip=False,
        slow_down=False,
        why="Gmail 4.2.1: this recipient receives mail too fast; resend later",
    ),
    ProviderHint(
        "gmail-5.2.1",
        "gmail",
        4 * _H,
        other_ip=False,
        slow_down=False,
        why="Gmail 5.2.1: this recipient is over its receiving rate for a while",
    ),
    _ms("s3113", 90 * _M, blocked=False, why=f"Microsoft S3113: {_MS_RATE}"),
    _ms("s3114", 90 * _M, blocked=False, why=f"Microsoft S3114: {_MS_RATE}"),
    _ms("4.7.650", 90 * _M, blocked=False, why=f"Microsoft 4.7.650: {_MS_RATE}"),
    _ms("4.7.651", 90 * _M, blocked=False, why=f"Microsoft 4.7.651: {_MS_RATE}"),
    _ms("s3140", _H, blocked=True, why=f"Microsoft S3140: {_MS_BLOCK}"),
    _ms("s3150", _H, blocked=True, why=f"Microsoft S3150: {_MS_BLOCK}"),
)
HINTS: Mapping[str, ProviderHint] = MappingProxyType({hint.name: hint for hint in _ALL})

# A token stands alone inside brackets or parentheses, so "[TSS04]" counts and
# "TSS04" inside a word, a queue id or "(AS77712344)" does not. Yahoo writes
# the same code as TS, TSS or IPTS depending on the cluster.
_YAHOO = re.compile(r"[\[(]\s*(?:IPTS|TSS|TS)(0[1-6])\s*[\])]", re.IGNORECASE)
_MICROSOFT = re.compile(r"[\[(]\s*S(3113|3114|3140|3150)\s*[\])]", re.IGNORECASE)
_MICROSOFT_ENHANCED = frozenset({"4.7.650", "4.7.651"})
# Gmail's help link names the case; a URL-defence rewrite may append "__;".
_GMAIL_LINK = re.compile(
    r"[?&]p=(ReceivingRatePerm|ReceivingRate|UnsolicitedRateLimitError)(?![A-Za-z0-9])"
)
_GMAIL_LINK_HINT = {
    "ReceivingRatePerm": "gmail-5.2.1",
    "ReceivingRate": "gmail-4.2.1",
}
# 4.7.28 without the link (a truncated or reworded reply) only counts when the
# reply is Google's: other servers may use the same code for their own limits.
_GOOGLE = re.compile(r"\bgsmtp\b|\bgmail\b|google\.com", re.IGNORECASE)


def hint_for(reply: Reply) -> ProviderHint | None:
    """The provider hint in ``reply``, or None (see the module table)."""
    if reply.synthetic or _is_success(reply):
        return None
    text = reply.text
    yahoo = _YAHOO.search(text)
    if yahoo:
        return HINTS[f"yahoo-ts{yahoo.group(1)}"]
    microsoft = _MICROSOFT.search(text)
    if microsoft:
        return HINTS[f"microsoft-s{microsoft.group(1)}"]
    if reply.enhanced in _MICROSOFT_ENHANCED:
        return HINTS[f"microsoft-{reply.enhanced}"]
    return _gmail_hint(reply)


def _is_success(reply: Reply) -> bool:
    # Like ``Reply.reply_class == 2``, without trusting a hand-built enhanced code.
    if 100 <= reply.code <= 599:
        return reply.code // 100 == 2
    return (reply.enhanced or "").startswith("2.")


def _gmail_hint(reply: Reply) -> ProviderHint | None:
    link = _GMAIL_LINK.search(reply.text)
    if link:
        name = _GMAIL_LINK_HINT.get(link.group(1))
        if name is None:  # the unsolicited-mail rate limit, old or new code
            name = "gmail-4.7.0" if reply.enhanced == "4.7.0" else "gmail-4.7.28"
        return HINTS[name]
    if reply.enhanced == "4.7.28" and _GOOGLE.search(reply.text):
        return HINTS["gmail-4.7.28"]
    return None
