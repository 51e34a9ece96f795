"""Provider incidents: when a run of identical 5xx replies says nothing about the recipients.

A provider-side fault or a block on one of our IPs answers the same words to everyone: the
same reply template, at one destination, from one source IP, for many distinct recipients in
a short window. Treated one by one, each of those replies looks like a recipient-level hard
bounce and would suppress a good address. An incident is declared when

    recipients with that template  >= min_recipients, and
    recipients with that template  >= min_share * recipients tried there from that IP

in the same window: the share keeps a large sender's everyday "user unknown" (a few percent
of what it sends to a big provider, all with one template) from ever looking like one.

Our own resolver has incidents too: when it says "no such domain" (NXDOMAIN, or no MX and
no address records) for ``min_recipients`` distinct recipient *domains* in the window, and
for ``min_share`` of the domains looked up there, it is the resolver that is wrong (split
horizon, a hijacking or misconfigured forwarder), not the domains. That incident has scope
``resolver``, no destination and no source IP; every "no such domain" reply belongs to it.

While an incident is open its replies defer the delivery (``defer``, from another IP of the
pool when ``other_ip``) instead of bouncing it, and suppress nobody. The store counts and
opens incidents (relay/store/incidents.sql, so every relay shares them); this module holds
the rules, which reply belongs to which incident, and what an incident does to a decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from policies.outcome import Decision
from policies.smtp_reply import DOMAIN_ABSENT_PREFIX
from policies.states import DeliveryState, EventType

__all__ = [
    "IncidentRules",
    "IncidentScope",
    "OpenIncident",
    "defer_for_incident",
    "matching_incident",
]


class IncidentScope(StrEnum):
    MX = "mx"  # the host that answered (one provider's MX, many domains behind it)
    DOMAIN = "domain"  # the recipient domain
    RESOLVER = "resolver"  # our resolver: "no such domain" for many domains at once


@dataclass(frozen=True)
class IncidentRules:
    """``[incidents]``."""

    enabled: bool = True
    window: timedelta = timedelta(minutes=10)
    min_recipients: int = 20
    min_share: float = 0.5
    scope: IncidentScope = IncidentScope.MX
    defer: timedelta = timedelta(minutes=30)
    other_ip: bool = True
    lift_on_open: bool = True  # lift the suppressions its first replies made before detection
    close_after: timedelta = timedelta(hours=1)  # closes when no reply matched for this long
    check_every: timedelta = timedelta(seconds=15)


@dataclass(frozen=True)
class OpenIncident:
    id: int
    template: str
    destination: str
    scope: IncidentScope
    source_ip: str

    def matches(
        self,
        template: str | None,
        destination: str | None,
        recipient_domain: str,
        source_ip: str | None,
    ) -> bool:
        if self.scope is IncidentScope.RESOLVER:
            # Every "no such domain" of ours, whichever domain (templates keep the prefix).
            return template is not None and template.startswith(DOMAIN_ABSENT_PREFIX)
        where = destination if self.scope is IncidentScope.MX else recipient_domain
        return (
            template == self.template and where == self.destination and source_ip == self.source_ip
        )


def matching_incident(
    incidents: Iterable[OpenIncident],
    template: str | None,
    destination: str | None,
    recipient_domain: str,
    source_ip: str | None,
) -> OpenIncident | None:
    """The open incident a reply belongs to, if any."""
    if template is None:
        return None
    for incident in incidents:
        if incident.matches(template, destination, recipient_domain, source_ip):
            return incident
    return None


def defer_for_incident(
    decision: Decision,
    incident: OpenIncident | None,
    rules: IncidentRules,
    *,
    now: datetime,
    first_failure_at: datetime | None,
    max_age: timedelta | None,
) -> Decision:
    """A hard bounce that is part of ``incident`` waits ``rules.defer`` and suppresses nobody;
    it gives up (expired, non_delivery) once the delivery has been failing for ``max_age``.
    A first "no such domain" (soft: looked up again later) joins a resolver incident as it
    is, so that the incident stays open while the resolver keeps saying it."""
    if incident is None:
        return decision
    if decision.event is not EventType.HARD_BOUNCE:
        if incident.scope is IncidentScope.RESOLVER and decision.event is EventType.SOFT_BOUNCE:
            return replace(decision, incident_id=incident.id)
        return decision
    at = now + rules.defer
    if max_age is not None and at - (first_failure_at or now) > max_age:
        return replace(
            decision,
            state=DeliveryState.EXPIRED,
            non_delivery=True,
            give_up_reason=f"incident {incident.id} outlasted max_age",
            rule=f"incident {incident.id}",
            incident_id=incident.id,
        )
    return replace(
        decision,
        state=DeliveryState.QUEUED,
        next_attempt_at=at,
        other_source_ip=rules.other_ip,
        rule=f"incident {incident.id}",
        incident_id=incident.id,
    )
