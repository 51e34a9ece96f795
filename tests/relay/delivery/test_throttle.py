"""Per-destination throttle: pauses, limits and recovery (relay/delivery/throttle.py).

The clock is plain datetimes the tests advance; nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from policies.hints import HINTS, ProviderHint, hint_for
from policies.smtp_reply import parse_reply
from relay.delivery.throttle import DestinationLimits, DestinationThrottle

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)

YAHOO = "yahoo.com"
# r0218 of the data file, as Yahoo sent it.
TSS04_REPLY = (
    "421 4.7.0 [TSS04] Messages from 39.177.48.16 temporarily deferred due to unexpected "
    "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)


def _hint(raw: str) -> ProviderHint:
    hint = hint_for(parse_reply(raw))
    assert hint is not None
    return hint


TS04 = _hint(TSS04_REPLY)


def test_unknown_destinations_are_admitted_freely_and_leave_no_state():
    """A destination never slowed is always admitted (the upstream's per-host connection
    limit queues its transactions); its in-flight count is the only state, gone at zero."""
    throttle = DestinationThrottle(max_concurrency=2)
    assert throttle.admit("example.com", T0) is None
    assert throttle.limits("example.com") == DestinationLimits(0, 2, None, None)
    assert throttle.tracked() == frozenset()
    throttle.started("example.com", T0)
    assert throttle.admit("example.com", T0) is None
    throttle.started("example.com", T0)
    throttle.started("example.com", T0)
    assert throttle.admit("example.com", T0 + S) is None
    throttle.finished("example.com", T0 + S, ok=True)
    assert throttle.admit("other.example", T0 + S) is None
    throttle.finished("example.com", T0 + 2 * S, ok=True)
    throttle.finished("example.com", T0 + 2 * S, ok=False)
    assert throttle.tracked() == frozenset()


def test_yahoo_ts04_deferral_pauses_the_destination_until_the_hint_time():
    """A Yahoo [TSS04] deferral at 12:00 pauses yahoo.com until 14:00 exactly,
    and no other destination."""
    throttle = DestinationThrottle(max_concurrency=8)
    throttle.slow_down(YAHOO, TS04, T0)
    assert TS04.retry_after == 2 * H
    assert throttle.admit(YAHOO, T0) == T0 + 2 * H
    assert throttle.admit(YAHOO, T0 + 2 * H - MS) == T0 + 2 * H
    assert throttle.admit(YAHOO, T0 + 2 * H) is None
    assert throttle.admit("gmail.com", T0) is None


def test_slowed_event_names_destination_hint_and_new_limits():
    """``throttle.slowed`` carries the destination, the hint and the new limits."""
    throttle = DestinationThrottle(max_concurrency=8)
    with capture_logs() as logs:
        throttle.slow_down(YAHOO, TS04, T0)
    assert logs == [
        {
            "event": "throttle.slowed",
            "log_level": "info",
            "destination": YAHOO,
            "hint": "yahoo-ts04",
            "why": TS04.why,
            "paused_until": "2024-03-01T14:00:00+00:00",
            "concurrency": 4,
            "rate": 1.0,
        }
    ]


def test_concurrency_limit_halves_and_defers_the_excess():
    """max_concurrency 8 becomes 4: after the pause a fifth transaction waits
    busy_delay until one finishes."""
    throttle = DestinationThrottle(max_concurrency=8)
    throttle.slow_down(YAHOO, TS04, T0)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 4, 1.0, T0 + 2 * H)
    after = T0 + 2 * H
    for i in range(4):  # 1/s: nothing was observed, so the floor applies
        assert throttle.admit(YAHOO, after + i * S) is None
        throttle.started(YAHOO, after + i * S)
    now = after + 4 * S
    assert throttle.admit(YAHOO, now) == now + 5 * S
    throttle.finished(YAHOO, now, ok=False)
    assert throttle.admit(YAHOO, now) is None


def test_rate_limit_is_half_the_observed_rate_and_spaces_starts():
    """240 starts in the minute before the hint (4/s) give a 2/s limit: after
    the pause starts come 500 ms apart."""
    throttle = DestinationThrottle(max_concurrency=1000)
    throttle.started(YAHOO, T0)  # a long transaction keeps the destination in flight
    for i in range(1, 240):
        at = T0 + i * 250 * MS
        throttle.started(YAHOO, at)
        throttle.finished(YAHOO, at, ok=True)
    throttle.slow_down(YAHOO, TS04, T0 + M)
    assert throttle.limits(YAHOO) == DestinationLimits(1, 500, 2.0, T0 + M + 2 * H)
    after = T0 + M + 2 * H
    assert throttle.admit(YAHOO, after) is None
    throttle.started(YAHOO, after)
    assert throttle.admit(YAHOO, after) == after + 500 * MS
    assert throttle.admit(YAHOO, after + 499 * MS) == after + 500 * MS
    assert throttle.admit(YAHOO, after + 500 * MS) is None


def test_recovery_returns_to_unlimited_and_drops_the_state():
    """Each window of successes (as many as the limit) adds one transaction
    and x1.25 rate; the rate limit goes at 4x its start (1/s -> 4/s), the
    state is dropped and ``throttle.recovered`` logged: 25 successes here."""
    throttle = DestinationThrottle(max_concurrency=4)
    throttle.slow_down(YAHOO, TS04, T0)
    now = T0 + 2 * H
    trail: list[tuple[int, float | None]] = []
    with capture_logs() as logs:
        while YAHOO in throttle.tracked():
            now = throttle.admit(YAHOO, now) or now
            throttle.started(YAHOO, now)
            throttle.finished(YAHOO, now, ok=True)
            limits = throttle.limits(YAHOO)
            trail.append((limits.concurrency, limits.rate))
            assert len(trail) < 100
    assert len(trail) == 25
    assert trail[1] == (3, 1.25)  # first window: 2 successes
    assert trail[4] == (4, 1.5625)  # second window: 3 successes
    assert trail[8] == (4, 1.953125)  # then windows of 4
    assert trail[20] == (4, 3.814697265625)
    assert trail[24] == (4, None)
    assert [log["event"] for log in logs] == ["throttle.recovered"]
    assert logs[0]["destination"] == YAHOO
    assert (logs[0]["concurrency"], logs[0]["rate"]) == (4, None)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 4, None, None)
    assert throttle.admit(YAHOO, now) is None


def test_only_successes_after_the_pause_count_towards_recovery():
    """A success during the pause (a transaction already in flight) and
    failures after it do not grow the limits; two successes do."""
    throttle = DestinationThrottle(max_concurrency=4)
    throttle.slow_down(YAHOO, TS04, T0)
    throttle.started(YAHOO, T0 - S)
    throttle.finished(YAHOO, T0 + S, ok=True)
    after = T0 + 2 * H
    for i in range(3):
        throttle.started(YAHOO, after + i * S)
        throttle.finished(YAHOO, after + i * S, ok=False)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 2, 1.0, after)
    throttle.started(YAHOO, after + 3 * S)
    throttle.finished(YAHOO, after + 3 * S, ok=True)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 2, 1.0, after)
    throttle.started(YAHOO, after + 4 * S)
    throttle.finished(YAHOO, after + 4 * S, ok=True)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 3, 1.25, after)


def test_hints_during_the_pause_extend_it_without_halving_again():
    """More hints while paused are replies of transactions already in flight:
    the pause ends at the latest hint time, the limits halve once. A hint
    after the pause halves again."""
    throttle = DestinationThrottle(max_concurrency=8)
    throttle.slow_down(YAHOO, TS04, T0)
    throttle.slow_down(YAHOO, TS04, T0 + 10 * M)
    throttle.slow_down(YAHOO, HINTS["gmail-4.7.28"], T0 + 20 * M)  # ends earlier: no change
    assert throttle.limits(YAHOO) == DestinationLimits(0, 4, 1.0, T0 + 2 * H + 10 * M)
    throttle.slow_down(YAHOO, TS04, T0 + 3 * H)
    assert throttle.limits(YAHOO) == DestinationLimits(0, 2, 1.0, T0 + 5 * H)


@pytest.mark.parametrize("name", ["microsoft-s3140", "yahoo-ts03", "gmail-4.2.1"])
def test_hints_that_do_not_ask_to_slow_down_change_nothing(name):
    """A block of one IP or one recipient's limit leaves the destination alone."""
    throttle = DestinationThrottle(max_concurrency=4)
    throttle.slow_down("outlook.com", HINTS[name], T0)
    assert throttle.admit("outlook.com", T0) is None
    assert throttle.tracked() == frozenset()


