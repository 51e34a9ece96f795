"""Per-destination throttle: pause and slow a destination that asked for it.

One ``DestinationThrottle`` per relay process, in memory, keyed by a
destination string (the caller uses the recipient domain). The caller asks
``admit(destination, now)`` before it starts a transaction and reports
``started`` / ``finished``; when a reply carries a provider hint that wants
less traffic (``policies.hints``) it calls ``slow_down``. The clock is always
passed in: nothing here sleeps or reads the time.

A slowed destination:

* is paused until ``now + hint.retry_after``;
* has its concurrent-transaction limit halved (at least 1);
* gets a rate limit of half the start rate seen over the last minute, and
  never less than ``min_rate`` (a destination with nothing in flight has no
  history, so it gets ``min_rate``).

Hints that arrive while the destination is paused are the replies of
transactions that were already in flight: they extend the pause but do not
halve again, the way TCP cuts its window once per loss event. A hint after
the pause, while the limits are still growing back, halves them again.

Recovery is AIMD. After the pause every successful transaction counts; each
*window* of as many successes as the current concurrency limit raises that
limit by one (up to ``max_concurrency``) and the rate limit by x1.25. The
rate limit is lifted once it reaches four times its starting value (twice the
rate that drew the hint: by then it no longer holds back that traffic). When
both are back the destination's state is dropped.

Memory stays bounded: a destination that was never slowed has a record only
while it has transactions in flight (the count and a two-bucket start
counter), and a slowed destination that sees no traffic for a day after its
pause is forgotten at the next ``slow_down``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from policies.hints import ProviderHint

__all__ = ["DestinationLimits", "DestinationThrottle"]

log = structlog.get_logger(__name__)

# "The rate observed recently": starts over a sliding minute.
_WINDOW = timedelta(minutes=1)
_GROWTH = 1.25
# The rate limit is lifted at this multiple of its starting value.
_LIFT = 4.0
# A slowed destination idle this long after its pause starts over at full speed.
_FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class DestinationLimits:
    """What the throttle holds for one destination (for tests, logs, the admin page)."""

    in_flight: int
    concurrency: int
    rate: float | None  # transaction starts per second; None: not limited
    paused_until: datetime | None  # the end of the last pause, which may be past


@dataclass
class _Flow:
    """A destination with transactions in flight, and how fast they started.

    The start rate is a two-bucket sliding window: this minute's count plus
    the previous minute's, weighted by how much of it is still in the window.
    """

    in_flight: int
    window_start: datetime
    current: int = 0
    previous: int = 0

    def start(self, now: datetime) -> None:
        self._roll(now)
        self.in_flight += 1
        self.current += 1

    def rate(self, now: datetime) -> float:
        self._roll(now)
        left = 1.0 - (now - self.window_start) / _WINDOW
        return (self.previous * max(left, 0.0) + self.current) / _WINDOW.total_seconds()

    def _roll(self, now: datetime) -> None:
        elapsed = now - self.window_start
        if elapsed < _WINDOW:
            return
        if elapsed < 2 * _WINDOW:
            self.previous, self.current = self.current, 0
            self.window_start += _WINDOW
        else:
            self.previous = self.current = 0
            self.window_start = now


@dataclass
class _Slowed:
    paused_until: datetime
    concurrency: int
    rate: float | None
    lift_rate: float
    last_seen: datetime
    next_start: datetime | None = None
    successes: int = 0  # since the limits last grew


class DestinationThrottle:
    """Pauses, concurrency and rate limits per destination (see the module docstring).

    ``busy_delay`` is how far ``admit`` defers a transaction when the
    destination's concurrency limit is reached: when a slot frees up is not
    known in advance.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        min_rate: float = 1.0,
        busy_delay: timedelta = timedelta(seconds=5),
    ) -> None:
        if isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be 1 or more, got {max_concurrency!r}")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be a positive rate per second, got {min_rate!r}")
        if busy_delay <= timedelta(0):
            raise ValueError(f"busy_delay must be a positive duration, got {busy_delay}")
        self.max_concurrency = max_concurrency
        self.min_rate = min_rate
        self.busy_delay = busy_delay
        self._flows: dict[str, _Flow] = {}
        self._slowed: dict[str, _Slowed] = {}

    def admit(self, destination: str, now: datetime) -> datetime | None:
        """None when a transaction to ``destination`` may start now, else the
        time to defer it to: the end of a pause, the next start the rate
        limit allows, or ``now + busy_delay`` when the concurrency limit is
        reached (the latest of those that apply)."""
        flow = self._flows.get(destination)
        in_flight = flow.in_flight if flow else 0
        slowed = self._slowed.get(destination)
        if slowed is None:
            # Never slowed: the upstream's per-host connection limit queues the transaction;
            # deferring it here would only churn leases.
            return None
        waits = [now + self.busy_delay] if in_flight >= slowed.concurrency else []
        if now < slowed.paused_until:
            waits.append(slowed.paused_until)
        if slowed.next_start is not None and now < slowed.next_start:
            waits.append(slowed.next_start)
        return max(waits, default=None)

    def started(self, destination: str, now: datetime) -> None:
        """A transaction to ``destination`` started at ``now``."""
        flow = self._flows.get(destination)
        if flow is None:
            flow = self._flows[destination] = _Flow(in_flight=0, window_start=now)
        flow.start(now)
        slowed = self._slowed.get(destination)
        if slowed is None:
            return
        slowed.last_seen = now
        if slowed.rate is not None:
            # Space starts 1/rate apart, counted from this start (or from the
            # slot it was given, if it came early).
            base = max(now, slowed.next_start or now)
            slowed.next_start = base + timedelta(seconds=1 / slowed.rate)

    def finished(self, destination: str, now: datetime, ok: bool) -> None:
        """A transaction to ``destination`` ended; ``ok`` when it delivered.
        Only successes after the pause let a slowed destination recover."""
        flow = self._flows.get(destination)
        if flow is None:
            # A caller bug, but not one to stop a delivery for.
            log.warning("throttle.unbalanced", destination=destination)
            return
        flow.in_flight -= 1
        if flow.in_flight == 0:
            del self._flows[destination]
        slowed = self._slowed.get(destination)
        if ok and slowed is not None and now >= slowed.paused_until:
            self._grow(destination, slowed)

    def slow_down(self, destination: str, hint: ProviderHint, now: datetime) -> None:
        """Pause ``destination`` until ``now + hint.retry_after`` and lower its
        limits; a hint that does not ask to slow down (a block of one IP, one
        recipient's limit) changes nothing."""
        if not hint.slow_down:
            return
        self._forget_idle(now)
        until = now + hint.retry_after
        slowed = self._slowed.get(destination)
        if slowed is not None and now < slowed.paused_until:
            if until > slowed.paused_until:
                slowed.paused_until = until
                self._log_slowed(destination, hint, slowed)
            return
        flow = self._flows.get(destination)
        observed = flow.rate(now) if flow else 0.0
        concurrency = self.max_concurrency
        if slowed is not None:
            concurrency = slowed.concurrency
            if slowed.rate is not None:
                observed = min(observed, slowed.rate)
        rate = max(self.min_rate, observed / 2)
        slowed = _Slowed(
            paused_until=until,
            concurrency=max(1, concurrency // 2),
            rate=rate,
            lift_rate=_LIFT * rate,
            last_seen=now,
        )
        self._slowed[destination] = slowed
        self._log_slowed(destination, hint, slowed)

    def limits(self, destination: str) -> DestinationLimits:
        """The current limits of ``destination`` (the defaults if it has no state)."""
        flow = self._flows.get(destination)
        in_flight = flow.in_flight if flow else 0
        slowed = self._slowed.get(destination)
        if slowed is None:
            return DestinationLimits(in_flight, self.max_concurrency, None, None)
        return DestinationLimits(in_flight, slowed.concurrency, slowed.rate, slowed.paused_until)

    def tracked(self) -> frozenset[str]:
        """The destinations the throttle keeps any state for."""
        return frozenset(self._flows) | frozenset(self._slowed)

    def _grow(self, destination: str, slowed: _Slowed) -> None:
        slowed.successes += 1
        if slowed.successes < slowed.concurrency:
            return
        slowed.successes = 0
        slowed.concurrency = min(self.max_concurrency, slowed.concurrency + 1)
        if slowed.rate is not None:
            slowed.rate *= _GROWTH
            if slowed.rate >= slowed.lift_rate:
                slowed.rate = slowed.next_start = None
        if slowed.concurrency == self.max_concurrency and slowed.rate is None:
            del self._slowed[destination]
            log.info(
                "throttle.recovered",
                destination=destination,
                concurrency=self.max_concurrency,
                rate=None,
            )

    def _forget_idle(self, now: datetime) -> None:
        idle = [
            destination
            for destination, slowed in self._slowed.items()
            if destination not in self._flows
            and now - max(slowed.last_seen, slowed.paused_until) > _FORGET_AFTER
        ]
        for destination in idle:
            del self._slowed[destination]

    @staticmethod
    def _log_slowed(destination: str, hint: ProviderHint, slowed: _Slowed) -> None:
        log.info(
            "throttle.slowed",
            destination=destination,
            hint=hint.name,
            why=hint.why,
            paused_until=slowed.paused_until.isoformat(),
            concurrency=slowed.concurrency,
            rate=slowed.rate,
        )
