"""The upstream is down for a long time with a large queue, then comes back.

Messages are queued straight through the store (as intake would, in batches); the relay
delivers to a port where nothing listens, so every attempt fails and waits for the
next. Its memory is sampled all along: the worker claims work in batches, so what it
holds does not grow with the queue. The retry rule has a random backoff: deferred
deliveries come back spread over the interval, not all in the same second. Then the
upstream starts on that port and the backlog drains on the retry schedule alone.
``BOUNCE_RELAY_CHAOS_BACKLOG`` sets the number of messages.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from relay.store import IncomingMessage, Recipient, create_store
from tests.chaos.harness import (
    ChaosUpstream,
    RelayProcess,
    body,
    free_port,
    half_written,
    record,
    relay_config,
    rss_mb,
    wait_settled,
)
from tests.support import pg

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MESSAGES = int(os.environ.get("BOUNCE_RELAY_CHAOS_BACKLOG", "3000"))
INTERVAL = 4.0  # seconds; random backoff: each delay in [4 s, 8 s)


async def _queue(dsn: str, count: int) -> None:
    store = await create_store(dsn, min_size=1, max_size=2)
    try:
        for low in range(0, count, 500):
            batch = [
                IncomingMessage(
                    queue_id=secrets.token_hex(8).upper(),
                    envelope_sender="s@example.com",
                    recipients=(
                        Recipient(f"r{n}@example.org", f"r{n}@example.org", "example.org"),
                    ),
                    body=body(n, (b"x" * 76 + b"\r\n") * 26),
                    from_domain="example.com",
                    message_id=f"<seq-{n}@chaos.test>",
                    campaign="backlog",
                    client_address="127.0.0.1",
                    session_id="chaos",
                    smtputf8=False,
                )
                for n in range(low, min(count, low + 500))
            ]
            await store.accept_messages(datetime.now(UTC), batch)
    finally:
        await store.close()


async def test_upstream_down_with_a_backlog(pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Memory stays flat while thousands of deliveries fail round after round, their
    retries are spread by jitter, and the backlog drains by itself once the upstream is back."""
    dsn = await pg_server.create_database()
    # The upstream is down: its port is held bound but not listening (every connect is
    # refused at once) until it comes back, so nothing else on the machine can take the
    # port and answer slowly in its place meanwhile.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    upstream_port, port = down.getsockname()[1], free_port()
    relay = RelayProcess(
        relay_config(
            port,
            upstream_port,
            dsn,
            retry=f'interval = "{INTERVAL:.0f}s"\nbackoff = "random"\nmax_age = "1h"',
            delivery="concurrency = 50",
        ),
        tmp_path,
        "relay",
    )
    samples: list[float] = []
    try:
        await relay.start()
        await asyncio.sleep(1.0)
        baseline = rss_mb(relay.pid)
        db = await asyncpg.connect(dsn)
        try:

            async def sample_until(sql: str, timeout: float = 120) -> None:
                deadline = time.monotonic() + timeout
                while not await db.fetchval(sql):
                    samples.append(rss_mb(relay.pid))
                    assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
                    await asyncio.sleep(0.2)

            await _queue(dsn, MESSAGES)
            # Round 1: every delivery failed once.
            await sample_until("SELECT count(*) = 0 FROM deliveries WHERE attempts = 0")
            after_round_1 = rss_mb(relay.pid)
            delays = await db.fetch(
                "SELECT extract(epoch FROM next_attempt_at - updated_at) AS delay,"
                " extract(epoch FROM updated_at) AS failed_at"
                " FROM deliveries WHERE attempts = 1 AND state = 'queued'"
            )
            # Round 3: the whole queue went round twice more with the upstream still down.
            await sample_until("SELECT count(*) = 0 FROM deliveries WHERE attempts < 3", 180)
            after_round_3 = rss_mb(relay.pid)
            down.close()
            async with ChaosUpstream(port=upstream_port) as up:
                back = time.monotonic()
                states = await wait_settled(dsn, timeout=180)
                drain_seconds = time.monotonic() - back
                await relay.stop()
            attempts = await db.fetchval("SELECT sum(attempts) FROM deliveries")
        finally:
            await db.close()
        broken = await half_written(dsn)
    finally:
        down.close()
        relay.kill()
        await pg_server.drop_database(dsn)
    delay_values = [float(r["delay"]) for r in delays]
    failed_at = [float(r["failed_at"]) for r in delays]
    spread = max(delay_values) - min(delay_values)
    peak = max(samples)
    lost = MESSAGES - len(up.received)
    record(
        f"Upstream down with a backlog of {MESSAGES} messages, then back",
        "memory flat while the queue fails round after round (work fetched in batches); "
        "retries spread by jitter; the backlog drains on its own when the upstream returns",
        f"RSS {baseline:.0f} MB idle, {after_round_1:.0f} MB after round 1, "
        f"{after_round_3:.0f} MB after round 3, peak {peak:.0f} MB; retry delays "
        f"{min(delay_values):.1f}-{max(delay_values):.1f} s (failures within "
        f"{max(failed_at) - min(failed_at):.1f} s); drained in {drain_seconds:.1f} s; "
        f"lost {lost}, duplicated {up.duplicates()}",
        accepted=MESSAGES,
        delivered=len(up.received),
        lost=lost,
        duplicated=up.duplicates(),
        attempts=int(attempts),
        rss_idle_mb=round(baseline, 1),
        rss_round_1_mb=round(after_round_1, 1),
        rss_round_3_mb=round(after_round_3, 1),
        rss_peak_mb=round(peak, 1),
        retry_delay_spread_s=round(spread, 2),
        drain_seconds=round(drain_seconds, 1),
    )
    assert states == {"delivered": MESSAGES}, states
    assert lost == 0 and up.duplicates() == 0
    assert not broken, broken
    # Flat: two more rounds over the whole queue cost (next to) nothing more.
    assert after_round_3 - after_round_1 < 20, (after_round_1, after_round_3)
    assert peak - baseline < 100, (baseline, peak)
    # Jitter: delays fill [interval, 2 x interval), not one value.
    assert min(delay_values) >= INTERVAL - 0.5 and max(delay_values) < 2 * INTERVAL + 0.5
    assert spread > INTERVAL / 2, spread
