"""Resend timing for soft bounces: which rule applies, and when to try next.

The operator's ``[retry]`` section is the default rule and each
``[[retry.rules]]`` entry a ``RetryRule``; the first rule whose criteria all
hold for a soft bounce decides (``select_rule``). A rule either lists its
delays (``schedule``, the last step repeats) or gives one ``interval`` with a
backoff:

* ``fixed``: every delay is ``interval``;
* ``geometric``: ``interval * exponent ** (attempts - 1)``;
* ``random``: ``interval * (1 + jitter * random_modifier)``, with the
  caller's ``jitter`` in [0, 1), so that many deferred recipients of one
  provider do not all come back in the same second.

The other forms are spread too: each delay is stretched by up to ``spread``
(a share, ``[retry] spread``, 0.1 by default: ``delay * (1 + jitter *
spread)``), so a queue that failed together (an upstream down) does not all
come due in the same second when it returns.

``attempts`` counts delivery attempts made so far, the one that just
soft-bounced included: after the first failure ``attempts == 1`` and the
first step applies. Time is counted from *now* (when the bounce is handled),
and the give-up conditions follow Postfix's queue manager (``qmgr_active.c``):
stop once ``max_attempts`` attempts were made, or when the next attempt would
fall after ``first_failure_at + max_age``, so a message is never held longer
than the operator allowed. Nothing here reads the clock or draws random
numbers: ``now`` and ``jitter`` are parameters.

The relay's own retries of its infrastructure use the same arithmetic: a webhook post
that failed (``relay.webhooks``), an outcome the database did not take
(``relay.delivery.worker``) and a relay process that exited (``relay.ops.supervisor``)
wait ``doubling`` or ``scheduled`` delays from here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from policies.classify import Category, Criteria, Verdict, check_criteria
from policies.smtp_reply import Reply

__all__ = [
    "Backoff",
    "GiveUp",
    "RetryPolicy",
    "RetryRule",
    "SourceChoice",
    "doubling",
    "format_duration",
    "next_attempt",
    "preview_schedule",
    "scheduled",
    "select_rule",
]

# A delay is never longer than this, whatever the exponent says: it keeps
# ``now + delay`` a valid datetime. Ten years is "never" for a mail queue.
_DELAY_CEILING = timedelta(days=3650)


class Backoff(StrEnum):
    FIXED = "fixed"
    GEOMETRIC = "geometric"
    RANDOM = "random"


class SourceChoice(StrEnum):
    """Which source IP the next attempt should use; a block or throttle of
    one IP is often best answered from another IP of the pool."""

    SAME_IP = "same_ip"
    OTHER_IP = "other_ip"


@dataclass(frozen=True)
class GiveUp:
    """No further attempt: the delivery expires (a non-delivery event)."""

    reason: str


@dataclass(frozen=True)
class RetryRule:
    """One retry rule; build it with ``build``, which validates."""

    name: str
    categories: frozenset[str] = frozenset()
    enhanced: tuple[str, ...] = ()
    codes: frozenset[int] = frozenset()
    domains: frozenset[str] = frozenset()
    text: re.Pattern[str] | None = None
    schedule: tuple[timedelta, ...] = ()
    interval: timedelta | None = None
    backoff: Backoff = Backoff.FIXED
    exponent: float = 2.0
    random_modifier: float = 1.0
    max_attempts: int | None = None
    max_age: timedelta | None = None
    source: SourceChoice = SourceChoice.SAME_IP
    max_interval: timedelta | None = None  # cap on one delay (Postfix maximal_backoff_time)
    spread: float = 0.0  # a schedule or fixed/geometric delay is stretched by up to this share

    @classmethod
    def build(
        cls,
        name: str,
        *,
        categories: Iterable[str] = (),
        enhanced: Iterable[str] = (),
        codes: Iterable[int] = (),
        domains: Iterable[str] = (),
        text: str | None = None,
        schedule: Iterable[timedelta] = (),
        interval: timedelta | None = None,
        backoff: str = Backoff.FIXED,
        exponent: float = 2.0,
        random_modifier: float = 1.0,
        max_attempts: int | None = None,
        max_age: timedelta | None = None,
        source: str = SourceChoice.SAME_IP,
        max_interval: timedelta | None = None,
        spread: float = 0.0,
    ) -> RetryRule:
        """Validate config values into a rule; ``ValueError`` names the rule.

        ``text`` is compiled case-insensitively. ``backoff``, ``exponent`` and
        ``random_modifier`` belong to ``interval``; a ``schedule`` lists its
        delays itself.
        """
        if not name:
            raise ValueError("retry rule without a name")
        steps = tuple(schedule)
        _check_timing(name, steps, interval, backoff)
        for label, value in [("max_age", max_age), ("max_interval", max_interval)]:
            if value is not None:
                _check_positive(name, label, value)
        owner = f"retry rule {name!r}"
        criteria = check_criteria(owner, codes=codes, enhanced=enhanced, domains=domains, text=text)
        return cls(
            name=name,
            categories=_check_categories(name, categories),
            enhanced=criteria.enhanced,
            codes=criteria.codes,
            domains=criteria.domains,
            text=criteria.text,
            schedule=steps,
            interval=interval,
            backoff=_enum(name, "backoff", Backoff, backoff),
            exponent=_check_number(name, "exponent", exponent, minimum=1.0),
            random_modifier=_check_number(name, "random_modifier", random_modifier, minimum=0.0),
            max_attempts=_check_max_attempts(name, max_attempts),
            max_age=max_age,
            source=_enum(name, "source", SourceChoice, source),
            max_interval=max_interval,
            spread=_check_share(name, "spread", spread),
        )

    def matches(self, reply: Reply, verdict: Verdict, recipient_domain: str) -> bool:
        """Whether every criterion the rule gives holds; none given: all do."""
        if self.categories and verdict.category not in self.categories:
            return False
        criteria = Criteria(self.codes, self.enhanced, self.domains, self.text)
        return criteria.hold(reply, recipient_domain)

    def delay(self, attempts: int, jitter: float = 0.0) -> timedelta:
        """The wait after attempt number ``attempts`` (1-based) failed;
        ``jitter`` in [0, 1) only matters to a random backoff."""
        _check_attempt(attempts, jitter)
        if self.schedule:
            wanted = scheduled(self.schedule, attempts)
        else:
            wanted = self._interval_delay(attempts, jitter)
        if self.backoff is not Backoff.RANDOM or self.schedule:
            wanted *= 1.0 + jitter * self.spread
        ceiling = min(self.max_interval or _DELAY_CEILING, _DELAY_CEILING)
        return min(wanted, ceiling)

    def _interval_delay(self, attempts: int, jitter: float) -> timedelta:
        if self.interval is None:  # build() guarantees schedule or interval
            raise ValueError(f"retry rule {self.name!r} has neither schedule nor interval")
        seconds = self.interval.total_seconds()
        if self.backoff is Backoff.GEOMETRIC:
            seconds *= _power(self.exponent, attempts - 1)
        elif self.backoff is Backoff.RANDOM:
            seconds *= 1.0 + jitter * self.random_modifier
        return timedelta(seconds=min(seconds, _DELAY_CEILING.total_seconds()))


@dataclass(frozen=True)
class RetryPolicy:
    """The ``[retry]`` default and the ``[[retry.rules]]`` in file order."""

    default: RetryRule
    rules: tuple[RetryRule, ...] = ()


def select_rule(
    policy: RetryPolicy, reply: Reply, verdict: Verdict, recipient_domain: str
) -> RetryRule:
    """The first rule that matches this soft bounce, else the default."""
    for rule in policy.rules:
        if rule.matches(reply, verdict, recipient_domain):
            return rule
    return policy.default


def next_attempt(
    rule: RetryRule,
    attempts: int,
    first_failure_at: datetime,
    now: datetime,
    *,
    jitter: float = 0.0,
) -> datetime | GiveUp:
    """When to try again after attempt ``attempts`` failed at ``now``, or
    ``GiveUp`` with the reason (see the module docstring)."""
    _check_attempt(attempts, jitter)
    if rule.max_attempts is not None and attempts >= rule.max_attempts:
        return GiveUp(f"max_attempts {rule.max_attempts} reached")
    at = now + rule.delay(attempts, jitter)
    if rule.max_age is not None and at > first_failure_at + rule.max_age:
        return GiveUp(f"max_age {format_duration(rule.max_age)} exceeded")
    return at


def preview_schedule(
    rule: RetryRule, first_failure_at: datetime, max_steps: int = 20
) -> list[datetime]:
    """The attempt times ``rule`` gives if every attempt fails the moment it
    is made, starting from a first failure at ``first_failure_at``; at most
    ``max_steps`` times. A random backoff is shown with no jitter, i.e. its
    earliest times."""
    times: list[datetime] = []
    now = first_failure_at
    for attempts in range(1, max_steps + 1):
        at = next_attempt(rule, attempts, first_failure_at, now)
        if isinstance(at, GiveUp):
            break
        times.append(at)
        now = at
    return times


def format_duration(value: timedelta) -> str:
    """A duration in the config's own units: ``3d``, ``1h30m``, ``90s`` -> ``1m30s``."""
    total = int(value.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _check_attempt(attempts: int, jitter: float) -> None:
    if attempts < 1:
        raise ValueError(f"attempts must be 1 or more, got {attempts}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")


D = TypeVar("D", timedelta, float)


def scheduled(schedule: Sequence[D], attempts: int) -> D:
    """The delay after attempt ``attempts`` (1-based) of ``schedule``; its last step repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def doubling(first: timedelta, attempts: int, cap: timedelta) -> timedelta:
    """``first`` after the first failed attempt, doubled after each further one, at most
    ``cap`` (``attempts`` is 1-based; a huge count cannot overflow). ``first`` > 0."""
    factor = 1 << min(max(attempts - 1, 0), 63)
    return cap if factor >= cap / first else first * factor


def _power(base: float, exponent: int) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


# --- validation -------------------------------------------------------------


def _check_timing(
    name: str, schedule: tuple[timedelta, ...], interval: timedelta | None, backoff: str
) -> None:
    if bool(schedule) == (interval is not None):
        raise ValueError(f"retry rule {name!r}: give exactly one of schedule or interval")
    for step in schedule:
        _check_positive(name, "schedule", step)
    if interval is not None:
        _check_positive(name, "interval", interval)
    if schedule and backoff != Backoff.FIXED:
        raise ValueError(
            f"retry rule {name!r}: backoff {backoff!r} needs an interval; "
            "a schedule lists its delays itself"
        )


def _check_positive(name: str, label: str, value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"retry rule {name!r}: {label} must be a positive duration, got {value}")


def _check_number(name: str, label: str, value: float, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"retry rule {name!r}: {label} must be a number, got {value!r}")
    if value < minimum:
        raise ValueError(f"retry rule {name!r}: {label} must be at least {minimum}, got {value}")
    return float(value)


def _check_max_attempts(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"retry rule {name!r}: max_attempts must be 1 or more, got {value!r}")
    return value


def _check_categories(name: str, categories: Iterable[str]) -> frozenset[str]:
    allowed = {c.value for c in Category if c is not Category.DELIVERED}
    out = frozenset(categories)
    for category in sorted(out):
        if category not in allowed:
            raise ValueError(
                f"retry rule {name!r}: category {category!r} is not one of "
                f"{', '.join(sorted(allowed))}"
            )
    return out


_E = TypeVar("_E", bound=StrEnum)


def _enum(name: str, label: str, enum: type[_E], value: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValueError(
            f"retry rule {name!r}: {label} {value!r} is not one of {allowed}"
        ) from None


def _check_share(name: str, label: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"retry rule {name!r}: {label} must be a share from 0 to 1, got {value!r}")
    return float(value)
