"""Housekeeping the relay does itself: the data lifecycle, and vacuum when the database
does not.

The data lifecycle (``[retention]``, "Data lifecycle" in docs/operations.md): every relay
looks every ``check_every`` of its clock; the one that gets the store's advisory lock does
the work, the others skip their turn. Events are partitioned by time: partitions are
created ahead (the default partition stays empty) and a partition whose every event is
older than the events window is dropped whole. What cannot be dropped is deleted in small
batches: finished messages with their deliveries (partitioning the queue's tables would
put a cost on every claim and outcome: see the section), webhook outbox rows, unmatched
bounces, audit rows when the operator asks. Each step stands alone: one that fails (a lock
not had within a second, the database away) is logged and retried at the next run.

The delivery queue rewrites its rows all day; PostgreSQL's autovacuum keeps that cheap. A
server with ``autovacuum = off`` (some test and CI setups do it for speed) would let dead
rows pile up until every claim walks them, so the relay then vacuums its two queue tables
itself, every ``interval``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from relay.clock import Clock
from relay.config import Config, PartitionWidth, RetentionConfig
from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import Store
from relay.store.lifecycle import DefaultEvents, LifecycleBacklog, TimePartition
from relay.store.outbox import Outbox

__all__ = [
    "BATCH",
    "EVENTS",
    "CreatedPartition",
    "Cutoffs",
    "DroppedPartitionRecord",
    "PlannedPartitions",
    "RetentionPreview",
    "RetentionRun",
    "keep_data_lifecycle",
    "next_period",
    "partition_name",
    "period_start",
    "plan_partitions",
    "preview_retention",
    "run_retention",
    "vacuum_while_autovacuum_is_off",
]

log = structlog.get_logger("relay.maintenance")

EVENTS = "events"  # the one table partitioned by time
# Rows per DELETE: each batch is a short transaction that locks only rows nobody else uses.
BATCH = 1000
# Partitions exist this far ahead of the relay's clock, at least: a lifecycle that stops
# working (the database refusing DDL, every relay down) has this long before events land in
# the default partition.
_AHEAD = {PartitionWidth.DAY: timedelta(days=7), PartitionWidth.WEEK: timedelta(days=14)}
_AHEAD_MONTHS = 2


# -- time partitions: what to create and drop (pure) ----------------------------------------


def period_start(at: datetime, width: PartitionWidth) -> datetime:
    """The start of the UTC day, ISO week (Monday) or month holding ``at``: where partitions
    of ``width`` begin (as PostgreSQL's ``date_trunc(width, at, 'UTC')``)."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if width == PartitionWidth.DAY:
        return day
    if width == PartitionWidth.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(at: datetime, width: PartitionWidth) -> datetime:
    """The first start of a period of ``width`` after ``at``."""
    start = period_start(at, width)
    if width == PartitionWidth.DAY:
        return start + timedelta(days=1)
    if width == PartitionWidth.WEEK:
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def _horizon(now: datetime, width: PartitionWidth) -> datetime:
    if width in _AHEAD:
        return now + _AHEAD[width]
    horizon = now
    for _ in range(_AHEAD_MONTHS):
        horizon = next_period(horizon, width)
    return horizon


@dataclass(frozen=True)
class PlannedPartitions:
    """Partitions of events to create ([lower, upper) each) and to drop."""

    create: tuple[tuple[datetime, datetime], ...]
    drop: tuple[TimePartition, ...]
    older_than: datetime  # the events window's start: a partition ending by then is dropped


def plan_partitions(
    partitions: list[TimePartition],
    default: DefaultEvents,
    now: datetime,
    retention: RetentionConfig,
) -> PlannedPartitions:
    """What keeps events partitioned at ``now``: every span without a partition from the
    current period to the horizon (and back to the oldest event of the window that fell into
    the default partition) gets partitions of ``event_partitions``, cut where an existing
    partition begins (a change of width, the one before 0019); a partition whose every row
    is older than the window goes."""
    width = retention.event_partitions
    older_than = now - retention.events
    covered: list[Span] = [(p.lower, p.upper) for p in partitions if not p.is_default]
    at = period_start(now, width)
    if default.oldest is not None and default.oldest < at:
        at = min(at, period_start(max(default.oldest, older_than), width))
    horizon = _horizon(now, width)
    create = []
    while at < horizon:
        holding = _holding(covered, at)
        if holding is not None:
            if holding[1] is None:  # covered up to MAXVALUE: nothing is ever missing
                break
            at = holding[1]
            continue
        end = min(
            [next_period(at, width)]
            + [lower for lower, _ in covered if lower is not None and lower > at]
        )
        create.append((at, end))
        at = end
    drop = tuple(
        p for p in partitions if not p.is_default and p.upper is not None and p.upper <= older_than
    )
    return PlannedPartitions(tuple(create), drop, older_than)


Span = tuple[datetime | None, datetime | None]  # [lower, upper); None: MINVALUE, MAXVALUE


def _holding(covered: list[Span], at: datetime) -> Span | None:
    """The existing partition range that holds ``at``, if any."""
    for lower, upper in covered:
        if (lower is None or lower <= at) and (upper is None or at < upper):
            return lower, upper
    return None


def partition_name(lower: datetime) -> str:
    """The name retention_create_partition (0019) gives events' partition from ``lower``."""
    return f"{EVENTS}_{lower.astimezone(UTC):%Y%m%d}"


# -- one run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cutoffs:
    """Rows before these times go: the windows of [retention] (and [dsn]) at one instant."""

    events: datetime
    messages: datetime
    webhook_outbox: datetime
    unmatched_bounces: datetime
    admin_audit: datetime | None  # None: the audit log is kept

    @classmethod
    def at(cls, now: datetime, config: Config) -> Cutoffs:
        retention = config.retention
        return cls(
            events=now - retention.events,
            messages=now - retention.messages,
            webhook_outbox=now - retention.webhook_outbox,
            unmatched_bounces=now - config.dsn.unmatched_retention,
            admin_audit=None if retention.admin_audit is None else now - retention.admin_audit,
        )


@dataclass(frozen=True)
class CreatedPartition:
    name: str
    lower: datetime
    upper: datetime
    moved: int  # rows taken over from the default partition


@dataclass(frozen=True)
class DroppedPartitionRecord:
    name: str
    lower: datetime | None
    upper: datetime
    rows: int
    bytes: int


@dataclass
class RetentionRun:
    """What one run did, in order; ``failed`` names the steps that failed (logged)."""

    at: datetime
    cutoffs: Cutoffs
    created: list[CreatedPartition] = field(default_factory=list)
    dropped: list[DroppedPartitionRecord] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)  # table (or what) -> rows
    default_rows: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetentionPreview:
    """What a run at ``at`` would do (``bounce-relay store retention --dry-run``)."""

    at: datetime
    cutoffs: Cutoffs
    create: tuple[tuple[datetime, datetime], ...]
    drop: tuple[DroppedPartitionRecord, ...]
    backlog: LifecycleBacklog


