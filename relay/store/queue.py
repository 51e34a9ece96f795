"""The queue: messages accepted with their deliveries, deliveries claimed under a lease,
their outcomes applied (with probation and incidents seen), leases given back, bodies
released once no delivery needs them, and the administrators' view of deliveries; and the
registry of the relays that hold leases (``relay_instances``), whose heartbeats let a dead
relay's leases be taken over within seconds. Queries: ``queue.sql``. The hot statements run
on the ``queue`` pool."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from relay.errors import StoreError
from relay.store.base import Statements, StoreBase, clean, columns
from relay.store.records import (
    AcceptedMessage,
    AppliedOutcomes,
    AuditEntry,
    ClaimedDelivery,
    DeliveryDetail,
    DeliveryEvent,
    DeliverySummary,
    IncomingMessage,
    OutcomeRecord,
    Probation,
    QueueAction,
    QueueDelivery,
    QueueFilter,
)
from relay.store.suppression import BOUNCES, suppress_and_roll_up

__all__ = ["QueueStore"]

log = structlog.get_logger("relay.store")

# How long one of the queue page's reads may take before the database gives it up (the page
# then says so): a filter no index serves walks the deliveries, and on a big history that
# would hold a connection the other pages need. Counting gets less: the page is of use
# without its count.
QUEUE_READ_SECONDS = 5.0
QUEUE_COUNT_SECONDS = 2.0


class _GaveUp(Exception):
    """A bounded read of the queue page ran out of time (``QUEUE_READ_SECONDS``)."""


def _filter_args(flt: QueueFilter) -> tuple[str | None, ...]:
    """The filters as queue.sql takes them ($1..$5), text made storable as intake made it."""
    return (
        flt.state,
        clean(flt.recipient_domain),
        clean(flt.from_domain),
        clean(flt.campaign),
        clean(flt.reply_contains),
    )


def _action(rows: Sequence[asyncpg.Record], asked: int) -> QueueAction:
    """retry_deliveries' or purge_deliveries' rows as what the action did. A delivery that
    read as queued and was left alone changed before its lock was taken ("changed": a worker
    claimed it, another administrator purged it)."""
    skipped: dict[str, int] = {}
    for r in rows:
        if not r["done"]:
            state = "changed" if r["state"] == "queued" else r["state"]
            skipped[state] = skipped.get(state, 0) + 1
    if unknown := asked - len(rows):
        skipped["unknown"] = unknown
    return QueueAction(done=sum(1 for r in rows if r["done"]), skipped=skipped)


_OUTCOME_COLUMNS = (
    "delivery_id",
    "lease_token",
    "state",
    "event",
    "next_attempt_at",
    "counts_attempt",
    "non_delivery",
    "code",
    "enhanced",
    "reply_text",
    "template",
    "category",
    "rule",
    "synthetic",
    "source_ip",
    "destination",
    "avoid_source_ip",
    "suppress",
    "incident_id",
    "provider",
)


def _entails_more(o: OutcomeRecord) -> bool:
    """Whether applying ``o`` takes more than the apply_outcomes statement
    (``suppress_and_roll_up``, ``_probation_and_incidents``): a bounce (rollup, maybe a
    suppression), probation, an incident."""
    return (
        o.event in BOUNCES
        or o.suppress
        or o.probation_until is not None
        or bool(o.probation_end)
        or o.incident_id is not None
    )


def _accepted(rows: Sequence[asyncpg.Record]) -> list[AcceptedMessage]:
    """One per message, from accept_messages' rows (one per delivery)."""
    by_id = {
        r["message_id"]: AcceptedMessage(r["message_id"], r["queue_id"], r["received_at"])
        for r in rows
    }
    return list(by_id.values())


def _claimed(row: asyncpg.Record) -> ClaimedDelivery:
    fields = dict(row)
    probation = fields.pop("probation")
    fields.pop("taken_from", None)  # claim_due_deliveries: logged by the claim
    fields.pop("taken_because", None)
    return ClaimedDelivery(
        **fields, probation=Probation(**dict(probation)) if probation is not None else None
    )


