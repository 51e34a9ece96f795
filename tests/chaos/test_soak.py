"""A soak: thousands of messages through one relay while the upstream answers 5% 4xx, 1% 5xx
and drops the connection now and then (at RCPT, or after the DATA before its reply).

Every acknowledged message ends delivered, bounced or expired (or still queued with the
reason it waits), the database agrees with what the upstream took and refused, and the
counts add up. ``BOUNCE_RELAY_CHAOS_SOAK`` sets the number of messages.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.harness import (
    SOAK_ENV,
    Behaviour,
    ChaosUpstream,
    Client,
    RelayProcess,
    free_port,
    half_written,
    record,
    relay_config,
    wait_settled,
)
from tests.support import pg

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MESSAGES = int(os.environ.get(SOAK_ENV, "2000"))


async def test_soak_with_a_flaky_upstream(pg_server: pg.TestServer, tmp_path: Path) -> None:
    """5% 4xx, 1% 5xx, 3% disconnects upstream: nothing acknowledged goes missing, the
    upstream and the database tell the same story, and the counts add up."""
    dsn = await pg_server.create_database()
    port = free_port()
    behaviour = Behaviour(rng=random.Random(7), p_4xx=0.05, p_5xx=0.01, p_disconnect=0.03)
    try:
        async with ChaosUpstream(behaviour=behaviour) as up:
            relay = RelayProcess(
                relay_config(
                    port,
                    up.port,
                    dsn,
                    retry='schedule = ["1s"]\nmax_attempts = 4\nmax_age = "1h"',
                    delivery="concurrency = 20",
                ),
                tmp_path,
                "relay",
            )
            await relay.start()
            started = time.monotonic()
            client = Client(port)
            client.new(MESSAGES)
            while client.pending:
                await client.send_pending(clients=8)
            sent_seconds = time.monotonic() - started
            states = await wait_settled(dsn, timeout=300)
            drained_seconds = time.monotonic() - started
            await relay.stop()
        db = await asyncpg.connect(dsn)
        try:
            rows = await db.fetch(
                "SELECT m.message_id, d.state, d.attempts, d.last_reply"
                " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            )
            soft = await db.fetchval("SELECT count(*) FROM events WHERE type = 'soft_bounce'")
        finally:
            await db.close()
        broken = await half_written(dsn)
    finally:
        relay.kill()
        await pg_server.drop_database(dsn)
    by_state: dict[str, set[int]] = {}
    for r in rows:
        seq = int(r["message_id"].removeprefix("<seq-").split("@")[0])
        by_state.setdefault(r["state"], set()).add(seq)
    delivered = by_state.get("delivered", set())
    bounced = by_state.get("bounced", set())
    expired = by_state.get("expired", set())
    queued = by_state.get("queued", set())
    lost = sorted(client.acked - set(up.received) - bounced - expired - queued)
    record(
        f"Soak: {MESSAGES} messages, upstream 5% 4xx / 1% 5xx / 3% disconnects",
        "every acknowledged message ends delivered, bounced or expired (or queued with its "
        "reason); the database matches what the upstream took and refused; counts add up",
        f"{len(delivered)} delivered + {len(bounced)} bounced + {len(expired)} expired + "
        f"{len(queued)} queued = {len(rows)} of {len(client.acked)} accepted; "
        f"{soft} soft bounces retried; lost {len(lost)}, duplicated {up.duplicates()}",
        accepted=len(client.acked),
        delivered=len(delivered),
        bounced=len(bounced),
        expired=len(expired),
        queued=len(queued),
        lost=len(lost),
        duplicated=up.duplicates(),
        upstream_4xx=sum(up.deferred.values()),
        upstream_5xx=sum(up.refused.values()),
        upstream_disconnects=up.disconnects,
        send_seconds=round(sent_seconds, 1),
        drain_seconds=round(drained_seconds, 1),
    )
    assert client.acked == set(range(MESSAGES))
    assert len(rows) == MESSAGES, "one delivery per message"
    assert not lost, lost
    assert not broken, broken
    assert sum(states.values()) == MESSAGES
    assert delivered == set(up.received), "delivered in the database = taken upstream"
    assert bounced == set(up.refused), "bounced = refused with 5xx upstream"
    assert up.duplicates() == 0
    assert all(r["last_reply"] for r in rows if r["state"] in ("queued", "expired", "bounced"))
    assert up.disconnects > 0 and sum(up.deferred.values()) > 0
