"""decide(): classification + resend rules -> the next state of one delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from policies.classify import SuppressOn
from policies.outcome import decide
from policies.retry import RetryPolicy, RetryRule
from policies.smtp_reply import parse_reply, synthetic_reply
from policies.states import DeliveryState, EventType

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(
    default=RetryRule.build(
        "default", schedule=[timedelta(minutes=5), timedelta(hours=1)], max_age=timedelta(days=1)
    ),
    rules=(
        RetryRule.build(
            "greylisting",
            categories=["greylisted"],
            schedule=[timedelta(minutes=2)],
            max_attempts=3,
            source="other_ip",
        ),
    ),
)


def _decide(raw: str, attempts: int = 1, first: datetime | None = None, **kw: Any):
    return decide(
        parse_reply(raw),
        "example.org",
        attempts=attempts,
        first_failure_at=first,
        now=NOW,
        retry=POLICY,
        **kw,
    )


def test_2xx_is_delivered():
    """A 250 after DATA finishes the delivery."""
    d = _decide("250 2.0.0 OK queued")
    assert (d.state, d.event, d.suppress) == (DeliveryState.DELIVERED, EventType.DELIVERED, False)


def test_user_unknown_bounces_and_suppresses():
    """550 5.1.1 unknown user: bounced, suppressed (recipient cause)."""
    d = _decide("550 5.1.1 <x@example.org>: Recipient address rejected: User unknown")
    assert (d.state, d.event, d.suppress) == (DeliveryState.BOUNCED, EventType.HARD_BOUNCE, True)


def test_ip_block_bounces_without_suppressing_unless_any_5xx():
    """554 5.7.1 IP block: a hard bounce that leaves the address alone, unless any_5xx."""
    raw = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    assert _decide(raw).state is DeliveryState.BOUNCED
    assert _decide(raw).suppress is False
    assert _decide(raw, suppress_on=SuppressOn.ANY_5XX).suppress is True


def test_soft_bounce_is_rescheduled_by_the_default_schedule():
    """452 mailbox full on attempt 1 -> queued again 5 minutes later; attempt 2 -> 1 hour."""
    first = _decide("452 4.2.2 Mailbox full")
    assert first.state is DeliveryState.QUEUED
    assert first.event is EventType.SOFT_BOUNCE
    assert first.next_attempt_at == NOW + timedelta(minutes=5)
    assert first.rule == "default"
    second = _decide("452 4.2.2 Mailbox full", attempts=2, first=NOW - timedelta(minutes=5))
    assert second.next_attempt_at == NOW + timedelta(hours=1)


def test_matching_rule_sets_timing_and_source_ip_choice():
    """Greylisting text matches the greylisting rule: 2 minutes, from another source IP."""
    d = _decide("451 4.7.1 Greylisted, please try again later")
    assert d.rule == "greylisting"
    assert d.next_attempt_at == NOW + timedelta(minutes=2)
    assert d.other_source_ip is True


def test_rule_gives_up_into_expired_with_non_delivery():
    """The greylisting rule's third attempt fails: expired, with a non_delivery event."""
    d = _decide("451 4.7.1 Greylisted, please try again later", attempts=3, first=NOW)
    assert (d.state, d.non_delivery) == (DeliveryState.EXPIRED, True)
    assert d.give_up_reason == "max_attempts 3 reached"


def test_max_age_gives_up():
    """Past the default max_age (1 day since the first failure) the delivery expires."""
    d = _decide("421 4.3.2 try later", attempts=5, first=NOW - timedelta(hours=23, minutes=30))
    assert d.state is DeliveryState.EXPIRED
    assert "max_age" in (d.give_up_reason or "")


def test_connection_failure_is_soft_and_never_suppresses():
    """Our own 'connection refused' is soft even under any_5xx."""
    reply = synthetic_reply(421, "4.4.1", "connect to 127.0.0.1:25: Connection refused")
    d = decide(
        reply,
        "example.org",
        attempts=1,
        first_failure_at=None,
        now=NOW,
        retry=POLICY,
        suppress_on=SuppressOn.ANY_5XX,
    )
    assert (d.state, d.suppress) == (DeliveryState.QUEUED, False)


TS04 = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume"
    " or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)


def test_a_provider_hint_schedules_instead_of_the_default_rule():
    """Yahoo [TSS04]: retried after the hint's 2 h, not the schedule's 5 m; the rule names it."""
    d = _decide(TS04)
    assert (d.state, d.rule, d.next_attempt_at) == (
        DeliveryState.QUEUED,
        "yahoo-ts04",
        NOW + timedelta(hours=2),
    )
    assert d.hint is not None and d.hint.slow_down


def test_an_operator_rule_beats_a_provider_hint():
    policy = RetryPolicy(
        default=POLICY.default,
        rules=(RetryRule.build("yahoo", text=r"TSS04", schedule=[timedelta(minutes=20)]),),
    )
    d = decide(
        parse_reply(TS04), "yahoo.com", attempts=1, first_failure_at=None, now=NOW, retry=policy
    )
    assert (d.rule, d.next_attempt_at) == ("yahoo", NOW + timedelta(minutes=20))


def test_a_hint_past_max_age_gives_up():
    """Failing for 23 h of a 1 d max_age: a 2 h hint would overshoot, so it gives up now."""
    d = _decide(TS04, attempts=5, first=NOW - timedelta(hours=23))
    assert (d.state, d.non_delivery) == (DeliveryState.EXPIRED, True)
    assert d.give_up_reason is not None and "yahoo-ts04" in d.give_up_reason
