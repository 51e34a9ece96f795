"""A claim reads what it takes, not every delivery due at the same instant
(claim_due_deliveries in queue.sql, the due index of migration 0023).

Thousands of deliveries become due at one timestamp when a guardrail's canary passes or a
send is released (wake_held). The claim takes them in (next_attempt_at, message_id) order;
an index on next_attempt_at alone made every claim read and sort the whole group.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from relay.store import Store, create_store
from relay.store.base import QUERIES
from tests.support.delivery import incoming_to

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DUE_TOGETHER = 4000
BATCH = 10


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
