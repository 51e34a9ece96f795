"""What the webhook trigger on ``events`` (migration 0007) costs the relay's inserts.

A scratch database, migrated. Each variant runs, interleaved --rounds times and timed
inside the server (clock_timestamp(), no client round trips in the numbers): one INSERT
of 1000 events (how apply_outcomes writes a batch) and 1000 one-row INSERT statements (the
trigger is per statement, so this is its worst case). Every run is rolled back.

    PYTHONPATH=. python bench/webhook_trigger.py               # 40 rounds
    PYTHONPATH=. python bench/webhook_trigger.py --rounds 5    # smoke

(PYTHONPATH=. so that the migrations come from this checkout, not an installed copy.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import asyncpg
from support import DEFAULT_DSN, scratch_database

from relay.store.migrate import apply_migrations

_COLUMNS = """occurred_at, type, message_id, delivery_id, queue_id, campaign, from_domain,
    envelope_sender, source_ip, destination, recipient, recipient_domain, code, enhanced,
    reply_text, attempt"""
_VALUES = """now(), kind, g, g, 'Q' || g, 'c1', 'mail.example.com', 'b@mail.example.com',
    '127.0.0.1', 'mx.example.org', 'r' || g || '@example.org', 'example.org', 250, '2.0.0',
    '250 2.0.0 OK', 1"""
_TIMED = f"""
CREATE FUNCTION pg_temp.insert_events(kind text, one_row_statements boolean)
RETURNS float8 LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE started timestamptz := clock_timestamp(); i int;
BEGIN
    IF one_row_statements THEN
        FOR i IN 1..1000 LOOP
            INSERT INTO events ({_COLUMNS}) SELECT {_VALUES} FROM (SELECT i AS g) AS x;
        END LOOP;
    ELSE
        INSERT INTO events ({_COLUMNS}) SELECT {_VALUES} FROM generate_series(1, 1000) AS g;
    END IF;
    RETURN extract(epoch FROM clock_timestamp() - started) * 1000;
END $$"""
_VARIANTS = {
    "trigger disabled": "ALTER TABLE events DISABLE TRIGGER events_webhooks",
    "no subscription": "",
    "subscribed: incident only": "INSERT INTO webhook_subscriptions VALUES ('a', 'incident')",
    "subscribed: delivered": "INSERT INTO webhook_subscriptions VALUES ('a', 'delivered')",
}


async def _bench(dsn: str, rounds: int) -> dict[tuple[str, str, bool], list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
        if await conn.fetchval("SELECT to_regclass('webhook_outbox')") is None:
            raise SystemExit("no migration 0007 in the relay package imported: PYTHONPATH=.")
        await conn.execute(_TIMED)
        times: dict[tuple[str, str, bool], list[float]] = {}
        for _ in range(rounds):
            for variant, setup in _VARIANTS.items():
                for kind in ("accepted", "delivered"):
                    for one_row in (False, True):
                        tx = conn.transaction()
                        await tx.start()
                        if setup:
                            await conn.execute(setup)
                        ms = await conn.fetchval(
                            "SELECT pg_temp.insert_events($1, $2)", kind, one_row
                        )
                        await tx.rollback()
                        times.setdefault((variant, kind, one_row), []).append(ms)
        return times
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    async with scratch_database(args.dsn) as dsn:
        times = await _bench(dsn, args.rounds)
    print(f"webhook_trigger rounds={args.rounds} (median ms, min in brackets)")
    print(f"{'variant':27s} {'event type':10s} {'1 INSERT x 1000 rows':>21s} {'1000 INSERTs':>17s}")
    for variant in _VARIANTS:
        for kind in ("accepted", "delivered"):
            batch, single = times[variant, kind, False], times[variant, kind, True]
            print(
                f"{variant:27s} {kind:10s} {statistics.median(batch):11.2f} ({min(batch):6.2f})"
                f" {statistics.median(single):8.2f} ({min(single):6.2f})"
            )


if __name__ == "__main__":
    asyncio.run(main())
