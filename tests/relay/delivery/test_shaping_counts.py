"""The per-minute counts shaping measures a key by (relay.delivery.shaping._PerMinute): a
sliding minute to the second, as an upstream counting a sliding minute sees it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.delivery.shaping import _PerMinute

T0 = datetime(2030, 5, 6, 7, 0, tzinfo=UTC)  # any instant


def test_a_steady_pace_reads_as_its_rate_and_a_burst_slides_out_after_a_minute():
    counts = _PerMinute(T0 - timedelta(hours=1))  # an old key: no scaling
    for second in range(120):  # ten a second for two minutes
        counts.add(T0 + timedelta(seconds=second), 10)
    assert counts.rate(T0 + timedelta(seconds=119, milliseconds=500)) == 600
    # A burst of 600 in one second counts for exactly a minute, then not at all.
    burst = T0 + timedelta(minutes=10)
    counts.add(burst, 600)
    assert counts.rate(burst + timedelta(seconds=59)) == 600
    assert counts.rate(burst + timedelta(seconds=60)) == 0


def test_a_young_key_is_scaled_to_a_minute_after_five_seconds():
    counts = _PerMinute(T0)
    for second in range(30):
        counts.add(T0 + timedelta(seconds=second), 5)
    assert counts.rate(T0 + timedelta(seconds=30)) == pytest.approx(300)
    fresh = _PerMinute(T0)
    fresh.add(T0, 2)
    assert fresh.rate(T0 + timedelta(seconds=1)) == pytest.approx(24)  # 2 in 5 s
