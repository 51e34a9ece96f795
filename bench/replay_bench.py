"""`classify --replay` at scale: seed N recorded bounces, time the replay command.

Seeds ``--bounces`` bounce events over the last ``--days`` in a fresh database (two other
events per bounce, as a relay writes them; deliveries with their first failure; replies
drawn from a dozen real shapes, each naming its recipient so no two texts are equal, which
is what real bounces look like), then runs the command as an operator would, in a
subprocess whose wall time and peak RSS it reports: once with the rules the bounces were
recorded with (nothing changes) and once with a classify rule that changes one in fifty.

    python bench/replay_bench.py --bounces 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from support import DEFAULT_DSN, database_dsn, run_with_peak_rss

from policies.outcome import decide
from policies.smtp_reply import parse_reply
from relay.config import Rules, load_config
from relay.store.migrate import apply_migrations

# Reply shapes seen in real bounces; {r} is the recipient, {d} its domain, {n} a number.
REPLIES = [
    "550-5.1.1 The email account that you tried to reach does not exist. {r}"
    " https://support.google.com/mail/?p=NoSuchUser a1si{n}.123 - gsmtp",
    "552-5.2.2 The recipient's inbox is out of storage space. {r}"
    " https://support.google.com/mail/?p=OverQuotaPerm b2si{n}.45 - gsmtp",
    "421-4.7.0 [10.0.0.1] Our system has detected an unusual rate of unsolicited mail"
    " originating from your IP address. c3si{n} - gsmtp",
    "554 5.7.9 Message not accepted for policy reasons. See"
    " https://help.yahoo.com/kb/postmaster/SLN7253.html {r}",
    "451 4.7.1 <{r}>: Recipient address rejected: Greylisted, see"
    " http://postgrey.schweikert.ch/help/{d}.html",
    "550 5.5.0 Requested action not taken: mailbox unavailable ({r})",
    "452 4.2.2 <{r}>: Mailbox full",
    "554 5.7.1 Service unavailable; Client host [10.0.0.1] blocked using zen.spamhaus.org;"
    " https://www.spamhaus.org/query/ip/10.0.0.1 ({r})",
    "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)"
    " [{n}.eurprd.prod.outlook.com] {r}",
    "451 4.3.0 Temporary failure, please try again later ({n})",
]


@dataclass(frozen=True)
class _Recorded:
    type: str
    category: str
    rule: str | None
    suppress: bool
    retry_after: timedelta | None


def _verdicts(rules: Rules, domains: list[str]) -> dict[tuple[int, str], _Recorded]:
    """What the relay records for each reply shape and domain under ``rules`` (a first
    attempt), so that replaying the same rules changes nothing."""
    out = {}
    now = datetime.now(UTC)
    for index, shape in enumerate(REPLIES):
        for domain in domains:
            reply = parse_reply(shape.format(r=f"u@{domain}", d=domain, n=1))
            decision = decide(
                reply,
                domain,
                attempts=1,
                first_failure_at=None,
                now=now,
                retry=rules.retry,
                classify_rules=rules.classify_rules,
                suppress_on=rules.suppress_on,
                jitter=0.5,
            )
            at = decision.next_attempt_at
            out[index, domain] = _Recorded(
                decision.event.value,
                decision.verdict.category.value,
                decision.rule,
                decision.suppress,
                None if at is None else at - now,
            )
    return out


async def seed(dsn: str, rules: Rules, bounces: int, days: int, end: datetime) -> None:
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn)
    start = end - timedelta(days=days)
    step = timedelta(days=days) / max(bounces, 1)
    domains = ["gmail.com", "yahoo.com", "outlook.com", "example.org", "example.net"]
    verdicts = _verdicts(rules, domains)
    t = time.perf_counter()
    batch = 50_000
    for offset in range(0, bounces, batch):
        rows = []
        for i in range(offset, min(offset + batch, bounces)):
            shape = i % len(REPLIES)
            domain = domains[i // len(REPLIES) % len(domains)]
            recipient = f"u{i}@{domain}"
            at = start + step * i
            reply = parse_reply(REPLIES[shape].format(r=recipient, d=domain, n=i))
            v = verdicts[shape, domain]
            retry_at = None if v.retry_after is None else at + v.retry_after
            rows.append(
                (
                    i + 1,
                    at,
                    v.type,
                    recipient,
                    domain,
                    reply.code,
                    reply.enhanced,
                    reply.text,
                    v.category,
                    v.rule,
                    v.suppress,
                    retry_at,
                )
            )
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO messages (queue_id, envelope_sender, size, received_at) "
                "VALUES ('q' || $1::bigint, 'news@example.com', 100, $2)",
                [(r[0], r[1]) for r in rows],
            )
            await conn.executemany(
                "INSERT INTO deliveries (message_id, recipient, recipient_key, recipient_domain,"
                " state, attempts, first_failure_at) VALUES ($1, $2, $2, $3, 'bounced', 1,"
                " CASE WHEN $4 = 'soft_bounce' THEN $5::timestamptz END)",
                [(r[0], r[3], r[4], r[2], r[1]) for r in rows],
            )
            await conn.executemany(
                "INSERT INTO events (occurred_at, type, message_id, delivery_id, recipient,"
                " recipient_domain, code, enhanced, reply_text, category, attempt, rule,"
                " suppress, retry_at) VALUES ($2, $3, $1, $1, $4, $5, $6, $7, $8, $9, 1, $10,"
                " $11, $12)",
                rows,
            )
            await conn.execute(
                "INSERT INTO events (occurred_at, type, message_id, delivery_id, recipient)"
                " SELECT occurred_at - interval '1 s', t, message_id, delivery_id, recipient"
                " FROM events, unnest(ARRAY['accepted', 'delivered']) AS t"
                " WHERE message_id > $1 AND message_id <= $2 AND type LIKE '%bounce'",
                offset,
                offset + batch,
            )
        print(f"  seeded {offset + len(rows):,} bounces", file=sys.stderr, flush=True)
    await conn.execute("ANALYZE")
    await conn.close()
    print(f"seeded bounces={bounces} events={bounces * 3} seconds={time.perf_counter() - t:.0f}")


CONFIG = """
[store]
dsn = "{dsn}"

