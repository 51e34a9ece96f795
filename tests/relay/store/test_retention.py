"""The data lifecycle ([retention]; relay/store/lifecycle.py, relay/ops/maintenance.py,
migration 0019): partitions of events created ahead with the default partition left empty,
dropped whole once older than the window, the report the same across partitions and after
its raw events are dropped, finished messages deleted with their deliveries, the other
windows, one relay at a time, the relay's loop, the upgrade of a database with events, and
the [retention] keys checked.

The clock is injected: every time is pinned to ``T`` (never today's date), and the
partitions the test database's migration made for today are dropped first (``laid_out``),
so each test lays out its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.config import Config, ConfigErrors, PartitionWidth, RetentionConfig, load_config
from relay.metrics import Metrics
from relay.ops.maintenance import (
    keep_data_lifecycle,
    next_period,
    period_start,
    plan_partitions,
    preview_retention,
    run_retention,
)
from relay.reports.export import parse_filter
from relay.store import ReportRow, ReportTotals, Store, create_store
from relay.store.lifecycle import DefaultEvents, TimePartition
from relay.store.migrate import apply_migrations, available_migrations
from tests.support import pg
from tests.support.delivery import eventually
from tests.support.report_seeds import GMAIL_QUOTA, GMAIL_UNKNOWN, Seeder

T = datetime(2031, 3, 12, 12, 0, tzinfo=UTC)  # a Wednesday: its ISO week began Monday 10th
DAY = timedelta(days=1)
NOTHING_IN_DEFAULT = DefaultEvents(0, None, None)


def at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2031, month, day, hour, tzinfo=UTC)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn, min_size=1, max_size=4)
    yield s
    await s.close()


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def laid_out(db: asyncpg.Connection) -> None:
    """No partition but the default one: those the migration made are for today's date."""
    for name in await _partitions(db):
        await db.execute(f'DROP TABLE "{name}"')


@pytest.fixture
def retention(make_config: Callable[..., Config]) -> Callable[..., Config]:
    """A config whose [retention] section holds the given keys (strings as TOML strings)."""

    def config(**keys: str) -> Config:
        lines = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
        return make_config(f"[retention]\n{lines}")

    return config


async def _partitions(db: asyncpg.Connection) -> list[str]:
    """events' partitions but the default one, oldest first."""
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "CROSS JOIN LATERAL retention_partition_bounds(c.oid) b "
        "WHERE i.inhparent = 'events'::regclass AND NOT b.is_default "
        "ORDER BY b.lower NULLS FIRST"
    )
    return [r["relname"] for r in rows]


async def _event(db: asyncpg.Connection, occurred_at: datetime, kind: str = "accepted") -> str:
    """Write an event at ``occurred_at``; the partition it landed in."""
    return str(
        await db.fetchval(
            "INSERT INTO events (occurred_at, type) VALUES ($1, $2) "
            "RETURNING tableoid::regclass::text",
            occurred_at,
            kind,
        )
    )


