"""verdict(): every fact about an attempt or a reported result -> the whole decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from policies.classify import ClassifyRule, SuppressOn
from policies.incidents import IncidentRules, IncidentScope, OpenIncident
from policies.outcome import ProbationStep
from policies.probation import OnProbation
from policies.retry import RetryPolicy, RetryRule
from policies.smtp_reply import domain_absent_reply, parse_reply, synthetic_reply
from policies.states import DeliveryState, EventType
from policies.templates import template_of
from policies.verdict import (
    AFTER_DATA,
    CONFIRM_ABSENT,
    HEARSAY,
    Attempt,
    Protection,
    Reported,
    refuses_suppressed,
    verdict,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UNKNOWN = "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown"
SPAMHAUS = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
YAHOO_TS04 = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
    "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)


RETRY = RetryPolicy(
    default=RetryRule.build("default", schedule=[timedelta(minutes=5)], max_age=timedelta(days=1))
)


@dataclass(frozen=True)
class Rules:
    retry: RetryPolicy = RETRY
    classify_rules: tuple[ClassifyRule, ...] = ()
    suppress_on: SuppressOn = SuppressOn.RECIPIENT
    confirm_after: timedelta | None = None
    dry_run: bool = False
    nxdomain_confirm_after: timedelta = timedelta(hours=1)
    incidents: IncidentRules = field(default_factory=IncidentRules)


def _attempt(raw: str, rules: Rules | None = None, **facts: object):
    return verdict(parse_reply(raw), Attempt("example.org", NOW, **facts), rules or Rules())  # type: ignore[arg-type]


def test_a_recipient_hard_bounce_suppresses_and_cancels_queued_mail():
    d = _attempt(UNKNOWN)
    assert (d.state, d.event, d.suppress) == (DeliveryState.BOUNCED, EventType.HARD_BOUNCE, True)
    assert d.cancel_queued and d.not_suppressed is None
    assert d.template == template_of(parse_reply(UNKNOWN).text)


def test_delivered_has_no_template_and_nothing_to_explain():
    d = _attempt("250 2.0.0 OK")
    assert d.event is EventType.DELIVERED
    assert (d.template, d.not_suppressed, d.cancel_queued) == (None, None, False)


def test_an_ip_block_says_why_it_suppresses_nobody():
    d = _attempt(SPAMHAUS)
    assert d.state is DeliveryState.BOUNCED and not d.suppress
    assert (
        d.not_suppressed
        == "spam_block_ip is not about the recipient ([policy] suppress_on = recipient)"
    )


def test_an_allowlisted_address_is_spared_and_told_so():
    d = _attempt(UNKNOWN, protection=Protection.ALLOWLISTED)
    assert d.state is DeliveryState.BOUNCED and not d.suppress
    assert d.not_suppressed == "allowlisted"


def test_an_address_literal_is_protected_without_being_told():
    reply = parse_reply(UNKNOWN)
    d = verdict(reply, Attempt("[192.0.2.7]", NOW), Rules())
    assert not d.suppress and d.not_suppressed == "address literal"


def test_an_upstream_protocol_fault_never_suppresses():
    d = _attempt(UNKNOWN, protection=Protection.UPSTREAM_FAULT)
    assert not d.suppress and d.not_suppressed == "upstream protocol error"


def test_a_reply_of_an_open_incident_is_deferred_not_suppressed():
    template = template_of(parse_reply(UNKNOWN).text)
    incident = OpenIncident(7, template, "mx.example.org", IncidentScope.MX, "127.0.0.2")
    d = _attempt(
        UNKNOWN, open_incidents=(incident,), destination="mx.example.org", source_ip="127.0.0.2"
    )
    assert (d.state, d.incident_id, d.suppress) == (DeliveryState.QUEUED, 7, False)
    assert d.next_attempt_at == NOW + IncidentRules().defer
    assert d.not_suppressed == "part of incident 7"
    # From another source IP the same words are not that incident's.
    other = _attempt(
        UNKNOWN, open_incidents=(incident,), destination="mx.example.org", source_ip="127.0.0.3"
    )
    assert other.incident_id is None and other.suppress


def test_incidents_off_leave_the_bounce_alone():
    template = template_of(parse_reply(UNKNOWN).text)
    incident = OpenIncident(7, template, "mx.example.org", IncidentScope.MX, "127.0.0.2")
    rules = Rules(incidents=IncidentRules(enabled=False))
    d = _attempt(
        UNKNOWN,
        rules,
        open_incidents=(incident,),
        destination="mx.example.org",
        source_ip="127.0.0.2",
    )
    assert d.incident_id is None and d.suppress


def test_confirm_hard_starts_probation_then_confirms_from_another_ip():
    rules = Rules(confirm_after=timedelta(hours=1))
    first = _attempt(UNKNOWN, rules, source_ip="127.0.0.2")
    assert (first.probation, first.state, first.suppress) == (
        ProbationStep.START,
        DeliveryState.QUEUED,
        False,
    )
    assert first.not_suppressed is not None and first.not_suppressed.startswith("confirm_hard")
    on = OnProbation(NOW - timedelta(minutes=1), NOW + timedelta(minutes=59), "127.0.0.2")
    second = _attempt(UNKNOWN, rules, source_ip="127.0.0.3", probation=on)
    assert (second.probation, second.suppress) == (ProbationStep.CONFIRM, True)


def test_dry_run_still_suppresses_but_cancels_nothing():
    rules = Rules(dry_run=True)
    d = _attempt(UNKNOWN, rules)
    assert d.suppress and not d.cancel_queued
    assert not refuses_suppressed(rules)
    assert refuses_suppressed(Rules())


def test_a_provider_hint_sets_the_rule_and_asks_to_slow_down():
    d = verdict(parse_reply(YAHOO_TS04), Attempt("yahoo.com", NOW), Rules())
    assert d.hint is not None and d.rule == d.hint.name == "yahoo-ts04"
    assert d.next_attempt_at == NOW + d.hint.retry_after
    assert d.slow_down_until == NOW + d.hint.retry_after
    assert d.not_suppressed == "a soft bounce never suppresses"


def test_a_synthetic_reply_is_never_part_of_an_incident():
    reply = synthetic_reply(550, "5.1.1", "User unknown")
    template = template_of(reply.text)
    incident = OpenIncident(7, template, "mx.example.org", IncidentScope.MX, "127.0.0.2")
    facts = Attempt(
        "example.org",
        NOW,
        open_incidents=(incident,),
        destination="mx.example.org",
        source_ip="127.0.0.2",
    )
    assert verdict(reply, facts, Rules()).incident_id is None


def _reported(action: str, raw: str, rules: Rules | None = None, **facts: object):
    return verdict(parse_reply(raw), Reported(action, "example.org", **facts), rules or Rules())  # type: ignore[arg-type]


def test_a_reported_failure_suppresses_unless_allowlisted():
    assert _reported("failed", UNKNOWN).suppress
    spared = _reported("failed", UNKNOWN, protection=Protection.ALLOWLISTED)
    assert spared is not None and not spared.suppress and spared.not_suppressed == "allowlisted"
    assert spared.finish_state is DeliveryState.BOUNCED


def test_a_reported_result_templates_the_words_the_report_shows():
    d = _reported("failed", UNKNOWN, text="mailbox unknown: x@example.org")
    assert d is not None and d.template == template_of("mailbox unknown: x@example.org")


def test_a_complaint_suppresses_without_a_template_and_success_records_nothing():
    complaint = _reported("complaint", "")
    assert complaint is not None and complaint.suppress and complaint.template is None
    assert complaint.event is EventType.COMPLAINT
    assert _reported("delivered", "250 OK") is None


def test_a_reported_delay_never_suppresses():
    d = _reported("delayed", UNKNOWN)
    assert d is not None and d.event is EventType.SOFT_BOUNCE and not d.suppress
    assert d.not_suppressed == "a soft bounce never suppresses"


def test_a_reported_failure_under_dry_run_cancels_nothing():
    d = _reported("failed", UNKNOWN, Rules(dry_run=True))
    assert d is not None and d.suppress and not d.cancel_queued


def _absent(**facts: object):
    reply = domain_absent_reply("gone.example", "does not exist (NXDOMAIN)")
    return verdict(reply, Attempt("gone.example", NOW, **facts), Rules())  # type: ignore[arg-type]


def test_a_domain_our_resolver_says_is_absent_is_looked_up_again_before_it_suppresses():
    first = _absent()
    assert (first.state, first.event, first.suppress) == (
        DeliveryState.QUEUED,
        EventType.SOFT_BOUNCE,
        False,
    )
    assert first.rule == CONFIRM_ABSENT and first.next_attempt_at == NOW + timedelta(hours=1)
    assert first.not_suppressed is not None and CONFIRM_ABSENT in first.not_suppressed
    reply = domain_absent_reply("gone.example", "does not exist (NXDOMAIN)")
    second = _absent(
        attempt=2,
        first_failure_at=NOW - timedelta(hours=1),
        last_code=reply.code,
        last_reply=reply.text,
    )
    assert (second.state, second.suppress) == (DeliveryState.BOUNCED, True)
    assert second.verdict.category.value == "domain_not_found"


def test_an_absent_domain_after_another_failure_is_still_looked_up_twice():
    """A timeout before does not count as the first look."""
    d = _absent(attempt=3, first_failure_at=NOW - timedelta(hours=5), last_code=451, last_reply="x")
    assert d.state is DeliveryState.QUEUED and not d.suppress


def test_no_confirmation_wanted_suppresses_at_once():
    reply = domain_absent_reply("gone.example", "has no MX and no address records")
    rules = Rules(nxdomain_confirm_after=timedelta(0))
    d = verdict(reply, Attempt("gone.example", NOW), rules)
    assert (d.state, d.suppress) == (DeliveryState.BOUNCED, True)


def test_a_second_look_past_max_age_gives_up_without_suppressing():
    d = _absent(attempt=9, first_failure_at=NOW - timedelta(hours=23, minutes=30))
    assert (d.state, d.non_delivery, d.suppress) == (DeliveryState.EXPIRED, True, False)
    assert d.give_up_reason is not None and "max_age" in d.give_up_reason


def test_user_unknown_after_data_is_hard_but_no_evidence_against_the_mailbox():
    """RCPT accepted the recipient; the end of data's "user unknown" contradicts it, unless
    the enhanced status itself names the condition."""
    d = _attempt("550 5.0.0 User unknown", after_data=True)
    assert (d.event, d.suppress, d.not_suppressed) == (EventType.HARD_BOUNCE, False, AFTER_DATA)
    assert not d.cancel_queued
    filtered = "550 5.2.1 <x@example.org>... User Unknown"  # a Japanese carrier's refusal
    reported = _reported("failed", filtered, answered="DATA")
    assert reported is not None and not reported.suppress
    assert reported.not_suppressed == AFTER_DATA
    assert _attempt(UNKNOWN, after_data=True).suppress  # 5.1.1 says so itself
    assert _attempt("554 5.2.1 This account has been disabled", after_data=True).suppress
    # any_5xx is the operator's literal rule: every 5xx suppresses, after DATA too.
    assert _attempt(filtered, Rules(suppress_on=SuppressOn.ANY_5XX), after_data=True).suppress


def test_a_reported_unknown_needs_rcpt_or_an_address_status():
    """A bounce message's "user unknown" suppresses when the report says it answered RCPT or
    its status names the address (X.1.1); otherwise our next attempt hears it first-hand."""
    plain = "550 User unknown"
    assert _reported("failed", plain, answered="RCPT").suppress
    assert _reported("failed", "550 5.1.1 User unknown").suppress
    hearsay = _reported("failed", plain)
    assert hearsay is not None and not hearsay.suppress and hearsay.not_suppressed == HEARSAY
    assert not _reported("failed", "550 5.0.0 User unknown", answered="DATA").suppress
    # A disabled mailbox or a missing domain is not "unknown": the rule is about that word.
    assert _reported("failed", "550 This account has been disabled").suppress
