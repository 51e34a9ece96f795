"""A relay paused past its lease (SIGSTOP ... SIGCONT) cannot overwrite what another relay
wrote since: every write after a delivery checks the lease token it claimed with."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.harness import (
    ChaosUpstream,
    Client,
    RelayProcess,
    free_port,
    half_written,
    record,
    relay_config,
)
from tests.support import pg

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MESSAGES = 3


async def test_paused_relay_is_fenced(pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Relay A is frozen by the upstream's first DATA (whose 250 then waits in A's socket);
    its leases run out, relay B claims the deliveries and records the upstream's 451s; A
    thaws, hears its 250s and tries to record "delivered": every such write is fenced, B's
    record stands."""
    dsn = await pg_server.create_database()
    port_a, port_b = free_port(), free_port()
    phase = ["freeze"]
    relays: list[RelayProcess] = []

    def on_data(seq: int) -> str | None:
        if phase[0] == "freeze":
            os.kill(relays[0].pid, signal.SIGSTOP)  # A sleeps with its 250 unread
            phase[0] = "frozen"
            return "250 2.0.0 OK (to the relay that is about to freeze)"
        if phase[0] == "frozen":
            return "451 4.3.0 Try again later (to the relay that took over)"
        return "250 2.0.0 OK"

    retry = 'schedule = ["1h"]\nmax_age = "1d"'  # B's soft bounces stay queued
    try:
        async with ChaosUpstream() as up:
            up.behaviour.on_data = on_data
            a = RelayProcess(
                relay_config(port_a, up.port, dsn, retry=retry, delivery="concurrency = 3"),
                tmp_path,
                "a",
            )
            b = RelayProcess(relay_config(port_b, up.port, dsn, retry=retry), tmp_path, "b")
            intake = RelayProcess(
                relay_config(port_a, up.port, dsn, delivery="enabled = false"), tmp_path, "intake"
            )
            relays += [a, b, intake]
            # Queued first (no delivery), so that A claims them all in one go.
            await intake.start()
            client = Client(port_a)
            client.new(MESSAGES)
            await client.send_pending()
            await intake.stop()
            assert client.acked == set(range(MESSAGES))
            await a.start()
            async with asyncio.timeout(30):
                while phase[0] == "freeze":
                    await asyncio.sleep(0.05)
            await b.start()  # claims once A's 2 s leases have run out
            db = await asyncpg.connect(dsn)
            try:
                async with asyncio.timeout(30):
                    while await _count(db, "soft_bounce") < MESSAGES:
                        await asyncio.sleep(0.1)
                before = await _deliveries(db)
                phase[0] = "thawed"
                a.signal(signal.SIGCONT)
                async with asyncio.timeout(30):
                    while _fenced(a) < MESSAGES:
                        await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # anything else A would still write
                after = await _deliveries(db)
                delivered_events = await _count(db, "delivered")
            finally:
                await db.close()
            await a.stop()
            await b.stop()
        broken = await half_written(dsn)
    finally:
        for relay in relays:
            relay.kill()
        await pg_server.drop_database(dsn)
    overwritten = sum(1 for x, y in zip(before, after, strict=True) if x != y)
    record(
        "Relay paused past its lease (SIGSTOP, another relay takes over, SIGCONT)",
        "the paused relay's late writes are refused (lease token); the state the other "
        "relay wrote stays; the upstream may have the message twice (at-least-once)",
        f"{_fenced(a)} late writes fenced, {overwritten} overwritten, "
        f"{delivered_events} delivered events",
        accepted=len(client.acked),
        delivered=len(up.received),
        lost=0,
        duplicated=up.duplicates(),
        fenced=_fenced(a),
        overwritten=overwritten,
    )
    assert before == after
    assert all(state == "queued" and code == 451 for _, state, code, _ in after), after
    assert delivered_events == 0
    assert not broken, broken


async def _count(db: asyncpg.Connection, event: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE type = $1", event))


async def _deliveries(db: asyncpg.Connection) -> list[tuple[int, str, int, int]]:
    rows = await db.fetch("SELECT id, state, last_code, attempts FROM deliveries ORDER BY id")
    return [(r["id"], r["state"], r["last_code"], r["attempts"]) for r in rows]


def _fenced(relay: RelayProcess) -> int:
    """Deliveries ``relay`` logged as fenced (``delivery.fenced``)."""
    total = 0
    for line in relay.log_path.read_text(errors="replace").splitlines():
        if '"delivery.fenced"' in line:
            total += int(json.loads(line)["deliveries"])
    return total
