"""Suppression under concurrency: a bounce landing while mail to the address is queued, many
writers suppressing one address at once, an administrator's removal racing a new bounce."""

from __future__ import annotations

import asyncio
import contextlib

import aiosmtplib

from tests.support.delivery import eventually, send

UNKNOWN = "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown"


async def test_a_hard_bounce_stops_the_queued_mail_to_the_address(upstream, start_relay, db):
    """Fifty messages to one address wait in the queue; a worker that may run five
    transactions at once meets 550 5.1.1: every delivery not already past RCPT upstream is
    cancelled, none is sent after the suppression."""
    upstream.on_rcpt("x@example.org", UNKNOWN)
    async with start_relay(upstream.port, "enabled = false") as intake:
        for _ in range(50):
            await send(intake, ["x@example.org"])
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'queued'") == 50
    async with start_relay(upstream.port, "concurrency = 5\nbatch = 5") as relay:
        await eventually(lambda: _none_open(db))
        await relay.worker.drain()
    states = dict(await db.fetch("SELECT state, count(*) FROM deliveries GROUP BY state"))
    tried = upstream.rcpt_attempts["x@example.org"]
    assert states["bounced"] == tried and 1 <= tried <= 5
    assert states["cancelled"] == 50 - tried
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1
    cancelled_events = await db.fetchval("SELECT count(*) FROM events WHERE type = 'suppressed'")
    assert cancelled_events == 50 - tried


async def test_many_writers_make_one_entry(upstream, start_relay, db):
    """Forty concurrent suppressions of one address (in every spelling) from bounces and
    administrators: one row, exactly one writer told it added it."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        spellings = ["x@example.org", "X@Example.ORG", "x@EXAMPLE.org"]
        from policies.addresses import normalise_address

        added = await asyncio.gather(
            *(
                relay.store.add_suppression(
                    normalise_address(spellings[i % 3]),
                    f"writer {i}",
                    "hard_bounce" if i % 2 else "manual",
                    actor=None if i % 2 else "ops",
                )
                for i in range(40)
            )
        )
    assert added.count(True) == 1
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_a_removal_racing_a_new_bounce_ends_defined_and_both_are_recorded(
    upstream, start_relay, db
):
    """An administrator removes an entry while a new hard bounce for the address is applied,
    twenty times over: the end state is always one of the two orders (entry and profile
    agree), the removal is always audited and the bounce always recorded."""
    upstream.on_rcpt("x@example.org", UNKNOWN)
    async with start_relay(upstream.port) as relay:
        for round_ in range(20):
            await relay.store.add_suppression("x@example.org", "old", "hard_bounce")
            await asyncio.gather(
                relay.store.remove_suppression("x@example.org", "ops", f"round {round_}"),
                _send_or_refused(relay),
            )
            await eventually(lambda: _none_open(db))
            listed = await db.fetchval("SELECT count(*) FROM suppressions")
            status = await db.fetchval(
                "SELECT status FROM profiles WHERE address = 'x@example.org'"
            )
            assert (listed, status) in ((1, "hard_bounced"), (0, "active")), (round_, listed)
            await db.execute("DELETE FROM suppressions")
    removals = await db.fetchval(
        "SELECT count(*) FROM admin_audit WHERE action = 'suppression.remove'"
    )
    assert removals == 20
    outcomes = await db.fetchval(
        "SELECT count(*) FROM events WHERE type IN ('hard_bounce', 'rejected_suppressed')"
    )
    assert outcomes == 20


async def _send_or_refused(relay) -> None:
    """RCPT before the removal is refused (and recorded); after it, the mail is sent."""
    with contextlib.suppress(aiosmtplib.SMTPRecipientsRefused):
        await send(relay, ["x@example.org"])


async def _none_open(db) -> bool:
    return not await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'inflight')"
    )


async def test_search_wildcards_are_literal(upstream, start_relay):
    """An operator's '%' or '_' in a search is a character, not a LIKE wildcard."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        for address in ("a%b@example.org", "a_b@example.org", "axb@example.org"):
            await relay.store.add_suppression(address, "manual", "manual", actor="ops")
        percent = await relay.store.list_suppressions(search="%")
        underscore = await relay.store.list_suppressions(search="a_b")
    assert [r.address for r in percent] == ["a%b@example.org"]
    assert [r.address for r in underscore] == ["a_b@example.org"]
