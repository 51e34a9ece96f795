"""Bounces report at scale: seed N bounce events through the rollup, time reports and export.

Seeds ``--events`` bounce events spread over ``--days`` (shaped like real traffic: 200
campaigns, four sending in any hour, each from its own From domain and a pool of four IPs;
replies depend on the recipient's provider, custom domains hosted by Google or Microsoft
among them; messages are resent) in a fresh database. Each hour's events are folded into
the rollup by the store's own ``roll_up_bounces`` query, the same one the relay runs after
every delivery batch, and the hour's attempts (``--attempts-per-bounce`` for each bounce,
the rest delivered) into attempt_rollup by its grains and groupings, as apply_outcomes
would have counted them. Then it times the 30-day report (the three groupings, all
campaigns and one, every column, its total line included) and the 30-day time series by
day and by hour, each against a baseline measured in the same run: a count of the rollup
rows it reads (``scan_ms``: reading them without grouping, joining or sorting; ``ratio`` =
median / scan). Then the CSV and XLSX exports in a subprocess whose peak RSS it reports.

    python bench/report_bench.py --events 10000000 --export-rows 0
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from support import DEFAULT_DSN, database_dsn, run_with_peak_rss

from relay.store import Store, create_store, roll_up_bounces
from relay.store.migrate import apply_migrations
from relay.store.reports import ReportStream

SEED_HOUR = """
INSERT INTO events (occurred_at, type, message_id, campaign, from_domain, source_ip,
                    recipient, recipient_domain, code, reply_text, template, category, attempt,
                    provider)
SELECT $1::timestamptz,
       CASE WHEN g % 10 < 7 THEN 'soft_bounce' ELSE 'hard_bounce' END,
       $2::bigint + g / 3,
       'campaign-' || (($4::int * 4 + g % 4) % 200),
       'news' || (($4::int * 4 + g % 4) % 200 % 20) || '.example.com',
       '10.0.' || (($4::int * 4 + g % 4) % 200 % 20) || '.' || (1 + g / 7 % 4),
       'u' || g || '@' || p.domain,
       p.domain,
       CASE WHEN g % 10 < 7 THEN 452 ELSE 550 END,
       p.reply || ' id ' || md5(g::text),
       p.reply || ' id <id>',
       CASE WHEN g % 10 < 7 THEN 'mailbox_full' ELSE 'user_unknown' END,
       1 + g % 3,
       p.provider