async def preview_retention(store: Store, config: Config, now: datetime) -> RetentionPreview:
    """What ``run_retention`` would do at ``now``; changes nothing, takes no lock."""
    cutoffs = Cutoffs.at(now, config)
    plan = plan_partitions(
        await store.time_partitions(EVENTS),
        await store.default_events(since=cutoffs.events),  # older ones are deleted first
        now,
        config.retention,
    )
    drop = []
    for p in plan.drop:
        rows, size = await store.partition_size(p.name)
        assert p.upper is not None  # planned: only partitions with an end are dropped
        drop.append(DroppedPartitionRecord(p.name, p.lower, p.upper, rows, size))
    backlog = await store.lifecycle_backlog(
        cutoffs.messages,
        cutoffs.webhook_outbox,
        cutoffs.unmatched_bounces,
        cutoffs.admin_audit,
        cutoffs.events,
    )
    return RetentionPreview(now, cutoffs, plan.create, tuple(drop), backlog)


async def run_retention(
    store: Store, config: Config, now: datetime, *, metrics: Metrics | None = None
) -> RetentionRun | None:
    """One run of the data lifecycle at ``now`` (the relay's clock), under the store's
    advisory lock; None, at once, when another relay process holds it."""
    async with store.lifecycle_lock() as ours:
        if not ours:
            log.debug("retention.busy", why="another relay process is running it")
            return None
        started = time.monotonic()
        run = RetentionRun(now, Cutoffs.at(now, config))
        # Events of the default partition older than the window go first: the rest is
        # what the partitions created next must take in.
        await _delete_step(
            run,
            metrics,
            "events_default",
            lambda: store.expire_default_events(run.cutoffs.events, BATCH),
        )
        await _partitions(store, config.retention, run, metrics)
        await _deletes(store, run, metrics)
        await _step(run, metrics, "default_partition", _watch_default(store, run, metrics))
    log.info(
        "retention.run_finished",
        seconds=round(time.monotonic() - started, 3),
        created=[p.name for p in run.created],
        dropped=[p.name for p in run.dropped],
        deleted=run.deleted,
        failed=run.failed,
    )
    if metrics is not None:
        metrics.retention_last_run.set(now.timestamp())
        metrics.retention_run_seconds.set(time.monotonic() - started)
    return run


