"""The verdict: everything the relay does about one reply, decided in one place.

``verdict(reply, facts, rules)`` is the only function that decides what a reply means. The
delivery worker, ``bounce-relay classify`` and ``classify --replay``, bounce-message intake,
``dsn parse`` and the admin pages all ask it; they gather the facts and apply the answer,
none of them adds a step of its own. The steps, in order:

1. ``policies.outcome.decide``: classification (``policies.classify``, the operator's
   ``[[classify.rules]]``), the resend rule (``[retry]``) and a provider's throttling hint
   (``policies.hints``), which also asks the shell to slow the destination down;
2. a domain our resolver says is absent: deferred ``[policy] nxdomain_confirm_after`` and
   looked up again; only a second such answer in a row bounces and suppresses;
3. the address's protection: an allowlisted address, an address literal, or a reply the
   upstream exchange itself spoiled (a protocol error) never suppresses anybody; nor does
   a refusal after DATA of a recipient the server had accepted at RCPT, unless its enhanced
   status names the condition (``AFTER_DATA``);
4. an open incident (``policies.incidents``) this reply belongs to: deferred, nobody
   suppressed;
5. ``[policy] confirm_hard`` (``policies.probation``): a first recipient-level hard bounce
   is a suspicion, the probe is retried;
6. ``[policy] dry_run``: the suppression is recorded, mail already queued for the address
   is not cancelled.

A result read later from a bounce message (``Reported`` facts) takes steps 1, 3 and 6 in
their reported form (``policies.outcome.decide_reported``), and its "user unknown"
suppresses only when the report says the reply answered RCPT or its status names the
address (X.1.1, X.1.6; ``HEARSAY`` otherwise): the remote system retries by
itself, so nothing is rescheduled, and incidents and probation are about our own attempts.
A result that is no evidence (a bounce of a bounce, a failure reported without any status)
is not judged at all (``NotJudged``): the relay keeps the message for an operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol, overload

from policies.addresses import is_address_literal
from policies.classify import Category, ClassifyRule, Kind, SuppressOn
from policies.classify import Verdict as Classified
from policies.dsn import BounceRecipient
from policies.incidents import (
    IncidentRules,
    OpenIncident,
    defer_for_incident,
    matching_incident,
)
from policies.outcome import Decision, ProbationStep, ReportedDecision, decide, decide_reported
from policies.probation import OnProbation, confirm_hard
from policies.retry import RetryPolicy
from policies.smtp_reply import Reply, says_domain_absent
from policies.states import DeliveryState, EventType
from policies.templates import template_of

# The rule name a first "no such domain" is deferred under (the report and classify show it).
CONFIRM_ABSENT = "nxdomain_confirm"
# Why a recipient refused only after DATA is not suppressed (``_contradicts_rcpt``).
AFTER_DATA = "refused after DATA: the server had accepted the recipient at RCPT"
# Why a bounce message's "user unknown" is not suppressed (``_hearsay``).
HEARSAY = "reported unknown without RCPT or X.1.1: no proof; our next attempt hears it first-hand"

__all__ = [
    "AFTER_DATA",
    "CONFIRM_ABSENT",
    "HEARSAY",
    "Attempt",
    "NotJudged",
    "Protection",
    "Reported",
    "VerdictRules",
    "explain",
    "refuses_suppressed",
    "verdict",
]


class VerdictRules(Protocol):
    """The rules a verdict reads (``relay.config.Rules`` has them all)."""

    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def classify_rules(self) -> Sequence[ClassifyRule]: ...
    @property
    def suppress_on(self) -> SuppressOn: ...
    @property
    def confirm_after(self) -> timedelta | None: ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def nxdomain_confirm_after(self) -> timedelta: ...
    @property
    def incidents(self) -> IncidentRules: ...


class Protection(StrEnum):
    """Why an address may not be suppressed by this reply, whatever it says."""

    ALLOWLISTED = "allowlisted"  # the administrators' allowlist (address or domain)
    ADDRESS_LITERAL = "address literal"  # user@[192.0.2.1]: no mailbox a name stands for
    UPSTREAM_FAULT = "upstream protocol error"  # the server's words, not about the address


@dataclass(frozen=True)
class Attempt:
    """What is known about one of our own delivery attempts when its reply arrives."""

    recipient_domain: str
    now: datetime
    attempt: int = 1  # this attempt's number, the first is 1
    first_failure_at: datetime | None = None  # the delivery's first soft bounce
    source_ip: str | None = None  # the IP we sent from
    destination: str | None = None  # the host that answered (an MX, a smarthost)
    open_incidents: tuple[OpenIncident, ...] = ()
    probation: OnProbation | None = None  # confirm_hard: the address is on probation
    protection: Protection | None = None  # what the shell knows; an address literal is seen here
    after_data: bool = False  # the reply answered the end of data (RCPT had accepted them)
    jitter: float = 0.0  # in [0, 1): feeds random backoffs
    last_code: int | None = None  # the delivery's previous reply, code and text
    last_reply: str | None = None


@dataclass(frozen=True)
class Reported:
    """What is known about one recipient result read from a bounce message."""

    action: str  # failed, delayed, complaint, delivered, relayed, expanded
    recipient_domain: str
    text: str = ""  # the words the report shows for the recipient: its template is made of them
    protection: Protection | None = None
    has_status: bool = True  # the report gives a status or a reply code for the recipient
    loop: bool = False  # the bounce message is itself about a bounce
    answered: str | None = None  # the command the remote's reply answered, if the report says

    @property
    def after_data(self) -> bool:
        return self.answered == "DATA"

    @classmethod
    def of(
        cls,
        result: BounceRecipient,
        recipient_domain: str,
        *,
        loop: bool = False,
        protection: Protection | None = None,
    ) -> Reported:
        """The facts a parsed bounce message gives about one of its results."""
        return cls(
            result.action,
            recipient_domain,
            result.shown_text,
            protection,
            has_status=bool(result.status or result.code),
            loop=loop,
            answered=result.answered_command,
        )


@dataclass(frozen=True)
class NotJudged:
    """A reported result that is no evidence either way: nothing is recorded for it."""

    reason: str


@overload
def verdict(reply: Reply, facts: Attempt, rules: VerdictRules) -> Decision: ...
@overload
def verdict(
    reply: Reply, facts: Reported, rules: VerdictRules
) -> ReportedDecision | NotJudged | None: ...
def verdict(
    reply: Reply, facts: Attempt | Reported, rules: VerdictRules
) -> Decision | ReportedDecision | NotJudged | None:
    """The whole verdict about ``reply`` given ``facts``; see the module's steps. For a
    bounce-message result that reports success (delivered, relayed, expanded): None; for
    one that is no evidence (a bounce of a bounce, a failure without any status): NotJudged."""
    if isinstance(facts, Reported):
        return _reported(reply, facts, rules)
    return _attempted(reply, facts, rules)


def refuses_suppressed(rules: VerdictRules) -> bool:
    """Whether a suppressed recipient is refused (at RCPT) or cancelled (when claimed);
    ``[policy] dry_run`` only logs and counts what it would have refused."""
    return not rules.dry_run


def _attempted(reply: Reply, facts: Attempt, rules: VerdictRules) -> Decision:
    decision = decide(
        reply,
        facts.recipient_domain,
        attempts=facts.attempt,
        first_failure_at=facts.first_failure_at,
        now=facts.now,
        retry=rules.retry,
        classify_rules=rules.classify_rules,
        suppress_on=rules.suppress_on,
        jitter=facts.jitter,
    )
    decision = _confirm_absent_domain(reply, facts, rules, decision)
    # A delivery still goes through the steps: it ends a probation (confirm_hard: CLEAR).
    template = template_of(reply.text) if decision.event is not EventType.DELIVERED else None
    decision = replace(decision, template=template)
    if decision.hint is not None and decision.hint.slow_down:
        decision = replace(decision, slow_down_until=facts.now + decision.hint.retry_after)
    protection = _protection(facts)
    if protection is not None and decision.verdict.suppress:
        decision = replace(decision.spare(), not_suppressed=protection.value)
    found = decision.verdict
    if found.suppress and _contradicts_rcpt(reply, found.category, facts, rules):
        decision = replace(decision.spare(), not_suppressed=AFTER_DATA)
    # A synthetic reply is our own path's failure, which incidents are not about; except
    # "no such domain", which a resolver incident explains.
    if rules.incidents.enabled and (
        not reply.synthetic or says_domain_absent(reply.code, reply.text)
    ):
        incident = matching_incident(
            facts.open_incidents,
            template,
            facts.destination,
            facts.recipient_domain,
            facts.source_ip,
        )
        decision = defer_for_incident(
            decision,
            incident,
            rules.incidents,
            now=facts.now,
            first_failure_at=facts.first_failure_at,
            max_age=rules.retry.default.max_age,
        )
    decision = confirm_hard(
        decision, facts.probation, rules.confirm_after, facts.source_ip, facts.now
    )
    return replace(
        decision,
        not_suppressed=_why_not_suppressed(decision, rules),
        cancel_queued=decision.suppress and refuses_suppressed(rules),
    )


def _confirm_absent_domain(
    reply: Reply, facts: Attempt, rules: VerdictRules, decision: Decision
) -> Decision:
    """A domain our resolver says is absent is looked up again ``nxdomain_confirm_after``
    later; only the second such answer in a row bounces and suppresses. One resolver's
    passing mistake (a lame server, a zone being moved) must not end an address for good."""
    wait = rules.nxdomain_confirm_after
    if (
        wait <= timedelta(0)
        or not says_domain_absent(reply.code, reply.text)
        or says_domain_absent(facts.last_code, facts.last_reply)
        or decision.state is not DeliveryState.BOUNCED
    ):
        return decision
    first_failure = facts.first_failure_at or facts.now
    max_age = rules.retry.default.max_age
    soft = replace(decision.verdict, kind=Kind.SOFT, suppress=False)
    if max_age is not None and facts.now + wait > first_failure + max_age:
        return replace(
            decision,
            state=DeliveryState.EXPIRED,
            event=EventType.SOFT_BOUNCE,
            verdict=soft,
            rule=CONFIRM_ABSENT,
            non_delivery=True,
            give_up_reason=f"{CONFIRM_ABSENT}: the second look would fall after max_age",
        )
    return replace(
        decision,
        state=DeliveryState.QUEUED,
        event=EventType.SOFT_BOUNCE,
        verdict=soft,
        rule=CONFIRM_ABSENT,
        next_attempt_at=facts.now + wait,
        not_suppressed=f"{CONFIRM_ABSENT}: the domain is looked up again before it suppresses",
    )


def _protection(facts: Attempt | Reported) -> Protection | None:
    """What the shell knows (the allowlist, a spoiled exchange), or an address literal."""
    if facts.protection is not None:
        return facts.protection
    if is_address_literal(facts.recipient_domain):
        return Protection.ADDRESS_LITERAL
    return None


def _contradicts_rcpt(
    reply: Reply, category: Category, facts: Attempt | Reported, rules: VerdictRules
) -> bool:
    """Whether the reply's recipient reading contradicts the server's own RCPT answer.

    A reply at the end of data came after the server had accepted the recipient at RCPT.
    Its "user unknown" then contradicts that answer: content filters, and Japanese carriers
    for a sender the recipient refuses, word a refusal so (sisimai calls it "filtered").
    Only an enhanced status that itself names the condition (X.1.1 for a mailbox, X.1.2 or
    X.1.10 for a domain, X.2.1 for a disabled one) keeps it evidence; otherwise it is a hard
    bounce that suppresses nobody, under the recipient rule (``suppress_on = "any_5xx"`` is
    the operator's literal rule and keeps it)."""
    if not facts.after_data or rules.suppress_on is not SuppressOn.RECIPIENT:
        return False
    detail = reply.enhanced.split(".", 1)[1] if reply.enhanced else None
    return detail not in _CONFIRMING_DETAILS.get(category, frozenset())


def _hearsay(reply: Reply, category: Category, facts: Reported, rules: VerdictRules) -> bool:
    """Whether a bounce message's "user unknown" is too second-hand to suppress on: the
    report neither says the remote's reply answered RCPT nor gives an enhanced status that
    names the address (X.1.1, X.1.6). Filters and carriers say "User unknown" after DATA
    for a refused sender, and a report that does not say when is no proof; the cost is
    small, since our own next attempt to the address hears the answer first-hand, at RCPT.
    (sisimai reads reports the same way: its "filtered".) Under the recipient rule only."""
    if category is not Category.USER_UNKNOWN or rules.suppress_on is not SuppressOn.RECIPIENT:
        return False
    detail = reply.enhanced.split(".", 1)[1] if reply.enhanced else None
    return facts.answered != "RCPT" and detail not in _NAMES_THE_ADDRESS


# X.1.1 bad destination mailbox, X.1.6 moved without forwarding (RFC 3463).
_NAMES_THE_ADDRESS = frozenset({"1.1", "1.6"})
# The enhanced status details that say what a recipient reading says (RFC 3463, RFC 7505).
_CONFIRMING_DETAILS: dict[Category, frozenset[str]] = {
    Category.USER_UNKNOWN: frozenset({"1.1"}),
    Category.DOMAIN_NOT_FOUND: frozenset({"1.2", "1.10"}),
    Category.MAILBOX_DISABLED: frozenset({"2.1"}),
}


def _why_not_suppressed(decision: Decision, rules: VerdictRules) -> str | None:
    """One line saying why a bounce suppresses nobody (None when it suppresses, and for a
    delivery)."""
    if decision.suppress or decision.event is EventType.DELIVERED:
        return None
    if decision.not_suppressed is not None:  # the address's protection
        return decision.not_suppressed
    if decision.incident_id is not None and decision.verdict.suppress:
        return f"part of incident {decision.incident_id}"
    if decision.probation in (ProbationStep.START, ProbationStep.HOLD):
        return "confirm_hard: the first hard bounce is a suspicion, the probe is retried"
    return _not_about_the_address(decision.verdict, rules)


def _not_about_the_address(found: Classified, rules: VerdictRules) -> str:
    if found.kind is not Kind.HARD:
        return "a soft bounce never suppresses"
    if found.rule is not None:
        return f"classify rule {found.rule} does not suppress"
    return (
        f"{found.category.value} is not about the recipient "
        f"([policy] suppress_on = {rules.suppress_on.value})"
    )


def _reported(
    reply: Reply, facts: Reported, rules: VerdictRules
) -> ReportedDecision | NotJudged | None:
    if facts.loop:
        # A bounce of our bounce, or of a message that was itself a bounce: judging it could
        # suppress the address of whoever's mail bounced, not ours.
        return NotJudged("a bounce of a bounce (loop)")
    if facts.action in ("failed", "delayed") and not facts.has_status:
        # Words without a status or code (a list server's note, a forwarded text): too weak
        # to bounce or suppress on; kept for an operator to read.
        return NotJudged("no parsable status for the delivery's recipient")
    decision = decide_reported(
        facts.action,
        reply,
        facts.recipient_domain,
        classify_rules=rules.classify_rules,
        suppress_on=rules.suppress_on,
    )
    if decision is None:
        return None
    if decision.event is not EventType.COMPLAINT:
        decision = replace(decision, template=template_of(facts.text or reply.text))
    protection = _protection(facts)
    if protection is not None and decision.verdict.suppress:
        decision = replace(
            decision,
            verdict=replace(decision.verdict, suppress=False),
            not_suppressed=protection.value,
        )
    found = decision.verdict
    if found.suppress and _contradicts_rcpt(reply, found.category, facts, rules):
        decision = replace(
            decision, verdict=replace(found, suppress=False), not_suppressed=AFTER_DATA
        )
    elif found.suppress and _hearsay(reply, found.category, facts, rules):
        decision = replace(decision, verdict=replace(found, suppress=False), not_suppressed=HEARSAY)
    if decision.suppress:
        return replace(decision, cancel_queued=refuses_suppressed(rules))
    if decision.not_suppressed is not None:
        return decision
    return replace(decision, not_suppressed=_not_about_the_address(decision.verdict, rules))


def explain(decision: Decision | ReportedDecision | NotJudged | None) -> str:
    """A verdict in one line for an operator: what it records, whether it suppresses and,
    when not, why; the rule that decided a resend."""
    if decision is None:
        return "success: nothing recorded"
    if isinstance(decision, NotJudged):
        return f"not judged: {decision.reason}"
    found = decision.verdict
    what = f"{decision.event.value} ({found.category.value})"
    if decision.suppress:
        return f"{what}: suppresses"
    rule = decision.rule if isinstance(decision, Decision) else found.rule
    retried = f", rule {rule}" if rule and found.kind is Kind.SOFT else ""
    return f"{what}{retried}: does not suppress ({decision.not_suppressed})"
