"""A delivery whose claims keep ending with nothing recorded is given up, not sent for ever."""

from __future__ import annotations

from datetime import timedelta

from relay.delivery.worker import MAX_UNRECORDED_CLAIMS
from tests.support.delivery import events_of, eventually, expire_leases, in_state, send


async def test_claims_that_keep_running_out_give_the_delivery_up(upstream, start_relay, db, clock):
    """Five claims in a row whose leases ran out with no outcome (a relay dying on this
    delivery each time): the next claim gives it up (expired, non_delivery) untried."""
    async with start_relay(upstream.port, "enabled = false") as intake:
        await send(intake, ["poison@example.org"])
        for _ in range(MAX_UNRECORDED_CLAIMS):
            [claimed] = await intake.store.claim_due_deliveries(
                "dying-relay", clock(), timedelta(seconds=30), 10
            )
            assert await expire_leases(db) == 1  # the lease runs out; nothing was recorded
        assert claimed.unrecorded_claims == MAX_UNRECORDED_CLAIMS - 1
    async with start_relay(upstream.port) as relay:
        relay.worker.wake()
        await eventually(in_state(db, "poison@example.org", "expired"))
    assert upstream.rcpt_attempts == {}
    bounce, non_delivery = await events_of(db, "poison@example.org")
    assert (bounce["type"], bounce["rule"], bounce["synthetic"]) == (
        "soft_bounce",
        "unrecorded_claims",
        True,
    )
    assert non_delivery["type"] == "non_delivery"


async def test_a_recorded_outcome_or_a_release_resets_the_count(upstream, start_relay, db, clock):
    upstream.on_rcpt("x@example.org", "451 4.7.1 try later")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["x@example.org"])
        await eventually(lambda: _attempts(db, 1))
    assert await db.fetchval("SELECT unrecorded_claims FROM deliveries") == 0


async def _attempts(db, n: int) -> bool:
    return bool(await db.fetchval("SELECT attempts FROM deliveries") == n)
