"""The vocabulary of delivery states and event types, defined once.

The same names are used in SQL (CHECK constraints), logs, the CLI and the
README; see DESIGN.md "State".
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DeliveryState", "EventType"]


class DeliveryState(StrEnum):
    QUEUED = "queued"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    ACCEPTED = "accepted"
    REJECTED_SUPPRESSED = "rejected_suppressed"
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    NON_DELIVERY = "non_delivery"
    SUPPRESSED = "suppressed"
    COMPLAINT = "complaint"  # a feedback report (ARF) about a delivery
    DSN_UNMATCHED = "dsn_unmatched"  # a bounce message that could not be used
