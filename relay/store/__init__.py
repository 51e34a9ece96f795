"""The only place with SQL: a ``Store`` over an asyncpg pool.

Queries come from the ``*.sql`` files here (named blocks, loaded once at import);
each Store method runs one of them and returns frozen dataclasses, never
asyncpg records. asyncpg and network errors are translated here, once, into
``StoreUnavailable`` so callers see one shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import structlog

from policies.addresses import search_form
from policies.incidents import IncidentRules, IncidentScope, OpenIncident
from relay.errors import StoreError, StoreUnavailable, UnsafeDatabase
from relay.store.migrate import apply_migrations

__all__ = [
    "AcceptedMessage",
    "AppliedOutcomes",
    "ClaimedDelivery",
    "IncomingMessage",
    "OutcomeRecord",
    "Recipient",
    "Store",
    "SuppressionRow",
    "create_store",
]

log = structlog.get_logger("relay.store")


def _load_queries() -> dict[str, str]:
    """Every named block of every ``*.sql`` file beside this module (one file per concern)."""
    queries: dict[str, str] = {}
    for file in sorted(resources.files("relay.store").iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".sql"):
            continue
        blocks = re.split(r"^-- ([a-z_]+) --\n", file.read_text(encoding="utf-8"), flags=re.M)
        for name, sql in zip(blocks[1::2], blocks[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice ({file.name})")
            queries[name] = sql.strip()
    return queries


QUERIES = _load_queries()

REPORT_TIMEOUT_SECONDS = 600.0

# Errors that mean "the database is not there right now": the caller answers 451
# or retries later; nothing was committed.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # asyncpg's own state errors after a connection was cut under it.
    asyncpg.InternalClientError,
)


# SQLSTATE classes that mean "try again later", not "this data is wrong":
# 08 connection, 40 rollback (serialization/deadlock), 53 resources, 55 object not in
# prerequisite state (e.g. database not accepting connections), 57 operator intervention.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57"})


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise StoreUnavailable(f"{what}: the database did not answer in time") from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: database unreachable ({type(exc).__name__})") from exc
    except asyncpg.PostgresError as exc:
        if exc.sqlstate and exc.sqlstate[:2] in _UNAVAILABLE_CLASSES:
            raise StoreUnavailable(f"{what}: database unavailable ({exc.sqlstate})") from exc
        raise StoreError(f"{what}: database refused ({exc.sqlstate})") from exc


@dataclass(frozen=True)
class Recipient:
    address: str  # as the client wrote it
    key: str  # normalise_address()
    domain: str


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
class SuppressionRow:
    address: str
    reason: str
    source: str
    created_at: datetime
    event_id: int | None


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
    queue_id: str
    envelope_sender: str
    from_domain: str | None
    campaign: str | None
    smtputf8: bool
    received_at: datetime
    suppressed: bool
    allowlisted: bool = False
    probation: Probation | None = None


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
    """One delivery's result, as the store applies it (see queries.sql apply_outcomes)."""

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


@dataclass(frozen=True)
class DsnRecord:
    """One recipient result read from a bounce message, for the delivery its return path
    names (see queries.sql apply_dsn_results)."""

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


@dataclass(frozen=True)
class ReportRow:
    """One bounces-report row: a group (From domain or source IP) and a bounce text."""

    group: str
    bounce_text: str
    amount: int
    messages: int
    recipient_domains: int
    category: str | None
    first_seen: datetime
    last_seen: datetime
    sample: str | None


@dataclass(frozen=True)
class IncidentCheck:
    opened: list[dict[str, Any]]
    closed: list[int]
    lifted: int  # suppressions lifted because the replies that made them joined an incident


@dataclass(frozen=True)
class SuppressionEvidence:
    address: str
    entries: list[dict[str, Any]]  # kind: global | scoped | allowlist | probation
    bounces: list[dict[str, Any]]
    audit: list[dict[str, Any]]


@dataclass(frozen=True)
class AppliedOutcomes:
    applied: int  # rows whose lease still held
    fenced: int  # rows another relay had taken over: left alone
    suppressed: int  # addresses newly put on the suppression list
    cancelled: int  # other queued deliveries cancelled because of those
    applied_ids: frozenset[int] = frozenset()


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
)


