"""policies.guardrails: the judgement of a send from its counts."""

from __future__ import annotations

import random

import pytest

from policies.guardrails import (
    Canary,
    Level,
    SendCounts,
    Threshold,
    Thresholds,
    canary_slice,
    judge,
    since_baseline,
)

DEFAULTS = Thresholds()


def test_too_few_attempts_is_unknown():
    verdict = judge(SendCounts(attempts=40, bounced=2, hard_bounced=2), DEFAULTS)
    assert verdict.level is Level.UNKNOWN
    assert verdict.reason() == "unknown"


def test_a_clean_send_is_ok():
    counts = SendCounts(attempts=1000, delivered=990, bounced=10, hard_bounced=5, unknown_users=4)
    assert judge(counts, DEFAULTS).level is Level.OK


def test_review_at_the_review_threshold_and_pause_at_the_pause_threshold():
    review = SendCounts(attempts=1000, bounced=50)  # 5% bounces, no recipient faults
    assert judge(review, DEFAULTS).level is Level.REVIEW
    paused = SendCounts(attempts=1000, bounced=100)
    verdict = judge(paused, DEFAULTS)
    assert verdict.level is Level.PAUSE
    assert [f.rate for f in verdict.tripped] == ["bounce"]
    assert "bounce rate 10.00% (100 of 1000 attempts" in verdict.reason()


def test_unknown_users_pause_before_the_bounce_rate_does():
    # 6% unknown users: the bounce rate (6%) only asks for a review, the unknown-user rate
    # (pause at 5%) pauses.
    counts = SendCounts(attempts=1000, bounced=60, hard_bounced=60, unknown_users=60)
    verdict = judge(counts, DEFAULTS)
    assert verdict.level is Level.PAUSE
    assert {f.rate for f in verdict.tripped} == {"hard_bounce", "unknown_user"}


def test_complaints_wait_for_their_own_minimum():
    # 2 complaints in 500 attempts is 0.4%, but 500 attempts cannot judge 0.3%.
    counts = SendCounts(attempts=500, complaints=2)
    verdict = judge(counts, DEFAULTS)
    assert verdict.level is Level.OK
    complaint = next(f for f in verdict.findings if f.rate == "complaint")
    assert complaint.value is None
    # With enough attempts: 0.4% pauses.
    assert judge(SendCounts(attempts=1000, complaints=4), DEFAULTS).level is Level.PAUSE
    assert judge(SendCounts(attempts=1000, complaints=1), DEFAULTS).level is Level.REVIEW


def test_a_count_already_over_the_pause_share_of_the_minimum_pauses_early():
    # 6 unknown users in 30 attempts: at 100 attempts it would still be 6% whatever follows.
    verdict = judge(SendCounts(attempts=30, hard_bounced=6, unknown_users=6, bounced=6), DEFAULTS)
    assert verdict.level is Level.PAUSE
    # 5 is not over 5% of 100: wait for more.
    assert (
        judge(SendCounts(attempts=30, hard_bounced=5, unknown_users=5, bounced=5), DEFAULTS).level
        is Level.UNKNOWN
    )


def test_thresholds_must_be_ordered_shares():
    with pytest.raises(ValueError):
        Threshold(0.2, 0.1)
    with pytest.raises(ValueError):
        Threshold(0, 0.1)
    with pytest.raises(ValueError):
        Threshold(0.5, 1.5)


def test_since_baseline_subtracts_and_never_goes_negative():
    now = SendCounts(attempts=500, delivered=400, bounced=100, unknown_users=90)
    then = SendCounts(attempts=200, delivered=110, bounced=90, unknown_users=95)
    after = since_baseline(now, then)
    assert after == SendCounts(attempts=300, delivered=290, bounced=10, unknown_users=0)
    assert since_baseline(now, None) is now


def test_canary_slice_is_the_larger_of_size_and_share():
    assert canary_slice(Canary(size=100), 1_000_000) == 100
    assert canary_slice(Canary(size=100, share=0.01), 1_000_000) == 10_000
    assert canary_slice(Canary(size=100, share=0.01), 5_000) == 100
    assert not Canary(size=0, share=0).enabled


def _simulate(unknown_share: float, deliveries: int, seed: int) -> int | None:
    """Judge a send after every 50 attempts, as the watch does every pass; the attempts at
    which it paused, or None."""
    rng = random.Random(seed)
    unknown = 0
    for attempts in range(1, deliveries + 1):
        unknown += rng.random() < unknown_share
        if attempts % 50 == 0:
            counts = SendCounts(
                attempts=attempts,
                delivered=attempts - unknown,
                bounced=unknown,
                hard_bounced=unknown,
                unknown_users=unknown,
            )
            if judge(counts, DEFAULTS).level is Level.PAUSE:
                return attempts
    return None


@pytest.mark.parametrize("seed", range(20))
def test_a_stale_list_pauses_early_and_a_clean_one_never(seed):
    # 12% unknown users: paused within the first couple of hundred attempts.
    paused_at = _simulate(0.12, 10_000, seed)
    assert paused_at is not None
    assert paused_at <= 200
    # A clean list (0.5% unknown users, as good senders have) never pauses over 100,000.
    assert _simulate(0.005, 100_000, seed) is None