def _log_takeovers(owner: str, rows: Sequence[asyncpg.Record]) -> None:
    """One line per relay whose leases this claim took over, and why: its lease ran out,
    or it fell silent (presumed dead) or stopped with leases it could not hand back."""
    taken: dict[tuple[str, str], int] = {}
    for r in rows:
        if r["taken_because"] is not None:
            key = (r["taken_from"], r["taken_because"])
            taken[key] = taken.get(key, 0) + 1
    for (previous, why), count in taken.items():
        log.info(
            "store.leases_taken_over", owner=owner, previous_owner=previous, why=why, leases=count
        )


def _accept_columns(batch: Sequence[IncomingMessage]) -> list[list[Any]]:
    """accept_messages' $1..$14: ten per message, then four per recipient; and the
    recipients' flags, $18."""
    cols: list[list[Any]] = [[] for _ in range(15)]
    for m in batch:
        row = (
            m.queue_id,
            clean(m.envelope_sender),
            clean(m.from_domain),
            clean(m.message_id),
            clean(m.campaign),
            len(m.body),
            m.body,
            m.client_address,
            m.session_id,
            m.smtputf8,
        )
        for i, value in enumerate(row):
            cols[i].append(value)
        for r in m.recipients:
            cols[10].append(m.queue_id)
            cols[11].append(clean(r.address))
            cols[12].append(clean(r.key))
            cols[13].append(clean(r.domain))
            cols[14].append(r.domain_flag)
    return cols


