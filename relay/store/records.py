"""The Store's values: frozen dataclasses in and out of its methods, never asyncpg records."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

__all__ = [
    "AcceptedMessage",
    "AccountChange",
    "AddressBounce",
    "AddressDelivery",
    "AddressProfile",
    "AdminAccount",
    "AdminSession",
    "AllowlistEntry",
    "AppliedDsn",
    "AppliedOutcomes",
    "AuditEntry",
    "ClaimedDelivery",
    "DeliveryDetail",
    "DeliveryEvent",
    "DeliverySummary",
    "DsnRecord",
    "EvidenceAudit",
    "EvidenceBounce",
    "EvidenceEntry",
    "IncidentCheck",
    "IncidentDetail",
    "IncidentSummary",
    "IncomingMessage",
    "OpenedIncident",
    "OutcomeRecord",
    "Probation",
    "QueueAction",
    "QueueDelivery",
    "QueueFilter",
    "Recipient",
    "RecordedBounce",
    "ReportRow",
    "ReportRowEvent",
    "ReportTotals",
    "SeriesRow",
    "SuppressionEvidence",
    "SuppressionFilter",
    "SuppressionRow",
    "SuppressionWithCause",
]


# --- the queue: messages in, deliveries claimed, outcomes applied (queue.py) ---


@dataclass(frozen=True)
class Recipient:
    address: str  # as the client wrote it
    key: str  # normalise_address()
    domain: str
    # [recipients] "tag": what the RCPT check found of the domain ("likely_typo:gmail.com",
    # "no_such_domain", ...), stored on the delivery as recipient_domain_flag.
    domain_flag: str | None = None


@dataclass(frozen=True)
class IncomingMessage:
    """One message the intake wants committed."""

    queue_id: str
    envelope_sender: str
    recipients: tuple[Recipient, ...]
    body: bytes
    from_domain: str | None
    message_id: str | None
    campaign: str | None
    client_address: str
    session_id: str
    smtputf8: bool


@dataclass(frozen=True)
class AcceptedMessage:
    id: int
    queue_id: str
    received_at: datetime


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to this relay, with what sending it needs (but the body)."""

    id: int
    message_id: int
    recipient: str
    recipient_key: str
    recipient_domain: str
    attempts: int
    unrecorded_claims: int  # earlier claims in a row whose lease ran out with nothing recorded
    first_failure_at: datetime | None
    lease_token: int
    last_source_ip: str | None
    avoid_source_ip: str | None
    last_code: int | None
    last_reply: str | None
    queue_id: str
    envelope_sender: str
    from_domain: str | None
    campaign: str | None
    smtputf8: bool
    received_at: datetime
    suppressed: bool
    allowlisted: bool = False
    probation: Probation | None = None
    # earlier sends in a row with nothing recorded (note_sends): what gives it up, claims not
    unrecorded_sends: int = 0


@dataclass(frozen=True)
class Probation:
    """[policy] confirm_hard: an address waiting for its first hard bounce to be confirmed."""

    address: str
    since: datetime
    until: datetime
    source_ip: str | None
    delivery_id: int  # the probe: the one delivery to the address still tried
    event_id: int | None
    reason: str


@dataclass(frozen=True)
class OutcomeRecord:
    """One delivery's result, as the store applies it (see queue.sql apply_outcomes)."""

    delivery_id: int
    lease_token: int
    state: str
    event: str
    next_attempt_at: datetime | None = None
    counts_attempt: bool = True
    non_delivery: bool = False
    suppress: bool = False
    suppress_reason: str = ""
    code: int | None = None
    enhanced: str | None = None
    reply_text: str | None = None
    template: str | None = None
    category: str | None = None
    rule: str | None = None
    synthetic: bool = False
    source_ip: str | None = None
    destination: str | None = None
    avoid_source_ip: str | None = None
    incident_id: int | None = None  # an open incident's reply: deferred, suppresses nobody
    probation_until: datetime | None = None  # confirm_hard: probation starts, probe retried then
    probation_end: bool = False  # the probe finished: the address's probation ends
    # The recipient's mailbox provider (policies.providers.provider_of), for the report
    provider: str | None = None


@dataclass(frozen=True)
class AppliedOutcomes:
    applied: int  # rows whose lease still held
    fenced: int  # rows another relay had taken over: left alone
    suppressed: int  # addresses newly put on the suppression list
    cancelled: int  # other queued deliveries cancelled because of those
    applied_ids: frozenset[int] = frozenset()


