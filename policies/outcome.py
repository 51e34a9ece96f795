"""What happens to one delivery after one reply: the decision, as a value.

``decide`` joins classification and the resend rules into the single answer
the delivery worker applies atomically in the store:

=========  ==============  ==================  =========================================
verdict    next state      event               also
=========  ==============  ==================  =========================================
delivered  delivered       delivered
hard       bounced         hard_bounce         suppress when the verdict says so
soft       queued          soft_bounce         next attempt from the matching retry rule
soft       expired         soft_bounce         + non_delivery (the rule gave up)
=========  ==============  ==================  =========================================

A well-known throttling reply (``policies.hints``: Yahoo TS0x, Gmail 4.7.28, Microsoft
S31xx, ...) that only the default retry rule matches is retried when the provider says,
not on the generic schedule; the rule's max_age still holds.

``decide_reported`` does the same for a result read later from a bounce
message (DSN, non-standard bounce, feedback report). The remote system has
already given up or is still trying, so nothing is ever rescheduled:

=========================  ==============  ==========================================
report                     delivery        event
=========================  ==============  ==========================================
failed, verdict hard       bounced         hard_bounce (suppress when the verdict says)
failed, verdict soft       expired         soft_bounce + non_delivery
delayed                    unchanged       soft_bounce
complaint (ARF)            unchanged       complaint; always suppresses (complaint)
delivered/relayed/expanded nothing recorded
=========================  ==============  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from policies.classify import Category, ClassifyRule, Kind, SuppressOn, Verdict, classify
from policies.hints import ProviderHint, hint_for
from policies.retry import (
    GiveUp,
    RetryPolicy,
    RetryRule,
    SourceChoice,
    next_attempt,
    select_rule,
)
from policies.smtp_reply import Reply
from policies.states import DeliveryState, EventType

__all__ = ["Decision", "ProbationStep", "ReportedDecision", "decide", "decide_reported"]


@dataclass(frozen=True)
class Decision:
    state: DeliveryState
    event: EventType
    verdict: Verdict
    rule: str | None  # the classify rule or, for soft bounces, the retry rule that decided
    next_attempt_at: datetime | None = None
    non_delivery: bool = False
    give_up_reason: str | None = None
    other_source_ip: bool = False  # resend from another IP of the pool
    incident_id: int | None = None  # deferred because the reply is part of this incident
    probation: ProbationStep | None = None  # [policy] confirm_hard
    hint: ProviderHint | None = None  # a provider's throttling reply (policies/hints.py)
    retry_rule: RetryRule | None = None  # the [retry] rule a soft bounce matched
    # Filled in by policies.verdict, which owns the rest of the decision:
    template: str | None = None  # the reply with its variable parts replaced (a bounce)
    slow_down_until: datetime | None = None  # the hint asks to pause the destination until
    not_suppressed: str | None = None  # why a bounce suppresses nobody
    cancel_queued: bool = False  # suppressing cancels mail queued for the address (dry_run)

    @property
    def suppress(self) -> bool:
        return self.state is DeliveryState.BOUNCED and self.verdict.suppress

    def spare(self) -> Decision:
        """The same decision suppressing nobody (an allowlisted address)."""
        return replace(self, verdict=replace(self.verdict, suppress=False))


class ProbationStep(StrEnum):
    START = "start"  # first recipient-level hard bounce: probation, the probe retried later
    HOLD = "hold"  # a second one too soon and from the same IP: still on probation
    CONFIRM = "confirm"  # confirmed: suppressed now, probation over
    CLEAR = "clear"  # the probe was delivered (or finished otherwise): probation over


def decide(
    reply: Reply,
    recipient_domain: str,
    *,
    attempts: int,
    first_failure_at: datetime | None,
    now: datetime,
    retry: RetryPolicy,
    classify_rules: Sequence[ClassifyRule] = (),
    suppress_on: SuppressOn = SuppressOn.RECIPIENT,
    jitter: float = 0.0,
) -> Decision:
    """The decision for a delivery whose attempt number ``attempts`` got ``reply`` at ``now``.

    ``first_failure_at`` is the time of the delivery's first soft bounce (None
    when this is the first); ``jitter`` in [0, 1) feeds random backoffs.
    """
    verdict = classify(reply, recipient_domain, rules=classify_rules, suppress_on=suppress_on)
    if verdict.kind is Kind.DELIVERED:
        return Decision(DeliveryState.DELIVERED, EventType.DELIVERED, verdict, verdict.rule)
    hint = hint_for(reply)
    if verdict.kind is Kind.HARD:
        return Decision(
            DeliveryState.BOUNCED, EventType.HARD_BOUNCE, verdict, verdict.rule, hint=hint
        )
    rule = select_rule(retry, reply, verdict, recipient_domain)
    at = next_attempt(rule, attempts, first_failure_at or now, now, jitter=jitter)
    rule_name = rule.name
    # A provider's own word on when to come back beats the generic schedule; a rule the
    # operator wrote for this reply beats both. The rule's limits (max_age) still hold.
    if hint is not None and rule is retry.default and not isinstance(at, GiveUp):
        at = now + hint.retry_after
        rule_name = hint.name
        if rule.max_age is not None and at > (first_failure_at or now) + rule.max_age:
            at = GiveUp(f"{hint.name}: the next attempt would fall after max_age")
    if isinstance(at, GiveUp):
        return Decision(
            DeliveryState.EXPIRED,
            EventType.SOFT_BOUNCE,
            verdict,
            rule_name,
            non_delivery=True,
            give_up_reason=at.reason,
            hint=hint,
            retry_rule=rule,
        )
    return Decision(
        DeliveryState.QUEUED,
        EventType.SOFT_BOUNCE,
        verdict,
        rule_name,
        next_attempt_at=at,
        other_source_ip=rule.source is SourceChoice.OTHER_IP
        or (hint is not None and hint.other_ip),
        hint=hint,
        retry_rule=rule,
    )


@dataclass(frozen=True)
class ReportedDecision:
    event: EventType
    verdict: Verdict
    finish_state: DeliveryState | None = None  # None: the delivery's state stays as it is
    non_delivery: bool = False
    # Filled in by policies.verdict:
    template: str | None = None
    not_suppressed: str | None = None
    cancel_queued: bool = False

    @property
    def suppress(self) -> bool:
        return self.verdict.suppress


def decide_reported(
    action: str,
    reply: Reply,
    recipient_domain: str,
    *,
    classify_rules: Sequence[ClassifyRule] = (),
    suppress_on: SuppressOn = SuppressOn.RECIPIENT,
) -> ReportedDecision | None:
    """The decision for one recipient result of a bounce message (see the table above);
    None for an action that reports success."""
    if action == "complaint":
        return ReportedDecision(
            EventType.COMPLAINT, Verdict(Kind.HARD, Category.COMPLAINT, suppress=True)
        )
    if action not in ("failed", "delayed"):
        return None
    verdict = classify(reply, recipient_domain, rules=classify_rules, suppress_on=suppress_on)
    if verdict.kind is Kind.DELIVERED:
        # A failure report whose text reads as success ("250 OK" quoted): not evidence.
        verdict = Verdict(Kind.SOFT, Category.OTHER, suppress=False, rule=verdict.rule)
    if action == "delayed":
        soft = Verdict(Kind.SOFT, verdict.category, suppress=False, rule=verdict.rule)
        return ReportedDecision(EventType.SOFT_BOUNCE, soft)
    if verdict.kind is Kind.HARD:
        return ReportedDecision(EventType.HARD_BOUNCE, verdict, DeliveryState.BOUNCED)
    return ReportedDecision(
        EventType.SOFT_BOUNCE, verdict, DeliveryState.EXPIRED, non_delivery=True
    )
