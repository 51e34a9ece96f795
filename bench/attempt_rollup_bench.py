"""What counting attempts for the report (attempt_rollup, migration 0014) costs the relay's
hot path: the apply_outcomes statement that records a batch of delivery outcomes.

A scratch database, migrated. Each round accepts and claims ``--batch`` deliveries through
the store, then records their outcomes with the relay's apply_outcomes statement as it is
and, as the baseline in the same run, with its attempt-counting CTEs (``tried``,
``tried_counts``, ``rolled``) cut out; the two take turns, on one connection with generic
plans (as the relay's queue pool), each statement committed on its own (the fast path of
outcomes that are all deliveries or retries). Outcomes come from ``--campaigns`` campaigns
and From domains, four source IPs and four providers, 90 % delivered, the rest deferred.
Medians of the time per outcome, client side (round trip and commit included).

    python bench/attempt_rollup_bench.py                 # batches of 10 and 100, 60 rounds
    python bench/attempt_rollup_bench.py --rounds 2      # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from support import DEFAULT_DSN, scratch_database

from policies.providers import provider_of
from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store, create_store
from relay.store.base import QUERIES, columns
from relay.store.migrate import apply_migrations
from relay.store.queue import _OUTCOME_COLUMNS

_CUT_FROM = "), tried AS ("
_CUT_TO = "\n)\nSELECT u.id AS delivery_id"
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.org")


def without_attempt_rollup(statement: str) -> str:
    """apply_outcomes with its attempt-counting CTEs cut out: the statement as it was
    before migration 0014 (the columns u returns for them are left, unread)."""
    start, end = statement.index(_CUT_FROM), statement.index(_CUT_TO)
    return statement[:start] + statement[end:]


async def _outcomes(
    store: Store, now: datetime, batch: int, campaigns: int, n: int
) -> list[OutcomeRecord]:
    """Accept and claim ``batch`` one-recipient messages; their outcomes."""
    messages = []
    for i in range(n, n + batch):
        domain = _DOMAINS[i % len(_DOMAINS)]
        messages.append(
            IncomingMessage(
                queue_id=f"Q{i}",
                envelope_sender="bounces@news.example.com",
                recipients=(Recipient(f"u{i}@{domain}", f"u{i}@{domain}", domain),),
                body=b"Subject: x\r\n\r\nx\r\n",
                from_domain=f"news{i % campaigns}.example.com",
                message_id=None,
                campaign=f"campaign-{i % campaigns}",
                client_address="127.0.0.1",
                session_id="bench",
                smtputf8=False,
            )
        )
    await store.accept_messages(now, messages)
    claimed = await store.claim_due_deliveries("bench", now, timedelta(minutes=5), batch)
    mx = "mx.example.net:25"
    return [
        OutcomeRecord(
            d.id,
            d.lease_token,
            "delivered" if d.id % 10 else "queued",
            "delivered" if d.id % 10 else "soft_bounce",
            next_attempt_at=None if d.id % 10 else now + timedelta(hours=1),
            code=250 if d.id % 10 else 451,
            source_ip=f"10.0.0.{d.id % 4}",
            destination=mx,
            provider=provider_of(mx, d.recipient_domain),
        )
        for d in claimed
    ]


async def _bench(dsn: str, batch: int, rounds: int, campaigns: int) -> dict[str, list[float]]:
    statements = {
        "with": QUERIES["apply_outcomes"],
        "without": without_attempt_rollup(QUERIES["apply_outcomes"]),
    }
    store = await create_store(dsn)
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        now = datetime.now(UTC)
        times: dict[str, list[float]] = {name: [] for name in statements}
        n = 0
        for r in range(-1, rounds):  # round -1 prepares and plans both: not timed
            order = list(statements) if r % 2 else list(reversed(statements))
            for name in order:
                outcomes = await _outcomes(store, now, batch, campaigns, n)
                n += batch
                args = columns(outcomes, _OUTCOME_COLUMNS)
                t = time.perf_counter()
                rows = await conn.fetch(statements[name], now, *args)
                assert len(rows) == len(outcomes)
                if r >= 0:
                    times[name].append((time.perf_counter() - t) / len(outcomes) * 1e6)
        return times
    finally:
        await conn.close()
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--batches", default="10,100", help="outcomes per statement")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--campaigns", type=int, default=2)
    args = parser.parse_args()
    for batch in (int(b) for b in args.batches.split(",")):
        async with scratch_database(args.dsn) as dsn:
            conn = await asyncpg.connect(dsn)
            await apply_migrations(conn)
            await conn.close()
            times = await _bench(dsn, batch, args.rounds, args.campaigns)
        without, with_ = (statistics.median(times[k]) for k in ("without", "with"))
        print(
            f"attempt_rollup batch={batch} rounds={args.rounds} campaigns={args.campaigns} "
            f"without_us_per_outcome={without:.1f} with_us_per_outcome={with_:.1f} "
            f"ratio={with_ / without:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