# The administrators' view of the queue (queue.sql list_deliveries, delivery_by_id,
# events_of_delivery); field order is the query's, which ``queue show`` prints.


@dataclass(frozen=True)
class DeliverySummary:
    """One delivery of ``queue list``."""

    id: int
    queue_id: str
    recipient: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_code: int | None
    last_reply: str | None
    received_at: datetime


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery with its message's envelope."""

    id: int
    queue_id: str
    recipient: str
    recipient_key: str
    state: str
    attempts: int
    next_attempt_at: datetime
    first_failure_at: datetime | None
    lease_until: datetime | None
    lease_owner: str | None
    last_source_ip: str | None
    last_code: int | None
    last_reply: str | None
    envelope_sender: str
    from_domain: str | None
    campaign: str | None
    received_at: datetime
    allowlisted: bool  # the address or its domain is on the allowlist


@dataclass(frozen=True)
class DeliveryEvent:
    """One event of a delivery's history."""

    occurred_at: datetime
    type: str
    attempt: int | None
    code: int | None
    enhanced: str | None
    category: str | None
    rule: str | None
    source_ip: str | None
    destination: str | None
    reply_text: str | None
    synthetic: bool


# The queue page (queue.sql queue_deliveries_older ... purge_deliveries).


@dataclass(frozen=True)
class QueueFilter:
    """Which deliveries the queue page lists; each None means any. Domains in their ASCII
    form (``ascii_domain``), ``reply_contains`` matched without regard to case."""

    state: str | None = None
    recipient_domain: str | None = None
    from_domain: str | None = None
    campaign: str | None = None
    reply_contains: str | None = None


@dataclass(frozen=True)
class QueueDelivery:
    """One delivery as the queue page lists it; ``message_id`` is the Message-ID header."""

    id: int
    queue_id: str
    message_id: str | None
    recipient: str
    recipient_key: str
    envelope_sender: str
    from_domain: str | None
    campaign: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_code: int | None
    last_reply: str | None
    received_at: datetime
    # [recipients] "tag": what the RCPT check found of the domain (the history page reads
    # it; the listing does not).
    recipient_domain_flag: str | None = None


@dataclass(frozen=True)
class QueueAction:
    """What a retry or purge of a selection did: how many it changed, and how many it left
    alone by the state they were in ("unknown": no such delivery; "changed": it changed
    while the action waited for it)."""

    done: int
    skipped: dict[str, int]


# --- bounce messages (dsn.py) ---


@dataclass(frozen=True)
class DsnRecord:
    """One recipient result read from a bounce message, for the delivery its return path
    names (see dsn.sql apply_dsn_results)."""

    delivery_id: int
    event: str  # hard_bounce | soft_bounce | complaint
    finish_state: str | None = None  # bounced | expired; None leaves the state alone
    non_delivery: bool = False
    suppress: bool = False
    suppress_reason: str = ""
    code: int | None = None
    enhanced: str | None = None
    reply_text: str | None = None
    template: str | None = None
    category: str | None = None
    rule: str | None = None
    destination: str | None = None  # the remote MTA the bounce names
    detail: dict[str, Any] | None = None
    # The report's Action (failed, delayed, complaint): a delivery counts each action once.
    # None: the event stands for it.
    action: str | None = None


@dataclass(frozen=True)
class AppliedDsn:
    recorded: int  # events written
    # results not recorded: the delivery is final or unknown, or it had this action reported
    # before (a repeated bounce)
    skipped: int
    suppressed: int
    cancelled: int


# --- suppressions (suppression.py) ---


@dataclass(frozen=True)
class SuppressionRow:
    address: str
    reason: str
    source: str
    created_at: datetime
    event_id: int | None


@dataclass(frozen=True)
class SuppressionWithCause:
    """One entry of the suppression list with the bounce text that caused it."""

    address: str
    reason: str
    source: str
    created_at: datetime
    cause: str | None  # None: no bounce caused it (manual, import) or its event is gone


@dataclass(frozen=True)
class AuditEntry:
    """One administrator's act (or incident detection's) of the audit log."""

    occurred_at: datetime
    actor: str
    action: str
    subject: str
    reason: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class AllowlistEntry:
    entry: str  # an address key or a domain
    reason: str
    actor: str
    created_at: datetime