async def _step(
    run: RetentionRun, metrics: Metrics | None, name: str, work: Awaitable[None]
) -> None:
    """Await ``work``; a store error is logged, counted and left to the next run, and the
    run goes on with its other steps."""
    try:
        await work
    except StoreError as exc:
        _failed(run, metrics, name, exc)


def _failed(run: RetentionRun, metrics: Metrics | None, step: str, exc: StoreError) -> None:
    run.failed.append(step)
    log.warning("retention.step_failed", step=step, error=str(exc), action="retried next run")
    if metrics is not None:
        metrics.retention_failures.labels(step).inc()


async def _partitions(
    store: Store, retention: RetentionConfig, run: RetentionRun, metrics: Metrics | None
) -> None:
    try:
        listed = await store.time_partitions(EVENTS)
        default = await store.default_events(since=run.cutoffs.events)
    except StoreError as exc:
        _failed(run, metrics, "list_partitions", exc)
        return
    plan = plan_partitions(listed, default, run.at, retention)
    for lower, upper in plan.create:
        await _step(run, metrics, "create_partition", _create(store, lower, upper, run, metrics))
    for partition in plan.drop:
        await _step(run, metrics, "drop_partition", _drop(store, partition, plan, run, metrics))


async def _create(
    store: Store, lower: datetime, upper: datetime, run: RetentionRun, metrics: Metrics | None
) -> None:
    name, moved = await store.create_time_partition(EVENTS, lower, upper)
    run.created.append(CreatedPartition(name, lower, upper, moved))
    log.info(
        "retention.partition_created",
        partition=name,
        lower=lower.isoformat(),
        upper=upper.isoformat(),
        moved_from_default=moved,
    )
    if metrics is not None:
        metrics.retention_partitions_created.inc()


async def _drop(
    store: Store,
    partition: TimePartition,
    plan: PlannedPartitions,
    run: RetentionRun,
    metrics: Metrics | None,
) -> None:
    dropped = await store.drop_time_partition(partition.name, plan.older_than)
    assert partition.upper is not None  # planned: only partitions with an end are dropped
    run.dropped.append(
        DroppedPartitionRecord(
            dropped.name, partition.lower, partition.upper, dropped.rows, dropped.bytes
        )
    )
    log.info(
        "retention.partition_dropped",
        partition=dropped.name,
        lower=partition.lower.isoformat() if partition.lower else None,
        upper=partition.upper.isoformat(),
        rows=dropped.rows,
        bytes=dropped.bytes,
        older_than=plan.older_than.isoformat(),
    )
    if metrics is not None:
        metrics.retention_partitions_dropped.inc()
        metrics.retention_rows.labels(EVENTS).inc(dropped.rows)
        metrics.retention_bytes.inc(dropped.bytes)


async def _deletes(store: Store, run: RetentionRun, metrics: Metrics | None) -> None:
    cut = run.cutoffs
    await _step(run, metrics, "messages", _delete_messages(store, cut.messages, run, metrics))
    outbox = Outbox(store)
    await _delete_step(
        run, metrics, "webhook_outbox", lambda: outbox.purge(cut.webhook_outbox, BATCH)
    )
    await _delete_step(
        run,
        metrics,
        "unmatched_bounces",
        lambda: store.expire_dsn_unmatched(cut.unmatched_bounces, BATCH),
    )
    if cut.admin_audit is not None:
        before = cut.admin_audit
        await _delete_step(
            run, metrics, "admin_audit", lambda: store.delete_old_audit(before, BATCH)
        )