_BOUNCES = ("hard_bounce", "soft_bounce")
_REMOTE_TEXT = frozenset({"reply_text", "template", "enhanced", "destination"})
_VACUUM_LOCK = 0x6272_7661_6375  # "brvacu": one relay process vacuums at a time
_INCIDENT_LOCK = 0x6272_696E_6369  # "brinci": one relay process detects incidents at a time

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
)


def _whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC days inside [start, end), or an empty range at ``end``."""
    first = start.astimezone(UTC)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    day_from = midnight if midnight == first else midnight + timedelta(days=1)
    day_to = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day_from, day_to) if day_from < day_to else (end, end)


def _columns(records: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    """One list per column for an unnest() statement. Remote text is cleaned: it must never
    cost the write (a refused outcome lets the lease run out and the message go out again)."""
    return [
        [_clean(getattr(r, c)) if c in _REMOTE_TEXT else getattr(r, c) for r in records]
        for c in names
    ]


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a header with one must not cost the message. Nor can
    # it hold a lone surrogate (a byte that was not UTF-8, kept by surrogateescape): "?".
    if text is None:
        return None
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


async def roll_up_bounces(
    conn: Any, occurred_at: datetime, event_ids: Sequence[int], timeout: float | None = None
) -> None:
    """Fold bounce events just written into bounce_rollup, inside the caller's transaction.

    The statement joins CTEs, which carry no statistics: the planner guesses a row or two
    and picks nested loops, quadratic for a batch of thousands. Hash joins keep it linear,
    so nested loops are off for the rest of this transaction (this is its last statement).
    """
    await conn.execute(QUERIES["intern_recipient_domains"], occurred_at, event_ids, timeout=timeout)
    await conn.execute("SET LOCAL enable_nestloop = off", timeout=timeout)
    await conn.execute(QUERIES["roll_up_bounces"], occurred_at, event_ids, timeout=timeout)


def _entails_more(o: OutcomeRecord) -> bool:
    """Whether applying ``o`` takes more than the apply_outcomes statement (``_follow_up``,
    ``_probation_and_incidents``): a bounce (rollup, maybe a suppression), probation, an
    incident."""
    return (
        o.event in _BOUNCES
        or o.suppress
        or o.probation_until is not None
        or bool(o.probation_end)
        or o.incident_id is not None
    )


def _accepted(rows: Sequence[Any]) -> list[AcceptedMessage]:
    """One per message, from accept_messages' rows (one per delivery)."""
    by_id = {
        r["message_id"]: AcceptedMessage(r["message_id"], r["queue_id"], r["received_at"])
        for r in rows
    }
    return list(by_id.values())


