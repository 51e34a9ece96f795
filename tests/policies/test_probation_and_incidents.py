"""confirm_hard and incident deferral: pure steps after decide()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policies.incidents import (
    IncidentRules,
    IncidentScope,
    OpenIncident,
    defer_for_incident,
    matching_incident,
)
from policies.outcome import ProbationStep, decide
from policies.probation import OnProbation, confirm_hard
from policies.retry import RetryPolicy, RetryRule
from policies.smtp_reply import DOMAIN_ABSENT_PREFIX, domain_absent_reply, parse_reply
from policies.states import DeliveryState
from policies.templates import template_of

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
POLICY = RetryPolicy(default=RetryRule.build("default", schedule=[HOUR], max_age=timedelta(1)))
UNKNOWN = "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown"


def _decide(raw: str):
    return decide(
        parse_reply(raw), "example.org", attempts=1, first_failure_at=None, now=NOW, retry=POLICY
    )


def test_first_recipient_level_bounce_starts_probation_without_suppressing():
    d = confirm_hard(_decide(UNKNOWN), None, HOUR, "192.0.2.1", NOW)
    assert (d.state, d.probation, d.suppress, d.rule) == (
        DeliveryState.QUEUED,
        ProbationStep.START,
        False,
        "confirm_hard",
    )
    assert d.next_attempt_at == NOW + HOUR and d.other_source_ip


def test_second_bounce_confirms_after_confirm_after_or_from_another_ip():
    on = OnProbation(since=NOW - HOUR, until=NOW, source_ip="192.0.2.1")
    later = confirm_hard(_decide(UNKNOWN), on, HOUR, "192.0.2.1", NOW)
    assert (later.state, later.probation, later.suppress) == (
        DeliveryState.BOUNCED,
        ProbationStep.CONFIRM,
        True,
    )
    early = OnProbation(
        since=NOW - timedelta(minutes=5),
        until=NOW + 55 * timedelta(minutes=1),
        source_ip="192.0.2.1",
    )
    same_ip = confirm_hard(_decide(UNKNOWN), early, HOUR, "192.0.2.1", NOW)
    assert (same_ip.state, same_ip.probation, same_ip.next_attempt_at) == (
        DeliveryState.QUEUED,
        ProbationStep.HOLD,
        early.until,
    )
    other_ip = confirm_hard(_decide(UNKNOWN), early, HOUR, "192.0.2.2", NOW)
    assert (other_ip.probation, other_ip.suppress) == (ProbationStep.CONFIRM, True)


def test_probe_delivered_or_finished_otherwise_clears_and_non_recipient_bounces_pass():
    on = OnProbation(since=NOW - HOUR, until=NOW, source_ip="192.0.2.1")
    assert confirm_hard(_decide("250 2.0.0 OK"), on, HOUR, "192.0.2.1", NOW).probation is (
        ProbationStep.CLEAR
    )
    block = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    assert confirm_hard(_decide(block), None, HOUR, "192.0.2.1", NOW) == _decide(block)
    assert confirm_hard(_decide(UNKNOWN), None, None, "192.0.2.1", NOW) == _decide(UNKNOWN)


INCIDENT = OpenIncident(7, "template", "mx.example.org:25", IncidentScope.MX, "192.0.2.1")


def test_incident_matching_is_by_template_destination_and_source_ip():
    found = matching_incident([INCIDENT], "template", "mx.example.org:25", "a.org", "192.0.2.1")
    assert found is INCIDENT
    for args in [
        ("other", "mx.example.org:25", "a.org", "192.0.2.1"),
        ("template", "mx2.example.org:25", "a.org", "192.0.2.1"),
        ("template", "mx.example.org:25", "a.org", "192.0.2.2"),
        (None, "mx.example.org:25", "a.org", "192.0.2.1"),
    ]:
        assert matching_incident([INCIDENT], *args) is None
    by_domain = OpenIncident(8, "template", "a.org", IncidentScope.DOMAIN, "192.0.2.1")
    assert matching_incident([by_domain], "template", "any-mx", "a.org", "192.0.2.1") is by_domain


def test_an_incident_reply_defers_and_suppresses_nobody_until_max_age():
    rules = IncidentRules(defer=timedelta(minutes=30), other_ip=True)
    d = defer_for_incident(
        _decide(UNKNOWN), INCIDENT, rules, now=NOW, first_failure_at=None, max_age=timedelta(1)
    )
    assert (d.state, d.suppress, d.incident_id, d.next_attempt_at, d.other_source_ip) == (
        DeliveryState.QUEUED,
        False,
        7,
        NOW + timedelta(minutes=30),
        True,
    )
    old = defer_for_incident(
        _decide(UNKNOWN),
        INCIDENT,
        rules,
        now=NOW,
        first_failure_at=NOW - timedelta(hours=23, minutes=45),
        max_age=timedelta(1),
    )
    assert (old.state, old.non_delivery, old.suppress) == (DeliveryState.EXPIRED, True, False)
    assert defer_for_incident(
        _decide("250 2.0.0 OK"), INCIDENT, rules, now=NOW, first_failure_at=None, max_age=None
    ) == _decide("250 2.0.0 OK")


def test_a_resolver_incident_holds_every_no_such_domain_of_ours():
    """Scope resolver: every "no such domain" template matches, whatever the domain, the
    destination or the source IP (a DNS answer has neither); nothing else does."""
    resolver = OpenIncident(7, DOMAIN_ABSENT_PREFIX, "", IncidentScope.RESOLVER, "")
    absent = template_of(domain_absent_reply("gone.example", "does not exist (NXDOMAIN)").text)
    no_records = template_of(
        domain_absent_reply("x.example", "has no MX and no address records").text
    )
    assert matching_incident([resolver], absent, None, "gone.example", None) is resolver
    assert matching_incident([resolver], no_records, None, "x.example", "127.0.0.2") is resolver
    assert matching_incident([resolver], "User unknown", "mx:25", "x.example", "127.0.0.2") is None
    provider = OpenIncident(8, absent, "", IncidentScope.DOMAIN, "127.0.0.2")
    assert matching_incident([provider], absent, None, "", None) is None
