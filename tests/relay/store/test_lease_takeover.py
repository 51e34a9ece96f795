"""Leases of a relay that died are taken over within seconds, a live relay's never
(relay_instances, 0018; claim_due_deliveries, relay_heartbeat in queue.sql), and a delivery is
given up for unrecorded outcomes only after sends, never for claims its relays died before
sending (note_sends; relay.delivery.worker).

Two Stores on one database stand for two relay processes, "a" and "b". Time passes as in
tests/support/delivery.expire_leases: the rows are moved back, since heartbeats and leases
are judged by the database's clock, which no injected clock can move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.delivery.heartbeat import PRESUMED_DEAD_AFTER
from relay.delivery.worker import MAX_UNRECORDED_SENDS
from relay.store import ClaimedDelivery, IncomingMessage, Store, create_store
from tests.support.delivery import (
    delivered,
    events_of,
    eventually,
    expire_leases,
    in_state,
    incoming_to,
    send,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=15)
SILENT = PRESUMED_DEAD_AFTER


@pytest.fixture
async def a(db_dsn: str) -> AsyncIterator[Store]:
    store = await create_store(db_dsn, min_size=1, max_size=2)
    await store.relay_heartbeat("a", SILENT, "host-a", 1)
    yield store
    await store.close()


@pytest.fixture
async def b(db_dsn: str) -> AsyncIterator[Store]:
    store = await create_store(db_dsn, min_size=1, max_size=2)
    await store.relay_heartbeat("b", SILENT, "host-b", 2)
    yield store
    await store.close()


def _message(n: int, *recipients: str) -> IncomingMessage:
    return incoming_to(f"Q{n}", recipients, "news.example")


async def _lease_to_a(a: Store) -> list[ClaimedDelivery]:
    """Two deliveries leased to "a" as it commits them (relay.intake.commit)."""
    _, leased = await a.accept_and_lease(
        T0, [_message(1, "x@example.org", "y@example.org")], "a", LEASE
    )
    assert len(leased) == 2
    return leased


async def _fall_silent(db: asyncpg.Connection, name: str, seconds: float = 60) -> None:
    """``name`` has not beaten for ``seconds`` (it died, stalled, or lost the database)."""
    await db.execute(
        "UPDATE relay_instances SET heartbeat_at = now() - make_interval(secs => $2) "
        "WHERE name = $1",
        name,
        seconds,
    )


async def _beating_for_a_minute(db: asyncpg.Connection, name: str) -> None:
    """``name`` has beaten without a gap for a minute (and just now)."""
    await db.execute(
        "UPDATE relay_instances SET beating_since = now() - interval '1 minute', "
        "heartbeat_at = now() WHERE name = $1",
        name,
    )


async def _owners(db: asyncpg.Connection) -> list[str]:
    return [r["lease_owner"] for r in await db.fetch("SELECT lease_owner FROM deliveries")]


async def test_a_silent_relays_leases_are_taken_over_and_its_late_outcomes_fenced(a, b, db):
    """ "a" leases two deliveries at commit and falls silent past its silent_after: "b"'s next
    claim takes both over (new tokens, one more unrecorded claim), long before the lease
    would run out; "a"'s late outcomes are refused, "b"'s stand."""
    leased = await _lease_to_a(a)
    await _beating_for_a_minute(db, "b")
    await _fall_silent(db, "a")
    with capture_logs() as logs:
        taken = await b.claim_due_deliveries("b", T0, LEASE, 10)
    assert [d.id for d in taken] == [d.id for d in leased]
    assert all(t.lease_token != d.lease_token for t, d in zip(taken, leased, strict=True))
    assert [d.unrecorded_claims for d in taken] == [1, 1]
    assert await _owners(db) == ["b", "b"]
    assert [
        (e["previous_owner"], e["why"], e["leases"])
        for e in logs
        if e["event"] == "store.leases_taken_over"
    ] == [("a", "owner_presumed_dead", 2)]
    late = await a.apply_outcomes(T0, [delivered(d) for d in leased])
    assert (late.applied, late.fenced) == (0, 2)
    done = await b.apply_outcomes(T0, [delivered(d) for d in taken])
    assert (done.applied, done.fenced) == (2, 0)


async def test_a_live_relays_leases_stay_however_long_it_sends(a, b, db):
    """While "a" beats, "b" takes nothing of it, however long "b" has been beating and
    however long "a"'s sends take: a beat just inside "a"'s silent_after still counts."""
    leased = await _lease_to_a(a)
    await _beating_for_a_minute(db, "b")
    assert await b.claim_due_deliveries("b", T0, LEASE, 10) == []
    await _fall_silent(db, "a", SILENT.total_seconds() - 2)
    assert await b.claim_due_deliveries("b", T0, LEASE, 10) == []
    assert await _owners(db) == ["a", "a"]
    done = await a.apply_outcomes(T0, [delivered(d) for d in leased])
    assert done.applied == 2


async def test_a_database_outage_is_not_read_as_every_relay_dying(a, b, db):
    """The database was away for a minute: every relay is silent at once. "b" claims nothing
    before its own beat (it reads as dead itself, even for queued work); after it, queued work
    but not "a"'s leases, until "b" has beaten for "a"'s silent_after, by when a live "a" has
    beaten too. Only an "a" that stays silent then loses its leases."""
    leased = await _lease_to_a(a)
    await b.accept_messages(T0, [_message(2, "z@example.org")])
    await _beating_for_a_minute(db, "b")
    await _fall_silent(db, "a")
    await _fall_silent(db, "b")
    assert await b.claim_due_deliveries("b", T0, LEASE, 10) == []
    silence = await b.relay_heartbeat("b", SILENT, "host-b", 2)
    assert silence is not None and silence >= timedelta(minutes=1)
    [queued] = await b.claim_due_deliveries("b", T0, LEASE, 10)
    assert queued.recipient == "z@example.org"
    assert await a.relay_heartbeat("a", SILENT, "host-a", 1) is not None
    await _beating_for_a_minute(db, "b")
    assert await b.claim_due_deliveries("b", T0, LEASE, 10) == []
    await _fall_silent(db, "a")
    taken = await b.claim_due_deliveries("b", T0, LEASE, 10)
    assert [d.id for d in taken] == [d.id for d in leased]


async def test_a_relay_presumed_dead_claims_nothing_until_it_beats_again(a, db):
    """A relay silent past its silent_after would have its claims taken straight back: it
    claims nothing, queued work included, until its next beat."""
    await a.accept_messages(T0, [_message(1, "x@example.org")])
    await _fall_silent(db, "a")
    assert await a.claim_due_deliveries("a", T0, LEASE, 10) == []
    await a.relay_heartbeat("a", SILENT, "host-a", 1)
    assert len(await a.claim_due_deliveries("a", T0, LEASE, 10)) == 1


async def test_a_stopped_relays_leftover_leases_go_at_once(a, db, db_dsn):
    """A relay that stopped with a lease it could not hand back (retire_relay_instance): a
    peer takes it over at its next claim, even one registered a moment ago."""
    leased = await _lease_to_a(a)
    await a.retire_relay_instance("a")
    c = await create_store(db_dsn, min_size=1, max_size=1)
    try:
        await c.relay_heartbeat("c", SILENT, "host-c", 3)
        taken = await c.claim_due_deliveries("c", T0, LEASE, 10)
    finally:
        await c.close()
    assert [d.id for d in taken] == [d.id for d in leased]


async def test_an_unregistered_relay_keeps_the_lease_rules_alone(a, b, db):
    """A claimer with no row (an older relay, a tool) takes over no silent relay, and the
    lease of an owner with no row goes only when it runs out: the lease still bounds all."""
    leased = await _lease_to_a(a)
    await _fall_silent(db, "a")
    assert await a.claim_due_deliveries("old-relay", T0, LEASE, 10) == []
    await b.claim_due_deliveries("b", T0, LEASE, 10)  # "b" is too new to take "a"'s over
    assert await _owners(db) == ["a", "a"]
    assert await expire_leases(db) == 2
    with capture_logs() as logs:
        taken = await a.claim_due_deliveries("old-relay", T0, LEASE, 10)
    assert [d.id for d in taken] == [d.id for d in leased]
    assert {e["why"] for e in logs if e["event"] == "store.leases_taken_over"} == {"lease_ran_out"}
    await _beating_for_a_minute(db, "b")
    assert await b.claim_due_deliveries("b", T0, LEASE, 10) == []  # "old-relay": no row


async def test_silent_relays_are_forgotten_once_they_hold_no_lease(a, b, db):
    """Pruning leaves a relay that still holds a lease (its takeover needs the row) and a
    live one; a long-silent relay without leases goes."""
    await _lease_to_a(a)
    await b.relay_heartbeat("gone", SILENT, "host-c", 3)
    await _fall_silent(db, "a", 7200)
    await _fall_silent(db, "gone", 7200)
    assert await b.prune_relay_instances(timedelta(hours=1)) == ["gone"]
    names = await db.fetch("SELECT name FROM relay_instances ORDER BY name")
    assert [r["name"] for r in names] == ["a", "b"]
    assert await b.relay_heartbeat("gone", SILENT, "host-c", 3) is None  # registers anew


async def test_a_send_is_noted_only_under_its_lease(a, b, db):
    """note_sends counts a send under the current lease token; the former owner's is
    refused (its send would be a duplicate). An outcome resets the count."""
    leased = await _lease_to_a(a)
    await _beating_for_a_minute(db, "b")
    await _fall_silent(db, "a")
    taken = await b.claim_due_deliveries("b", T0, LEASE, 10)
    assert await a.note_sends([(d.id, d.lease_token) for d in leased]) == set()
    assert await b.note_sends([(d.id, d.lease_token) for d in taken]) == {d.id for d in taken}
    assert await db.fetchval("SELECT sum(unrecorded_sends) FROM deliveries") == 2
    await b.apply_outcomes(T0, [delivered(d) for d in taken])
    counts = await db.fetchrow(
        "SELECT sum(unrecorded_sends) AS sends, sum(unrecorded_claims) AS claims FROM deliveries"
    )
    assert (counts["sends"], counts["claims"]) == (0, 0)


# -- what the worker makes of it --------------------------------------------------------------


async def test_a_delivery_whose_relays_die_before_sending_is_never_given_up(
    upstream, start_relay, db, clock
):
    """Claimed ten times by relays that died before sending it (twice the bound that gives
    a delivery up): it has had no attempt, so the next relay sends it."""
    async with start_relay(upstream.port, "enabled = false") as intake:
        await send(intake, ["never-tried@example.org"])
        for _ in range(2 * MAX_UNRECORDED_SENDS):
            await intake.store.claim_due_deliveries("dying-relay", clock(), LEASE, 10)
            assert await expire_leases(db) == 1
    async with start_relay(upstream.port) as relay:
        relay.worker.wake()
        await eventually(in_state(db, "never-tried@example.org", "delivered"))
    assert upstream.rcpt_attempts == {"never-tried@example.org": 1}
    [event] = await events_of(db, "never-tried@example.org")
    assert (event["type"], event["attempt"]) == ("delivered", 1)


async def test_sends_that_keep_ending_unrecorded_give_the_delivery_up(
    upstream, start_relay, db, clock
):
    """Sent MAX_UNRECORDED_SENDS times by relays that died before recording anything (a
    message that kills its relay, an outcome the database refuses): the next claim gives it
    up (expired, non_delivery) instead of sending it again."""
    async with start_relay(upstream.port, "enabled = false") as intake:
        await send(intake, ["poison@example.org"])
        for _ in range(MAX_UNRECORDED_SENDS + 1):
            [claimed] = await intake.store.claim_due_deliveries("dying-relay", clock(), LEASE, 10)
            if claimed.unrecorded_claims:  # as the worker: a first claim is not counted
                await intake.store.note_sends([(claimed.id, claimed.lease_token)])
            assert await expire_leases(db) == 1
    async with start_relay(upstream.port) as relay:
        relay.worker.wake()
        await eventually(in_state(db, "poison@example.org", "expired"))
    assert upstream.rcpt_attempts == {}
    bounce, non_delivery = await events_of(db, "poison@example.org")
    assert (bounce["type"], bounce["rule"], bounce["synthetic"]) == (
        "soft_bounce",
        "unrecorded_sends",
        True,
    )
    assert non_delivery["type"] == "non_delivery"


async def test_the_worker_notes_a_send_after_an_unrecorded_claim(upstream, start_relay, db, clock):
    """A delivery whose last claim ended with nothing recorded is counted as sent before its
    transaction starts (seen while the upstream holds the reply); its outcome resets it."""
    upstream.data_delay = 1.0
    async with start_relay(upstream.port, "enabled = false") as intake:
        await send(intake, ["x@example.org"])
        await intake.store.claim_due_deliveries("dying-relay", clock(), LEASE, 10)
        assert await expire_leases(db) == 1
    async with start_relay(upstream.port) as relay:
        relay.worker.wake()
        await eventually(lambda: _sends_noted(db, 1))
        await eventually(in_state(db, "x@example.org", "delivered"))
    assert await _sends_noted(db, 0)


async def _sends_noted(db: asyncpg.Connection, n: int) -> bool:
    return bool(await db.fetchval("SELECT unrecorded_sends FROM deliveries") == n)
