"""Shaping shared by the cluster, end to end (relay/delivery/shaping.py): real relays on a real
database deliver from one source IP to a ``LimitingUpstream`` (tests/support/limits.py) on
loopback, which counts, and may limit, the connections and messages of each source IP.

The relays run on the test's clock. While a test waits (``_until``) it moves that clock on a
little at each look, as time passing would, so that what a relay handed back for a moment
(``now + sync_every``) comes due; a test that waits for retries also jumps it to the next
due delivery when nothing is in flight. Nothing sleeps for timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import asyncpg

from policies.shaping import Key
from relay.delivery.destinations import Destination
from relay.delivery.upstream import shaping_key
from relay.ops.app import Relay
from tests.support.delivery import eventually, incoming
from tests.support.limits import CONNECTION_REFUSAL, RATE_REFUSAL, LimitingUpstream
from tests.support.scripted import FakeClock

SOURCE = "127.0.0.2"  # every relay of a test sends from it: one shaping key
SOURCES = f'"{SOURCE}"'
# The clock moves this much at each look while a test waits: about real time (a look takes
# 20 ms or more), so each relay's use stays fresh to the others (3 s of the clock).
STEP = timedelta(milliseconds=50)


def _extra(
    shaping: str, *, per_destination: int = 10, per_connection: int = 100, more: str = ""
) -> str:
    """``[delivery]`` keys and a ``[shaping]`` with rounds every 100 ms and a learned limit
    that does not grow while a test runs (grow_every an hour); ``more`` TOML after them."""
    return f"""
    connections_per_destination = {per_destination}
    messages_per_connection = {per_connection}

    [shaping]
    sync_every = "100ms"
    calm = "10s"
    grow_every = "1h"
    {shaping}

    [guardrails]
    enabled = false  # no canary holding mail back: these tests are about shaping

    {more}
    """


def _key(up: LimitingUpstream) -> Key:
    """The shaping key of the route's one host (static route: delivery_config)."""
    return shaping_key(Destination("127.0.0.1", up.port), SOURCE)


async def _seed(relay: Relay, clock: FakeClock, n: int, prefix: str) -> list[str]:
    """``n`` one-recipient messages in the queue, as the intake stores them."""
    addresses = [f"{prefix}{i}@example.net" for i in range(n)]
    messages = [incoming(f"Q{prefix}{i:05d}", a) for i, a in enumerate(addresses)]
    await relay.store.accept_messages(clock(), messages)
    return addresses


def _wake(*relays: Relay) -> None:
    for relay in relays:
        assert relay.worker is not None
        relay.worker.wake()


async def _until(
    check: Callable[[], Awaitable[bool]],
    db: asyncpg.Connection,
    clock: FakeClock,
    relays: Sequence[Relay],
    *,
    what: str,
    timeout: float = 30.0,
    jump: bool = False,
) -> None:
    """Poll ``check`` (``what`` it waits for, as the failure names it); at each look the
    relays' clock moves on by ``STEP`` and their workers wake. With ``jump``, when nothing is
    in flight the clock goes straight to the next due delivery (a retry a minute on): for one
    relay only, whose use of a key no other relay reads."""

    async def moved() -> bool:
        if await check():
            return True
        due = None
        if jump:
            due = await db.fetchval(
                "SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued' "
                "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE state = 'inflight')"
            )
        clock.current = max(clock.current + STEP, due or clock.current)
        _wake(*relays)
        return False

    try:
        await eventually(moved, timeout)
    except AssertionError:
        raise AssertionError(f"{what}: not so after {timeout:g} s") from None


def _left(db: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    """Whether every delivery is done (none queued or in flight)."""

    async def check() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'inflight')"
        )

    return check


