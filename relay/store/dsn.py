"""Bounce messages: what their reports say applied to the deliveries they name, and the
unusable ones kept (within a per-client limit) as ``dsn_unmatched`` events.
Queries: ``dsn.sql``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from policies.providers import provider_of, provider_of_mx
from relay.store.base import Statements, clean, columns
from relay.store.queue import QueueStore
from relay.store.records import AppliedDsn, DsnRecord
from relay.store.suppression import BOUNCES, suppress_and_roll_up

__all__ = ["DsnStore"]

_DSN_COLUMNS = (
    "delivery_id",
    "event",
    "finish_state",
    "non_delivery",
    "code",
    "enhanced",
    "reply_text",
    "template",
    "category",
    "rule",
    "destination",
    "detail",
    "action",
    "suppress",
)


async def _providers(tx: Statements, records: Sequence[DsnRecord]) -> list[str]:
    """Each record's mailbox provider, as the delivery worker decides it: by the remote MTA
    the bounce names, else by the recipient's domain (read only when some MTA names none)."""
    by_mx = [provider_of_mx(r.destination) for r in records]
    unnamed = [r.delivery_id for r, p in zip(records, by_mx, strict=True) if p is None]
    domains: dict[int, str] = {}
    if unnamed:
        rows = await tx.rows("recipient_domains_of_deliveries", unnamed)
        domains = {r["id"]: r["recipient_domain"] for r in rows}
    return [
        p or provider_of(None, domains.get(r.delivery_id))
        for r, p in zip(records, by_mx, strict=True)
    ]


class DsnStore(QueueStore):
    """Built on the queue: a bounce message finishes deliveries, and their bodies are
    released as an outcome's are."""

    async def apply_dsn_results(
        self, now: datetime, records: Sequence[DsnRecord], *, cancel_queued: bool = True
    ) -> AppliedDsn:
        """Apply what bounce messages said, atomically: events, finished deliveries,
        suppressions (source ``dsn``, or ``complaint`` for feedback reports); queued mail to
        a suppressed address is cancelled unless ``cancel_queued`` is off (dry_run)."""
        cols = columns(records, _DSN_COLUMNS)
        by_id = {r.delivery_id: r for r in records}
        async with self._transaction("apply bounce messages") as tx:
            providers = await _providers(tx, records)
            rows = await tx.rows("apply_dsn_results", now, *cols, providers)
            added, cancelled, cancelled_messages = await suppress_and_roll_up(
                tx,
                now,
                rows,
                by_id,
                (("dsn", "hard_bounced", BOUNCES), ("complaint", "complained", ("complaint",))),
                cancel_queued=cancel_queued,
            )
        await self._release_bodies(self.pool, {r["message_id"] for r in rows} | cancelled_messages)
        return AppliedDsn(
            recorded=len(rows),
            skipped=len(records) - len(rows),
            suppressed=added,
            cancelled=cancelled,
        )

    async def record_dsn_unmatched(
        self,
        now: datetime,
        sender: str,
        recipient: str,
        reason: str,
        detail: dict[str, Any],
        *,
        peer: str,
        since: datetime,
        limit: int,
    ) -> bool:
        """Keep a bounce message the relay dropped as one ``dsn_unmatched`` event
        (``recipient``: its first recipient; ``detail`` says which and why), unless client
        ``peer`` has had ``limit`` kept since ``since`` already: then nothing is written and
        the answer is False. The count and the insert hold the client's lock, so sessions of
        one client running at once cannot go past the limit together."""
        key = recipient.strip("<>").lower()
        async with self._transaction("record unmatched bounce") as tx:
            await tx.status("lock_dsn_unmatched_client", peer)
            kept = await tx.value(
                "record_dsn_unmatched",
                now,
                clean(sender),
                clean(key),
                key.rpartition("@")[2],
                clean(reason),
                {**detail, "peer": peer},
                peer,
                since,
                limit,
            )
        return kept is not None

    async def count_dsn_unmatched(self, peer: str, since: datetime, limit: int) -> int:
        """How many unusable bounce messages client ``peer`` had kept since ``since``
        (counting stops at ``limit``: an index range scan of at most that many rows)."""
        count = await self._value(
            "count_dsn_unmatched", peer, since, limit, what="count unmatched bounces"
        )
        return int(count)

    async def expire_dsn_unmatched(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` unusable bounce messages kept from before ``before``; how
        many went. (Bounded, so one call never holds the table long: call it again.)"""
        status = await self._status(
            "expire_dsn_unmatched", before, limit, what="expire unmatched bounces"
        )
        return int(status.split()[-1])