async def _delete_step(
    run: RetentionRun, metrics: Metrics | None, what: str, batch: Callable[[], Awaitable[int]]
) -> None:
    """The step ``what``: call ``batch`` (deletes up to BATCH rows, returns how many) until
    a batch comes back short; count and log what went, also when a batch fails."""

    async def batches() -> None:
        total = 0
        try:
            while True:
                gone = await batch()
                total += gone
                if gone < BATCH:
                    break
        finally:
            _deleted(run, metrics, what, total)

    await _step(run, metrics, what, batches())


async def _delete_messages(
    store: Store, before: datetime, run: RetentionRun, metrics: Metrics | None
) -> None:
    since = datetime.min.replace(tzinfo=UTC)
    messages = deliveries = 0
    try:
        while True:
            batch = await store.delete_finished_messages(before, since, BATCH)
            messages += batch.messages
            deliveries += batch.deliveries
            if batch.messages < BATCH or batch.newest is None:
                break
            since = batch.newest
    finally:
        _deleted(run, metrics, "messages", messages)
        _deleted(run, metrics, "deliveries", deliveries)


def _deleted(run: RetentionRun, metrics: Metrics | None, what: str, rows: int) -> None:
    run.deleted[what] = run.deleted.get(what, 0) + rows
    if not rows:
        return
    log.info("retention.deleted", table=what, rows=rows)
    if metrics is not None:
        metrics.retention_rows.labels(what).inc(rows)


async def _watch_default(store: Store, run: RetentionRun, metrics: Metrics | None) -> None:
    default = await store.default_events()
    run.default_rows = default.rows
    if metrics is not None:
        metrics.retention_default_rows.set(default.rows)
    if default.rows:
        log.warning(
            "retention.default_partition_not_empty",
            rows=default.rows,
            oldest=default.oldest.isoformat() if default.oldest else None,
            newest=default.newest.isoformat() if default.newest else None,
            why="events were written for a time no partition covers (a clock far off?); "
            "they move into their partition when it is created, or go once past the window",
        )


async def keep_data_lifecycle(
    store: Store,
    config: Config,
    *,
    clock: Clock,
    metrics: Metrics | None = None,
    poll: float = 60.0,
) -> None:
    """Run the data lifecycle at once and then every [retention] check_every of ``clock``
    (looked at every ``poll`` seconds), until cancelled. Every relay runs this; the store's
    advisory lock lets one at a time do the work."""
    due = clock()
    while True:
        now = clock()
        if now >= due:
            due = now + config.retention.check_every
            try:
                await run_retention(store, config, now, metrics=metrics)
            except StoreError as exc:  # the lock itself could not be asked for
                log.warning("retention.run_failed", error=str(exc), action="retried next run")
                if metrics is not None:
                    metrics.retention_failures.labels("lock").inc()
        await asyncio.sleep(poll)


# -- vacuum ---------------------------------------------------------------------------------


async def vacuum_while_autovacuum_is_off(store: Store, interval: float = 30.0) -> None:
    """Return at once when autovacuum runs; else vacuum the queue until cancelled."""
    try:
        if await store.autovacuum_enabled():
            return
    except StoreError as exc:
        log.warning("maintenance.check_failed", error=str(exc))
        return
    log.warning(
        "maintenance.autovacuum_off",
        action=f"vacuuming deliveries and messages every {interval:g} s; "
        "turn autovacuum on in postgresql.conf",
    )
    while True:
        # Sleep first: a vacuum as the relay starts ANALYZEs the queue before its traffic. On a
        # fresh database that records an empty messages table, and each connection then
        # keeps a sequential-scan plan for the deliveries' foreign-key check until the next
        # vacuum: 2,350 rows read per message, 40-55% of PostgreSQL's CPU per message in a
        # benchmark (BENCHMARKS.md, "Where the CPU goes").
        await asyncio.sleep(interval)
        try:
            await store.vacuum_queue()
        except StoreError as exc:
            log.warning("maintenance.vacuum_failed", error=str(exc), action="retrying later")
