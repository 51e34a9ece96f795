"""Suppressions: the list and its entries scoped to one sending domain, the allowlist,
the evidence behind an entry and the administrators' audit log, and what is known about
one address (profile, bounces, deliveries). Which entry applies is ``suppression_check``'s
(migration 0006). Queries: ``suppression.sql``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from policies.addresses import search_form
from relay.store.base import REPORT_TIMEOUT_SECONDS, Statements, StoreBase, clean
from relay.store.records import (
    AddressBounce,
    AddressDelivery,
    AddressProfile,
    AllowlistEntry,
    AuditEntry,
    DeliveryEvent,
    DsnRecord,
    EvidenceAudit,
    EvidenceBounce,
    EvidenceEntry,
    OutcomeRecord,
    SuppressionEvidence,
    SuppressionFilter,
    SuppressionRow,
    SuppressionWithCause,
)
from relay.store.reports import roll_up_bounces

__all__ = [
    "BOUNCES",
    "EVENTS_OF_DELIVERY",
    "SORTS",
    "SOURCES",
    "SuppressionStore",
    "suppress_and_roll_up",
]

BOUNCES = ("hard_bounce", "soft_bounce")
# Where an entry comes from: the CHECK of suppressions.source (0001), in the order the
# admin page offers them.
SOURCES = ("hard_bounce", "dsn", "complaint", "manual", "import")
SORTS = ("since", "address")  # what suppression_page orders by
# The most events of one delivery the profile page shows (the newest): its retries are bounded
# by the retry rules, so only a delivery retried for weeks has more.
EVENTS_OF_DELIVERY = 50


async def suppress_and_roll_up(
    tx: Statements,
    now: datetime,
    rows: Sequence[asyncpg.Record],
    by_id: Mapping[int, OutcomeRecord | DsnRecord],
    suppressions: Sequence[tuple[str, str, tuple[str, ...]]],
    *,
    cancel_queued: bool = True,
) -> tuple[int, int, set[int]]:
    """What applied results (delivery outcomes, bounce messages) entail, in the caller's
    transaction: suppressions (per (source, profile status, events) of ``suppressions``)
    and the bounce rollup. ``rows`` carry delivery_id, recipient_key, message_id and
    event_id. How many addresses were suppressed and queued deliveries cancelled, and the
    messages of those cancelled (their bodies are released after the commit)."""
    added = cancelled = 0
    cancelled_messages: set[int] = set()
    for source, status, events in suppressions:
        chosen: dict[str, tuple[str, int]] = {}
        for r in rows:
            record = by_id[r["delivery_id"]]
            if record.suppress and record.event in events:
                reason = clean(record.suppress_reason) or ""
                chosen.setdefault(r["recipient_key"], (reason, r["event_id"]))
        if chosen:
            keys = list(chosen)
            counts = await tx.row(
                "suppress_recipients",
                now,
                keys,
                [chosen[k][0] for k in keys],
                [chosen[k][1] for k in keys],
                source,
                status,
                cancel_queued,
            )
            assert counts is not None  # counts: always one row
            added += counts["added"]
            cancelled += counts["cancelled"]
            cancelled_messages.update(counts["cancelled_messages"])
    bounces = [r["event_id"] for r in rows if by_id[r["delivery_id"]].event in BOUNCES]
    if bounces:  # a batch of deliveries only costs no extra round trips
        await roll_up_bounces(tx.conn, now, bounces, tx.timeout)
    return added, cancelled, cancelled_messages


class SuppressionStore(StoreBase):
    # --- the RCPT check (queue pool) -------------------------------------------------------

    async def suppression_reasons(self, checks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Why each (address key, sending domain) may not get mail (None where it may), in
        order: global and scoped entries, with the allowlist's precedence."""
        rows = await self._rows(
            "suppression_reasons",
            [key for key, _ in checks],
            [domain for _, domain in checks],
            what="suppression check",
            on=self.queue,
        )
        return [r["reason"] for r in rows]

    async def record_rejected_suppressed(
        self, sender: str, recipient: str, domain: str, reply: str, detail: dict[str, Any]
    ) -> None:
        await self._status(
            "record_rejected_suppressed",
            clean(sender),
            clean(recipient),
            domain,
            reply,
            detail,
            what="record rejection",
            on=self.queue,
        )

    # --- the list --------------------------------------------------------------------------

    async def add_suppression(
        self,
        address_key: str,
        reason: str,
        source: str,
        event_id: int | None = None,
        event_at: datetime | None = None,
        profile_status: str = "hard_bounced",
        actor: str | None = None,
    ) -> bool:
        """Suppress ``address_key``; False when it already was. An ``actor`` is audited."""
        added = await self._value(
            "add_suppression",
            address_key,
            reason,
            source,
            event_id,
            event_at,
            profile_status,
            actor,
            what="add suppression",
        )
        return bool(added)

    async def remove_suppression(
        self, address_key: str, actor: str, reason: str
    ) -> SuppressionRow | None:
        """Remove an entry (profile active, audited); None when the address was not listed."""
        removed = await self.remove_suppressions([address_key], actor, reason)
        return removed[0] if removed else None

    async def remove_suppressions(
        self, address_keys: Sequence[str], actor: str, reason: str
    ) -> list[SuppressionRow]:
        """Remove entries in one statement (all or none), each with its profile made active
        and an audit row naming ``actor``; the entries removed, by address (an address that
        was not listed has none)."""
        rows = await self._rows(
            "remove_suppressions",
            list(address_keys),
            actor,
            clean(reason),
            what="remove suppressions",
        )
        return [
            SuppressionRow(r["address"], r["reason"], r["source"], r["created_at"], None)
            for r in rows
        ]

    async def import_suppressions(
        self,
        entries: Sequence[tuple[str, str]],
        actor: str,
        source_name: str,
        why: str = "import",
    ) -> int:
        """Add (address, reason) pairs; already-listed ones stay as they are. How many were new.
        One audit row: ``actor``, the file (``source_name``), ``why`` and the number added."""
        added = await self._value(
            "import_suppressions",
            [a for a, _ in entries],
            [clean(r) for _, r in entries],
            actor,
            clean(source_name),
            clean(why),
            what="import suppressions",
            timeout=REPORT_TIMEOUT_SECONDS,
        )
        return int(added)

    async def iter_suppressions(
        self, flt: SuppressionFilter | None = None
    ) -> AsyncIterator[SuppressionRow]:
        """The entries under ``flt`` (default: the whole list) by address, streamed."""
        async with self._transaction("export suppressions", readonly=True) as tx:
            async for r in tx.cursor(
                "export_suppressions",
                *_filter_arguments(flt or SuppressionFilter()),
                prefetch=5000,
                timeout=REPORT_TIMEOUT_SECONDS,
            ):
                yield SuppressionRow(r["address"], r["reason"], r["source"], r["created_at"], None)

    async def list_suppressions(
        self,
        search: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SuppressionRow]:
        rows = await self._rows(
            "list_suppressions",
            search_form(search) if search else search,
            reason,
            since,
            limit,
            offset,
            what="list suppressions",
        )
        return [SuppressionRow(**dict(r)) for r in rows]

    async def suppressions_with_cause(
        self, search: str | None, limit: int, offset: int
    ) -> list[SuppressionWithCause]:
        rows = await self._rows(
            "suppressions_with_cause",
            search_form(search) if search else search,
            limit,
            offset,
            what="list suppressions",
        )
        return [SuppressionWithCause(**dict(r)) for r in rows]

    async def suppression_page(
        self,
        flt: SuppressionFilter,
        sort: str,
        descending: bool,
        limit: int,
        offset: int,
    ) -> list[SuppressionWithCause]:
        """A page of the entries under ``flt``, ordered by ``sort`` (``SORTS``), the address
        breaking ties, each with the bounce text that caused it."""
        if sort not in SORTS:
            raise ValueError(f"sort {sort!r}: one of {', '.join(SORTS)}")
        rows = await self._rows(
            "suppression_page",
            *_filter_arguments(flt),
            sort,
            descending,
            limit,
            offset,
            what="list suppressions",
        )
        return [SuppressionWithCause(**dict(r)) for r in rows]

    async def count_suppressions(self, flt: SuppressionFilter) -> int:
        """How many entries ``flt`` holds."""
        n = await self._value(
            "count_suppressions", *_filter_arguments(flt), what="count suppressions"
        )
        return int(n)

    async def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        rows = await self._rows("audit_log", limit, what="audit log")
        return [AuditEntry(**dict(r)) for r in rows]

    # --- allowlist and entries scoped to one sending domain --------------------------------

    async def allowlist(self) -> list[AllowlistEntry]:
        rows = await self._rows("allowlist", what="read allowlist")
        return [AllowlistEntry(**dict(r)) for r in rows]

    async def allow(self, entry: str, reason: str, actor: str) -> bool:
        """Allowlist an address key or a domain (audited); False when it already was."""
        return bool(await self._value("allowlist_add", entry, reason, actor, what="allowlist add"))

    async def disallow(self, entry: str, reason: str, actor: str) -> bool:
        removed = await self._value(
            "allowlist_remove", entry, reason, actor, what="allowlist remove"
        )
        return bool(removed)

    async def add_scoped_suppression(
        self, address_key: str, sending_domain: str, reason: str, actor: str
    ) -> bool:
        """An administrator's entry for one sending domain (audited); False when present."""
        added = await self._value(
            "add_scoped_suppression",
            address_key,
            sending_domain,
            reason,
            actor,
            what="add scoped suppression",
        )
        return bool(added)

    async def remove_scoped_suppression(
        self, address_key: str, sending_domain: str, actor: str, reason: str
    ) -> bool:
        removed = await self._value(
            "remove_scoped_suppression",
            address_key,
            sending_domain,
            actor,
            reason,
            what="remove scoped suppression",
        )
        return bool(removed)

    # --- one address -----------------------------------------------------------------------

    async def suppression_evidence(self, address_key: str) -> SuppressionEvidence:
        """Everything behind an address's entries: the entries (global and scoped), the
        allowlist and probation entries that apply, every bounce and complaint with its
        reply, template, category, source IP, destination, campaign, rule and incident, and
        the administrators' acts on it."""
        async with self._transaction("suppression evidence", readonly=True) as tx:
            entries = await tx.rows("evidence_entries", address_key)
            bounces = await tx.rows("evidence_bounces", address_key)
            audit = await tx.rows("evidence_audit", address_key)
        return SuppressionEvidence(
            address=address_key,
            entries=[EvidenceEntry(**dict(r)) for r in entries],
            bounces=[EvidenceBounce(**dict(r)) for r in bounces],
            audit=[EvidenceAudit(**dict(r)) for r in audit],
        )

    async def profile(self, address_key: str) -> AddressProfile | None:
        row = await self._row("profile", address_key, what="read profile")
        return AddressProfile(**dict(row)) if row else None

    async def bounces_of_address(self, address_key: str, limit: int = 50) -> list[AddressBounce]:
        rows = await self._rows("bounces_of_address", address_key, limit, what="read bounces")
        return [AddressBounce(**dict(r)) for r in rows]

    async def delivery_counts_of_address(self, address_key: str) -> dict[str, int]:
        rows = await self._rows("delivery_counts_of_address", address_key, what="count deliveries")
        return {r["state"]: r["n"] for r in rows}

    async def deliveries_of_address(
        self, address_key: str, limit: int
    ) -> tuple[list[AddressDelivery], bool]:
        """The newest ``limit`` deliveries to an address, each with its newest
        ``EVENTS_OF_DELIVERY`` events (attempts, bounce messages, cancellation), and whether
        there were more deliveries than ``limit``."""
        async with self._transaction("deliveries of address", readonly=True) as tx:
            rows = await tx.rows("deliveries_of_address", address_key, limit + 1)
            shown = rows[:limit]
            events: list[Any] = []
            if shown:
                events = await tx.rows(
                    "events_of_address_deliveries",
                    address_key,
                    [r["id"] for r in shown],
                    min(r["received_at"] for r in shown),
                    EVENTS_OF_DELIVERY,
                )
        history: dict[int, list[DeliveryEvent]] = {}
        totals: dict[int, int] = {}
        for e in events:
            fields = dict(e)
            delivery_id = fields.pop("delivery_id")
            totals[delivery_id] = fields.pop("total")
            history.setdefault(delivery_id, []).append(DeliveryEvent(**fields))
        deliveries = [
            AddressDelivery(
                **dict(r),
                events=tuple(history.get(r["id"], ())),
                events_total=totals.get(r["id"], 0),
            )
            for r in shown
        ]
        return deliveries, len(rows) > limit


def _filter_arguments(flt: SuppressionFilter) -> tuple[Any, ...]:
    """``flt`` as suppression_page's $1..$5 (the address's search form: A-labels)."""
    return (
        search_form(flt.search) if flt.search else None,
        flt.source,
        flt.category,
        flt.added_from,
        flt.added_before,
    )