[retry]
schedule = ["5m", "15m"]

[[retry.rules]]
name = "greylisting"
match = {{ category = ["greylisted"] }}
schedule = ["1m"]
"""

CHANGE = """
[[classify.rules]]
name = "gmail-unknown-is-soft"
match = { domain = ["gmail.com"], enhanced = ["5.1.1"] }
kind = "soft"
"""


def time_replay(dsn: str, days: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("same-rules", ""), ("one-rule-added", CHANGE)):
            config = Path(tmp) / f"{label}.toml"
            config.write_text(CONFIG.format(dsn=dsn) + extra)
            out = Path(tmp) / f"{label}.out"
            command = [sys.executable, "-m", "relay", "classify", "--replay"]
            command += ["--since", f"{days + 1}d", "--config", str(config)]
            t = time.perf_counter()
            with out.open("w") as sink:
                rss = run_with_peak_rss(command, stdout=sink)
            seconds = time.perf_counter() - t
            summary = out.read_text().splitlines()[-1]
            print(f"replay rules={label} seconds={seconds:.1f} peak_rss_mb={rss:.0f}")
            print(f"  {summary}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
    )
    parser.add_argument("--bounces", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"br_replay_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = database_dsn(args.dsn, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rules.toml"
            path.write_text(CONFIG.format(dsn=dsn))
            rules = load_config(path).rules
        await seed(dsn, rules, args.bounces, args.days, datetime.now(UTC))
        await asyncio.to_thread(time_replay, dsn, args.days)
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