def _claimed(row: Any) -> ClaimedDelivery:
    fields = dict(row)
    probation = fields.pop("probation")
    return ClaimedDelivery(
        **fields, probation=Probation(**dict(probation)) if probation is not None else None
    )


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection returned without asyncpg's reset query.

    The default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock, ...) is one more
    round trip on every release, about a fifth of the relay's database traffic. Nothing here
    leaves session state behind: settings are ``SET LOCAL``, the migration lock is released
    in a ``finally``, nobody LISTENs. An open transaction is still rolled back on release.
    """

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Store:
    """Named queries over asyncpg pools: ``queue`` for the statements every message runs
    (intake, claims, outcomes), ``pool`` for everything else (reports, admin, the CLI,
    maintenance, webhooks). One pool may serve both (tests, commands)."""

    def __init__(self, pool: Any, *, timeout: float = 10.0, queue: Any | None = None) -> None:
        self.pool = pool
        self.queue = queue if queue is not None else pool
        self.timeout = timeout

    async def close(self) -> None:
        if self.queue is not self.pool:
            await self.queue.close()
        await self.pool.close()

    async def migrate(self) -> list[str]:
        async with _translated("migrate"), self.pool.acquire(timeout=self.timeout) as conn:
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(conn)]

    async def autovacuum_enabled(self) -> bool:
        async with _translated("read autovacuum setting"):
            return bool(
                await self.pool.fetchval(QUERIES["autovacuum_setting"], timeout=self.timeout)
            )

    async def vacuum_queue(self) -> bool:
        """VACUUM (ANALYZE) the queue tables unless another relay process is at it; whether
        this call did it."""
        async with _translated("vacuum queue"), self.pool.acquire(timeout=self.timeout) as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _VACUUM_LOCK):
                return False
            try:
                await conn.execute("VACUUM (ANALYZE) deliveries, messages", timeout=300)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _VACUUM_LOCK)
        return True

    async def check_durability(self) -> None:
        """Refuse a server that would acknowledge commits it has not made durable."""
        async with _translated("check durability"):
            row = await self.pool.fetchrow(QUERIES["durability_settings"], timeout=self.timeout)
        if row["fsync"] != "on" or row["synchronous_commit"] == "off":
            raise UnsafeDatabase(
                f"PostgreSQL has fsync={row['fsync']} synchronous_commit="
                f"{row['synchronous_commit']}: a 250 would not mean the message is safe. "
                "Turn both on in postgresql.conf and reload the server."
            )

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
    ) -> list[Any]:
        cols: list[list[Any]] = [[] for _ in range(14)]
        for m in batch:
            row = (
                m.queue_id,
                _clean(m.envelope_sender),
                _clean(m.from_domain),
                _clean(m.message_id),
                _clean(m.campaign),
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
                cols[11].append(_clean(r.address))
                cols[12].append(_clean(r.key))
                cols[13].append(_clean(r.domain))
        if before_commit is not None:
            async with (
                _translated("accept messages"),
                self.queue.acquire(timeout=self.timeout) as conn,
                conn.transaction(),
            ):
                rows = await conn.fetch(
                    QUERIES["accept_messages"], *cols, now, owner, lease, timeout=self.timeout
                )
                before_commit()
        else:
            async with _translated("accept messages"):
                rows = await self.queue.fetch(
                    QUERIES["accept_messages"], *cols, now, owner, lease, timeout=self.timeout
                )
        return list(rows)

    async def suppression_reasons(self, checks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Why each (address key, sending domain) may not get mail (None where it may), in
        order: global and scoped entries, with the allowlist's precedence."""
        async with _translated("suppression check"):
            rows = await self.queue.fetch(
                QUERIES["suppression_reasons"],
                [key for key, _ in checks],
                [domain for _, domain in checks],
                timeout=self.timeout,
            )
        return [r["reason"] for r in rows]

    async def record_rejected_suppressed(
        self, sender: str, recipient: str, domain: str, reply: str, detail: dict[str, Any]
    ) -> None:
        async with _translated("record rejection"):
            await self.queue.execute(
                QUERIES["record_rejected_suppressed"],
                _clean(sender),
                _clean(recipient),
                domain,
                reply,
                detail,
                timeout=self.timeout,
            )

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
        async with _translated("add suppression"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["add_suppression"],
                    address_key,
                    reason,
                    source,
                    event_id,
                    event_at,
                    profile_status,
                    actor,
                    timeout=self.timeout,
                )
            )

    async def remove_suppression(
        self, address_key: str, actor: str, reason: str
    ) -> SuppressionRow | None:
        """Remove an entry (profile active, audited); None when the address was not listed."""
        async with _translated("remove suppression"):
            row = await self.pool.fetchrow(
                QUERIES["remove_suppression"], address_key, actor, reason, timeout=self.timeout
            )
        if row is None:
            return None
        return SuppressionRow(row["address"], row["reason"], row["source"], row["created_at"], None)

    async def import_suppressions(
        self, entries: Sequence[tuple[str, str]], actor: str, source_name: str
    ) -> int:
        """Add (address, reason) pairs; already-listed ones stay as they are. How many were new."""
        async with _translated("import suppressions"):
            return int(
                await self.pool.fetchval(
                    QUERIES["import_suppressions"],
                    [a for a, _ in entries],
                    [r for _, r in entries],
                    actor,
                    source_name,
                    timeout=REPORT_TIMEOUT_SECONDS,
                )
            )

    async def iter_suppressions(self) -> AsyncIterator[SuppressionRow]:
        """The whole list by address, streamed."""
        async with (
            _translated("export suppressions"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(readonly=True),
        ):
            async for r in conn.cursor(
                QUERIES["export_suppressions"], prefetch=5000, timeout=REPORT_TIMEOUT_SECONDS
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
        async with _translated("list suppressions"):
            rows = await self.pool.fetch(
                QUERIES["list_suppressions"],
                search_form(search) if search else search,
                reason,
                since,
                limit,
                offset,
                timeout=self.timeout,
            )
        return [SuppressionRow(**dict(r)) for r in rows]

    async def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        async with _translated("audit log"):
            rows = await self.pool.fetch(QUERIES["audit_log"], limit, timeout=self.timeout)
        return [dict(r) for r in rows]

    async def claim_due_deliveries(
        self, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries (FOR UPDATE SKIP LOCKED)."""
        async with _translated("claim deliveries"):
            rows = await self.queue.fetch(
                QUERIES["claim_due_deliveries"], owner, now, lease, limit, timeout=self.timeout
            )
        return sorted((_claimed(r) for r in rows), key=lambda d: d.id)

    async def message_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes | None]:
        async with _translated("read bodies"):
            rows = await self.queue.fetch(
                QUERIES["message_bodies"], list(message_ids), timeout=self.timeout
            )
        return {r["id"]: (bytes(r["body"]) if r["body"] is not None else None) for r in rows}

    async def apply_outcomes(
        self, now: datetime, outcomes: Sequence[OutcomeRecord], *, cancel_queued: bool = True
    ) -> AppliedOutcomes:
        """Apply results atomically: states, events, suppressions, cancellations (unless
        ``cancel_queued`` is off: dry_run), probation, incidents seen, bodies."""
        cols = _columns(outcomes, _OUTCOME_COLUMNS)
        by_id = {o.delivery_id: o for o in outcomes}
        if not any(_entails_more(o) for o in outcomes):
            # Deliveries and rescheduled retries only: the statement is all of it (bodies
            # released included), one round trip with no transaction around it.
            async with _translated("apply outcomes"):
                rows = await self.queue.fetch(
                    QUERIES["apply_outcomes"], now, *cols, timeout=self.timeout
                )
            added = cancelled = 0
            cancelled_messages: set[int] = set()
        else:
            async with (
                _translated("apply outcomes"),
                self.queue.acquire(timeout=self.timeout) as conn,
                conn.transaction(),
            ):
                rows = await conn.fetch(QUERIES["apply_outcomes"], now, *cols, timeout=self.timeout)
                added, cancelled, cancelled_messages = await self._follow_up(
                    conn,
                    now,
                    rows,
                    by_id,
                    (("hard_bounce", "hard_bounced", _BOUNCES),),
                    cancel_queued=cancel_queued,
                )
                await self._probation_and_incidents(conn, now, rows, by_id)
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

    async def apply_dsn_results(
        self, now: datetime, records: Sequence[DsnRecord], *, cancel_queued: bool = True
    ) -> AppliedDsn:
        """Apply what bounce messages said, atomically: events, finished deliveries,
        suppressions (source ``dsn``, or ``complaint`` for feedback reports); queued mail to
        a suppressed address is cancelled unless ``cancel_queued`` is off (dry_run)."""
        cols = _columns(records, _DSN_COLUMNS)
        by_id = {r.delivery_id: r for r in records}
        async with (
            _translated("apply bounce messages"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(),
        ):
            rows = await conn.fetch(QUERIES["apply_dsn_results"], now, *cols, timeout=self.timeout)
            added, cancelled, cancelled_messages = await self._follow_up(
                conn,
                now,
                rows,
                by_id,
                (("dsn", "hard_bounced", _BOUNCES), ("complaint", "complained", ("complaint",))),
                cancel_queued=cancel_queued,
            )
        await self._release_bodies(self.pool, {r["message_id"] for r in rows} | cancelled_messages)
        return AppliedDsn(
            recorded=len(rows),
            skipped=len(records) - len(rows),
            suppressed=added,
            cancelled=cancelled,
        )

    async def _follow_up(
        self,
        conn: Any,
        now: datetime,
        rows: Sequence[Any],
        by_id: Mapping[int, OutcomeRecord | DsnRecord],
        suppressions: Sequence[tuple[str, str, tuple[str, ...]]],
        *,
        cancel_queued: bool = True,
    ) -> tuple[int, int, set[int]]:
        """What applied results entail, in the caller's transaction: suppressions (per
        (source, profile status, events) of ``suppressions``) and the bounce rollup.
        ``rows`` carry delivery_id, recipient_key, message_id and event_id. How many
        addresses were suppressed and queued deliveries cancelled, and the messages of
        those cancelled (their bodies are for ``_release_bodies`` after the commit)."""
        added = cancelled = 0
        cancelled_messages: set[int] = set()
        for source, status, events in suppressions:
            chosen: dict[str, tuple[str, int]] = {}
            for r in rows:
                record = by_id[r["delivery_id"]]
                if record.suppress and record.event in events:
                    reason = _clean(record.suppress_reason) or ""
                    chosen.setdefault(r["recipient_key"], (reason, r["event_id"]))
            if chosen:
                keys = list(chosen)
                counts = await conn.fetchrow(
                    QUERIES["suppress_recipients"],
                    now,
                    keys,
                    [chosen[k][0] for k in keys],
                    [chosen[k][1] for k in keys],
                    source,
                    status,
                    cancel_queued,
                    timeout=self.timeout,
                )
                added += counts["added"]
                cancelled += counts["cancelled"]
                cancelled_messages.update(counts["cancelled_messages"])
        bounces = [r["event_id"] for r in rows if by_id[r["delivery_id"]].event in _BOUNCES]
        if bounces:  # a batch of deliveries only costs no extra round trips
            await roll_up_bounces(conn, now, bounces, self.timeout)
        return added, cancelled, cancelled_messages

    async def _release_bodies(self, pool: Any, message_ids: set[int]) -> None:
        """Drop the bodies of ``message_ids`` that no delivery needs any more. Called after
        the commit that finished their deliveries: two transactions finishing the last two
        deliveries of one message each see the other's as open, and whichever of their
        releases runs last sees both committed. The results are durable already, so a
        failure here is logged, not raised: that body stays until a sibling finishes."""
        if not message_ids:
            return
        try:
            async with _translated("release bodies"):
                await pool.execute(
                    QUERIES["release_bodies"], sorted(message_ids), timeout=self.timeout
                )
        except StoreError as exc:
            log.warning(
                "store.release_bodies_failed",
                messages=len(message_ids),
                error=str(exc),
                action="the bodies stay stored; delivery results are recorded",
            )

    async def _probation_and_incidents(
        self, conn: Any, now: datetime, rows: Sequence[Any], by_id: Mapping[int, OutcomeRecord]
    ) -> None:
        """confirm_hard probation started or ended by these outcomes, and incidents whose
        replies they were (still going on: they stay open)."""
        starts = [
            (r, o) for r in rows if (o := by_id[r["delivery_id"]]).probation_until is not None
        ]
        if starts:
            await conn.execute(
                QUERIES["start_probation"],
                now,
                [r["recipient_key"] for r, _ in starts],
                [o.probation_until for _, o in starts],
                [o.source_ip for _, o in starts],
                [o.delivery_id for _, o in starts],
                [r["event_id"] for r, _ in starts],
                [_clean(o.suppress_reason) for _, o in starts],
                timeout=self.timeout,
            )
        ended = [r["delivery_id"] for r in rows if by_id[r["delivery_id"]].probation_end]
        if ended:
            await conn.execute(QUERIES["end_probation"], now, ended, timeout=self.timeout)
        incidents = {o.incident_id for o in by_id.values() if o.incident_id is not None}
        if incidents:
            await conn.execute(
                QUERIES["touch_incidents"], now, sorted(incidents), timeout=self.timeout
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
        async with (
            _translated("record unmatched bounce"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(),
        ):
            await conn.execute(QUERIES["lock_dsn_unmatched_client"], peer, timeout=self.timeout)
            kept = await conn.fetchval(
                QUERIES["record_dsn_unmatched"],
                now,
                _clean(sender),
                _clean(key),
                key.rpartition("@")[2],
                _clean(reason),
                {**detail, "peer": peer},
                peer,
                since,
                limit,
                timeout=self.timeout,
            )
        return kept is not None

    async def count_dsn_unmatched(self, peer: str, since: datetime, limit: int) -> int:
        """How many unusable bounce messages client ``peer`` had kept since ``since``
        (counting stops at ``limit``: an index range scan of at most that many rows)."""
        async with _translated("count unmatched bounces"):
            count: int = await self.pool.fetchval(
                QUERIES["count_dsn_unmatched"], peer, since, limit, timeout=self.timeout
            )
        return count

    async def expire_dsn_unmatched(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` unusable bounce messages kept from before ``before``; how
        many went. (Bounded, so one call never holds the table long: call it again.)"""
        async with _translated("expire unmatched bounces"):
            status = await self.pool.execute(
                QUERIES["expire_dsn_unmatched"], before, limit, timeout=self.timeout
            )
        return int(status.split()[-1])

    async def release_leases(self, leases: Sequence[tuple[int, int]]) -> int:
        """Give claimed deliveries back (queued, due now); fenced by each lease token."""
        async with _translated("release leases"):
            rows = await self.queue.fetch(
                QUERIES["release_leases"],
                [i for i, _ in leases],
                [t for _, t in leases],
                timeout=self.timeout,
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
        async with _translated("defer deliveries"):
            rows = await self.queue.fetch(
                QUERIES["defer_leases"],
                [i for i, _, _ in deferrals],
                [t for _, t, _ in deferrals],
                [due for _, _, due in deferrals],
                now,
                for_probation,
                timeout=self.timeout,
            )
        return len(rows)

    async def list_deliveries(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        async with _translated("list deliveries"):
            rows = await self.pool.fetch(
                QUERIES["list_deliveries"], state, limit, timeout=self.timeout
            )
        return [dict(r) for r in rows]

    async def delivery_by_id(self, delivery_id: int) -> dict[str, Any] | None:
        async with _translated("read delivery"):
            row = await self.pool.fetchrow(
                QUERIES["delivery_by_id"], delivery_id, timeout=self.timeout
            )
        return dict(row) if row else None

    async def events_of_delivery(self, delivery_id: int) -> list[dict[str, Any]]:
        async with _translated("read events"):
            rows = await self.pool.fetch(
                QUERIES["events_of_delivery"], delivery_id, timeout=self.timeout
            )
        return [dict(r) for r in rows]

    async def retry_delivery_now(self, delivery_id: int, now: datetime) -> bool:
        async with _translated("retry delivery"):
            return (
                await self.pool.fetchval(
                    QUERIES["retry_delivery_now"], delivery_id, now, timeout=self.timeout
                )
                is not None
            )

    async def purge_delivery(self, delivery_id: int, actor: str, reason: str) -> bool:
        async with _translated("purge delivery"):
            row = await self.pool.fetchrow(
                QUERIES["purge_delivery"], delivery_id, actor, reason, timeout=self.timeout
            )
        if row is None:
            return False
        await self._release_bodies(self.pool, {row["message_id"]})
        return True

    async def profile(self, address_key: str) -> dict[str, Any] | None:
        async with _translated("read profile"):
            row = await self.pool.fetchrow(QUERIES["profile"], address_key, timeout=self.timeout)
        return dict(row) if row else None

    async def bounces_of_address(self, address_key: str, limit: int = 50) -> list[dict[str, Any]]:
        async with _translated("read bounces"):
            rows = await self.pool.fetch(
                QUERIES["bounces_of_address"], address_key, limit, timeout=self.timeout
            )
        return [dict(r) for r in rows]

    async def delivery_counts_of_address(self, address_key: str) -> dict[str, int]:
        async with _translated("count deliveries"):
            rows = await self.pool.fetch(
                QUERIES["delivery_counts_of_address"], address_key, timeout=self.timeout
            )
        return {r["state"]: r["n"] for r in rows}

    async def iter_bounce_report(
        self,
        start: datetime,
        end: datetime,
        types: Sequence[str],
        campaigns: Sequence[str] | None,
        group_by: str,
        top: int | None,
    ) -> AsyncIterator[ReportRow]:
        """Stream report rows through a server-side cursor (constant memory)."""
        async with (
            _translated("bounces report"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(readonly=True),
        ):
            # JIT compiles for ~0.4 s before a report that itself takes less.
            await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            cursor = conn.cursor(
                QUERIES["bounce_report"],
                start,
                end,
                list(types),
                list(campaigns) if campaigns else None,
                group_by,
                top,
                *_whole_days(start, end),
                prefetch=2000,
                # A million-row report sorts for longer than the store's usual 10 s.
                timeout=REPORT_TIMEOUT_SECONDS,
            )
            async for r in cursor:
                yield ReportRow(
                    r["grp"],
                    r["template"],
                    r["amount"],
                    r["messages"],
                    r["recipient_domains"],
                    r["category"],
                    r["first_seen"],
                    r["last_seen"],
                    r["sample"],
                )

    async def queue_stats(self) -> dict[str, tuple[int, datetime | None]]:
        """Open deliveries per state with the oldest message's receive time."""
        async with _translated("queue stats"):
            rows = await self.pool.fetch(QUERIES["queue_stats"], timeout=self.timeout)
        return {r["state"]: (r["n"], r["oldest"]) for r in rows}

    async def campaigns_in_period(self, start: datetime, end: datetime) -> list[str]:
        async with _translated("campaigns"):
            rows = await self.pool.fetch(
                QUERIES["campaigns_in_period"], start, end, timeout=self.timeout
            )
        return [r["campaign"] for r in rows]

    async def bounces_per_day(
        self, start: datetime, end: datetime, campaigns: Sequence[str] | None
    ) -> list[tuple[datetime, str, int]]:
        async with _translated("bounces per day"):
            rows = await self.pool.fetch(
                QUERIES["bounces_per_day"],
                start,
                end,
                list(campaigns) if campaigns else None,
                timeout=self.timeout,
            )
        return [(r["day"], r["type"], r["amount"]) for r in rows]

    async def suppressions_with_cause(
        self, search: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        async with _translated("list suppressions"):
            rows = await self.pool.fetch(
                QUERIES["suppressions_with_cause"],
                search_form(search) if search else search,
                limit,
                offset,
                timeout=self.timeout,
            )
        return [dict(r) for r in rows]

    async def deferral_reasons(self, limit: int = 10) -> list[tuple[str, int]]:
        async with _translated("deferral reasons"):
            rows = await self.pool.fetch(QUERIES["deferral_reasons"], limit, timeout=self.timeout)
        return [(r["reply"], r["n"]) for r in rows]

    async def ping(self) -> None:
        async with _translated("ping"):
            await self.pool.fetchval(QUERIES["ping"], timeout=min(self.timeout, 2.0))

    # -- incidents, allowlist, scoped entries, evidence ---------------------------------------

    async def check_incidents(self, now: datetime, rules: IncidentRules) -> IncidentCheck | None:
        """One detection pass (None when another relay process is at it): quiet incidents
        close, new ones open, the window's replies they explain join them and, with
        ``lift_on_open``, the suppressions those replies made are lifted, all at once."""
        async with (
            _translated("check incidents"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(),
        ):
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _INCIDENT_LOCK):
                return None
            closed = await conn.fetch(
                QUERIES["close_quiet_incidents"], now, now - rules.close_after
            )
            since = now - rules.window
            opened = await conn.fetch(
                QUERIES["detect_incidents"],
                now,
                since,
                rules.min_recipients,
                rules.min_share,
                rules.scope.value,
            )
            ids = [r["id"] for r in opened]
            lifted = 0
            if ids:
                await conn.execute(QUERIES["tag_incident_events"], ids, since)
                if rules.lift_on_open:
                    lifted = await conn.fetchval(
                        QUERIES["lift_incident_suppressions"],
                        ids,
                        "incident detection",
                        "the bounce was part of a provider incident, not about the recipient",
                        now,
                    )
        return IncidentCheck(
            opened=[dict(r) for r in opened], closed=[r["id"] for r in closed], lifted=lifted
        )

    async def open_incidents(self) -> list[OpenIncident]:
        async with _translated("read incidents"):
            rows = await self.pool.fetch(QUERIES["open_incidents"], timeout=self.timeout)
        return [
            OpenIncident(
                r["id"], r["template"], r["destination"], IncidentScope(r["scope"]), r["source_ip"]
            )
            for r in rows
        ]

    async def list_incidents(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        async with _translated("list incidents"):
            rows = await self.pool.fetch(
                QUERIES["list_incidents"], state, limit, timeout=self.timeout
            )
        return [dict(r) for r in rows]

    async def incident(self, incident_id: int) -> dict[str, Any] | None:
        async with _translated("read incident"):
            row = await self.pool.fetchrow(
                QUERIES["incident_by_id"], incident_id, timeout=self.timeout
            )
        return dict(row) if row else None

    async def release_incident(
        self, incident_id: int, now: datetime, actor: str, reason: str
    ) -> tuple[int, int] | None:
        """End an incident in one step: lift every suppression its replies made (profiles
        active, audited), make its deferred deliveries due now. (lifted, due now); None when
        there is no such incident or it was released already."""
        async with (
            _translated("release incident"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(),
        ):
            row = await conn.fetchrow(QUERIES["release_incident"], incident_id, now, actor, reason)
            if not row["released"]:
                return None
            lifted = await conn.fetchval(
                QUERIES["lift_incident_suppressions"], [incident_id], actor, reason, now
            )
        return int(lifted), int(row["due_now"])

    async def allowlist(self) -> list[dict[str, Any]]:
        async with _translated("read allowlist"):
            rows = await self.pool.fetch(QUERIES["allowlist"], timeout=self.timeout)
        return [dict(r) for r in rows]

    async def allow(self, entry: str, reason: str, actor: str) -> bool:
        """Allowlist an address key or a domain (audited); False when it already was."""
        async with _translated("allowlist add"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["allowlist_add"], entry, reason, actor, timeout=self.timeout
                )
            )

    async def disallow(self, entry: str, reason: str, actor: str) -> bool:
        async with _translated("allowlist remove"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["allowlist_remove"], entry, reason, actor, timeout=self.timeout
                )
            )

    async def add_scoped_suppression(
        self, address_key: str, sending_domain: str, reason: str, actor: str
    ) -> bool:
        """An administrator's entry for one sending domain (audited); False when present."""
        async with _translated("add scoped suppression"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["add_scoped_suppression"],
                    address_key,
                    sending_domain,
                    reason,
                    actor,
                    timeout=self.timeout,
                )
            )

    async def remove_scoped_suppression(
        self, address_key: str, sending_domain: str, actor: str, reason: str
    ) -> bool:
        async with _translated("remove scoped suppression"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["remove_scoped_suppression"],
                    address_key,
                    sending_domain,
                    actor,
                    reason,
                    timeout=self.timeout,
                )
            )

    async def suppression_evidence(self, address_key: str) -> SuppressionEvidence:
        """Everything behind an address's entries: the entries (global and scoped), the
        allowlist and probation entries that apply, every bounce and complaint with its
        reply, template, category, source IP, destination, campaign, rule and incident, and
        the administrators' acts on it."""
        async with (
            _translated("suppression evidence"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(readonly=True),
        ):
            entries = await conn.fetch(QUERIES["evidence_entries"], address_key)
            bounces = await conn.fetch(QUERIES["evidence_bounces"], address_key)
            audit = await conn.fetch(QUERIES["evidence_audit"], address_key)
        return SuppressionEvidence(
            address=address_key,
            entries=[dict(r) for r in entries],
            bounces=[dict(r) for r in bounces],
            audit=[dict(r) for r in audit],
        )

    def pool_sizes(self) -> tuple[int, int]:
        """(open, idle) connections of the pool."""
        return int(self.queue.get_size()), int(self.queue.get_idle_size())

    # --- replay (`classify --replay`, replay.sql) -----------------------------------------

    async def iter_recorded_bounces(
        self, since: datetime, until: datetime
    ) -> AsyncIterator[RecordedBounce]:
        """The bounce events of [since, until) in id order with their recorded verdicts,
        streamed through a server-side cursor (constant memory over any period)."""
        async with (
            _translated("read recorded bounces"),
            self.pool.acquire(timeout=self.timeout) as conn,
            conn.transaction(readonly=True),
        ):
            cursor = conn.cursor(
                QUERIES["recorded_bounces"],
                since,
                until,
                prefetch=2000,
                # The server sorts the whole period before the first row.
                timeout=REPORT_TIMEOUT_SECONDS,
            )
            async for r in cursor:
                yield RecordedBounce(**dict(r))


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


# Connections for what is not the queue path: reports, exports, admin pages, maintenance.
OTHER_POOL_MAX_SIZE = 4


async def create_store(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout: float = 10.0,
    queue_pool: bool = False,
) -> Store:
    """Connect to ``dsn``; raise StoreUnavailable when it is not reachable.

    ``queue_pool`` (a relay that serves): the queue statements get a pool of their own, of
    ``min_size``..``max_size`` connections with generic plans. Left to itself, PostgreSQL
    plans the batch statements afresh on every execution (their unnest arrays make a custom
    plan look cheaper), which cost more than running them: 0.35 ms of planning against
    0.16 ms of execution for one RCPT check. Every queue statement is a lookup by key, which a
    generic plan does as well. Reports keep custom plans, and a long export never holds a
    connection that intake or delivery waits for."""
    async with _translated(f"connect to {_redact(dsn)}"):
        queue = None
        if queue_pool:
            queue = await _pool(dsn, min_size, max_size, timeout, generic_plans=True)
        try:
            pool = await _pool(
                dsn,
                1 if queue_pool else min_size,
                OTHER_POOL_MAX_SIZE if queue_pool else max_size,
                timeout,
                generic_plans=False,
            )
        except BaseException:
            if queue is not None:
                await queue.close()
            raise
    return Store(pool, timeout=timeout, queue=queue)


async def _pool(
    dsn: str, min_size: int, max_size: int, timeout: float, *, generic_plans: bool
) -> Any:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        timeout=timeout,
        command_timeout=timeout,
        connection_class=_PooledConnection,
        server_settings={"plan_cache_mode": "force_generic_plan"} if generic_plans else None,
    )


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn)
