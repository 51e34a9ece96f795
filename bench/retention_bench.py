"""The data lifecycle at scale ([retention], relay/ops/maintenance.py): the database's size
day by day over simulated days, flat once the windows are full.

A scratch database, migrated. Time is injected, never waited for: each simulated day
writes ``--events`` events' worth of traffic with bulk SQL shaped like the store's write
paths (accept_messages, apply_outcomes, roll_up_bounces), through the same tables and
indexes: messages (bodies released, as once every delivery is final), one delivery each,
an accepted event and an outcome event each (delivered, or a soft bounce then delivered,
or a hard bounce), the bounce keys and the hour/day rollups of the day. Then the relay's
own run (``run_retention``) at the day's end, with the windows given; then a VACUUM
(ANALYZE) of the tables the run deleted from and of the day's partition, standing in for
the day of autovacuum a real relay gets (0005 vacuums the queue tables at 1 % dead rows).
One row per day: sizes on disk (pg_total_relation_size, MB) and what the run did.

    python bench/retention_bench.py                                # 60 days x 1M events
    python bench/retention_bench.py --days 60 --events 200000      # what fits a small box
    python bench/retention_bench.py --days 3 --events 2000         # smoke

``--migration N``: instead, the time migration 0019 takes on a database with N events in
the default partition (everything before 0019 applied first), and, to compare, the time to
write those rows again into a table with events' indexes (what moving them into partitions
of their own would cost at least).
``--queue-cost``: instead, what partitioning deliveries would cost the queue's statements
(outcome update by ids, the claim) with 1, 30 and 90 partitions by id range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from support import DEFAULT_DSN, scratch_database

from relay.config import Config, PartitionWidth, load_config
from relay.metrics import Metrics
from relay.ops.logging import configure_logging
from relay.ops.maintenance import run_retention
from relay.store import create_store
from relay.store.migrate import apply_migrations, available_migrations

START = datetime(2031, 1, 6, tzinfo=UTC)  # a Monday; the clock the simulation injects
CHUNK = 100_000  # messages per statement
# Per message: an accepted event and an outcome. Of 1,000 messages: 50 soft-bounce once and
# are then delivered (one more event), 10 hard-bounce, the rest are delivered at once.
EVENTS_PER_MESSAGE = (1000 * 2 + 50) / 1000

_DAY_TRAFFIC = """
WITH m AS (
    INSERT INTO messages (queue_id, received_at, envelope_sender, from_domain, message_id,
                          campaign, size, body, client_address, session_id)
    SELECT 'B' || g, $1::timestamptz + ((g * 7919) % 86000) * interval '1 second',
           'bounces@news' || (g % 10) || '.example.com', 'news' || (g % 10) || '.example.com',
           '<' || md5(g::text) || '@news.example.com>',
           'c' || $4::int || '-' || (g % 5), 20000, NULL,
           '10.1.' || (g % 4) || '.' || (g % 200), 's' || (g / 50)
    FROM generate_series($2::bigint, $3::bigint) AS g
    RETURNING id, queue_id, received_at, campaign, from_domain, envelope_sender
), mm AS (
    SELECT m.*, (ARRAY['gmail.com', 'yahoo.com', 'outlook.com', 'web.de', 'example.org'])
                    [1 + m.id % 5] AS domain,
           m.id % 1000 AS fate,  -- < 10: hard bounce; < 60: soft bounce, then delivered
           '10.0.0.' || (m.id % 8) AS ip
    FROM m
), d AS (
    INSERT INTO deliveries (message_id, recipient, recipient_key, recipient_domain, state,
                            attempts, next_attempt_at, first_failure_at, updated_at,
                            last_source_ip, last_code, last_reply)
    SELECT id, 'user' || id || '@' || domain, 'user' || id || '@' || domain, domain,
           CASE WHEN fate < 10 THEN 'bounced' ELSE 'delivered' END,
           CASE WHEN fate >= 10 AND fate < 60 THEN 2 ELSE 1 END,
           received_at, CASE WHEN fate < 60 THEN received_at + interval '1 minute' END,
           received_at + interval '20 minutes', ip,
           CASE WHEN fate < 10 THEN 550 ELSE 250 END,
           CASE WHEN fate < 10 THEN '550 5.1.1 <user' || id || '@' || domain
                                    || '>: Recipient address rejected: User unknown'
                ELSE '250 2.0.0 OK ' || md5(id::text) || ' - gsmtp' END
    FROM mm
    RETURNING id, message_id
), outcome AS (
    -- attempt 1 for everyone, attempt 2 (delivered) for the soft bounces
    SELECT mm.*, d.id AS delivery_id, a.attempt,
           CASE WHEN mm.fate < 10 THEN 'hard_bounce'
                WHEN mm.fate < 60 AND a.attempt = 1 THEN 'soft_bounce'
                ELSE 'delivered' END AS type
    FROM mm JOIN d ON d.message_id = mm.id
    CROSS JOIN LATERAL (SELECT 1 AS attempt UNION ALL
                        SELECT 2 WHERE mm.fate >= 10 AND mm.fate < 60) AS a
)
INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                    from_domain, envelope_sender, source_ip, destination, recipient,
                    recipient_domain, code, enhanced, reply_text, template, category,
                    attempt, provider)