FROM generate_series(1, $3) AS g
JOIN LATERAL (
    SELECT CASE WHEN g % 100 < 40 THEN 'gmail.com' WHEN g % 100 < 60 THEN 'yahoo.com'
                WHEN g % 100 < 75 THEN 'outlook.com'
                ELSE 'd' || (g % 2000) || '.example' END AS domain,
           -- custom domains: a quarter on Google Workspace, a quarter on Microsoft 365
           CASE WHEN g % 100 < 40 OR (g % 100 >= 75 AND g % 2000 % 4 = 0) THEN 'google'
                WHEN g % 100 < 60 THEN 'yahoo'
                WHEN g % 100 < 75 OR g % 2000 % 4 = 1 THEN 'microsoft'
                ELSE 'other' END AS provider,
           CASE WHEN g % 100 < 40 THEN 'gmail reply ' || (g % 7)
                WHEN g % 100 < 60 THEN 'yahoo reply ' || (g % 5)
                WHEN g % 100 < 75 THEN 'outlook reply ' || (g % 6)
                ELSE 'postfix reply ' || (g % 40) END AS reply
) AS p ON true
RETURNING id
"""


# The hour's attempts, shaped by its bounces: a (campaign, From domain, IP, provider) that
# bounced n times was tried $3 * n times and delivered the rest; rolled up per hour, day and
# day with campaigns folded together, as apply_outcomes counts them.
ATTEMPTS_HOUR = """
WITH t AS (
    SELECT coalesce(campaign, '') AS campaign, from_domain, source_ip, provider,
           count(*) * $3 AS attempts, count(*) * ($3 - 1) AS delivered
    FROM events WHERE occurred_at = $1 AND id = ANY($2::bigint[])
    GROUP BY 1, 2, 3, 4
), c AS (
    SELECT campaign, GROUPING(campaign) = 1 AS all_campaigns, from_domain, source_ip, provider,
           sum(attempts)::bigint AS attempts, sum(delivered)::bigint AS delivered
    FROM t
    GROUP BY GROUPING SETS ((campaign, from_domain, source_ip, provider),
                            (from_domain, source_ip, provider))
)
INSERT INTO attempt_rollup AS r
SELECT g.grain, date_trunc(g.unit, $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       coalesce(c.campaign, ''), c.from_domain, c.source_ip, c.provider, c.attempts, c.delivered
FROM c JOIN (VALUES ('hour', 'hour', false), ('day', 'day', false), ('day_all', 'day', true))
    AS g (grain, unit, all_campaigns) USING (all_campaigns)
ON CONFLICT (grain, bucket, campaign, from_domain, source_ip, provider) DO UPDATE
SET attempts = r.attempts + EXCLUDED.attempts, delivered = r.delivered + EXCLUDED.delivered
"""


async def seed(dsn: str, events: int, days: int, end: datetime, attempts_per_bounce: int) -> float:
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn)
    hours = days * 24
    per_hour = events // hours
    start = time.perf_counter()
    rolled = 0.0
    for h in range(hours):
        at = end - timedelta(hours=hours - h) + timedelta(minutes=17)
        async with conn.transaction():
            ids = [r["id"] for r in await conn.fetch(SEED_HOUR, at, h * per_hour // 3, per_hour, h)]
            t = time.perf_counter()
            await roll_up_bounces(conn, at, ids)
            rolled += time.perf_counter() - t
            await conn.execute(ATTEMPTS_HOUR, at, ids, attempts_per_bounce)
        if h % 72 == 71:
            # What autovacuum does for a running relay: the rollups' rows are updated by every
            # batch, and without it a day's rows spread over the dead versions of the others.
            await conn.execute("VACUUM (ANALYZE) bounce_rollup, attempt_rollup")
            await conn.execute("ANALYZE")
        if h % 48 == 0:
            print(f"  seeded {h * per_hour:,} events", file=sys.stderr, flush=True)
    await conn.execute("ANALYZE")
    rollup_rows, attempt_rows = [
        await conn.fetchval(
            "SELECT string_agg(grain || '=' || n, ' ') FROM "
            f"(SELECT grain, count(*) AS n FROM {table} GROUP BY grain ORDER BY grain) AS x"
        )
        for table in ("bounce_rollup", "attempt_rollup")
    ]
    attempts = await conn.fetchval(
        "SELECT sum(attempts)::bigint FROM attempt_rollup WHERE grain = 'day_all'"
    )
    await conn.close()
    total = time.perf_counter() - start
    print(
        f"seeded events={hours * per_hour} attempts={attempts} rollup_rows={rollup_rows} "
        f"attempt_rollup_rows={attempt_rows} seconds={total:.0f} "
        f"rollup_us_per_event={rolled / (hours * per_hour) * 1e6:.1f}"
    )
    return total


# The baseline: counting the rollup rows a report reads (the period's day rows, or its hour
# rows for a series by hour), in both rollups, with nothing grouped, joined or sorted.
SCAN = """
SELECT (SELECT count(*) FROM bounce_rollup
        WHERE grain = $1 AND bucket >= $2 AND bucket < $3
          AND ($4::text[] IS NULL OR campaign = ANY($4::text[])))
     + (SELECT count(*) FROM attempt_rollup
        WHERE grain = $1 AND bucket >= $2 AND bucket < $3
          AND ($4::text[] IS NULL OR campaign = ANY($4::text[])))
"""


async def _timed(read: Callable[[], Awaitable[int]], runs: int = 5) -> tuple[list[float], int]:
    times, n = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        n = await read()
        times.append(time.perf_counter() - t)
    return sorted(times), n


async def _read_report(
    store: Store,
    period: tuple[datetime, datetime],
    group_by: str,
    campaigns: list[str] | None,
    by: str | None,
) -> int:
    """How many rows the report (or its series ``by``) has, read whole with its totals."""
    rows: ReportStream[Any]
    if by is None:
        rows = store.iter_bounce_report(*period, ("soft_bounce",), campaigns, group_by, None)
    else:
        rows = store.iter_bounce_series(*period, ("soft_bounce",), campaigns, group_by, None, by)
    n = len([r async for r in rows])
    assert rows.totals is not None
    assert rows.totals.attempts > 0
    return n


async def _scan(
    conn: asyncpg.Connection,
    period: tuple[datetime, datetime],
    campaigns: list[str] | None,
    by: str | None,
) -> int:
    grain = "hour" if by == "hour" else ("day" if campaigns else "day_all")
    return int(await conn.fetchval(SCAN, grain, *period, campaigns))


async def time_reports(dsn: str, end: datetime) -> None:
    store = await create_store(dsn)
    conn = await asyncpg.connect(dsn)
    period = (end - timedelta(days=30), end)
    variants: list[tuple[str, str, list[str] | None, str | None]] = [
        (f"report group_by={g}", g, c, None)
        for g in ("from-domain", "ip", "provider")
        for c in (None, ["campaign-7"])
    ]
    variants += [
        (f"series by={by} group_by={g}", g, None, by)
        for by in ("day", "hour")
        for g in ("from-domain", "provider")
    ]
    for name, group_by, campaigns, by in variants:
        times, n = await _timed(partial(_read_report, store, period, group_by, campaigns, by))
        floor, scanned = await _timed(partial(_scan, conn, period, campaigns, by))
        print(
            f"{name} period=30d campaigns={campaigns or 'all'} type=soft rows={n} "
            f"median_ms={times[2] * 1000:.0f} best_ms={times[0] * 1000:.0f} "
            f"rollup_rows_read={scanned} scan_ms={floor[2] * 1000:.0f} "
            f"ratio={times[2] / max(floor[2], 1e-6):.1f}"
        )
    await conn.close()
    await store.close()


SEED_DISTINCT = """
INSERT INTO events (occurred_at, type, message_id, campaign, from_domain, source_ip,
                    recipient, recipient_domain, code, reply_text, template, category, attempt)
SELECT $1::timestamptz, 'soft_bounce', $2::bigint + g, 'export', 'export.example.com',
       '10.9.9.9', 'x' || g || '@d' || (g % 500) || '.example', 'd' || (g % 500) || '.example',
       451, 'distinct reply ' || ($2::bigint + g), 'distinct reply ' || ($2::bigint + g),
       'other', 1
FROM generate_series(1, $3) AS g
RETURNING id
"""


async def seed_distinct(dsn: str, rows: int, at: datetime) -> None:
    """``rows`` bounce events with distinct texts: a report of ``rows`` rows."""
    conn = await asyncpg.connect(dsn)
    for offset in range(0, rows, 50_000):
        async with conn.transaction():
            chunk = min(50_000, rows - offset)  # exactly ``rows``, however small
            ids = [r["id"] for r in await conn.fetch(SEED_DISTINCT, at, offset, chunk)]
            await roll_up_bounces(conn, at, ids)
    await conn.execute("ANALYZE")
    await conn.close()


def time_export(dsn: str, start: datetime, end: datetime) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.toml"
        config.write_text(f'[store]\ndsn = "{dsn}"\n')
        for fmt in ("csv", "xlsx"):
            out = Path(tmp) / f"report.{fmt}"
            t = time.perf_counter()
            command = [sys.executable, "-m", "relay", "report", "--config", str(config)]
            command += ["--from", start.isoformat(), "--to", end.isoformat(), "--type", "all"]
            command += ["--raw", "--format", fmt, "-o", str(out)]
            rss = run_with_peak_rss(command)
            lines = sum(1 for _ in out.open("rb")) if fmt == "csv" else "-"
            print(
                f"export format={fmt} lines={lines} seconds={time.perf_counter() - t:.1f} "
                f"peak_rss_mb={rss:.0f} size_mb={out.stat().st_size / 1e6:.1f}"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--attempts-per-bounce",
        type=int,
        default=10,
        help="attempts counted for each bounce seeded (a 1/N bounce rate)",
    )
    parser.add_argument(
        "--export-rows",
        type=int,
        default=1_000_000,
        help="then time CSV/XLSX export of a report this many rows long",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"br_report_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = database_dsn(args.dsn, name)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        await seed(dsn, args.events, args.days, end, args.attempts_per_bounce)
        await time_reports(dsn, end)
        if args.export_rows:
            # A separate hour after the 30 days above, holding the large export alone.
            at = end + timedelta(minutes=5)
            await seed_distinct(dsn, args.export_rows, at)
            time_export(dsn, end, end + timedelta(hours=1))
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
