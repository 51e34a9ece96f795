"""Webhooks: events written by the relay's own store paths reach an HTTP receiver on loopback,
signed, from the durable outbox, however long the receiver is down."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from relay.config import WEBHOOK_EVENTS, WebhookConfig
from relay.store import Store, create_store
from relay.store.outbox import Outbox
from relay.webhooks import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSender,
    sign,
    sync_subscriptions,
    verify_signature,
)
from tests.support.delivery import eventually, in_state, retry_due, send
from tests.support.scripted import FakeClock

SECRET = "s3cret-s3cret-s3cret"
ALL_EVENTS = frozenset(WEBHOOK_EVENTS)


@dataclass
class Got:
    headers: dict[str, str]
    body: bytes
    at: datetime  # the injected clock when it arrived
    status: int  # what the receiver answered


class Receiver:
    """An HTTP receiver on 127.0.0.1. Until ``start()`` its port is bound but not listening,
    so connections are refused; then it answers ``status`` to every POST and keeps it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.status = 200
        self.delay = 0.0
        self.got: list[Got] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hooks/bounces"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/bounces", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._sock.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(Got(dict(request.headers), body, self.clock(), self.status))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="nope" if self.status >= 300 else "ok")

    @property
    def accepted(self) -> list[Got]:
        return [g for g in self.got if 200 <= g.status < 300]


@pytest.fixture
async def receiver(clock: FakeClock) -> AsyncIterator[Receiver]:
    r = Receiver(clock)
    yield r
    await r.close()


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn, min_size=1, max_size=4)
    yield s
    await s.close()


def hook(url: str, events: frozenset[str] = ALL_EVENTS, **kw: timedelta) -> WebhookConfig:
    return WebhookConfig(name="crm", url=url, events=events, secret=SECRET, **kw)


async def open_incident(db: asyncpg.Connection) -> int:
    incident_id: int = await db.fetchval(
        "INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope, "
        " source_ip, recipients, attempted)"
        " VALUES (now(), now(), '421 4.7.0 try later', 'mx.example.org', 'mx', '127.0.0.1',"
        " 40, 50) RETURNING id"
    )
    return incident_id