SELECT received_at, 'accepted', id, NULL, queue_id, campaign, from_domain, envelope_sender,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM mm
UNION ALL
SELECT received_at + attempt * interval '1 minute', type, id, delivery_id, queue_id, campaign,
       from_domain, envelope_sender, ip, 'mx' || (id % 3) || '.' || domain || ':25',
       'user' || id || '@' || domain, domain,
       CASE type WHEN 'delivered' THEN 250 WHEN 'soft_bounce' THEN 452 ELSE 550 END,
       CASE type WHEN 'delivered' THEN '2.0.0' WHEN 'soft_bounce' THEN '4.2.2' ELSE '5.1.1' END,
       CASE type WHEN 'delivered' THEN '250 2.0.0 OK ' || md5(id::text) || ' - gsmtp'
                 WHEN 'soft_bounce' THEN '452 4.2.2 Mailbox full (' || (id % 7) || ') for user'
                                         || id || '@' || domain
                 ELSE '550 5.1.1 <user' || id || '@' || domain
                      || '>: Recipient address rejected: User unknown' END,
       CASE type WHEN 'delivered' THEN NULL
                 WHEN 'soft_bounce' THEN '452 4.2.2 Mailbox full (' || (id % 7) || ') for <addr>'
                 ELSE '550 5.1.1 <addr>: Recipient address rejected: User unknown' END,
       CASE type WHEN 'delivered' THEN NULL WHEN 'soft_bounce' THEN 'mailbox_full'
                 ELSE 'user_unknown' END,
       attempt, split_part(domain, '.', 1)
FROM outcome
ORDER BY 1
"""

_BOUNCE_KEYS = """
INSERT INTO bounced_messages (message_id, type)
SELECT message_id, t FROM events, LATERAL (VALUES (type), ('any')) AS x (t)
WHERE occurred_at >= $1 AND occurred_at < $2 AND type IN ('soft_bounce', 'hard_bounce')
ON CONFLICT DO NOTHING;
"""

_BOUNCE_MESSAGE_KEYS = """
INSERT INTO bounce_message_keys (message_id, type, template_key, source_ip)
SELECT message_id, type, decode(md5(template), 'hex'), ip
FROM events, LATERAL (VALUES (''), (source_ip)) AS x (ip)
WHERE occurred_at >= $1 AND occurred_at < $2 AND type IN ('soft_bounce', 'hard_bounce')
ON CONFLICT DO NOTHING;
"""

_ATTEMPT_ROLLUP = """
INSERT INTO attempt_rollup (grain, bucket, campaign, from_domain, source_ip, provider,
                            attempts, delivered)
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'),
       CASE WHEN g.all_campaigns THEN '' ELSE coalesce(e.campaign, '') END,
       coalesce(e.from_domain, ''), coalesce(e.source_ip, ''), coalesce(e.provider, ''),
       count(*), count(*) FILTER (WHERE e.type = 'delivered')
FROM events e
CROSS JOIN (VALUES ('hour', 'hour', false), ('day', 'day', false), ('day_all', 'day', true))
    AS g (grain, unit, all_campaigns)