def test_idle_slowed_destination_is_forgotten_a_day_after_its_pause():
    """A slowed destination with no traffic for a day after its pause is
    dropped at the next slow_down (of any destination), not a moment before."""
    throttle = DestinationThrottle(max_concurrency=4)
    throttle.slow_down(YAHOO, TS04, T0)
    throttle.slow_down("aol.com", TS04, T0 + 2 * H + D)
    assert throttle.tracked() == {YAHOO, "aol.com"}
    throttle.slow_down("ymail.com", TS04, T0 + 2 * H + D + MS)
    assert throttle.tracked() == {"aol.com", "ymail.com"}


def test_finished_without_started_is_logged_not_raised():
    """A bookkeeping slip by the caller does not stop a delivery."""
    throttle = DestinationThrottle(max_concurrency=4)
    with capture_logs() as logs:
        throttle.finished(YAHOO, T0, ok=True)
    assert logs == [{"event": "throttle.unbalanced", "log_level": "warning", "destination": YAHOO}]
    assert throttle.tracked() == frozenset()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrency": 0},
        {"max_concurrency": 4, "min_rate": 0.0},
        {"max_concurrency": 4, "busy_delay": timedelta(0)},
    ],
)
def test_bad_settings_are_refused(kwargs):
    """Limits that could never admit anything are a configuration error."""
    with pytest.raises(ValueError, match="must be"):
        DestinationThrottle(**kwargs)