async def outbox(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch("SELECT * FROM webhook_outbox ORDER BY id")
    return rows


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


async def make_events(store: Store, db: asyncpg.Connection) -> None:
    """Seven events through the store's own paths: five addresses suppressed (three by hand,
    two by an import), one of them unsuppressed again, one incident opened."""
    for address in ("a@example.org", "b@example.org", "c@example.org"):
        assert await store.add_suppression(address, "asked", "manual", actor="admin")
    await store.import_suppressions(
        [("d@example.org", "list"), ("e@example.org", "list")], "admin", "old.csv"
    )
    await store.remove_suppression("a@example.org", "admin", "mistake")
    await open_incident(db)


def verified(got: Got) -> dict[str, Any]:
    """The posted document, after checking its signature, headers and body agree."""
    assert verify_signature(SECRET, got.headers[SIGNATURE_HEADER], got.body, got.at)
    assert got.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(got.body)
    assert got.headers[ID_HEADER] == str(document["id"])
    assert got.headers[EVENT_HEADER] == document["event"]
    assert document["webhook"] == "crm"
    return document


async def test_receiver_down_for_a_while_gets_every_event_once_back_each_signed(
    store, db, clock, receiver
):
    """Refused connections, then 500s, each retry spaced by the backoff (10 s, 20 s, 40 s, up to
    a fifth early): once the receiver answers 200 it has every event exactly once, signed."""
    webhook = hook(receiver.url)
    await sync_subscriptions(store, [webhook])
    await make_events(store, db)
    ids = [r["id"] for r in await outbox(db)]
    assert len(ids) == 7
    async with WebhookSender(store, [webhook], clock=clock) as sender:
        with capture_logs() as logs:
            assert await sender.run_once(clock()) == 7  # refused: the receiver is down
        failed = [e for e in logs if e["event"] == "webhook.failed"]
        assert len(failed) == 7
        assert {e["webhook"] for e in failed} == {"crm"}
        assert {e["id"] for e in failed} == set(ids)
        assert {e["attempt"] for e in failed} == {1}
        assert all("connect" in e["error"].lower() and e["next_attempt_at"] for e in failed)
        [counts] = await sender.outbox.counts()
        assert (counts.webhook, counts.pending, counts.given_up) == ("crm", 7, 0)

        for attempt, wait in enumerate((10, 20, 40), start=1):
            sent_at = clock()
            rows = await outbox(db)
            assert {r["attempts"] for r in rows} == {attempt}
            for r in rows:
                assert r["delivered_at"] is None and r["lease_until"] is None
                delay = r["next_attempt_at"] - sent_at
                assert timedelta(seconds=wait * 0.8) <= delay <= timedelta(seconds=wait)
            # Nothing is due before the earliest retry; never sleep, move the clock.
            clock.current = min(r["next_attempt_at"] for r in rows) - timedelta(seconds=1)
            assert await sender.run_once(clock()) == 0
            clock.current = max(r["next_attempt_at"] for r in rows)
            if attempt == 1:
                await receiver.start()
                receiver.status = 500
            if attempt == 3:
                receiver.status = 200
            assert await sender.run_once(clock()) == 7
        assert await sender.run_once(clock()) == 0
        assert [c.pending for c in await sender.outbox.counts()] == [0]

    assert len(receiver.got) == 7 * 3  # two rounds of 500s, then the one that counted
    documents = [verified(g) for g in receiver.got]
    accepted = [json.loads(g.body) for g in receiver.accepted]
    assert sorted(d["id"] for d in accepted) == ids  # every event, once
    assert Counter(d["event"] for d in accepted) == {
        "suppressed": 5,
        "unsuppressed": 1,
        "incident": 1,
    }
    assert {d["data"]["address"] for d in accepted if d["event"] == "suppressed"} == {
        f"{x}@example.org" for x in "abcde"
    }
    assert all(d in documents for d in accepted)
    rows = await outbox(db)
    assert all(r["delivered_at"] == clock() and r["attempts"] == 4 for r in rows)
    assert all(r["last_error"] is None for r in rows)


async def test_two_senders_never_post_the_same_row_in_one_lease(db_dsn, store, db, clock, receiver):
    """Two relays' senders (pools of their own) claiming at the same moment split the rows:
    each event is posted once, and both did part of the work."""
    webhook = hook(receiver.url, frozenset({"suppressed"}))
    await sync_subscriptions(store, [webhook])
    await store.import_suppressions(
        [(f"u{i}@example.org", "list") for i in range(40)], "admin", "big.csv"
    )
    await receiver.start()
    receiver.delay = 0.01  # posts overlap the other sender's claims
    other = await create_store(db_dsn, min_size=1, max_size=4)
    claimed: Counter[str] = Counter()
    try:
        async with (
            WebhookSender(store, [webhook], clock=clock, concurrency=6) as a,
            WebhookSender(other, [webhook], clock=clock, concurrency=6) as b,
        ):
            while True:
                now = clock()
                got_a, got_b = await asyncio.gather(a.run_once(now), b.run_once(now))
                claimed.update(a=got_a, b=got_b)
                if not got_a + got_b:
                    break
    finally:
        await other.close()
    posted = [json.loads(g.body)["id"] for g in receiver.got]
    assert len(posted) == len(set(posted)) == 40
    assert claimed["a"] > 0 and claimed["b"] > 0


async def test_a_lease_that_runs_out_is_posted_by_another_sender(store, db, clock, receiver):
    """A row leased by a sender that died is left alone while the lease holds, then posted."""
    webhook = hook(receiver.url, frozenset({"suppressed"}), timeout=timedelta(seconds=10))
    await sync_subscriptions(store, [webhook])
    await store.add_suppression("x@example.org", "asked", "manual")
    await receiver.start()
    [dead] = await Outbox(store).claim(["crm"], clock(), timedelta(seconds=40), 10)
    async with WebhookSender(store, [webhook], clock=clock) as sender:
        # Leases are judged by the database's clock: a sender whose clock ran ahead of it
        # does not take the row over while the lease lives ...
        clock.advance(minutes=20)
        assert await sender.run_once(clock()) == 0
        # ... and does once it has run out.
        await db.execute("UPDATE webhook_outbox SET lease_until = now() - interval '1 second'")
        assert await sender.run_once(clock()) == 1
    assert [json.loads(g.body)["id"] for g in receiver.accepted] == [dead.id]
    # The dead sender coming back to life cannot undo the delivery.
    assert not await Outbox(store).mark_failed(dead, clock(), "late", clock())
    [row] = await outbox(db)
    assert row["delivered_at"] is not None and row["last_error"] is None


async def test_max_age_gives_up_with_given_up_at(store, db, clock, receiver):
    """A receiver that never takes the event: retried until the webhook's max_age (the last
    try exactly then), then given up, logged and counted, and never posted again."""
    webhook = hook(receiver.url, frozenset({"suppressed"}), max_age=timedelta(minutes=5))
    await sync_subscriptions(store, [webhook])
    await store.add_suppression("x@example.org", "asked", "manual")
    await receiver.start()
    receiver.status = 503
    [row] = await outbox(db)
    deadline = row["created_at"] + timedelta(minutes=5)
    async with WebhookSender(store, [webhook], clock=clock) as sender:
        with capture_logs() as logs:
            while row["given_up_at"] is None:
                assert await sender.run_once(clock()) == 1
                [row] = await outbox(db)
                clock.current = max(clock(), row["next_attempt_at"])
            clock.advance(days=1)
            assert await sender.run_once(clock()) == 0
        counts = await sender.outbox.counts()
    assert row["given_up_at"] == deadline  # the last attempt waited for the deadline
    assert row["delivered_at"] is None
    assert row["last_error"] == "HTTP 503: nope"
    assert row["attempts"] == len(receiver.got) >= 5  # 10+20+40+80 s < 5 min < ... +160 s
    [given_up] = [e for e in logs if e["event"] == "webhook.given_up"]
    assert (given_up["webhook"], given_up["webhook_event"], given_up["id"]) == (
        "crm",
        "suppressed",
        row["id"],
    )
    assert given_up["attempts"] == row["attempts"]
    assert [(c.webhook, c.pending, c.given_up) for c in counts] == [("crm", 0, 1)]


async def test_a_webhook_removed_from_the_config_gives_up_its_waiting_events(store, db, clock):
    """Once no relay's config names a webhook, its waiting rows are given up at the next sync
    (nobody would send them); other webhooks' rows are left as they are."""
    crm = hook("http://127.0.0.1:9/crm", frozenset({"suppressed"}))
    ops = WebhookConfig("ops", "http://127.0.0.1:9/ops", frozenset({"suppressed"}), SECRET)
    await sync_subscriptions(store, [crm, ops])
    await store.add_suppression("x@example.org", "asked", "manual")
    with capture_logs() as logs:
        await sync_subscriptions(store, [ops])
    rows = {r["webhook"]: r for r in await outbox(db)}
    assert rows["crm"]["given_up_at"] is not None
    assert rows["crm"]["last_error"] == "webhook removed from the config"
    assert rows["ops"]["given_up_at"] is None
    assert [e["events"] for e in logs if e["event"] == "webhook.removed_given_up"] == [1]
    counts = await Outbox(store).counts()
    assert [(c.webhook, c.pending, c.given_up) for c in counts] == [("crm", 0, 1), ("ops", 1, 0)]


async def test_run_posts_new_events_and_stop_ends_it(store, db, clock, receiver):
    """The background loop posts what the triggers write without being told, and stops."""
    webhook = hook(receiver.url, frozenset({"incident"}))
    await sync_subscriptions(store, [webhook])
    await receiver.start()
    async with WebhookSender(store, [webhook], clock=clock, interval=0.05) as sender:
        task = asyncio.create_task(sender.run())
        await open_incident(db)

        async def posted() -> bool:
            return len(receiver.accepted) == 1

        await eventually(posted)
        await sender.stop(task)
    assert task.cancelled()
    [got] = receiver.accepted
    assert verified(got)["event"] == "incident"


async def test_purge_keeps_pending_rows(store, db, clock, receiver):
    """Purging drops rows finished before the cut-off, never one still waiting."""
    webhook = hook(receiver.url, frozenset({"suppressed"}))
    await sync_subscriptions(store, [webhook])
    await store.add_suppression("x@example.org", "asked", "manual")
    await store.add_suppression("y@example.org", "asked", "manual")
    await receiver.start()
    async with WebhookSender(store, [webhook], clock=clock, concurrency=1) as sender:
        assert await sender.run_once(clock()) == 1
        assert await sender.outbox.purge(clock()) == 0  # finished at the cut-off, not before
        clock.advance(days=8)
        assert await sender.outbox.purge(clock()) == 1
    [left] = await outbox(db)
    assert left["delivered_at"] is None


@pytest.mark.parametrize(
    ("secret", "header", "body", "age", "ok"),
    [
        (SECRET, None, b'{"id":1}', 0, True),
        (SECRET, None, b'{"id":1}', 299, True),
        (SECRET, None, b'{"id":2}', 0, False),  # body tampered with
        ("another-secret-of-16b", None, b'{"id":1}', 0, False),
        (SECRET, None, b'{"id":1}', 301, False),  # stale: a replay
        (SECRET, None, b'{"id":1}', -301, False),  # from the future
        (SECRET, "t=1700000000", b'{"id":1}', 0, False),  # no v1
        (SECRET, "v1=abc", b'{"id":1}', 0, False),  # no t
        (SECRET, "t=x,v1=abc", b'{"id":1}', 0, False),
        (SECRET, "", b'{"id":1}', 0, False),
    ],
)
def test_verify_signature(secret, header, body, age, ok):
    """Only the right secret over the exact body, sent within the tolerance, verifies."""
    sent = 1_700_000_000
    header = sign(SECRET, b'{"id":1}', sent) if header is None else header
    now = datetime.fromtimestamp(sent + age).astimezone()
    assert verify_signature(secret, header, body, now) is ok


def test_verify_signature_accepts_one_matching_v1_of_several():
    """A receiver rotating secrets may be sent two signatures; one valid one is enough."""
    body = b'{"id":1}'
    header = sign(SECRET, body, 1_700_000_000) + ",v1=" + "0" * 64
    assert verify_signature(
        SECRET, header, body, datetime.fromtimestamp(1_700_000_000).astimezone()
    )


async def test_a_running_relay_posts_bounces_suppressions_and_incidents(
    upstream, start_relay, db, clock, receiver
):
    """Wired into the relay: a hard bounce, the suppression it makes, the incident its run
    opens and the lift of that suppression all reach the receiver, signed."""
    await receiver.start()
    upstream.rcpt_default = "550 5.7.1 Service refused: message from [127.0.0.2] rejected (4711)"
    extra = f"""
[policy]
suppress_on = "any_5xx"

[incidents]
min_recipients = 3
check_every = "1h"

[[webhooks]]
name = "crm"
url = "{receiver.url}"
events = ["hard_bounce", "suppressed", "unsuppressed", "incident"]
secret = "{SECRET}"
"""
    addresses = [f"u{i}@example.org" for i in range(3)]
    async with start_relay(upstream.port, extra, source_ips='"127.0.0.2"') as relay:
        await send(relay, addresses)
        await eventually(lambda: _count(db, "SELECT count(*) FROM suppressions", 3))
        await relay.incident_watch.check()
        await eventually(lambda: _posted(receiver, 3 + 3 + 1 + 3))
    kinds = sorted(verified(g)["event"] for g in receiver.accepted)
    assert kinds == ["hard_bounce"] * 3 + ["incident"] + ["suppressed"] * 3 + ["unsuppressed"] * 3


async def _count(db: asyncpg.Connection, sql: str, n: int) -> bool:
    return bool(await db.fetchval(sql) == n)


async def _posted(receiver: Receiver, n: int) -> bool:
    return len(receiver.accepted) >= n