WHERE e.occurred_at >= $1 AND e.occurred_at < $2
  AND e.type IN ('delivered', 'soft_bounce', 'hard_bounce')
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (grain, bucket, campaign, from_domain, source_ip, provider) DO UPDATE
SET attempts = attempt_rollup.attempts + EXCLUDED.attempts,
    delivered = attempt_rollup.delivered + EXCLUDED.delivered;
"""

_BOUNCE_ROLLUP = """
INSERT INTO bounce_rollup (grain, bucket, type, campaign, from_domain, source_ip, provider,
                           template_key, template, category, sample, amount,
                           messages_by_domain, messages_by_ip, messages_overall,
                           messages_overall_any, first_seen, last_seen, code)
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.type,
       CASE WHEN g.all_campaigns THEN '' ELSE coalesce(e.campaign, '') END,
       coalesce(e.from_domain, ''), coalesce(e.source_ip, ''), coalesce(e.provider, ''),
       decode(md5(e.code || ' ' || e.enhanced || E'\\n' || e.template), 'hex'),
       min(e.template), min(e.category), min(e.reply_text), count(*), count(*), count(*),
       count(*), count(*), min(e.occurred_at), max(e.occurred_at), e.code || ' ' || e.enhanced
FROM events e
CROSS JOIN (VALUES ('hour', 'hour', false), ('day', 'day', false), ('day_all', 'day', true))
    AS g (grain, unit, all_campaigns)
WHERE e.occurred_at >= $1 AND e.occurred_at < $2 AND e.type IN ('soft_bounce', 'hard_bounce')
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, e.code, e.enhanced
ON CONFLICT DO NOTHING;
"""

_SIZES = """
SELECT (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('events'))
           AS events,
       (SELECT count(*) - 1 FROM pg_partition_tree('events') WHERE isleaf) AS partitions,
       pg_total_relation_size('messages') + pg_total_relation_size('deliveries') AS queue,
       (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('bounce_rollup'))
           + pg_total_relation_size('attempt_rollup') AS rollups,
       pg_total_relation_size('bounced_messages') + pg_total_relation_size('bounce_message_keys')
           AS bounce_keys,
       pg_database_size(current_database()) AS database
