"""The counts that give a delivery up (unrecorded_claims, unrecorded_sends) start again at every
recorded outcome. Giving up itself, after sends only and never for claims its relays died
before sending: tests/relay/store/test_lease_takeover.py."""

from __future__ import annotations

from tests.support.delivery import eventually, send


async def test_a_recorded_outcome_or_a_release_resets_the_count(upstream, start_relay, db, clock):
    upstream.on_rcpt("x@example.org", "451 4.7.1 try later")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["x@example.org"])
        await eventually(lambda: _attempts(db, 1))
    counts = await db.fetchrow("SELECT unrecorded_claims, unrecorded_sends FROM deliveries")
    assert tuple(counts) == (0, 0)


async def _attempts(db, n: int) -> bool:
    return bool(await db.fetchval("SELECT attempts FROM deliveries") == n)
