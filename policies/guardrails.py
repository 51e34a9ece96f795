"""Guardrails: whether a send (a campaign from one sending domain to one mailbox provider)
may go on, judged from its counts. Pure: the counts come from the store, the thresholds
from ``[guardrails]``; the watcher (relay.delivery.guardrails), the CLI and the admin page
all ask ``judge``.

A send is watched per campaign x From domain x provider because that is the unit a
provider's reputation systems see and punish (Gmail rates a sending domain, per IP and
domain; a stale list hurts at every provider, but a block by one does not mean the others
are unhappy), and the unit an operator can act on (pause one campaign at one provider,
leave the rest going).

The rates, each over the send's attempts (an attempt is one try of one delivery, one
recipient; a delivery tried three times counts three, so resends make the rates lower,
never higher), and each counted per delivery too:

- ``bounce``: deliveries refused for good (any 5xx: unknown users, blocks, policy, content);
- ``hard_bounce``: deliveries refused because of the recipient (unknown user, disabled
  mailbox, no such domain: ``RECIPIENT_CATEGORIES``, the kind that condemns an address);
- ``unknown_user``: of those, the unknown users alone: the plainest sign of a stale or
  bought list;
- ``complaint``: feedback reports (ARF) from recipients.

Where the default thresholds come from (docs/guardrails.md has the citations):

- bounce: Amazon SES puts an account under review at a 5% bounce rate and may pause it at
  10% (SES Developer Guide, "Reputation metrics messages");
- hard_bounce: SES asks for under 2%; Validity sees deliverability problems from 5% on;
- unknown_user: Validity: senders with good inbox placement keep it under 1%, problems at
  or above 5% ("Best practices for avoiding high unknown user rates");
- complaint: Google's sender guidelines: keep it under 0.1%, never reach 0.3%; Yahoo says
  the same.

A rate is judged once the send has ``min_attempts`` attempts (complaints: their own, larger
minimum, since 0.3% of a hundred is a third of a complaint): before that one bad reply
would be a 100% rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

__all__ = [
    "RATES",
    "Canary",
    "Finding",
    "GuardrailRules",
    "Judgement",
    "Level",
    "SendCounts",
    "Threshold",
    "Thresholds",
    "canary_slice",
    "judge",
    "since_baseline",
]


class Level(StrEnum):
    OK = "ok"  # judged, under every review threshold
    UNKNOWN = "unknown"  # too few attempts to judge
    REVIEW = "review"  # at or over a review threshold: shown, logged, nothing held
    PAUSE = "pause"  # at or over a pause threshold: the send is held


@dataclass(frozen=True)
class Threshold:
    review: float  # a share: 0.05 is 5%
    pause: float

    def __post_init__(self) -> None:
        if not 0 < self.review <= self.pause <= 1:
            raise ValueError(f"want 0 < review <= pause <= 1, got {self.review}, {self.pause}")


@dataclass(frozen=True)
class Thresholds:
    bounce: Threshold = Threshold(0.05, 0.10)
    hard_bounce: Threshold = Threshold(0.02, 0.05)
    unknown_user: Threshold = Threshold(0.02, 0.05)
    complaint: Threshold = Threshold(0.001, 0.003)
    min_attempts: int = 100
    min_attempts_complaints: int = 1000

    def of(self, rate: str) -> Threshold:
        threshold: Threshold = getattr(self, rate)
        return threshold


RATES = ("bounce", "hard_bounce", "unknown_user", "complaint")


@dataclass(frozen=True)
class SendCounts:
    """What one send (campaign x From domain x provider) did in the watched window."""

    attempts: int = 0
    delivered: int = 0
    bounced: int = 0  # deliveries with a 5xx (hard) bounce of any kind
    hard_bounced: int = 0  # ... about the recipient
    unknown_users: int = 0  # ... an unknown user
    complaints: int = 0

    def count(self, rate: str) -> int:
        return {
            "bounce": self.bounced,
            "hard_bounce": self.hard_bounced,
            "unknown_user": self.unknown_users,
            "complaint": self.complaints,
        }[rate]


def since_baseline(counts: SendCounts, baseline: SendCounts | None) -> SendCounts:
    """What a send did after a release: its counts less those it had then (never below 0:
    a rollup row that retention dropped meanwhile must not make a count negative)."""
    if baseline is None:
        return counts
    return SendCounts(
        **{
            name: max(getattr(counts, name) - getattr(baseline, name), 0)
            for name in SendCounts.__dataclass_fields__
        }
    )


@dataclass(frozen=True)
class Finding:
    """One rate of a send: its value and where it stands against its threshold."""

    rate: str
    count: int
    attempts: int
    value: float | None  # None: too few attempts to judge
    threshold: Threshold
    level: Level

    def describe(self) -> str:
        name = self.rate.replace("_", " ")
        if self.value is None:
            return f"{name}: {self.count} of {self.attempts} attempts (too few to judge)"
        return (
            f"{name} rate {self.value:.2%} ({self.count} of {self.attempts} attempts; "
            f"review at {self.threshold.review:.2%}, pause at {self.threshold.pause:.2%})"
        )


@dataclass(frozen=True)
class Judgement:
    level: Level
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def tripped(self) -> tuple[Finding, ...]:
        """The findings that made the level (at it), worst first."""
        return tuple(f for f in self.findings if f.level is self.level)

    def reason(self) -> str:
        """One line an operator reads: which rates, how high, against what."""
        if self.level in (Level.OK, Level.UNKNOWN):
            return self.level.value
        return "; ".join(f.describe() for f in self.tripped)


def _finding(rate: str, counts: SendCounts, thresholds: Thresholds) -> Finding:
    threshold = thresholds.of(rate)
    count = counts.count(rate)
    minimum = thresholds.min_attempts_complaints if rate == "complaint" else thresholds.min_attempts
    if counts.attempts < minimum:
        # Too few to judge a rate, unless the count alone is over the pause share of the
        # minimum: 12 unknown users in the first 30 attempts of a canary need not wait for
        # 100 attempts to be called bad (12 > 5% of 100 already, whatever follows).
        if count > threshold.pause * minimum:
            value = count / max(counts.attempts, 1)
            return Finding(rate, count, counts.attempts, value, threshold, Level.PAUSE)
        return Finding(rate, count, counts.attempts, None, threshold, Level.UNKNOWN)
    value = count / counts.attempts
    if value >= threshold.pause:
        level = Level.PAUSE
    elif value >= threshold.review:
        level = Level.REVIEW
    else:
        level = Level.OK
    return Finding(rate, count, counts.attempts, value, threshold, level)


_ORDER = {Level.PAUSE: 3, Level.REVIEW: 2, Level.OK: 1, Level.UNKNOWN: 0}


def judge(counts: SendCounts, thresholds: Thresholds) -> Judgement:
    """Where a send stands: the worst of its rates (pause over review over ok); UNKNOWN
    while nothing can be judged yet. Complaints too few to judge do not keep a send whose
    bounces are judged OK from being OK: they are judged once there are enough."""
    findings = tuple(_finding(rate, counts, thresholds) for rate in RATES)
    judged = [f for f in findings if f.level is not Level.UNKNOWN]
    if not judged:
        return Judgement(Level.UNKNOWN, findings)
    level = max((f.level for f in judged), key=_ORDER.__getitem__)
    return Judgement(level, tuple(sorted(findings, key=lambda f: -_ORDER[f.level])))


@dataclass(frozen=True)
class Canary:
    """A new send's first slice: ``size`` deliveries per provider, or ``share`` of the
    campaign's messages queued so far, whichever is larger (0 and 0.0: no canary)."""

    size: int = 100
    share: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.size > 0 or self.share > 0


def canary_slice(canary: Canary, campaign_messages: int) -> int:
    """How many deliveries a new send's canary lets go before its rates are known."""
    return max(canary.size, math.ceil(canary.share * campaign_messages))


@dataclass(frozen=True)
class GuardrailRules:
    """``[guardrails]``: what is watched, against what, and how often."""

    enabled: bool = True
    thresholds: Thresholds = Thresholds()
    canary: Canary = Canary()
    # How long a canary waits for its slice's replies (4xx deferrals, a slow provider)
    # before it is judged on what came back: a canary never holds a send for ever.
    canary_wait: timedelta = timedelta(hours=1)
    check_every: timedelta = timedelta(seconds=2)  # judge the active sends, reload holds
    recheck: timedelta = timedelta(minutes=1)  # a held delivery is looked at again after
    active: timedelta = timedelta(hours=1)  # sends with attempts this recent are judged
    window: timedelta = timedelta(days=7)  # ... on at most this much of their history
