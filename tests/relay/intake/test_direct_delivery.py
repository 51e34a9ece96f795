"""Deliveries leased as they are committed (relay.intake.commit): the committing relay sends them at
once from memory when its worker has room; otherwise they are queued and claimed as before.
Leased at commit or claimed later, a delivery carries the same checks, and one whose relay
dies is claimed by another once the lease runs out."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from relay.store import ClaimedDelivery
from tests.support.delivery import eventually, expire_leases, in_state, incoming, send


def _comparable(d: ClaimedDelivery) -> dict[str, Any]:
    """What a delivery is sent with, less what differs between any two (ids, token, time)."""
    fields = dataclasses.asdict(d)
    for name in ("id", "message_id", "lease_token", "queue_id", "received_at"):
        del fields[name]
    if fields["probation"] is not None:
        fields["probation"] = {k: v for k, v in fields["probation"].items() if k != "since"}
    return fields


async def test_a_delivery_leased_at_commit_carries_what_a_claim_gives(
    upstream, start_relay, db, clock
):
    """Global, scoped and allowlisted addresses and one on probation: the same checks either
    way (one SQL function, delivery_checks, serves both statements)."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        store = relay.store
        await store.add_suppression("global@example.org", "manual: t", "manual", actor="ops")
        await db.execute(
            "INSERT INTO scoped_suppressions (address, sending_domain, reason, source)"
            " VALUES ('scoped@example.org', 'mail.example.com', 'hard bounce', 'hard_bounce')"
        )
        await db.execute(
            "INSERT INTO allowlist (entry, reason, actor) VALUES ('allowed.example', 'vip', 'ops')"
        )
        await db.execute(
            "INSERT INTO probation (address, since, until, delivery_id, reason)"
            " VALUES ('probe@example.org', now(), now() + interval '1 hour', 0, '550 5.1.1')"
        )
        recipients = [
            "global@example.org",
            "scoped@example.org",
            "x@allowed.example",
            "probe@example.org",
            "plain@example.org",
        ]
        now = clock()
        queued = [incoming(f"Q{n}", r) for n, r in enumerate(recipients)]
        await store.accept_messages(now, queued)
        claimed = await store.claim_due_deliveries("relay-a", now, timedelta(minutes=5), 10)
        leased_batch = [incoming(f"L{n}", r) for n, r in enumerate(recipients)]
        accepted, leased = await store.accept_and_lease(
            now, leased_batch, "relay-a", timedelta(minutes=5)
        )
    assert [a.queue_id for a in accepted] == [m.queue_id for m in leased_batch]
    assert [d.queue_id for d in leased] == [m.queue_id for m in leased_batch]
    assert [_comparable(d) for d in leased] == [_comparable(d) for d in claimed]
    flags = {d.recipient: (d.suppressed, d.allowlisted, d.probation is not None) for d in leased}
    assert flags == {
        "global@example.org": (True, False, False),
        "scoped@example.org": (True, False, False),
        "x@allowed.example": (False, True, False),
        "probe@example.org": (False, False, True),
        "plain@example.org": (False, False, False),
    }
    rows = await db.fetch(
        "SELECT d.state, d.lease_owner, d.lease_until - now() AS lease_left, m.queue_id"
        " FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE m.queue_id LIKE 'L%'"
    )
    assert {(r["state"], r["lease_owner"]) for r in rows} == {("inflight", "relay-a")}
    # Leased by the database's clock (the relay's injected clock is days away from it).
    assert all(timedelta(minutes=4) < r["lease_left"] <= timedelta(minutes=5) for r in rows)


async def test_a_relay_that_dies_holding_leases_from_its_commit_loses_nothing(
    upstream, start_relay, db, clock
):
    """Committed leased to a relay that never sends (it died after COMMIT): once the lease
    runs out another relay claims and delivers it, exactly once."""
    async with start_relay(upstream.port) as relay:
        await relay.store.accept_and_lease(
            clock(), [incoming("DEAD1", "orphan@example.org")], "dead-relay", timedelta(minutes=5)
        )
        assert await relay.worker.run_once() == 0  # the lease holds: nothing to claim
        assert await in_state(db, "orphan@example.org", "inflight")()
        assert await expire_leases(db) == 1  # five minutes pass, by the database's clock
        relay.worker.wake()
        await eventually(in_state(db, "orphan@example.org", "delivered"))
    assert len(upstream.delivered_to("orphan@example.org")) == 1


async def test_a_worker_without_room_leaves_the_commit_queued_for_its_claim(
    upstream, start_relay, db
):
    """One transaction at a time: the first message is leased to the worker as it commits and
    is still being sent when the second commits, which is queued, unleased, and claimed and
    sent once the first is done."""
    upstream.data_delay = 1.0
    async with start_relay(upstream.port, "concurrency = 1") as relay:
        await send(relay, ["first@example.org"])
        await send(relay, ["second@example.org"])
        rows = await db.fetch(
            "SELECT recipient_key, state, lease_owner FROM deliveries ORDER BY recipient_key"
        )
        assert [tuple(r) for r in rows] == [
            ("first@example.org", "inflight", relay.worker.owner),
            ("second@example.org", "queued", None),
        ]
        await eventually(in_state(db, "second@example.org", "delivered"))
        assert _leased(relay) == {"commit": 1, "claim": 1}
    assert len(upstream.received) == 2


async def test_a_worker_with_room_sends_what_is_committed_without_a_claim(
    upstream, start_relay, db
):
    async with start_relay(upstream.port) as relay:
        for n in range(5):
            await send(relay, [f"r{n}@example.org", f"s{n}@example.org"])
        for n in range(5):
            await eventually(in_state(db, f"s{n}@example.org", "delivered"))
        assert _leased(relay) == {"commit": 10, "claim": 0}
    assert len(upstream.received) == 5


def _leased(relay) -> dict[str, int]:
    sample = relay.metrics.registry.get_sample_value
    return {
        how: int(sample("bounce_relay_deliveries_leased_total", {"how": how}) or 0)
        for how in ("commit", "claim")
    }
