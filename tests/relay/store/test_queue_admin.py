"""The queue page's statements (relay/store/queue.py, "the queue page"): filters taken
literally, the count's cap, bodies released by a purge, two administrators' batches at once,
and a read the database gives up on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from relay.store import IncomingMessage, OutcomeRecord, QueueFilter, Store, create_store
from tests.support.delivery import eventually, incoming_to

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ANY = QueueFilter()


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


def _message(n: int, *recipients: str) -> IncomingMessage:
    return incoming_to(f"Q{n}", recipients, "news.example")


async def _all(store: Store, flt: QueueFilter = ANY) -> list[int]:
    rows = await store.queue_deliveries(flt, 100)
    assert rows is not None
    return [r.id for r in rows]


async def _defer_all(store: Store, replies: dict[str, str]) -> None:
    """Every due delivery gets the reply its recipient has in ``replies``, due again later."""
    claimed = await store.claim_due_deliveries("test", T0, timedelta(minutes=5), 100)
    await store.apply_outcomes(
        T0,
        [
            OutcomeRecord(
                delivery_id=d.id,
                lease_token=d.lease_token,
                state="queued",
                event="soft_bounce",
                next_attempt_at=T0 + timedelta(hours=1),
                reply_text=replies[d.recipient],
            )
            for d in claimed
        ],
    )


async def test_reply_words_are_taken_literally_in_any_case(store):
    """ "Last reply contains" is words, not a pattern: % and _ match only themselves."""
    replies = {
        "a@x.example": "452 Quota 100% used",
        "b@x.example": "452 quota 1000 used",
        "c@x.example": "450 greylisted_try_later",
        "d@x.example": "450 greylisted, try later",
    }
    await store.accept_messages(T0, [_message(n, r) for n, r in enumerate(replies)])
    await _defer_all(store, replies)
    ids = {r.recipient: r.id for r in await store.queue_deliveries(ANY, 10) or []}
    assert await _all(store, QueueFilter(reply_contains="QUOTA 100%")) == [ids["a@x.example"]]
    assert await _all(store, QueueFilter(reply_contains="greylisted_")) == [ids["c@x.example"]]
    assert len(await _all(store, QueueFilter(reply_contains="quota"))) == 2


async def test_the_count_stops_at_its_cap(store):
    await store.accept_messages(T0, [_message(n, f"r{n}@x.example") for n in range(5)])
    assert await store.count_queue_deliveries(ANY, 100) == 5
    assert await store.count_queue_deliveries(ANY, 3) == 3
    assert await store.count_queue_deliveries(QueueFilter(state="delivered"), 3) == 0


async def test_a_purge_releases_a_body_once_no_delivery_needs_it(store, db):
    """A message to two recipients keeps its body while one of them is still queued, and
    loses it once both are purged."""
    await store.accept_messages(T0, [_message(1, "a@x.example", "b@x.example")])
    first, second = sorted(await _all(store))

    async def body_kept() -> bool:
        return bool(await db.fetchval("SELECT body IS NOT NULL FROM messages"))

    assert (await store.purge_deliveries([first], T0, "alice", "test")).done == 1
    assert await body_kept()
    assert (await store.purge_deliveries([second], T0, "alice", "test")).done == 1
    assert not await body_kept()


async def test_two_purges_at_once_cancel_each_delivery_once(store, db, db_dsn):
    """Two administrators purge the same deliveries at once, while a third holds one of
    them: each delivery is cancelled once, with one audit row, and the batch that came
    second says those changed meanwhile."""
    await store.accept_messages(T0, [_message(n, f"r{n}@x.example") for n in range(6)])
    ids = await _all(store)
    holder = await asyncpg.connect(db_dsn)
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", min(ids))
        both = asyncio.gather(
            store.purge_deliveries(ids, T0, "alice", "one"),
            store.purge_deliveries(ids, T0, "bob", "two"),
        )

        async def both_waiting() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%queue.purge%' AND pid <> pg_backend_pid()"
            )
            return bool(waiting == 2)

        await eventually(both_waiting)
        await hold.rollback()
        one, two = await both
    finally:
        await holder.close()
    assert one.done + two.done == 6
    assert {one.done, two.done} == {0, 6}
    loser = one if one.done == 0 else two
    assert loser.skipped == {"changed": 6}
    audit = await db.fetch("SELECT detail ->> 'delivery_id' AS id FROM admin_audit")
    assert sorted(int(r["id"]) for r in audit) == sorted(ids)


@pytest.mark.slow
async def test_a_read_the_database_gives_up_on_is_none(store, db):
    """A listing or a count that runs out of its time (here: it waits for a table someone
    holds) is given up by the database: None, and the connection is fine afterwards."""
    await store.accept_messages(T0, [_message(1, "a@x.example")])
    lock = db.transaction()
    await lock.start()
    await db.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
    try:
        assert await store.queue_deliveries(ANY, 10) is None
        assert await store.count_queue_deliveries(ANY, 10) is None
    finally:
        await lock.rollback()
    assert len(await _all(store)) == 1
