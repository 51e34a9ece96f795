"""A claim reads what it takes, not every delivery due at the same instant
(claim_due_deliveries in queue.sql, the due index of migration 0023).

Thousands of deliveries become due at one timestamp when a guardrail's canary passes or a
send is released (wake_held). The claim takes them in (next_attempt_at, message_id) order;
an index on next_attempt_at alone made every claim read and sort the whole group.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import relay.store
from relay.store import Store, create_store
from relay.store.base import QUERIES
from tests.support.delivery import incoming_to

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DUE_TOGETHER = 4000
BATCH = 10
MIGRATIONS = Path(relay.store.__file__).parent / "migrations"


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    store = await create_store(db_dsn, min_size=1, max_size=2)
    yield store
    await store.close()


def _nodes(plan: dict[str, Any], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found.append(plan)
    for child in plan.get("Plans", []):
        _nodes(child, found)
    return found


async def test_a_claim_reads_its_batch_not_everything_due_at_that_instant(
    store: Store, db: asyncpg.Connection
):
    for start in range(0, DUE_TOGETHER, 500):
        batch = [incoming_to(f"Q{n:06d}", [f"u{n}@example.org"]) for n in range(start, start + 500)]
        await store.accept_messages(T0, batch)
    await db.execute("ANALYZE deliveries")
    raw = await db.fetchval(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES['claim_due_deliveries']}",
        "relay-test",
        T0 + timedelta(seconds=1),
        timedelta(minutes=5),
        BATCH,
    )
    claimed = await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'inflight'")
    first = await db.fetch(
        "SELECT m.queue_id FROM deliveries d JOIN messages m ON m.id = d.message_id"
        " WHERE d.state = 'inflight' ORDER BY d.message_id"
    )
    # The plan of the claim's "queued" step: where it reads the due deliveries.
    [queued] = [
        n for n in _nodes(json.loads(raw)[0]["Plan"], []) if n.get("Subplan Name") == "CTE queued"
    ]
    nodes = _nodes(queued, [])
    queued_scans = [n for n in nodes if n.get("Relation Name") == "deliveries"]
    assert claimed == BATCH
    # The oldest messages, in order: the claim's order is unchanged.
    assert [r["queue_id"] for r in first] == [f"Q{n:06d}" for n in range(BATCH)]
    assert queued_scans, "the claim reads the queued deliveries"
    assert not any(n["Node Type"] == "Sort" for n in nodes), "no sort of the due group"
    read = sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in queued_scans)
    assert read <= 5 * BATCH, f"read {read} queued rows for a batch of {BATCH}"


async def test_the_migration_never_deadlocks_with_a_running_claim(
    store: Store, db: asyncpg.Connection, db_dsn: str
):
    """A rolling upgrade: another relay claims (rows locked FOR UPDATE, then updated, in one
    statement) while this one runs migration 0023. The migration waits for the claim and
    the claim finishes; built before the old index was dropped, the new index's lock and
    the claim's waited on each other until PostgreSQL killed one."""
    await store.accept_messages(T0, [incoming_to("Q1", ["a@example.org"])])
    # The schema as it was before 0023.
    await db.execute(
        "DROP INDEX deliveries_due_order;"
        " CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'queued'"
    )
    migration = (MIGRATIONS / "0023_deliveries_due_order.sql").read_text(encoding="utf-8")
    claimer = await asyncpg.connect(db_dsn)
    upgrader = await asyncpg.connect(db_dsn)
    try:
        claim = claimer.transaction()
        await claim.start()
        [row] = await claimer.fetch(
            "SELECT id FROM deliveries WHERE state = 'queued' FOR UPDATE"
        )  # the claim's first step: ROW SHARE on the table
        upgrading = asyncio.create_task(_run_in_transaction(upgrader, migration))
        async with asyncio.timeout(10):
            while not await _waiting(db, upgrader):
                await asyncio.sleep(0.05)
        async with asyncio.timeout(10):  # its second step: ROW EXCLUSIVE
            await claimer.execute(
                "UPDATE deliveries SET state = 'inflight' WHERE id = $1", row["id"]
            )
        await claim.commit()
        async with asyncio.timeout(10):
            await upgrading
    finally:
        await claimer.close()
        await upgrader.close()
    assert await db.fetchval("SELECT state FROM deliveries WHERE id = $1", row["id"]) == "inflight"
    indexes = await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'deliveries'")
    names = {r["indexname"] for r in indexes}
    assert "deliveries_due_order" in names and "deliveries_due" not in names


async def _run_in_transaction(conn: asyncpg.Connection, sql: str) -> None:
    async with conn.transaction():
        await conn.execute(sql)


async def _waiting(db: asyncpg.Connection, conn: asyncpg.Connection) -> bool:
    """Whether ``conn``'s backend waits for a lock."""
    pid = conn.get_server_pid()
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)", pid
        )
    )
