"""Bounces report at scale: seed N bounce events through the rollup, time reports and export.

Seeds ``--events`` bounce events spread over ``--days`` (shaped like real traffic: 200
campaigns, four sending in any hour, each from its own From domain and a pool of four IPs;
replies depend on the recipient's provider; messages are resent) in a fresh database.
Each hour's events are folded into the rollup by the store's own ``roll_up_bounces``
query, the same one the relay runs after every delivery batch. Then it times the 30-day
report (both groupings, all campaigns and one), and the CSV and XLSX exports in a
subprocess whose peak RSS it reports.

    python bench/report_bench.py --events 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from support import DEFAULT_DSN, database_dsn, run_with_peak_rss

from relay.store import create_store, roll_up_bounces
from relay.store.migrate import apply_migrations

SEED_HOUR = """
INSERT INTO events (occurred_at, type, message_id, campaign, from_domain, source_ip,
                    recipient, recipient_domain, code, reply_text, template, category, attempt)
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
       1 + g % 3
FROM generate_series(1, $3) AS g
JOIN LATERAL (
    SELECT CASE WHEN g % 100 < 40 THEN 'gmail.com' WHEN g % 100 < 60 THEN 'yahoo.com'
                WHEN g % 100 < 75 THEN 'outlook.com'
                ELSE 'd' || (g % 2000) || '.example' END AS domain,
           CASE WHEN g % 100 < 40 THEN 'gmail reply ' || (g % 7)
                WHEN g % 100 < 60 THEN 'yahoo reply ' || (g % 5)
                WHEN g % 100 < 75 THEN 'outlook reply ' || (g % 6)
                ELSE 'postfix reply ' || (g % 40) END AS reply
) AS p ON true
RETURNING id
"""


async def seed(dsn: str, events: int, days: int, end: datetime) -> float:
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
        if h % 72 == 71:
            await conn.execute("ANALYZE")  # what autovacuum does for a running relay
        if h % 48 == 0:
            print(f"  seeded {h * per_hour:,} events", file=sys.stderr, flush=True)
    await conn.execute("ANALYZE")
    rollup_rows = await conn.fetchval(
        "SELECT string_agg(grain || '=' || n, ' ') FROM "
        "(SELECT grain, count(*) AS n FROM bounce_rollup GROUP BY grain ORDER BY grain) AS x"
    )
    await conn.close()
    total = time.perf_counter() - start
    print(
        f"seeded events={hours * per_hour} rollup_rows={rollup_rows} seconds={total:.0f} "
        f"rollup_us_per_event={rolled / (hours * per_hour) * 1e6:.1f}"
    )
    return total


async def time_reports(dsn: str, end: datetime) -> None:
    store = await create_store(dsn)
    start = end - timedelta(days=30)
    for group_by in ("from-domain", "ip"):
        for campaigns in (None, ["campaign-7"]):
            times, n = [], 0
            for _ in range(5):
                t = time.perf_counter()
                n = len(
                    [
                        r
                        async for r in store.iter_bounce_report(
                            start, end, ("soft_bounce",), campaigns, group_by, None
                        )
                    ]
                )
                times.append(time.perf_counter() - t)
            times.sort()
            print(
                f"report period=30d group_by={group_by} campaigns={campaigns or 'all'} "
                f"type=soft rows={n} median_ms={times[2] * 1000:.0f} best_ms={times[0] * 1000:.0f}"
            )
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
            ids = [r["id"] for r in await conn.fetch(SEED_DISTINCT, at, offset, 50_000)]
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
        await seed(dsn, args.events, args.days, end)
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