@dataclass(frozen=True)
class AddressProfile:
    """An address's profile, with its suppression entry when there is one."""

    address: str
    status: str
    status_changed_at: datetime
    suppression_reason: str | None
    suppression_source: str | None
    suppressed_at: datetime | None


@dataclass(frozen=True)
class AddressBounce:
    """One bounce event of an address (``profile show``)."""

    occurred_at: datetime
    type: str  # soft_bounce | hard_bounce | non_delivery
    code: int | None
    enhanced: str | None
    category: str | None
    reply_text: str | None
    source_ip: str | None
    destination: str | None
    queue_id: str | None
    campaign: str | None
    attempt: int | None


@dataclass(frozen=True)
class AddressDelivery:
    """One delivery to an address with its history, oldest event first (the profile page)."""

    id: int
    queue_id: str
    state: str
    recipient: str  # as the client wrote it
    envelope_sender: str
    from_domain: str | None
    campaign: str | None
    received_at: datetime  # when its message was accepted
    attempts: int
    events: tuple[DeliveryEvent, ...]  # the newest ones, oldest first
    events_total: int  # how many it has: more than ``events`` when the oldest were left out


@dataclass(frozen=True)
class SuppressionFilter:
    """Which entries of the suppression list a page, its count and its CSV hold; a None
    field does not filter."""

    search: str | None = None  # the address contains it (``policies.addresses.search_form``)
    source: str | None = None  # hard_bounce, dsn, complaint, manual or import
    category: str | None = None  # of the bounce that caused the entry
    added_from: datetime | None = None  # created at or after
    added_before: datetime | None = None  # created before


# The evidence behind an address's entries (suppression.sql evidence_*); field order is the
# query's, which ``suppression why --json`` keeps.


@dataclass(frozen=True)
class EvidenceEntry:
    """One entry that applies to the address."""

    kind: str  # global | scoped | allowlist | probation
    scope: str | None  # scoped: the sending domain; allowlist: the entry (address or domain)
    reason: str
    source: str
    created_at: datetime
    event_id: int | None
    until: datetime | None  # probation: when the probe is retried


@dataclass(frozen=True)
class EvidenceBounce:
    """One bounce, complaint or non-delivery recorded for the address, with what deciding
    it again needs (``RecordedBounce.of_evidence``)."""

    event_id: int
    occurred_at: datetime
    type: str  # hard_bounce | soft_bounce | complaint | non_delivery
    source: str  # smtp | dsn
    code: int | None
    enhanced: str | None
    reply_text: str | None
    template: str | None
    category: str | None
    source_ip: str | None
    destination: str | None
    campaign: str | None
    from_domain: str | None
    rule: str | None
    suppress: bool | None
    retry_at: datetime | None
    queue_id: str | None
    incident_id: int | None
    incident_state: str | None
    delivery_id: int | None
    recipient: str | None
    recipient_domain: str | None
    synthetic: bool
    attempt: int | None
    dsn_action: str | None
    first_failure_at: datetime | None


@dataclass(frozen=True)
class EvidenceAudit:
    """One act on the address (an administrator's, or incident detection's)."""

    occurred_at: datetime
    actor: str
    action: str
    reason: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class SuppressionEvidence:
    address: str
    entries: list[EvidenceEntry]
    bounces: list[EvidenceBounce]  # newest first
    audit: list[EvidenceAudit]  # newest first


# --- incidents (incidents.py) ---


@dataclass(frozen=True)
class OpenedIncident:
    """An incident one detection pass opened (incidents.sql detect_incidents)."""

    id: int
    template: str
    destination: str
    scope: str  # mx | domain
    source_ip: str
    recipients: int
    attempted: int
    category: str | None


@dataclass(frozen=True)
class IncidentSummary:
    """One incident of the list (incidents.sql list_incidents)."""

    id: int
    opened_at: datetime
    last_seen_at: datetime
    state: str  # open | closed | released
    scope: str  # mx | domain
    destination: str
    source_ip: str
    template: str
    category: str | None
    code: int | None
    enhanced: str | None
    recipients: int
    attempted: int
    lifted: int
    closed_at: datetime | None
    released_by: str | None
    release_reason: str | None
    replies: int  # events that joined it


@dataclass(frozen=True)
class IncidentDetail:
    """One incident with its counts (incidents.sql incident_by_id); field order is the
    query's, which ``incidents show`` prints."""

    id: int
    opened_at: datetime
    last_seen_at: datetime
    state: str
    scope: str
    destination: str
    source_ip: str
    template: str
    category: str | None
    code: int | None
    enhanced: str | None
    sample_reply: str | None
    recipients: int
    attempted: int
    lifted: int
    closed_at: datetime | None
    released_by: str | None
    release_reason: str | None
    replies: int
    distinct_recipients: int
    deferred: int  # its deliveries still queued


