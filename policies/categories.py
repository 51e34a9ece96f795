"""The words of a verdict: what a reply means for the recipient (``Kind``) and
what it is about (``Category``).

``policies.classify`` decides them (its docstring holds the table of kinds and
suppression); ``policies.reply_wordings`` and ``policies.vendor_codes`` name a
category for what they read. They live here so that those modules need not
import the classifier that uses them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RECIPIENT_CATEGORIES", "SOFT_CATEGORIES", "Category", "Kind"]


class Kind(StrEnum):
    DELIVERED = "delivered"
    SOFT = "soft"
    HARD = "hard"


class Category(StrEnum):
    USER_UNKNOWN = "user_unknown"
    MAILBOX_DISABLED = "mailbox_disabled"
    DOMAIN_NOT_FOUND = "domain_not_found"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_LARGE = "message_too_large"
    CONTENT_REJECTED = "content_rejected"
    SPAM_BLOCK_IP = "spam_block_ip"
    POLICY_AUTH = "policy_auth"
    RATE_LIMITED = "rate_limited"
    GREYLISTED = "greylisted"
    SERVICE_UNAVAILABLE = "service_unavailable"
    RELAY_DENIED = "relay_denied"
    TLS_REQUIRED = "tls_required"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    CONNECTION_FAILED = "connection_failed"
    COMPLAINT = "complaint"  # a recipient's feedback report (ARF), not a reply
    DELIVERED = "delivered"
    OTHER = "other"


# The only causes that speak against the address itself.
RECIPIENT_CATEGORIES = frozenset(
    {Category.USER_UNKNOWN, Category.MAILBOX_DISABLED, Category.DOMAIN_NOT_FOUND}
)
# Conditions that are soft even when sent as 5xx (see the table in policies.classify).
SOFT_CATEGORIES = frozenset(
    {
        Category.MAILBOX_FULL,
        Category.MESSAGE_TOO_LARGE,
        Category.RATE_LIMITED,
        Category.GREYLISTED,
        Category.TOO_MANY_RECIPIENTS,
    }
)
