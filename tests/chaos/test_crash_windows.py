"""SIGKILL at chosen points of the receive and delivery paths, many times over.

Receive path: the relay (intake only) is armed with ``BOUNCE_RELAY_CRASH_AT=point:k`` and
fed by three clients until it dies; a client sends again whatever it was not told 250
for, as an MTA does. A last relay, unarmed and delivering, takes the rest and drains the
queue. Delivery path: the messages are queued first, then relays delivering one
transaction at a time are killed mid-DATA (by the upstream, when the DATA command
arrives) or after the upstream's 250 before the outcome is written.

After every run: nothing that got 250 is missing from the database or from the upstream,
nothing is half-written, and duplicates appear only in the at-least-once windows
(``commit.after_commit``: committed, the 250 never sent, the client sends it again;
``delivery.after_upstream_250``: delivered, not recorded, sent again).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest

from tests.chaos.harness import (
    ChaosUpstream,
    Client,
    RelayProcess,
    free_port,
    half_written,
    iterations,
    record,
    relay_config,
    stored_rows,
    stored_seqs,
    wait_settled,
)
from tests.support import pg

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

ITERATIONS = iterations(8)

# point -> (what the contract says, whether duplicates may come of it)
INTAKE_WINDOWS = {
    "intake.after_data": (
        "no 250 was sent: nothing stored, the client sends it again; no loss; a duplicate "
        "only where another session's batch had committed and not yet answered",
        False,
    ),
    "commit.before_commit": (
        "rolled back with the connection, no 250: the client sends it again; no loss; a "
        "duplicate only where another session's batch had committed and not yet answered",
        False,
    ),
    "commit.after_commit": (
        "committed but no 250: the client sends it again, so a duplicate per message of "
        "the batch (SMTP's own window, RFC 1047); no loss",
        True,
    ),
}

DELIVERY_WINDOWS = {
    "delivery.mid_data": (
        "the upstream never said 250: the lease runs out, sent again once; no loss, no duplicate",
        False,
    ),
    "delivery.after_upstream_250": (
        "delivered but not recorded: the lease runs out and it is sent again, "
        "at most one duplicate per crash (at-least-once); no loss",
        True,
    ),
}


async def _drain(client: Client, relay: RelayProcess) -> None:
    while client.pending:
        await client.send_pending(clients=3)
        if client.pending:
            await asyncio.sleep(0.2)
        assert relay.alive(), relay.log_tail()


@pytest.mark.parametrize("point", list(INTAKE_WINDOWS))
async def test_receive_path_crash(point: str, pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Killed between DATA and 250, over and over: no acknowledged message is lost, none is
    half-written, duplicates only when the commit landed and the 250 did not."""
    expected, may_duplicate = INTAKE_WINDOWS[point]
    rng = random.Random(point)
    dsn = await pg_server.create_database()
    port = free_port()
    try:
        async with ChaosUpstream() as up:
            armed = RelayProcess(
                relay_config(port, up.port, dsn, delivery="enabled = false", log_level="info"),
                tmp_path,
                "armed",
            )
            final = RelayProcess(
                relay_config(port, up.port, dsn, log_level="info"), tmp_path, "final"
            )
            client = Client(port)
            for n in range(ITERATIONS):
                await armed.start(crash_at=f"{point}:{rng.randint(1, 6)}")
                while armed.alive():
                    if len(client.pending) < 6:
                        client.new(6)
                    await client.send_pending(clients=3, stop=lambda: not armed.alive())
                assert await armed.wait_dead() == -signal.SIGKILL
                assert armed.crashes_at(point) == n + 1, armed.log_tail()
            await final.start()
            await _drain(client, final)
            states = await wait_settled(dsn)
            await final.stop()
        rows = await stored_rows(dsn)
        broken = await half_written(dsn)
    finally:
        armed.kill()
        final.kill()
        await pg_server.drop_database(dsn)
    stored = {seq: len(ids) for seq, ids in rows.items()}
    lost = sorted(client.acked - set(up.received))
    missing_rows = sorted(client.acked - set(stored))
    stored_dups = sum(n - 1 for n in stored.values())
    # A row whose 250 was never written: committed in the after_commit window (of this
    # point, or of a concurrent batch when the crash hit elsewhere).
    acknowledged = client.acknowledged
    unacknowledged = {q for ids in rows.values() for q in ids if q not in acknowledged}
    # Every copy of a message but one is such a row: none was acknowledged twice.
    twice = [s for s, ids in rows.items() if sum(q in acknowledged for q in ids) > 1]
    record(
        f"SIGKILL at {point}",
        expected,
        _observed(lost, up.duplicates(), broken)
        + f"; {len(unacknowledged)} rows committed without their 250, {len(twice)} "
        "messages acknowledged twice",
        iterations=ITERATIONS,
        accepted=len(client.acked),
        delivered=len(up.received),
        lost=len(lost),
        duplicated=up.duplicates(),
        sends=sum(client.replies.values()),
        unacknowledged_sends=sum(n for k, n in client.replies.items() if k != "2"),
        committed_without_250=len(unacknowledged),
    )
    assert not lost and not missing_rows, (lost, missing_rows)
    assert not broken, broken
    assert states == {"delivered": sum(stored.values())}, states
    assert set(stored) == set(range(client.next_seq)), "every message ends up acknowledged"
    # The unarmed relay delivers each stored row once: upstream duplicates are stored ones.
    assert up.duplicates() == stored_dups
    assert not twice, f"acknowledged twice: {twice}"
    assert stored_dups <= len(unacknowledged)
    if not may_duplicate:
        # Here only a concurrent batch's commit can land without its 250.
        assert len(unacknowledged) <= 3 * ITERATIONS


