"""The webhook outbox in the store: subscriptions, claims, results, counts, purge.

Triggers (migration 0007) write the rows in the transaction of the event they report; this
module is what the sender (``relay.webhooks``) and an operator do with them. Its queries are
the named blocks of ``webhooks.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay.store import Store
from relay.store.base import StoreBase

__all__ = ["Outbox", "OutboxCounts", "OutboxEvent"]


@dataclass(frozen=True)
class OutboxEvent:
    """One event leased to a sender until ``lease_until``."""

    id: int
    webhook: str
    event: str
    occurred_at: datetime
    payload: dict[str, Any]
    created_at: datetime  # the webhook's max_age counts from here
    attempts: int  # made before this one
    lease_until: datetime  # fences the result: see mark_failed


@dataclass(frozen=True)
class OutboxCounts:
    webhook: str
    pending: int
    oldest_pending: datetime | None
    given_up: int


class Outbox(StoreBase):
    """The outbox's named queries, over a Store's pool."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.pool, timeout=store.timeout)
        self.store = store

    async def sync_subscriptions(
        self, subscriptions: Mapping[str, Iterable[str]]
    ) -> tuple[int, int]:
        """Make the subscriptions exactly ``{webhook: events}``, atomically. How many
        (webhook, event) pairs changed, and how many waiting rows of webhooks no longer
        there were given up."""
        pairs = sorted({(w, e) for w, events in subscriptions.items() for e in events})
        row = await self._row(
            "sync_webhook_subscriptions",
            [w for w, _ in pairs],
            [e for _, e in pairs],
            what="sync webhook subscriptions",
        )
        assert row is not None  # counts: always one row
        return int(row["changed"]), int(row["abandoned"])

    async def claim(
        self, webhooks: Sequence[str], now: datetime, lease: timedelta, limit: int
    ) -> list[OutboxEvent]:
        """Lease up to ``limit`` due rows of ``webhooks`` (FOR UPDATE SKIP LOCKED), oldest first."""
        rows = await self._rows(
            "claim_webhook_events", now, lease, list(webhooks), limit, what="claim webhook events"
        )
        return sorted((OutboxEvent(**dict(r)) for r in rows), key=lambda e: e.id)

    async def mark_delivered(self, event_id: int, now: datetime) -> None:
        await self._status("mark_webhook_delivered", event_id, now, what="record webhook delivery")

    async def mark_failed(
        self, event: OutboxEvent, now: datetime, error: str, next_attempt_at: datetime | None
    ) -> bool:
        """Record a failed attempt: due again at ``next_attempt_at``, or given up when None.
        False when the lease had run out and another sender may hold the row: nothing changed."""
        attempts = await self._value(
            "mark_webhook_failed",
            event.id,
            event.lease_until,
            now,
            error,
            next_attempt_at,
            what="record webhook failure",
        )
        return attempts is not None

    async def counts(self) -> list[OutboxCounts]:
        """Per webhook: events waiting (and since when) and events given up."""
        rows = await self._rows("webhook_outbox_counts", what="webhook outbox counts")
        return [OutboxCounts(**dict(r)) for r in rows]

    async def purge(self, before: datetime, limit: int = 10_000) -> int:
        """Delete up to ``limit`` rows delivered or given up before ``before``; how many."""
        status = await self._status(
            "purge_webhook_outbox", before, limit, what="purge webhook outbox"
        )
        return int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