async def _in_default(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events_default"))


# -- what to create and drop (pure) ---------------------------------------------------------


def test_periods_start_at_utc_midnight_monday_and_the_first_of_the_month():
    """As PostgreSQL's date_trunc in UTC, whatever zone the time is given in."""
    berlin = datetime(2031, 3, 11, 23, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    assert berlin.day == 12
    assert period_start(berlin, PartitionWidth.DAY) == at(3, 11)
    assert period_start(T, PartitionWidth.WEEK) == at(3, 10)
    assert period_start(T, PartitionWidth.MONTH) == at(3, 1)
    assert next_period(T, PartitionWidth.DAY) == at(3, 13)
    assert next_period(at(3, 10), PartitionWidth.WEEK) == at(3, 17)
    assert next_period(datetime(2031, 12, 31, 23, tzinfo=UTC), PartitionWidth.MONTH) == (
        datetime(2032, 1, 1, tzinfo=UTC)
    )


def _range(lower: datetime | None, upper: datetime | None) -> TimePartition:
    return TimePartition(f"p_{lower}", lower, upper, False, 0)


@pytest.mark.parametrize(
    ("width", "now", "existing", "created"),
    [
        # weeks: this one and two ahead (the horizon is now + 14 days)
        ("week", T, [], [(at(3, 10), at(3, 17)), (at(3, 17), at(3, 24)), (at(3, 24), at(3, 31))]),
        # days: this one and a week ahead
        ("day", T, [], [(at(3, d), at(3, d + 1)) for d in range(12, 20)]),
        # months: this one and the next (the horizon is the start of the month after)
        ("month", at(1, 30), [], [(at(1, 1), at(2, 1)), (at(2, 1), at(3, 1))]),
        # the partition of everything before 0019 ends mid-week: the first one starts there
        (
            "week",
            T,
            [_range(None, T)],
            [(T, at(3, 17)), (at(3, 17), at(3, 24)), (at(3, 24), at(3, 31))],
        ),
        # a partition already ahead: the one before it stops where it starts
        (
            "week",
            T,
            [_range(at(3, 20), at(3, 27))],
            [(at(3, 10), at(3, 17)), (at(3, 17), at(3, 20))],
        ),
        # weeks made before, days now: days from where the weeks end
        (
            "day",
            T,
            [_range(at(3, 10), at(3, 17))],
            [(at(3, d), at(3, d + 1)) for d in (17, 18, 19)],
        ),
        # covered to the horizon: nothing
        ("week", T, [_range(at(3, 10), at(4, 7))], []),
    ],
)
def test_partitions_cover_the_current_period_and_the_horizon(width, now, existing, created):
    """Every span without a partition from the current period to the horizon, cut at the
    period's boundaries and where an existing partition begins."""
    plan = plan_partitions(
        existing, NOTHING_IN_DEFAULT, now, RetentionConfig(event_partitions=PartitionWidth(width))
    )
    assert list(plan.create) == created
    assert plan.drop == ()


def test_an_event_in_the_default_partition_within_the_window_gets_its_partition_back_there():
    """An event written for last month, when no partition covered it: the plan reaches back
    to its period (not before the window's start), so that creation moves it out."""
    default = DefaultEvents(1, at(2, 3, 9), at(2, 3, 9))
    plan = plan_partitions([], default, T, RetentionConfig(events=timedelta(days=60)))
    assert plan.create[0] == (at(2, 3), at(2, 10))
    assert plan.create[-1] == (at(3, 24), at(3, 31))
    assert len(plan.create) == 8
    old = DefaultEvents(1, at(1, 1), at(1, 1))  # older than the window: deleted, not housed
    plan = plan_partitions([], old, T, RetentionConfig(events=timedelta(days=14)))
    assert plan.create[0] == (at(2, 24), at(3, 3))


def test_only_partitions_whose_every_row_is_older_than_the_window_are_dropped():
    """A partition ending at or before the window's start goes (the one before 0019 too);
    one ending after it holds rows of the window and stays; the default one never goes."""
    existing = [
        _range(None, at(2, 24)),
        _range(at(2, 24), at(2, 26)),  # ends exactly at the window's start: every row older
        _range(at(2, 26), at(3, 3)),  # ends after it: holds rows of the window
        TimePartition("events_default", None, None, True, 0),
    ]
    plan = plan_partitions(
        existing, NOTHING_IN_DEFAULT, T.replace(hour=0), RetentionConfig(events=timedelta(days=14))
    )
    assert plan.older_than == at(2, 26)
    assert [(p.lower, p.upper) for p in plan.drop] == [(None, at(2, 24)), (at(2, 24), at(2, 26))]


# -- partitions in the database -------------------------------------------------------------


async def test_partitions_are_created_ahead_and_the_default_partition_stays_empty(
    store, db, laid_out, retention
):
    """At T: this week's partition and two ahead, events land in them, none in the default
    partition; a week later one more; a run at the same time again creates nothing."""
    config = retention()  # weeks, 400 days
    metrics = Metrics()
    run = await run_retention(store, config, T, metrics=metrics)
    assert run is not None
    assert [(p.name, p.lower, p.upper, p.moved) for p in run.created] == [
        ("events_20310310", at(3, 10), at(3, 17), 0),
        ("events_20310317", at(3, 17), at(3, 24), 0),
        ("events_20310324", at(3, 24), at(3, 31), 0),
    ]
    assert await _event(db, T) == "events_20310310"
    assert await _event(db, T + 13 * DAY) == "events_20310324"
    assert await _in_default(db) == 0
    assert metrics.registry.get_sample_value("bounce_relay_retention_partitions_created_total") == 3
    assert (
        metrics.registry.get_sample_value("bounce_relay_retention_last_run_timestamp_seconds")
        == T.timestamp()
    )
    # A week on, one more; the same time again, nothing twice.
    later = await run_retention(store, config, T + 7 * DAY)
    assert later is not None and [p.name for p in later.created] == ["events_20310331"]
    again = await run_retention(store, config, T + 7 * DAY)
    assert again is not None and again.created == [] and again.failed == []


async def test_events_written_where_no_partition_was_move_in_when_it_is_created(
    store, db, laid_out, retention
):
    """A clock far ahead wrote an event for next month into the default partition: the run
    that reaches its week moves it into the partition it creates (same row, no second
    webhook), and one older than the window is deleted from there."""
    await db.execute("INSERT INTO webhook_subscriptions (webhook, event) VALUES ('w', 'delivered')")
    config = retention(events="30d")
    assert await run_retention(store, config, T) is not None
    ahead = T + 30 * DAY
    assert await _event(db, ahead, "delivered") == "events_default"
    assert await _event(db, T - 40 * DAY) == "events_default"
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 1
    ids = await db.fetchval("SELECT array_agg(id ORDER BY id) FROM events")

    metrics = Metrics()
    with capture_logs() as logs:
        run = await run_retention(store, config, T + 21 * DAY, metrics=metrics)
    assert run is not None
    moved = {p.name: p.moved for p in run.created}
    assert moved == {"events_20310331": 0, "events_20310407": 1, "events_20310414": 0}
    assert run.deleted["events_default"] == 1
    assert await _in_default(db) == 0
    assert (
        await db.fetchval(
            "SELECT tableoid::regclass::text FROM events WHERE occurred_at = $1", ahead
        )
        == "events_20310407"
    )
    assert await db.fetchval("SELECT array_agg(id ORDER BY id) FROM events") == ids[:1]
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 1
    assert metrics.registry.get_sample_value("bounce_relay_retention_default_partition_rows") == 0
    assert [e["event"] for e in logs if e["event"] == "retention.default_partition_not_empty"] == []


async def test_partitions_older_than_the_window_are_dropped_whole(store, db, laid_out, retention):
    """Day by day for three weeks, with a window of 14 days: each run drops the day whose
    every event has left the window, and the counters say how much went."""
    config = retention(events="14d", event_partitions="day")
    metrics = Metrics()
    with capture_logs() as logs:
        for day in range(20, -1, -1):
            now = T - day * DAY
            run = await run_retention(store, config, now, metrics=metrics)
            assert run is not None and run.failed == []
            for _ in range(3):
                await _event(db, now)
    dropped = [e for e in logs if e["event"] == "retention.partition_dropped"]
    # At T (noon), the window starts on 26 February at noon: the days until the 25th went.
    assert [e["partition"] for e in dropped] == [f"events_203102{d}" for d in range(20, 26)]
    assert all(e["rows"] == 3 and e["bytes"] > 0 for e in dropped)
    assert (await _partitions(db))[0] == "events_20310226"
    assert await db.fetchval("SELECT count(*) FROM events") == 15 * 3
    sample = metrics.registry.get_sample_value
    assert sample("bounce_relay_retention_partitions_dropped_total") == 6
    assert sample("bounce_relay_retention_rows_removed_total", {"table": "events"}) == 18
    assert sample("bounce_relay_retention_bytes_dropped_total") == sum(e["bytes"] for e in dropped)


async def _report(store: Store) -> tuple[list[ReportRow], ReportTotals]:
    flt = parse_filter(start="2031-03-10", end="2031-03-24", kind="all")
    stream = store.iter_bounce_report(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
    )
    rows = [r async for r in stream]
    assert stream.totals is not None
    return rows, stream.totals


async def _behind(store: Store, row: ReportRow) -> list[datetime]:
    """When the events behind ``row`` of the two weeks' report occurred, newest first."""
    events = await store.report_row_events(
        at(3, 10),
        at(3, 24),
        ["soft_bounce", "hard_bounce"],
        None,
        "from-domain",
        row.group,
        row.template_key,
        None,
        100,
    )
    return [e.occurred_at for e in events]


async def test_the_report_spans_partitions_and_keeps_its_numbers_when_events_are_dropped(
    store, db, laid_out, retention
):
    """Bounces in two weeks' partitions, written through the real path: one report over both
    weeks, the events behind a row found in both. Once the first week's partition is dropped,
    the report (its rollups) is the same; only the events behind it are the second week's."""
    config = retention(events="14d")
    assert await run_retention(store, config, T) is not None
    s = Seeder(store, prefix="R")
    await s.message("ann@gmail.com", "A", "news.example.com", T)
    await s.bounce(T, GMAIL_QUOTA.format(id="a1si1.1"), "127.0.0.2")
    await s.bounce(T + 7 * DAY, GMAIL_QUOTA.format(id="b2si2.2"), "127.0.0.2")
    await s.finish(T + 7 * DAY)
    await s.message("gone@gmail.com", "A", "news.example.com", T + 7 * DAY)
    await s.bounce(T + 7 * DAY, GMAIL_UNKNOWN.format(id="c3si3.3"), "127.0.0.2", kind="hard")
    homes = await db.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS p FROM events "
        "WHERE type IN ('soft_bounce', 'hard_bounce') ORDER BY 1"
    )
    assert [r["p"] for r in homes] == ["events_20310310", "events_20310317"]

    rows, totals = await _report(store)
    assert [(r.code, r.amount, r.messages, r.attempts, r.delivered) for r in rows] == [
        ("452 4.2.2", 2, 1, 4, 1),
        ("550 5.1.1", 1, 1, 4, 1),
    ]
    assert (totals.amount, totals.messages, totals.attempts, totals.delivered) == (3, 2, 4, 1)
    assert await _behind(store, rows[0]) == [T + 7 * DAY, T]

    run = await run_retention(store, config, at(3, 31, 12))
    assert run is not None and [p.name for p in run.dropped] == ["events_20310310"]
    assert await _report(store) == (rows, totals)
    assert await _behind(store, rows[0]) == [T + 7 * DAY]


async def test_finished_messages_go_with_their_deliveries_and_bounce_keys(
    store, db, laid_out, retention
):
    """With a window of 30 days: the delivered and the bounced message of 40 days ago go,
    with their deliveries, DSN results and bounce keys; one of 40 days ago still queued and
    one of 10 days ago stay."""
    s = Seeder(store, prefix="M")
    old = T - 40 * DAY
    await s.message("a@example.org", None, "news.example.com", old)  # M1: delivered
    await s.finish(old)
    await s.message("d@gmail.com", None, "news.example.com", old)  # M2: bounced
    await s.bounce(old, GMAIL_UNKNOWN.format(id="d4si4.4"), "127.0.0.2", kind="hard")
    await s.message("c@example.org", None, "news.example.com", T - 10 * DAY)  # M3: recent
    await s.finish(T - 10 * DAY)
    await s.message("b@example.org", None, "news.example.com", old)  # M4: still queued
    await db.execute(
        "INSERT INTO dsn_results (delivery_id, action, recorded_at) "
        "SELECT d.id, 'delayed', $1 FROM deliveries d JOIN messages m ON m.id = d.message_id "
        "WHERE m.queue_id = 'M1'",
        old,
    )
    assert await db.fetchval("SELECT count(*) FROM bounced_messages") == 2  # hard + any

    preview = await preview_retention(store, retention(messages="30d"), T)
    assert (preview.backlog.messages, preview.backlog.deliveries) == (2, 2)
    run = await run_retention(store, retention(messages="30d"), T)
    assert run is not None
    assert (run.deleted["messages"], run.deleted["deliveries"]) == (2, 2)
    left = await db.fetch("SELECT queue_id FROM messages ORDER BY queue_id")
    assert [r["queue_id"] for r in left] == ["M3", "M4"]
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 2
    for table in ("dsn_results", "bounced_messages", "bounce_message_keys"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    # The events stay (they have their own window).
    assert await db.fetchval("SELECT count(*) FROM events WHERE queue_id = 'M2'") == 2


async def test_webhook_rows_unmatched_bounces_and_the_audit_log_keep_their_windows(
    store, db, laid_out, retention
):
    """Webhook rows delivered 10 days ago go (7 days), a waiting one stays; an unmatched bounce
    of 8 days ago goes ([dsn] 7 days); the audit log is kept unless admin_audit is set."""
    for created, delivered in ((T - 10 * DAY, T - 10 * DAY), (T - 10 * DAY, None), (T - DAY, T)):
        await db.execute(
            "INSERT INTO webhook_outbox (webhook, event, occurred_at, payload, created_at, "
            "delivered_at) VALUES ('w', 'delivered', $1, '{}', $1, $2)",
            created,
            delivered,
        )
    for when in (T - 8 * DAY, T - DAY):
        await _event(db, when, "dsn_unmatched")
    for when in (T - 100 * DAY, T - 10 * DAY):
        await db.execute(
            "INSERT INTO admin_audit (occurred_at, actor, action, subject, reason) "
            "VALUES ($1, 'ops', 'suppression.add', 'x@example.org', 'test')",
            when,
        )
    kept = await run_retention(store, retention(), T)
    assert kept is not None
    assert (kept.deleted["webhook_outbox"], kept.deleted["unmatched_bounces"]) == (1, 1)
    assert "admin_audit" not in kept.deleted
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 2
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 2
    trimmed = await run_retention(store, retention(admin_audit="90d"), T)
    assert trimmed is not None and trimmed.deleted["admin_audit"] == 1
    assert await db.fetchval("SELECT occurred_at FROM admin_audit") == T - 10 * DAY


async def test_one_relay_at_a_time_does_the_work(db_dsn, db, laid_out, retention):
    """While one relay process holds the lifecycle's lock, another's run returns at once
    having done nothing; once it is released, the other's run does the work."""
    config = retention()
    first, second = await create_store(db_dsn), await create_store(db_dsn)
    try:
        async with first.lifecycle_lock() as mine:
            assert mine
            async with second.lifecycle_lock() as theirs:
                assert not theirs
            assert await run_retention(second, config, T) is None
            assert await _partitions(db) == []
        run = await run_retention(second, config, T)
        assert run is not None and len(run.created) == 3
    finally:
        await first.close()
        await second.close()


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_the_relay_runs_it_at_start_and_every_check_every_of_its_clock(
    store, laid_out, retention
):
    """keep_data_lifecycle runs at once, not again before check_every (1 h) of the relay's
    clock has passed, and again once it has: the clock is moved, not waited for."""
    clock = _Clock(T)
    metrics = Metrics()
    last_run = "bounce_relay_retention_last_run_timestamp_seconds"
    task = asyncio.create_task(
        keep_data_lifecycle(store, retention(), clock=clock, metrics=metrics, poll=0.01)
    )
    try:
        await eventually(lambda: _sampled(metrics, last_run, T.timestamp()))
        clock.now = T + timedelta(minutes=59)  # not due yet
        await asyncio.sleep(0.05)
        assert metrics.registry.get_sample_value(last_run) == T.timestamp()
        clock.now = T + timedelta(hours=1)
        await eventually(lambda: _sampled(metrics, last_run, clock.now.timestamp()))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert metrics.registry.get_sample_value("bounce_relay_retention_partitions_created_total") == 3


async def _sampled(metrics: Metrics, name: str, value: float) -> bool:
    return metrics.registry.get_sample_value(name) == value


# -- the upgrade ----------------------------------------------------------------------------


async def test_events_from_before_0019_stay_in_one_partition_dropped_once_past_the_window(
    pg_server: pg.TestServer,
):
    """A database with events in the default partition, migrated: they are all still there,
    in events_before_0019 (up to the end of this week), the default partition is empty but
    for an event dated ahead, and the partition goes whole once its end leaves the window."""
    dsn = await pg_server.create_database(migrated=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in available_migrations():
            if m.version < 19:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
        await conn.execute(
            "INSERT INTO events (occurred_at, type) "
            "SELECT now() - g * interval '1 day', 'accepted' FROM generate_series(0, 99) g"
        )
        await conn.execute(
            "INSERT INTO events (occurred_at, type) VALUES (now() + interval '60 days', 'accepted')"
        )
        await apply_migrations(conn)
        by_partition = dict(
            await conn.fetch("SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1")
        )
        assert by_partition == {"events_before_0019": 100, "events_default": 1}
        store = await create_store(dsn)
        try:
            [legacy, *_] = await store.time_partitions("events")
            assert legacy.name == "events_before_0019" and legacy.lower is None
            assert legacy.upper is not None
            assert legacy.upper.weekday() == 0 and legacy.upper > datetime.now(UTC)
            keep = RetentionConfig(events=timedelta(days=30))
            plan = plan_partitions(
                await store.time_partitions("events"),
                await store.default_events(),
                legacy.upper + timedelta(days=30),
                keep,
            )
            assert [p.name for p in plan.drop] == ["events_before_0019"]
            dropped = await store.drop_time_partition("events_before_0019", plan.older_than)
            assert dropped.rows == 100
        finally:
            await store.close()
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await conn.close()
        await pg_server.drop_database(dsn)


# -- the keys -------------------------------------------------------------------------------


def test_the_defaults_are_the_declared_ones(retention):
    """A year of reports' events (400 days, in weeks), a month of messages, the audit log
    kept."""
    config = retention()
    assert config.retention == RetentionConfig()
    assert (config.retention.events, config.retention.event_partitions) == (
        timedelta(days=400),
        PartitionWidth.WEEK,
    )
    assert config.retention.admin_audit is None  # the audit log is kept


def test_bad_retention_keys_are_named_with_what_they_take(write_config):
    """Every bad key at once, by line: a zero window, a value that is no duration, a
    misspelt key, and daily partitions over 400 days (too many for queries not limited in
    time)."""
    text = (
        "[retention]\n"  # 1
        'events = "400d"\n'  # 2
        'event_partitions = "day"\n'  # 3
        'messages = "0s"\n'  # 4
        'admin_audit = "soon"\n'  # 5
        'webhook_outbx = "7d"\n'  # 6
    )
    with pytest.raises(ConfigErrors) as bad:
        load_config(write_config(text, replace_base=True))
    errors = {e.key: (e.line, e.why) for e in bad.value.errors}
    assert errors["retention.messages"] == (4, "must be longer than 0s (e.g. '5m')")
    assert errors["retention.admin_audit"][0] == 5
    assert "duration" in errors["retention.admin_audit"][1]
    assert errors["retention.webhook_outbx"][0] == 6
    assert "did you mean 'webhook_outbox'" in errors["retention.webhook_outbx"][1]
    line, why = errors["retention.event_partitions"]
    assert line == 3
    assert why.startswith('"day" with events = "400d" keeps about 400 partitions of events')
    assert 'use "week" or "month", or a shorter events window' in why
