"""Resend timing: rule selection, next attempt times and giving up."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policies.classify import Category, Kind, Verdict, classify
from policies.retry import (
    Backoff,
    GiveUp,
    RetryPolicy,
    RetryRule,
    SourceChoice,
    format_duration,
    next_attempt,
    preview_schedule,
    select_rule,
)
from policies.smtp_reply import parse_reply, synthetic_reply

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)

# The [retry] default of config.toml.
DEFAULT = RetryRule.build("default", schedule=[5 * M, 15 * M, H, 4 * H, 12 * H], max_age=3 * D)


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(1, 5 * M), (2, 15 * M), (3, H), (4, 4 * H), (5, 12 * H), (6, 12 * H), (40, 12 * H)],
)
def test_schedule_last_step_repeats(attempts, delay):
    """Attempt n waits schedule[n-1]; past the end the last step repeats."""
    assert next_attempt(DEFAULT, attempts, T0, T0) == T0 + delay


def test_delay_counts_from_now():
    """The next attempt is `now` plus the delay, not first failure plus it."""
    now = T0 + 2 * H
    assert next_attempt(DEFAULT, 3, T0, now) == now + H


@pytest.mark.parametrize(("attempts", "gives_up"), [(1, False), (5, False), (6, True), (9, True)])
def test_max_attempts(attempts, gives_up):
    """With max_attempts 6, the sixth failed attempt is the last one."""
    rule = RetryRule.build("greylisting", schedule=[2 * M, 5 * M, 15 * M], max_attempts=6)
    result = next_attempt(rule, attempts, T0, T0)
    if gives_up:
        assert result == GiveUp("max_attempts 6 reached")
    else:
        assert isinstance(result, datetime)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0 + 3 * D - 12 * H, T0 + 3 * D),
        (T0 + 3 * D - 12 * H + S, GiveUp("max_age 3d exceeded")),
        (T0 + 5 * D, GiveUp("max_age 3d exceeded")),
    ],
)
def test_max_age(now, expected):
    """Give up when the next attempt would fall after first failure + max_age;
    an attempt exactly at the limit is still made."""
    assert next_attempt(DEFAULT, 5, T0, now) == expected


def test_max_attempts_is_checked_before_max_age():
    """Both limits reached: the attempt count is the reason given."""
    rule = RetryRule.build("r", interval=H, max_attempts=2, max_age=H)
    assert next_attempt(rule, 2, T0, T0 + D) == GiveUp("max_attempts 2 reached")


@pytest.mark.parametrize(("attempts", "delay"), [(1, M), (2, 2 * M), (3, 4 * M), (6, 32 * M)])
def test_geometric(attempts, delay):
    """Geometric: interval * exponent ** (attempts - 1)."""
    rule = RetryRule.build("g", interval=M, backoff="geometric", exponent=2)
    assert next_attempt(rule, attempts, T0, T0) == T0 + delay


def test_geometric_exponent_and_cap():
    """A non-integer exponent works; max_interval caps each delay; a huge
    attempt count never overflows."""
    rule = RetryRule.build("g", interval=10 * M, backoff="geometric", exponent=1.5, max_interval=H)
    assert rule.delay(2) == 15 * M
    assert rule.delay(10) == H
    uncapped = RetryRule.build("g", interval=M, backoff="geometric")
    assert uncapped.delay(100_000) == timedelta(days=3650)


def test_fixed_interval():
    """Fixed: the same delay every time."""
    rule = RetryRule.build("f", interval=30 * M)
    assert [rule.delay(n) for n in (1, 2, 50)] == [30 * M] * 3


@pytest.mark.parametrize(
    ("jitter", "modifier", "delay"),
    [
        (0.0, 1.0, 10 * M),
        (0.5, 1.0, 15 * M),
        (0.999, 1.0, timedelta(seconds=1199.4)),
        (0.5, 0.2, 11 * M),
        (0.9, 0.0, 10 * M),
    ],
)
def test_random_is_bounded_by_jitter(jitter, modifier, delay):
    """Random: interval * (1 + jitter * random_modifier), jitter given by the
    caller, so the delay stays in [interval, interval * (1 + modifier))."""
    rule = RetryRule.build("r", interval=10 * M, backoff="random", random_modifier=modifier)
    assert next_attempt(rule, 3, T0, T0, jitter=jitter) == T0 + delay


@pytest.mark.parametrize(("attempts", "jitter"), [(0, 0.0), (1, -0.1), (1, 1.0)])
def test_next_attempt_rejects_bad_arguments(attempts, jitter):
    """attempts is 1-based and jitter lies in [0, 1): anything else is a bug."""
    with pytest.raises(ValueError):
        next_attempt(DEFAULT, attempts, T0, T0, jitter=jitter)


def test_preview_schedule():
    """The preview shows the attempt times if each attempt fails at once,
    until the rule gives up."""
    assert preview_schedule(DEFAULT, T0, max_steps=6) == [
        T0 + 5 * M,
        T0 + 20 * M,
        T0 + 80 * M,
        T0 + 320 * M,
        T0 + 1040 * M,
        T0 + 1760 * M,
    ]
    assert len(preview_schedule(DEFAULT, T0)) == 9  # 9th step would pass 3d
    limited = RetryRule.build("g", schedule=[2 * M, 5 * M, 15 * M], max_attempts=6)
    assert [t - T0 for t in preview_schedule(limited, T0)] == [
        2 * M,
        7 * M,
        22 * M,
        37 * M,
        52 * M,
    ]


GREYLIST = RetryRule.build("greylisting", categories=["greylisted"], schedule=[2 * M])
THROTTLE = RetryRule.build("security-4xx", enhanced=["4.7."], interval=H, source="other_ip")
BY_CODE = RetryRule.build("by-code", codes=[421], interval=10 * M)
GMAIL = RetryRule.build("gmail", domains=["Gmail.com", "googlemail.com"], interval=30 * M)
TEXT = RetryRule.build("quota", text=r"over ?quota", interval=6 * H)
POLICY = RetryPolicy(DEFAULT, (GREYLIST, THROTTLE, BY_CODE, GMAIL, TEXT))


@pytest.mark.parametrize(
    ("raw", "domain", "rule"),
    [
        ("451 4.7.1 Greylisted for 5 minutes", "example.com", GREYLIST),
        ("451 4.7.500 Server busy. Please try again later", "example.com", THROTTLE),
        ("451 4.7.650 The mail server has been temporarily rate limited", "x.example", THROTTLE),
        ("421 Service not available", "example.com", BY_CODE),
        ("450 4.2.1 try later", "gmail.com", GMAIL),
        ("450 4.2.1 try later", "GMAIL.COM.", GMAIL),
        ("452 4.2.2 User is OverQuota", "example.com", TEXT),
        ("450 4.2.1 try later", "example.com", DEFAULT),
    ],
)
def test_select_rule(raw, domain, rule):
    """The first rule whose criteria hold is used (category, enhanced prefix,
    code, recipient domain, text), else the default."""
    reply = parse_reply(raw)
    assert select_rule(POLICY, reply, classify(reply), domain) is rule


def test_select_rule_all_criteria_must_hold():
    """A rule with several criteria matches only when every one holds."""
    rule = RetryRule.build("both", categories=["rate_limited"], domains=["example.com"], interval=H)
    policy = RetryPolicy(DEFAULT, (rule,))
    reply = parse_reply("421 4.7.0 rate limited")
    assert select_rule(policy, reply, classify(reply), "example.com") is rule
    assert select_rule(policy, reply, classify(reply), "example.org") is DEFAULT
    other = Verdict(Kind.SOFT, Category.SERVICE_UNAVAILABLE, suppress=False)
    assert select_rule(policy, reply, other, "example.com") is DEFAULT


def test_select_rule_for_synthetic_failures():
    """Our own failures can have their own schedule and source IP."""
    rule = RetryRule.build(
        "network", categories=["connection_failed"], interval=10 * M, source="other_ip"
    )
    reply = synthetic_reply(451, "4.4.1", "connection refused")
    chosen = select_rule(RetryPolicy(DEFAULT, (rule,)), reply, classify(reply), "x.example")
    assert chosen is rule
    assert chosen.source is SourceChoice.OTHER_IP


def test_build_normalises():
    """build() turns config strings into enums and lower-cased domains."""
    rule = RetryRule.build(
        "r", interval=H, backoff="random", source="other_ip", domains=["Example.COM"], text="Quota"
    )
    assert rule.backoff is Backoff.RANDOM
    assert rule.source is SourceChoice.OTHER_IP
    assert rule.domains == frozenset({"example.com"})
    assert rule.text == re.compile("Quota", re.IGNORECASE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of schedule or interval"),
        ({"schedule": [M], "interval": M}, "give exactly one of schedule or interval"),
        ({"schedule": [M, timedelta(0)]}, "schedule must be a positive duration"),
        ({"interval": -M}, "interval must be a positive duration"),
        ({"interval": M, "max_age": timedelta(0)}, "max_age must be a positive duration"),
        ({"interval": M, "max_interval": -H}, "max_interval must be a positive duration"),
        ({"schedule": [M], "backoff": "geometric"}, "backoff 'geometric' needs an interval"),
        ({"interval": M, "backoff": "linear"}, "backoff 'linear' is not one of fixed"),
        ({"interval": M, "source": "any_ip"}, "source 'any_ip' is not one of same_ip"),
        ({"interval": M, "exponent": 0.5}, "exponent must be at least 1.0"),
        ({"interval": M, "random_modifier": -1}, "random_modifier must be at least 0.0"),
        ({"interval": M, "exponent": float("nan")}, "exponent must be a number"),
        ({"interval": M, "max_attempts": 0}, "max_attempts must be 1 or more"),
        ({"interval": M, "text": "[unclosed"}, "text regex '[unclosed' does not compile"),
        ({"interval": M, "categories": ["greylist"]}, "category 'greylist' is not one of"),
        ({"interval": M, "codes": [4]}, "code 4 is not 200-599"),
        ({"interval": M, "enhanced": ["4.7.1.1"]}, "enhanced '4.7.1.1'"),
    ],
)
def test_build_validation_names_the_rule(kwargs, message):
    """A bad rule is refused with a message naming the rule and the value."""
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        RetryRule.build("my-rule", **kwargs)
    assert "retry rule 'my-rule'" in str(err.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(3 * D, "3d"), (90 * M, "1h30m"), (90 * S, "1m30s"), (D + S, "1d1s"), (timedelta(0), "0s")],
)
def test_format_duration(value, text):
    """Durations are shown in the config's own units."""
    assert format_duration(value) == text