"""

_MB = 1024 * 1024


async def _write_day(conn: asyncpg.Connection, day: int, start: datetime, messages: int) -> int:
    first = day * messages
    for lo in range(first, first + messages, CHUNK):
        hi = min(lo + CHUNK, first + messages) - 1
        await conn.execute(_DAY_TRAFFIC, start, lo, hi, day, timeout=3600)
    end = start + timedelta(days=1, hours=1)  # the day's last outcomes spill past midnight
    for statement in (_BOUNCE_KEYS, _BOUNCE_MESSAGE_KEYS, _ATTEMPT_ROLLUP, _BOUNCE_ROLLUP):
        await conn.execute(statement, start, end, timeout=3600)
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM events WHERE occurred_at >= $1 AND occurred_at < $2",
            start,
            start + timedelta(days=1),
        )
    )


def _config(args: argparse.Namespace) -> Config:
    """The config of a relay with the windows asked for (read as the relay reads it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "retention.toml"
        path.write_text(
            f'[retention]\nevents = "{args.events_days}d"\n'
            f'event_partitions = "{args.partitions}"\nmessages = "{args.messages_days}d"\n'
        )
        return load_config(path)


async def _simulate(args: argparse.Namespace) -> None:
    configure_logging("warning")  # the table is the output; a run's lines go to its log
    config = _config(args)
    messages = round(args.events / EVENTS_PER_MESSAGE)
    print(
        f"retention_bench days={args.days} events_per_day={args.events} "
        f"messages_per_day={messages} events_window={args.events_days}d "
        f"partitions={args.partitions} messages_window={args.messages_days}d"
    )
    print(
        "day\tevents_written\tpartitions\tevents_mb\tqueue_mb\trollups_mb\tkeys_mb"
        "\tdatabase_mb\twrite_s\tretention_s\tdropped\tmessages_deleted"
    )
    async with scratch_database(args.dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn)
        store = await create_store(dsn)
        metrics = Metrics()
        try:
            # The migration made partitions for today's date; the simulation lives in START's.
            await run_retention(store, config, START, metrics=metrics)
            for day in range(args.days):
                start = START + timedelta(days=day)
                t = time.perf_counter()
                written = await _write_day(conn, day, start, messages)
                wrote = time.perf_counter() - t
                t = time.perf_counter()
                run = await run_retention(store, config, start + timedelta(days=1), metrics=metrics)
                ran = time.perf_counter() - t
                assert run is not None, "nothing else runs the lifecycle here"
                assert not run.failed, run.failed
                await _vacuum(conn, start)
                size = await conn.fetchrow(_SIZES)
                print(
                    f"{day + 1}\t{written}\t{size['partitions']}\t{size['events'] / _MB:.0f}"
                    f"\t{size['queue'] / _MB:.0f}\t{size['rollups'] / _MB:.1f}"
                    f"\t{size['bounce_keys'] / _MB:.1f}\t{size['database'] / _MB:.0f}"
                    f"\t{wrote:.1f}\t{ran:.2f}\t{len(run.dropped)}"
                    f"\t{run.deleted.get('messages', 0)}",
                    flush=True,
                )
        finally:
            await store.close()
            await conn.close()


async def _vacuum(conn: asyncpg.Connection, day: datetime) -> None:
    """What a day of autovacuum does: the queue tables and the bounce keys vacuumed (the
    run deleted from them), the day's partition analyzed (its row estimate is what a drop
    counts)."""
    await conn.execute(
        "VACUUM (ANALYZE) messages, deliveries, bounced_messages, bounce_message_keys",
        timeout=3600,
    )
    partition = await conn.fetchval(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "CROSS JOIN LATERAL retention_partition_bounds(c.oid) b "
        "WHERE i.inhparent = 'events'::regclass AND b.lower <= $1 AND $1 < b.upper",
        day,
    )
    await conn.execute(f"VACUUM (ANALYZE) {partition}", timeout=3600)


async def _migration(args: argparse.Namespace) -> None:
    """0019 on a database whose events are all in the default partition."""
    async with scratch_database(args.dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in available_migrations():
                if m.version < 19:
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        m.version,
                        m.name,
                    )
            messages = round(args.migration / EVENTS_PER_MESSAGE)
            start = datetime.now(UTC) - timedelta(days=args.migration_days)
            per_day = max(1, messages // args.migration_days)
            for day in range(args.migration_days):
                for lo in range(day * per_day, (day + 1) * per_day, CHUNK):
                    hi = min(lo + CHUNK, (day + 1) * per_day) - 1
                    await conn.execute(
                        _DAY_TRAFFIC, start + timedelta(days=day), lo, hi, day, timeout=3600
                    )
            await conn.execute("VACUUM (ANALYZE) events_default", timeout=3600)
            events, size = await conn.fetchrow(
                "SELECT count(*), pg_total_relation_size('events_default') FROM events_default"
            )
            t = time.perf_counter()
            await apply_migrations(conn)
            took = time.perf_counter() - t
            # What moving them into partitions of their own would have cost at least: the
            # same rows written again into a table with events' indexes (the DELETE from the
            # old one not counted).
            await conn.execute("CREATE TABLE events_rewritten (LIKE events INCLUDING INDEXES)")
            t = time.perf_counter()
            await conn.execute(
                "INSERT INTO events_rewritten SELECT * FROM events_before_0019", timeout=3600
            )
            rewrite = time.perf_counter() - t
            print(
                f"migration_0019 events={events} events_mb={size / _MB:.0f} "
                f"seconds={took:.2f} rewrite_seconds={rewrite:.2f}"
            )
        finally:
            await conn.close()


_QUEUE_TABLE = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY, message_id bigint NOT NULL, state text NOT NULL,
    next_attempt_at timestamptz NOT NULL, lease_token bigint, last_reply text
) {partitioned}
"""


async def _queue_table(conn: asyncpg.Connection, rows: int, partitions: int) -> str:
    """deliveries' shape as one table or as ``partitions`` partitions by id range: the last
    50,000 rows queued (the due index holds them), the rest final; its name."""
    name = f"q{partitions}"
    partitioned = "PARTITION BY RANGE (id)" if partitions > 1 else ""
    await conn.execute(_QUEUE_TABLE.format(name=name, partitioned=partitioned))
    step = rows // partitions
    for p in range(partitions if partitions > 1 else 0):
        upper = (p + 1) * step if p < partitions - 1 else "MAXVALUE"
        await conn.execute(
            f"CREATE TABLE {name}_{p} PARTITION OF {name} FOR VALUES FROM ({p * step}) TO ({upper})"
        )
    await conn.execute(
        f"INSERT INTO {name} SELECT g, g, CASE WHEN g >= $1 - 50000 THEN 'queued' "
        "ELSE 'delivered' END, now() - (g % 1000) * interval '1 second', g, '250 ok' "
        "FROM generate_series(0, $1 - 1) g",
        rows,
        timeout=3600,
    )
    await conn.execute(
        f"CREATE INDEX {name}_due ON {name} (next_attempt_at) WHERE state = 'queued'"
    )
    await conn.execute(f"VACUUM ANALYZE {name}", timeout=3600)
    return name


async def _queue_cost(args: argparse.Namespace) -> None:
    """The queue's statements on deliveries as one table and as partitions by id range,
    in one database, their rounds interleaved (the machine's noise falls on all alike): an
    outcome batch of 100 updated by id, and the claim's due scan of 100, both with generic
    plans (as the relay's queue pool runs them). Median microseconds per statement."""
    layouts = (1, 30, 90)
    async with scratch_database(args.dsn) as dsn:
        conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
        try:
            timings: dict[tuple[int, str], list[float]] = {}
            statements = {}
            for partitions in layouts:
                name = await _queue_table(conn, args.queue_rows, partitions)
                statements[partitions] = (
                    await conn.prepare(
                        f"UPDATE {name} q SET last_reply = '250 ok', "
                        "lease_token = q.lease_token + 1 "
                        "FROM unnest($1::bigint[]) AS o (id) WHERE q.id = o.id"
                    ),
                    await conn.prepare(
                        f"SELECT id FROM {name} WHERE state = 'queued' "
                        "AND next_attempt_at <= now() "
                        "ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED"
                    ),
                )
            first = args.queue_rows - 50000
            for r in range(args.rounds + 5):
                ids = [first + (r * 100 + i) % 50000 for i in range(100)]
                for partitions, (update, claim) in statements.items():
                    t = time.perf_counter()
                    await update.fetch(ids)
                    updated = time.perf_counter() - t
                    t = time.perf_counter()
                    async with conn.transaction():
                        await claim.fetch()
                    claimed = time.perf_counter() - t
                    if r >= 5:  # the first rounds plan and warm the caches
                        timings.setdefault((partitions, "update"), []).append(updated * 1e6)
                        timings.setdefault((partitions, "claim"), []).append(claimed * 1e6)
            for partitions in layouts:
                update_us = statistics.median(timings[(partitions, "update")])
                claim_us = statistics.median(timings[(partitions, "claim")])
                print(
                    f"queue_cost partitions={partitions} rows={args.queue_rows} "
                    f"rounds={args.rounds} update_100_by_id_us={update_us:.0f} "
                    f"claim_100_us={claim_us:.0f}"
                )
        finally:
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--days", type=int, default=60, help="simulated days")
    parser.add_argument("--events", type=int, default=1_000_000, help="events a day")
    parser.add_argument("--events-days", type=int, default=21, help="[retention] events, days")
    parser.add_argument("--partitions", default="day", choices=[w.value for w in PartitionWidth])
    parser.add_argument("--messages-days", type=int, default=14, help="[retention] messages, days")
    parser.add_argument("--migration", type=int, default=0, metavar="N")
    parser.add_argument("--migration-days", type=int, default=30)
    parser.add_argument("--queue-cost", action="store_true")
    parser.add_argument("--queue-rows", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    if args.migration:
        await _migration(args)
    elif args.queue_cost:
        await _queue_cost(args)
    else:
        await _simulate(args)


if __name__ == "__main__":
    asyncio.run(main())