@pytest.mark.parametrize("point", list(DELIVERY_WINDOWS))
async def test_delivery_path_crash(point: str, pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Killed mid-DATA upstream or after the upstream's 250: every message is delivered,
    a duplicate only for a transaction the upstream had acknowledged (one per crash)."""
    expected, may_duplicate = DELIVERY_WINDOWS[point]
    rng = random.Random(point)
    messages = ITERATIONS * 4
    dsn = await pg_server.create_database()
    port = free_port()
    holder: list[RelayProcess] = []
    countdown = [0]

    def kill_at_data() -> bool:
        """The upstream's hook at each DATA command: SIGKILL the relay on the chosen one."""
        countdown[0] -= 1
        if countdown[0] != 0:
            return False
        os.kill(holder[0].pid, signal.SIGKILL)
        return True

    try:
        async with ChaosUpstream() as up:
            intake = RelayProcess(
                relay_config(port, up.port, dsn, delivery="enabled = false"), tmp_path, "intake"
            )
            relay = RelayProcess(
                relay_config(port, up.port, dsn, delivery="concurrency = 1"), tmp_path, "relay"
            )
            holder.append(relay)
            client = Client(port)
            client.new(messages)
            await intake.start()
            await _drain(client, intake)
            await intake.stop()
            if point == "delivery.mid_data":
                up.behaviour.at_data_command = kill_at_data
            crashes = 0
            for _ in range(ITERATIONS):
                k = rng.randint(1, 3)
                countdown[0] = k
                await relay.start(crash_at=f"{point}:{k}" if point != "delivery.mid_data" else None)
                try:
                    async with asyncio.timeout(60):
                        while relay.alive():
                            await asyncio.sleep(0.05)
                except TimeoutError:
                    break  # too little left to reach the k-th transaction
                assert await relay.wait_dead() == -signal.SIGKILL
                crashes += 1
            up.behaviour.at_data_command = None
            if relay.alive():
                await relay.stop()
            await relay.start()
            states = await wait_settled(dsn)
            await relay.stop()
        stored = await stored_seqs(dsn)
        broken = await half_written(dsn)
    finally:
        for proc in (intake, relay):
            proc.kill()
        await pg_server.drop_database(dsn)
    lost = sorted(client.acked - set(up.received))
    record(
        f"SIGKILL at {point}",
        expected,
        _observed(lost, up.duplicates(), broken),
        iterations=crashes,
        accepted=len(client.acked),
        delivered=len(up.received),
        lost=len(lost),
        duplicated=up.duplicates(),
        cut_at_data=up.cut_at_data,
    )
    assert crashes >= ITERATIONS // 2, "the relay was killed too few times to mean much"
    if point != "delivery.mid_data":
        assert relay.crashes_at(point) == crashes
    else:
        assert up.cut_at_data == crashes
    assert len(client.acked) == messages
    assert not lost, lost
    assert not broken, broken
    assert states == {"delivered": messages}, states
    assert all(n == 1 for n in stored.values())
    if may_duplicate:
        assert up.duplicates() <= crashes
    else:
        assert up.duplicates() == 0


def _observed(lost: list[int], duplicates: int, broken: dict[str, int]) -> str:
    parts = [f"lost {len(lost)}", f"duplicated {duplicates}"]
    parts.append("half-written rows: " + ", ".join(broken) if broken else "no half-written rows")
    return "; ".join(parts)