def test_modules_stay_pure():
    """Importing the reply, classification and retry core loads no I/O,
    event loop, randomness or relay module (a fresh interpreter checks)."""
    code = (
        "import sys, policies.smtp_reply, policies.classify, policies.retry\n"
        "banned = ('asyncio', 'relay', 'asyncpg', 'aiosmtplib', 'socket', 'random', 'secrets')\n"
        "print(','.join(m for m in banned if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""


def test_spread_stretches_schedule_and_fixed_delays_by_up_to_its_share():
    """A queue that failed together does not come due together: with spread 0.1 the
    caller's jitter stretches each delay by up to 10 %; jitter 0 gives the plain delay."""
    schedule = RetryRule.build("s", schedule=[timedelta(minutes=10)], spread=0.1)
    fixed = RetryRule.build("f", interval=timedelta(minutes=10), spread=0.1)
    for rule in (schedule, fixed):
        assert rule.delay(1, 0.0) == timedelta(minutes=10)
        assert rule.delay(1, 0.5) == timedelta(minutes=10.5)
        assert timedelta(minutes=10) < rule.delay(1, 0.99) < timedelta(minutes=11)
    spread = {schedule.delay(1, j / 100) for j in range(100)}
    assert len(spread) == 100  # a hundred deliveries, a hundred different times


def test_spread_must_be_a_share():
    with pytest.raises(ValueError, match="spread must be a share from 0 to 1"):
        RetryRule.build("s", schedule=[timedelta(minutes=1)], spread=1.5)


def test_doubling_starts_at_first_doubles_and_stops_at_the_cap():
    """The relay's infrastructure retries (webhooks, outcome writes) share this arithmetic."""
    from policies.retry import doubling

    first, cap = timedelta(seconds=10), timedelta(hours=1)
    assert [doubling(first, n, cap) for n in (1, 2, 3)] == [first, 2 * first, 4 * first]
    assert doubling(first, 10_000, cap) == cap  # no overflow on an absurd count
    assert doubling(first, 0, cap) == first  # no attempt failed yet: the first wait


def test_scheduled_repeats_the_last_step():
    from policies.retry import scheduled

    steps = (1.0, 2.0, 5.0)
    assert [scheduled(steps, n) for n in (1, 2, 3, 4, 99)] == [1.0, 2.0, 5.0, 5.0, 5.0]