class QueueStore(StoreBase):
    # --- intake ----------------------------------------------------------------------------

    async def accept_messages(
        self,
        now: datetime,
        batch: Sequence[IncomingMessage],
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> list[AcceptedMessage]:
        """Commit messages + deliveries (due ``now``) + accepted events in one statement.

        ``before_commit`` (the fault suite's ``commit.before_commit``) runs the statement in
        an explicit transaction and is called after it, before COMMIT: the one moment a
        single autocommit statement never shows its client. Without it: one round trip."""
        rows = await self._accept(now, batch, None, None, before_commit)
        return _accepted(rows)

    async def accept_and_lease(
        self,
        now: datetime,
        batch: Sequence[IncomingMessage],
        owner: str,
        lease: timedelta,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> tuple[list[AcceptedMessage], list[ClaimedDelivery]]:
        """``accept_messages``, with the deliveries leased to ``owner`` as they are committed:
        claimed, checked and returned as ``claim_due_deliveries`` would (no claim to follow)."""
        rows = await self._accept(now, batch, owner, lease, before_commit)
        claimed = sorted((_claimed(r) for r in rows if r["id"] is not None), key=lambda d: d.id)
        return _accepted(rows), claimed

    async def _accept(
        self,
        now: datetime,
        batch: Sequence[IncomingMessage],
        owner: str | None,
        lease: timedelta | None,
        before_commit: Callable[[], None] | None,
    ) -> list[asyncpg.Record]:
        *columns, flags = _accept_columns(batch)
        args = (*columns, now, owner, lease, flags)
        if before_commit is None:
            return await self._rows("accept_messages", *args, what="accept messages", on=self.queue)
        async with self._transaction("accept messages", on=self.queue) as tx:
            rows = await tx.rows("accept_messages", *args)
            before_commit()
        return rows

    # --- delivery --------------------------------------------------------------------------

    async def claim_due_deliveries(
        self, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries (FOR UPDATE SKIP LOCKED): queued and due, or
        inflight with a lease that ran out or an owner presumed dead (``relay_heartbeat``)."""
        rows = await self._rows(
            "claim_due_deliveries", owner, now, lease, limit, what="claim deliveries", on=self.queue
        )
        _log_takeovers(owner, rows)
        return sorted((_claimed(r) for r in rows), key=lambda d: d.id)

    async def relay_heartbeat(
        self, name: str, silent_after: timedelta, host: str, pid: int
    ) -> timedelta | None:
        """Relay ``name`` is alive, to be presumed dead once silent for ``silent_after``
        (its first beat registers it); how long it had been silent (None: registered now)."""
        silence: timedelta | None = await self._value(
            "relay_heartbeat", name, silent_after, host, pid, what="heartbeat", on=self.queue
        )
        return silence

    async def retire_relay_instance(self, name: str) -> None:
        """Relay ``name`` stopped: a lease it still holds is taken over at once."""
        await self._status("retire_relay_instance", name, what="retire relay", on=self.queue)

    async def prune_relay_instances(self, silent_for: timedelta) -> list[str]:
        """Forget the relays silent for longer than ``silent_for`` that hold no lease."""
        rows = await self._rows(
            "prune_relay_instances", silent_for, what="prune relay instances", on=self.queue
        )
        return [r["name"] for r in rows]

    async def note_sends(self, leases: Sequence[tuple[int, int]]) -> set[int]:
        """(delivery id, lease token) are about to be sent after a claim that ended with
        nothing recorded: count the send; the ids still ours (the others were taken over)."""
        rows = await self._rows(
            "note_sends",
            [i for i, _ in leases],
            [t for _, t in leases],
            what="note sends",
            on=self.queue,
        )
        return {r["id"] for r in rows}

    async def message_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes | None]:
        rows = await self._rows(
            "message_bodies", list(message_ids), what="read bodies", on=self.queue
        )
        return {r["id"]: (bytes(r["body"]) if r["body"] is not None else None) for r in rows}

    async def apply_outcomes(
        self, now: datetime, outcomes: Sequence[OutcomeRecord], *, cancel_queued: bool = True
    ) -> AppliedOutcomes:
        """Apply results atomically: states, events, suppressions, cancellations (unless
        ``cancel_queued`` is off: dry_run), probation, incidents seen, bodies."""
        cols = columns(outcomes, _OUTCOME_COLUMNS)
        by_id = {o.delivery_id: o for o in outcomes}
        if not any(_entails_more(o) for o in outcomes):
            # Deliveries and rescheduled retries only: the statement is all of it (bodies
            # released included), one round trip with no transaction around it.
            rows = await self._rows(
                "apply_outcomes", now, *cols, what="apply outcomes", on=self.queue
            )
            added = cancelled = 0
            cancelled_messages: set[int] = set()
        else:
            async with self._transaction("apply outcomes", on=self.queue) as tx:
                rows = await tx.rows("apply_outcomes", now, *cols)
                added, cancelled, cancelled_messages = await suppress_and_roll_up(
                    tx,
                    now,
                    rows,
                    by_id,
                    (("hard_bounce", "hard_bounced", BOUNCES),),
                    cancel_queued=cancel_queued,
                )
                await _probation_and_incidents(tx, now, rows, by_id)
        # The statement released what it could; what it kept for a sibling that read as open
        # is looked at again now that this is committed.
        kept = {r["message_id"] for r in rows if r["body_kept"]}
        await self._release_bodies(self.queue, kept | cancelled_messages)
        return AppliedOutcomes(
            applied=len(rows),
            fenced=len(outcomes) - len(rows),
            suppressed=added,
            cancelled=cancelled,
            applied_ids=frozenset(r["delivery_id"] for r in rows),
        )

    async def _release_bodies(self, pool: Any, message_ids: set[int]) -> None:
        """Drop the bodies of ``message_ids`` that no delivery needs any more. Called after
        the commit that finished their deliveries: two transactions finishing the last two
        deliveries of one message each see the other's as open, and whichever of their
        releases runs last sees both committed. The results are durable already, so a
        failure here is logged, not raised: that body stays until a sibling finishes."""
        if not message_ids:
            return
        try:
            await self._status(
                "release_bodies", sorted(message_ids), what="release bodies", on=pool
            )
        except StoreError as exc:
            log.warning(
                "store.release_bodies_failed",
                messages=len(message_ids),
                error=str(exc),
                action="the bodies stay stored; delivery results are recorded",
            )

    async def release_leases(self, leases: Sequence[tuple[int, int]]) -> int:
        """Give claimed deliveries back (queued, due now); fenced by each lease token."""
        rows = await self._rows(
            "release_leases",
            [i for i, _ in leases],
            [t for _, t in leases],
            what="release leases",
            on=self.queue,
        )
        return len(rows)

    async def defer_leases(
        self,
        now: datetime,
        deferrals: Sequence[tuple[int, int, datetime]],
        *,
        for_probation: bool = False,
    ) -> int:
        """Give (delivery id, lease token, due) back untried: no attempt, no event. Held
        ``for_probation``: due now instead if the probation has ended meanwhile."""
        rows = await self._rows(
            "defer_leases",
            [i for i, _, _ in deferrals],
            [t for _, t, _ in deferrals],
            [due for _, _, due in deferrals],
            now,
            for_probation,
            what="defer deliveries",
            on=self.queue,
        )
        return len(rows)

    # --- the administrators' view ----------------------------------------------------------

    async def list_deliveries(self, state: str | None, limit: int) -> list[DeliverySummary]:
        rows = await self._rows("list_deliveries", state, limit, what="list deliveries")
        return [DeliverySummary(**dict(r)) for r in rows]

    async def delivery_by_id(self, delivery_id: int) -> DeliveryDetail | None:
        row = await self._row("delivery_by_id", delivery_id, what="read delivery")
        return DeliveryDetail(**dict(row)) if row else None

    async def events_of_delivery(self, delivery_id: int) -> list[DeliveryEvent]:
        rows = await self._rows("events_of_delivery", delivery_id, what="read events")
        return [DeliveryEvent(**dict(r)) for r in rows]

    async def purge_delivery(self, delivery_id: int, actor: str, reason: str) -> bool:
        row = await self._row("purge_delivery", delivery_id, actor, reason, what="purge delivery")
        if row is None:
            return False
        await self._release_bodies(self.pool, {row["message_id"]})
        return True

    # --- the queue page --------------------------------------------------------------------

    async def _bounded_rows(
        self, query: str, *args: Any, what: str, seconds: float = QUEUE_READ_SECONDS
    ) -> list[asyncpg.Record] | None:
        """``query``'s rows in a read-only transaction bounded by ``bound_queue_reads``;
        None when the database gave it up after ``seconds``."""
        try:
            async with self._transaction(what, readonly=True) as tx:
                await tx.value("bound_queue_reads", int(seconds * 1000))
                try:
                    return await tx.rows(query, *args)
                except asyncpg.QueryCanceledError as exc:
                    raise _GaveUp from exc  # out of the block: the transaction rolls back
        except _GaveUp:
            return None

    async def queue_deliveries(
        self,
        flt: QueueFilter,
        limit: int,
        *,
        older_than: int | None = None,
        newer_than: int | None = None,
    ) -> list[QueueDelivery] | None:
        """Up to ``limit`` deliveries matching ``flt``, newest first: from the newest, those
        older than delivery ``older_than``, or the ``limit`` just newer than ``newer_than``
        (the page before). None: it took longer than ``QUEUE_READ_SECONDS``."""
        if newer_than is not None:
            rows = await self._bounded_rows(
                "queue_deliveries_newer", *_filter_args(flt), newer_than, limit, what="list queue"
            )
            rows = rows[::-1] if rows is not None else None
        else:
            rows = await self._bounded_rows(
                "queue_deliveries_older", *_filter_args(flt), older_than, limit, what="list queue"
            )
        return [QueueDelivery(**dict(r)) for r in rows] if rows is not None else None

    async def count_queue_deliveries(self, flt: QueueFilter, cap: int) -> int | None:
        """How many deliveries match ``flt``, counted up to ``cap``; None: counting took
        longer than ``QUEUE_COUNT_SECONDS``."""
        rows = await self._bounded_rows(
            "count_queue_deliveries",
            *_filter_args(flt),
            cap,
            what="count queue",
            seconds=QUEUE_COUNT_SECONDS,
        )
        return int(rows[0][0]) if rows is not None else None

    async def queued_ids_matching(self, flt: QueueFilter, limit: int) -> list[int] | None:
        """The ids of up to ``limit`` queued deliveries matching ``flt``, newest first; None:
        finding them took longer than ``QUEUE_READ_SECONDS``."""
        rows = await self._bounded_rows(
            "queued_ids_matching", *_filter_args(flt), limit, what="select queued deliveries"
        )
        return [r["id"] for r in rows] if rows is not None else None

    async def queue_delivery(self, delivery_id: int) -> QueueDelivery | None:
        row = await self._row("queue_delivery", delivery_id, what="read delivery")
        return QueueDelivery(**dict(row)) if row else None

    async def audit_of_delivery(self, delivery: QueueDelivery) -> list[AuditEntry]:
        """Administrators' retries and purges of ``delivery``, newest first."""
        rows = await self._rows(
            "audit_of_delivery", delivery.id, delivery.recipient_key, what="read delivery audit"
        )
        return [AuditEntry(**dict(r)) for r in rows]

    async def retry_deliveries(
        self, delivery_ids: Sequence[int], now: datetime, actor: str, reason: str
    ) -> QueueAction:
        """Make the queued ones among ``delivery_ids`` due ``now``, each audited as
        ``actor`` with ``reason``, in one statement; the others are left alone."""
        ids = sorted(set(delivery_ids))
        rows = await self._rows(
            "retry_deliveries", ids, now, actor, clean(reason), what="retry deliveries"
        )
        return _action(rows, len(ids))

    async def purge_deliveries(
        self, delivery_ids: Sequence[int], now: datetime, actor: str, reason: str
    ) -> QueueAction:
        """Cancel the queued ones among ``delivery_ids`` at ``now``, each audited as
        ``actor`` with ``reason``, in one statement; the others are left alone. The bodies
        no delivery needs any more are released after the commit (as ``purge_delivery``)."""
        ids = sorted(set(delivery_ids))
        rows = await self._rows(
            "purge_deliveries", ids, now, actor, clean(reason), what="purge deliveries"
        )
        await self._release_bodies(self.pool, {r["message_id"] for r in rows if r["done"]})
        return _action(rows, len(ids))


async def _probation_and_incidents(
    tx: Statements,
    now: datetime,
    rows: Sequence[asyncpg.Record],
    by_id: Mapping[int, OutcomeRecord],
) -> None:
    """confirm_hard probation started or ended by these outcomes, and incidents whose
    replies they were (still going on: they stay open), in the outcomes' transaction."""
    starts = [(r, o) for r in rows if (o := by_id[r["delivery_id"]]).probation_until is not None]
    if starts:
        await tx.status(
            "start_probation",
            now,
            [r["recipient_key"] for r, _ in starts],
            [o.probation_until for _, o in starts],
            [o.source_ip for _, o in starts],
            [o.delivery_id for _, o in starts],
            [r["event_id"] for r, _ in starts],
            [clean(o.suppress_reason) for _, o in starts],
        )
    ended = [r["delivery_id"] for r in rows if by_id[r["delivery_id"]].probation_end]
    if ended:
        freed = [r["address"] for r in await tx.rows("end_probation", now, ended)]
        if freed:
            await tx.status("release_held_mail", now, freed)
    incidents = {o.incident_id for o in by_id.values() if o.incident_id is not None}
    if incidents:
        await tx.status("touch_incidents", now, sorted(incidents))
