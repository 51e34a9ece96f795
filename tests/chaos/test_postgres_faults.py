"""PostgreSQL goes away under load: restarted with ``pg_ctl restart -m immediate`` (a crash
as far as the relay can tell), or its connections terminated. The relay answers 451 while
it cannot commit, never 5xx and never 250-then-lost, recovers without a restart, and loses
nothing it acknowledged.

The server is a private one (pgserver's binaries, a Unix socket in a temporary directory),
never the machine's: restarting that would hurt everybody else using it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

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
    stored_rows,
    wait_settled,
)
from tests.support.pg import with_database

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

CLIENTS = 4


class PrivatePostgres:
    """A PostgreSQL server of this module's own, started from the pgserver wheel."""

    def __init__(self, root: Path) -> None:
        from pgserver.postgres_server import get_server

        self.server: Any = get_server(root / "pgdata", cleanup_mode="stop")
        self.dsn = str(self.server.get_uri())
        self._count = 0

    def restart_immediate(self) -> None:
        """``pg_ctl restart -m immediate``: no checkpoint, every backend killed, WAL replayed."""
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(
            ["-w", "-m", "immediate", "-l", str(self.server.log), "restart"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=120,
        )

    def stop(self) -> None:
        """Stop it. pgserver's own cleanup would not: it checks the postmaster it started,
        which the restart replaced."""
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.server.pgdata,
                user=self.server.system_user,
                timeout=120,
            )
        self.server.cleanup()

    async def create_database(self) -> str:
        self._count += 1
        name = f"chaos_{self._count}"
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return with_database(self.dsn, name)


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(tmp_path_factory.mktemp("private-pg"))
    yield server
    server.stop()


async def _under_load(
    private_pg: PrivatePostgres, tmp_path: Path, fault: Callable[[str], Awaitable[None]]
) -> dict[str, Any]:
    """Clients send all along while ``fault(dsn)`` runs; then they send again what was not
    acknowledged, the queue drains, and the numbers come back."""
    dsn = await private_pg.create_database()
    port = free_port()
    timeline: list[tuple[float, str]] = []
    async with ChaosUpstream() as up:
        relay = RelayProcess(
            relay_config(port, up.port, dsn, log_level="info", lease="10s"), tmp_path, "relay"
        )
        await relay.start()  # migrates the new database
        pid = relay.pid
        client = Client(port)
        done = asyncio.Event()

        async def sender() -> None:
            while not done.is_set():
                client.new(1)
                seq = client.pending.pop()
                kind = await client.send_one(seq)
                timeline.append((time.monotonic(), kind))
                if kind != "2":
                    client.pending.append(seq)
                    await asyncio.sleep(0.05)

        senders = [asyncio.create_task(sender()) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(1.0)
            fault_started = time.monotonic()
            await fault(dsn)
            fault_ended = time.monotonic()
            await asyncio.sleep(2.0)
        finally:
            done.set()
            await asyncio.gather(*senders)
        assert relay.alive() and relay.pid == pid, "the relay needed a restart"
        while client.pending:  # an MTA sends what it was not told 250 for again
            await client.send_pending(clients=CLIENTS)
        states = await wait_settled(dsn)
        await relay.stop()
    rows = await stored_rows(dsn)
    broken = await half_written(dsn)
    acknowledged = relay.acknowledged()
    during = Counter(k for t, k in timeline if fault_started <= t <= fault_ended + 1.0)
    return {
        "client": client,
        "up": up,
        "rows": rows,
        "states": states,
        "broken": broken,
        "replies": Counter(k for _, k in timeline),
        "during": during,
        "acked_after": sum(1 for t, k in timeline if t > fault_ended and k == "2"),
        "unacknowledged_rows": sum(q not in acknowledged for ids in rows.values() for q in ids),
        "twice": [s for s, ids in rows.items() if sum(q in acknowledged for q in ids) > 1],
    }


def _check(case: str, expected: str, r: dict[str, Any], **more: Any) -> None:
    client, up, rows = r["client"], r["up"], r["rows"]
    lost = sorted(client.acked - set(up.received))
    duplicated = up.duplicates()
    # Sent again after the upstream's 250 because the outcome could not be written.
    resent = sum(max(0, n - len(rows.get(seq, ()))) for seq, n in up.received.items())
    replies = r["replies"]
    record(
        case,
        expected,
        f"replies under load: {replies['2']} x 250, {replies['4']} x 451, "
        f"{replies['5']} x 5xx, {replies['lost']} dropped; recovered without restart "
        f"({r['acked_after']} x 250 after); lost {len(lost)}, duplicated {duplicated}",
        accepted=len(client.acked),
        delivered=len(up.received),
        lost=len(lost),
        duplicated=duplicated,
        replies_451=replies["4"],
        replies_5xx=replies["5"],
        committed_without_250=r["unacknowledged_rows"],
        resent_after_250=resent,
        **more,
    )
    assert replies["5"] == 0, "a 5xx tells the client to drop the message"
    assert replies["4"] > 0, "the fault was never seen: the test proves nothing"
    assert r["acked_after"] > 0
    assert not lost, lost
    assert not r["broken"], r["broken"]
    assert not r["twice"], f"acknowledged twice: {r['twice']}"
    # Stored twice only when a commit landed and its 250 did not (the client sent it again).
    assert duplicated - resent <= r["unacknowledged_rows"]
    # The outcome of a delivery is written again while the database is away (up to half
    # the 10 s lease), so an upstream's 250 is not followed by a second copy.
    assert resent == 0
    assert r["states"] == {"delivered": sum(len(ids) for ids in rows.values())}


async def test_postgres_restart_immediate(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    """``pg_ctl restart -m immediate`` under load: 451s while it is down, then 250s again
    from the same relay process; nothing acknowledged is lost."""

    async def restart(dsn: str) -> None:
        await asyncio.to_thread(private_pg.restart_immediate)

    r = await _under_load(private_pg, tmp_path, restart)
    _check(
        "PostgreSQL restarted (`pg_ctl restart -m immediate`) under load",
        "451 while it cannot commit (never 5xx, never 250-then-lost); the same relay process "
        "recovers; a commit whose reply was lost may come again from the client (duplicate)",
        r,
    )


async def test_backends_terminated(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    """``pg_terminate_backend`` of every relay connection, five times under load."""
    terminated = [0]

    async def terminate(dsn: str) -> None:
        admin = await asyncpg.connect(dsn)
        try:
            for _ in range(5):
                async with admin.transaction():
                    # Commits wait on this lock, so the cut always meets work in flight (a
                    # relay quick enough is otherwise seldom caught mid-statement).
                    await admin.execute("LOCK TABLE messages IN SHARE MODE")
                    await asyncio.sleep(0.2)
                    terminated[0] += await admin.fetchval(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid)"
                        " FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()) t"
                    )
                await asyncio.sleep(0.4)
        finally:
            await admin.close()

    r = await _under_load(private_pg, tmp_path, terminate)
    _check(
        "PostgreSQL connections terminated (`pg_terminate_backend`, 5 times) under load",
        "451 for the sessions whose commit or check was cut; the pool reconnects; nothing "
        "acknowledged is lost",
        r,
        terminated=terminated[0],
    )