@dataclass(frozen=True)
class IncidentCheck:
    opened: list[OpenedIncident]
    closed: list[int]
    lifted: int  # suppressions lifted because the replies that made them joined an incident


# --- reports and replay (reports.py) ---


@dataclass(frozen=True)
class ReportRow:
    """One bounces-report row: a group (From domain or source IP), a bounce text and its
    codes. ``bounce_text`` is a wording one of the row's replies had, masked (the row groups
    a provider's rewordings of one reply by their template); ``code`` is the reply code and
    enhanced status ("452 4.2.2"), empty when unknown. ``attempts`` and ``delivered`` are
    the group's (every row of a group carries the same), not the text's."""

    group: str
    bounce_text: str
    code: str
    amount: int
    messages: int
    recipient_domains: int
    category: str | None
    first_seen: datetime
    last_seen: datetime
    sample: str | None
    attempts: int
    delivered: int
    # The row's identity (hex): its template key, which ``report_row_events`` takes to
    # list the events behind it. Not a column of the report in any format.
    template_key: str = ""


@dataclass(frozen=True)
class ReportRowEvent:
    """One bounce event behind a bounces-report row (the admin page's drill-down).
    ``code`` is the reply code and enhanced status as the row shows them ("" unknown),
    ``template`` the text the row groups by, ``message_id`` the Message-ID header (None
    when the message had none or is gone)."""

    id: int
    occurred_at: datetime
    type: str
    recipient: str | None
    code: str
    reply_text: str | None
    template: str
    source_ip: str | None
    campaign: str | None
    queue_id: str | None
    message_id: str | None


@dataclass(frozen=True)
class ReportTotals:
    """The bounces report's total line: everything its filter selects, whatever the grouping
    and ``--top``. ``messages`` counts each message once however many texts, IPs or groups
    it bounced with; ``attempts`` and ``delivered`` are those of every group; the times are
    None when nothing bounced."""

    amount: int
    messages: int
    attempts: int
    delivered: int
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class SeriesRow:
    """One point of the bounces report as a time series (``--by hour|day``): a group's
    bounce events, attempts and deliveries in one UTC hour or day."""

    bucket: datetime
    group: str
    amount: int
    attempts: int
    delivered: int


@dataclass(frozen=True)
class RecordedBounce:
    """One recorded soft or hard bounce, with the verdict it got; events written before
    0006 have no ``suppress``, ``retry_at`` or ``incident_id`` (None)."""

    id: int
    occurred_at: datetime
    type: str  # soft_bounce | hard_bounce
    source: str  # smtp | dsn
    delivery_id: int | None
    recipient: str | None
    recipient_domain: str | None
    code: int | None
    enhanced: str | None
    reply_text: str | None
    synthetic: bool
    attempt: int | None
    category: str | None
    rule: str | None
    suppress: bool | None
    retry_at: datetime | None
    incident_id: int | None
    dsn_action: str | None  # a bounce message's Action (failed, delayed)
    first_failure_at: datetime | None  # the delivery's first soft bounce

    @classmethod
    def of_evidence(cls, bounce: EvidenceBounce) -> RecordedBounce:
        """One bounce of ``suppression_evidence`` (its id is ``event_id`` there)."""
        return cls(
            **{
                f.name: getattr(bounce, "event_id" if f.name == "id" else f.name)
                for f in fields(cls)
            }
        )


# --- admin accounts and the admin page's sessions (accounts.py) ---


@dataclass(frozen=True)
class AdminAccount:
    """An account of the admin page, as ``admin user list`` shows it."""

    name: str
    role: str  # admin | viewer
    created_at: datetime
    password_changed_at: datetime
    last_login_at: datetime | None
    sessions: int  # live now


@dataclass(frozen=True)
class AccountChange:
    """What adding, removing or re-passwording an account did: the sessions it ended (for
    an add, the shared password's) and how many accounts there are now."""

    name: str
    role: str
    sessions_ended: int
    accounts_left: int


@dataclass(frozen=True)
class AdminSession:
    """A live session of the admin page. ``account`` None: the built-in admin of the shared
    ``[admin] password_hash``."""

    account: str | None
    role: str
    csrf: str
