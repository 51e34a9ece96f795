"""Webhooks: events written by the relay's own store paths land in the durable outbox, one row
per webhook subscribed to the event, in the transaction that wrote the event."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import asyncpg

from relay.config import WebhookConfig
from relay.store import Store
from relay.store.outbox import Outbox
from tests.delivery_support import eventually, in_state, retry_due, send


async def sync_subscriptions(store: Store, webhooks: Iterable[WebhookConfig]) -> None:
    await Outbox(store).sync_subscriptions({w.name: w.events for w in webhooks})


async def open_incident(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        "INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope, "
        " source_ip, recipients, attempted)"
        " VALUES (now(), now(), '421 4.7.0 try later', 'mx.example.org', 'mx', '127.0.0.1',"
        " 40, 50) RETURNING id"
    )


async def outbox(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM webhook_outbox ORDER BY id")


WEBHOOKS_TOML = """
[[retry.rules]]
name = "one-try"
match = { code = [452] }
schedule = ["10s"]
max_attempts = 1

[[webhooks]]
name = "crm"
url = "http://127.0.0.1:9/crm"
events = ["delivered", "soft_bounce", "hard_bounce", "non_delivery"]
secret = "0123456789abcdef0123"

[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/ops"
events = ["suppressed", "unsuppressed", "incident"]
secret = "0123456789abcdef0123"
"""


async def test_outbox_rows_only_for_subscribed_webhooks_and_events(
    upstream, start_relay, db, clock
):
    """Real deliveries, bounces, suppressions, an unsuppression and an incident give one outbox
    row per webhook subscribed to that event; accepted mail and the 'suppressed' event of a
    cancelled delivery give none. Payloads are built from the rows, without internal ids."""
    upstream.on_rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: User unknown")
    upstream.on_rcpt("late@example.org", "451 4.2.0 try again later")
    upstream.on_rcpt("full@example.org", "452 4.2.2 mailbox full")
    async with start_relay(upstream.port, extra=WEBHOOKS_TOML) as relay:
        await sync_subscriptions(relay.store, relay.config.webhooks)
        queue_id = await send(
            relay, ["ok@example.org", "gone@example.org", "late@example.org", "full@example.org"]
        )
        await eventually(in_state(db, "gone@example.org", "bounced"))
        await eventually(in_state(db, "full@example.org", "expired"))
        await eventually(in_state(db, "late@example.org", "queued"))
        await relay.store.add_suppression("late@example.org", "asked", "manual", actor="admin")
        await retry_due(relay, clock, minutes=2)
        await eventually(in_state(db, "late@example.org", "cancelled"))
        await relay.store.remove_suppression("gone@example.org", "admin", "owner asked")
    incident = await open_incident(db)
    await db.execute("UPDATE incidents SET last_seen_at = now() WHERE id = $1", incident)
    await db.execute("UPDATE incidents SET state = 'released' WHERE id = $1", incident)

    rows = await outbox(db)
    got = Counter(
        (r["webhook"], r["event"], r["payload"].get("recipient") or r["payload"].get("address"))
        for r in (dict(r) | {"payload": json.loads(r["payload"])} for r in rows)
    )
    assert got == Counter(
        {
            ("crm", "delivered", "ok@example.org"): 1,
            ("crm", "hard_bounce", "gone@example.org"): 1,
            ("crm", "soft_bounce", "late@example.org"): 1,
            ("crm", "soft_bounce", "full@example.org"): 1,
            ("crm", "non_delivery", "full@example.org"): 1,  # same statement as its bounce
            ("ops", "suppressed", "gone@example.org"): 1,
            ("ops", "suppressed", "late@example.org"): 1,
            ("ops", "unsuppressed", "gone@example.org"): 1,
            ("ops", "incident", None): 2,  # opened, then released; last_seen_at is no event
        }
    )
    # The cancelled delivery's own 'suppressed' event is in events, and stayed out.
    assert await db.fetchval(
        "SELECT count(*) FROM events WHERE type = 'suppressed' AND recipient = 'late@example.org'"
    )
    by_event = {(r["webhook"], r["event"]): json.loads(r["payload"]) for r in rows}
    delivered = by_event["crm", "delivered"]
    assert (delivered["queue_id"], delivered["code"], delivered["type"]) == (
        queue_id,
        250,
        "delivered",
    )
    assert "message_id" not in delivered
    bounce = by_event["crm", "hard_bounce"]
    assert (bounce["enhanced"], bounce["category"]) == ("5.1.1", "user_unknown")
    assert by_event["ops", "unsuppressed"]["source"] == "hard_bounce"
    assert [json.loads(r["payload"])["state"] for r in rows if r["event"] == "incident"] == [
        "open",
        "released",
    ]


async def test_no_subscriptions_write_no_outbox_rows(upstream, start_relay, db):
    """With every webhook removed from the config (subscriptions synced to none), deliveries,
    bounces, suppressions and incidents write nothing to the outbox."""
    upstream.on_rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: User unknown")
    async with start_relay(upstream.port, extra=WEBHOOKS_TOML) as relay:
        await sync_subscriptions(relay.store, relay.config.webhooks)
        await sync_subscriptions(relay.store, [])
        await send(relay, ["ok@example.org", "gone@example.org"])
        await eventually(in_state(db, "gone@example.org", "bounced"))
        await eventually(in_state(db, "ok@example.org", "delivered"))
        await relay.store.remove_suppression("gone@example.org", "admin", "owner asked")
    await open_incident(db)
    assert await db.fetchval("SELECT count(*) FROM webhook_subscriptions") == 0
    assert await db.fetchval("SELECT count(*) FROM events") >= 3
    assert await outbox(db) == []
