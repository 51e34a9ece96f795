"""``[policy] confirm_hard``: one hard bounce is a suspicion, two are evidence.

A recipient-level hard bounce (the kind that suppresses) first puts the address on
probation instead: the delivery that bounced (the probe) is tried again ``confirm_after``
later, from another IP of the pool where there is one, and new mail to the address waits.
A second such bounce confirms it when it comes at least ``confirm_after`` after the first,
or from another source IP (then a single IP's trouble is ruled out): the address is
suppressed as usual. The probe delivered, or finished any other way, ends the probation and
the mail held for the address goes out.

=================================  ====================================================
reply to the probe                 decision
=================================  ====================================================
recipient-level hard, no probation START: queued until now + confirm_after, no suppression
recipient-level hard, too soon     HOLD: queued until the probation's end
  and from the same IP
recipient-level hard, later or     CONFIRM: bounced and suppressed
  from another IP
delivered                          CLEAR
anything else (soft, IP block)     unchanged; a final state ends the probation (CLEAR)
=================================  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from policies.outcome import Decision, ProbationStep
from policies.states import DeliveryState

__all__ = ["OnProbation", "confirm_hard"]

RULE = "confirm_hard"


@dataclass(frozen=True)
class OnProbation:
    since: datetime
    until: datetime
    source_ip: str | None


def confirm_hard(
    decision: Decision,
    probation: OnProbation | None,
    confirm_after: timedelta | None,
    source_ip: str | None,
    now: datetime,
) -> Decision:
    """``decision`` for the probe (or a first bounce) under confirm_hard; see the table."""
    if confirm_after is None:
        return decision
    if not decision.suppress:
        if probation is not None and decision.state is not DeliveryState.QUEUED:
            return replace(decision, probation=ProbationStep.CLEAR)
        return decision
    if probation is None:
        return replace(
            decision,
            state=DeliveryState.QUEUED,
            next_attempt_at=now + confirm_after,
            other_source_ip=True,
            rule=RULE,
            probation=ProbationStep.START,
        )
    other_ip = source_ip is not None and probation.source_ip not in (None, source_ip)
    if now >= probation.since + confirm_after or other_ip:
        return replace(decision, probation=ProbationStep.CONFIRM)
    return replace(
        decision,
        state=DeliveryState.QUEUED,
        next_attempt_at=max(probation.until, now),
        other_source_ip=True,
        rule=RULE,
        probation=ProbationStep.HOLD,
    )