async def _states(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def _delivered_by(relay: Relay) -> float:
    """Deliveries this relay process recorded as delivered (its own metrics)."""
    return sum(
        sample.value
        for metric in relay.metrics.deliveries.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("outcome") == "delivered"
    )


def _pooled(relay: Relay, key: Key) -> int:
    """The relay's idle connections of ``key``, kept for reuse."""
    assert relay.worker is not None
    idle = relay.worker.upstream._idle.values()
    return sum(1 for conns in idle for conn in conns if conn.key == key)


def _open(relay: Relay, key: Key) -> int:
    assert relay.worker is not None
    return relay.worker.upstream.open_connections(key)


def _accounted(
    relays: Sequence[Relay], up: LimitingUpstream, key: Key
) -> Callable[[], Awaitable[bool]]:
    """Once nothing is in flight: the relays' count of open connections is their idle pool,
    and what the upstream sees open (closing ones gone)."""

    async def check() -> bool:
        counted = sum(_open(r, key) for r in relays)
        return counted == sum(_pooled(r, key) for r in relays) == up.open[SOURCE]

    return check


async def test_two_relays_together_keep_to_the_shared_connection_limit(start_relay, db, clock):
    """Two relay processes on one database, one source IP, one slow upstream: with
    ``[shaping] connections = 4`` the upstream never sees more than 4 connections from that
    IP at once, though each relay alone would open 10 (test_disabled_... shows it), both
    take part, and every message is delivered once."""
    extra = _extra("connections = 4", per_destination=10)
    async with LimitingUpstream(data_delay=0.01) as up:
        key = _key(up)
        async with (
            start_relay(up.port, extra, source_ips=SOURCES) as one,
            start_relay(up.port, extra, source_ips=SOURCES) as two,
        ):
            addresses = await _seed(one, clock, 240, "a")
            _wake(one, two)
            await _until(_left(db), db, clock, [one, two], what="all delivered", timeout=40)
            sharing = await db.fetchval("SELECT count(DISTINCT owner) FROM shaping_usage")
            await eventually(_accounted([one, two], up, key))
            by_one, by_two = _delivered_by(one), _delivered_by(two)
        assert _open(one, key) == _open(two, key) == 0
        await eventually(lambda: _none_open(up))  # both relays closed theirs on the way out
    assert up.peak[SOURCE] <= 4, up.peak
    assert up.peak[SOURCE] >= 2, up.peak  # it was busy: more than one connection at once
    assert sharing == 2
    assert by_one > 0 and by_two > 0 and by_one + by_two == 240
    assert sorted(r for m in up.received for r in m.recipients) == sorted(addresses)
    assert await _states(db) == {"delivered": 240}
    assert not up.refused_connections


async def test_a_refused_connection_lowers_the_shared_limit_for_good(start_relay, db, clock):
    """An upstream that greets a fourth connection from an IP with ``421 4.7.0 Too many
    connections``: the key's limit drops to at most 3 (the relay had at most 3 open), the
    change and the reply are recorded, the refused recipients are retried and delivered
    (nothing suppressed or bounced), and a relay started afterwards on the database holds
    to the learned limit from its first connection."""
    extra = _extra("connections = 10", per_destination=10)
    async with LimitingUpstream(max_connections=3) as up:
        key = _key(up)
        async with start_relay(up.port, extra, source_ips=SOURCES) as relay:
            addresses = await _seed(relay, clock, 60, "r")
            _wake(relay)
            await _until(_left(db), db, clock, [relay], what="all delivered", jump=True)
            await eventually(_accounted([relay], up, key))
        refused = sum(up.refused_connections.values())
        assert refused > 0, "the relay never tried a fourth connection: nothing was tested"
        limit = await db.fetchrow(
            "SELECT * FROM shaping_limits WHERE grp = $1 AND source_ip = $2", key.group, SOURCE
        )
        assert limit is not None
        assert 1 <= limit["connections"] <= 3, dict(limit)
        assert limit["refused_connections"] is not None and limit["refused_connections"] <= 3
        assert limit["rate"] is None  # a refused connection says nothing of messages
        changes = await db.fetch(
            "SELECT * FROM shaping_changes WHERE grp = $1 AND source_ip = $2 ORDER BY id",
            key.group,
            SOURCE,
        )
        assert changes, "no change recorded"
        first = changes[0]
        assert (first["what"], first["cause"], first["old_value"]) == ("connections", "refused", 10)
        assert first["new_value"] == min(c["new_value"] for c in changes)
        assert CONNECTION_REFUSAL.split(" ", 2)[2] in first["reply"], first["reply"]
        assert all(c["cause"] == "refused" and c["what"] == "connections" for c in changes)
        # Retried and delivered: a connection refused is no verdict on any recipient.
        assert await _states(db) == {"delivered": 60}
        assert sorted(r for m in up.received for r in m.recipients) == sorted(addresses)
        assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
        assert (
            await db.fetchval(
                "SELECT count(*) FROM events WHERE type IN ('hard_bounce', 'non_delivery')"
            )
            == 0
        )
        learned = limit["connections"]

        # A relay started afterwards reads the limit before its first connection.
        up.peak.clear()
        async with start_relay(up.port, extra, source_ips=SOURCES) as later:
            assert later.worker is not None and later.worker.shaper is not None
            more = await _seed(later, clock, 40, "s")
            _wake(later)
            await _until(_left(db), db, clock, [later], what="the later relay's mail delivered")
            shares = later.worker.shaper.shares(key)
        assert shares is not None, "the later relay never settled the key"
        connections, rate, held = shares
        assert held is not None and held.connections == learned and held.learned
        assert 1 <= connections <= learned and rate is None
        assert up.peak[SOURCE] <= learned, up.peak
        assert sum(up.refused_connections.values()) == refused  # none refused since
        assert all(up.delivered_to(a) == 1 for a in more)


async def test_the_rounds_go_on_after_a_limit_changes(start_relay, db, clock):
    """A refusal that lowers a limit does not stop the relay's rounds: its use of the key
    stays fresh for the others, and a key it meets afterwards (mail from a second source IP)
    is settled and its mail goes."""
    second = """
    [[pools]]
    name = "second"
    source_ips = ["127.0.0.4"]
    campaigns = ["c2"]
    """
    extra = _extra("connections = 10", per_destination=10, more=second)
    async with LimitingUpstream(max_connections=3) as up:
        other = Key(_key(up).group, "127.0.0.4")
        async with start_relay(up.port, extra, source_ips=SOURCES) as relay:
            assert relay.worker is not None and relay.worker.shaper is not None
            await _seed(relay, clock, 30, "t")
            _wake(relay)
            await _until(_left(db), db, clock, [relay], what="all delivered", jump=True)
            assert sum(up.refused_connections.values()) > 0, "nothing refused: nothing tested"
            changed_at = clock()
            up.max_connections = None  # the second key's mail is not refused: just sent
            later = [
                dataclasses.replace(incoming(f"Qu{i:05d}", f"u{i}@example.net"), campaign="c2")
                for i in range(5)
            ]
            await relay.store.accept_messages(clock(), later)
            _wake(relay)
            await _until(
                _left(db), db, clock, [relay], what="the second key's mail delivered", timeout=10
            )
            shares = relay.worker.shaper.shares(other)
            last_round = await db.fetchval("SELECT max(updated_at) FROM shaping_usage")
    assert shares is not None, "the key met after the change was never settled"
    assert last_round > changed_at
    assert (
        sorted(m.peer_ip for m in up.received if m.recipients[0].startswith("u"))
        == ["127.0.0.4"] * 5
    )


async def test_a_rate_refusal_teaches_a_rate(start_relay, db, clock):
    """An upstream that answers ``451 4.7.1 Rate limit exceeded`` at the end of data once 10
    messages were accepted in its window: the key learns a rate (messages a minute, never
    below the floor), the change records the reply, nothing is suppressed or bounced, and
    once the window opens again the retries under the learned rate deliver everything."""
    extra = _extra("connections = 10", per_destination=10)
    async with LimitingUpstream(max_messages=10) as up:
        key = _key(up)
        async with start_relay(up.port, extra, source_ips=SOURCES) as relay:
            assert relay.worker is not None and relay.worker.shaper is not None
            shaper = relay.worker.shaper
            addresses = await _seed(relay, clock, 40, "m")
            _wake(relay)

            async def learned() -> bool:
                rate = await db.fetchval(
                    "SELECT rate FROM shaping_limits WHERE grp = $1 AND source_ip = $2",
                    key.group,
                    SOURCE,
                )
                return rate is not None

            await _until(learned, db, clock, [relay], what="a rate learned", timeout=15)
            assert up.refused_messages, "the upstream never refused: nothing was tested"
            limit = await db.fetchrow(
                "SELECT * FROM shaping_limits WHERE grp = $1 AND source_ip = $2",
                key.group,
                SOURCE,
            )
            change = await db.fetchrow(
                "SELECT * FROM shaping_changes WHERE grp = $1 AND source_ip = $2 AND what = 'rate'",
                key.group,
                SOURCE,
            )
            assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
            assert not await db.fetchval(
                "SELECT count(*) FROM deliveries WHERE state IN ('bounced', 'expired')"
            )
            up.max_messages = None  # the upstream's window is over
            await _until(_left(db), db, clock, [relay], what="all delivered", jump=True)
            shares = shaper.shares(key)
    assert limit["rate"] >= 6  # min_messages_per_minute
    assert limit["refused_rate"] is not None and limit["connections"] == 10
    assert change is not None
    assert (change["cause"], change["old_value"]) == ("refused", None)
    assert change["new_value"] == limit["rate"]
    assert RATE_REFUSAL.split(" ", 2)[2] in change["reply"], change["reply"]
    assert shares is not None and shares[1] is not None and shares[1] <= limit["rate"]
    assert await _states(db) == {"delivered": 40}
    assert all(up.delivered_to(a) == 1 for a in addresses)


async def test_disabled_shaping_writes_nothing_and_limits_nothing(start_relay, db, clock):
    """``[shaping] enabled = false``: the relay keeps no shared state (no use, no limits) and
    opens as many connections as ``connections_per_destination`` lets it, above
    ``[shaping] connections``."""
    extra = _extra("enabled = false\n    connections = 4", per_destination=10)
    async with LimitingUpstream() as up:
        key = _key(up)
        up.hold()
        async with start_relay(up.port, extra, source_ips=SOURCES) as relay:
            await _seed(relay, clock, 40, "d")
            _wake(relay)

            async def ten_at_once() -> bool:
                return up.waiting == 10

            await _until(ten_at_once, db, clock, [relay], what="10 ends of data held")
            at_once = up.open[SOURCE]
            up.release()
            await _until(_left(db), db, clock, [relay], what="all delivered")
            await eventually(_accounted([relay], up, key))
    assert at_once == 10
    assert up.peak[SOURCE] == 10
    assert await _states(db) == {"delivered": 40}
    for table in ("shaping_usage", "shaping_limits", "shaping_changes"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_open_connections_are_counted_until_they_close(start_relay, db, clock):
    """The relay's count of its open connections per shaping key
    (``Upstream.open_connections``, what its shaper tells the others) never leaks:
    connections refused at the greeting never count, connections closed after
    ``messages_per_connection`` stop counting, what is left is the idle pool (and what the
    upstream sees open), and nothing once the relay has stopped."""
    extra = _extra("connections = 10", per_destination=6, per_connection=3)
    async with LimitingUpstream(max_connections=2) as up:
        key = _key(up)
        async with start_relay(up.port, extra, source_ips=SOURCES) as relay:
            await _seed(relay, clock, 45, "c")
            _wake(relay)
            await _until(_left(db), db, clock, [relay], what="all delivered", jump=True)
            await eventually(_accounted([relay], up, key))
            pooled = _pooled(relay, key)
        assert sum(up.refused_connections.values()) > 0
        assert up.connections[SOURCE] >= 45 // 3  # closed after 3 messages, new ones opened
        assert pooled <= 2  # what the upstream let it open; 0 when the last one was spent
        assert _open(relay, key) == 0
        await eventually(lambda: _none_open(up))
    assert await _states(db) == {"delivered": 45}


async def _none_open(up: LimitingUpstream) -> bool:
    return up.open[SOURCE] == 0
