"""Guardrails end to end: a real relay (or two) on a real database, delivering to a scripted
upstream; the campaign seeded into the queue as the intake stores it."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from relay.delivery.guardrails import release_send
from relay.ops.app import Relay
from relay.store.guardrails import Send
from tests.support.delivery import eventually, incoming_to
from tests.support.scripted import ScriptedUpstream

CAMPAIGN = "spring"
FROM = "news.example.com"
GOOGLE = Send(CAMPAIGN, FROM, "google")
FAST = """
[guardrails]
check_every = "100ms"
"""


def _campaign(n: int, unknown: set[int], upstream: ScriptedUpstream, prefix: str = "u"):
    """``n`` one-recipient messages of the campaign to gmail.com; those in ``unknown`` are
    refused by the upstream with 550 5.1.1."""
    messages = []
    for i in range(n):
        address = f"{prefix}{i}@gmail.com"
        if i in unknown:
            upstream.on_rcpt(address, f"550 5.1.1 <{address}>: The email account does not exist")
        message = incoming_to(f"Q{prefix}{i:06d}", [address], FROM)
        messages.append(dataclasses.replace(message, campaign=CAMPAIGN))
    return messages


async def _seed(relay: Relay, messages, clock) -> None:
    now = clock()
    for start in range(0, len(messages), 500):
        await relay.store.accept_messages(now, messages[start : start + 500])
    _wake(relay)


def _wake(relay: Relay) -> None:
    assert relay.worker is not None
    relay.worker.wake()


async def _attempts(db) -> int:
    return int(
        await db.fetchval(
            "SELECT coalesce(sum(attempts), 0) FROM attempt_rollup "
            "WHERE grain = 'hour' AND campaign = $1",
            CAMPAIGN,
        )
    )


async def _state(db, send: Send = GOOGLE) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM guardrails WHERE campaign = $1 AND from_domain = $2 AND provider = $3",
        send.campaign,
        send.from_domain,
        send.provider,
    )
    return state


async def _quiet(db, seconds: float = 1.0) -> int:
    """Attempts once they have stopped changing for ``seconds``."""
    last = -1
    while True:
        now = await _attempts(db)
        if now == last:
            return now
        last = now
        await asyncio.sleep(seconds)


async def test_a_stale_list_pauses_before_1500_attempts(upstream, start_relay, db, clock):
    """10,000 messages, 12% unknown users: the canary's slice trips the unknown-user rate,
    the campaign is paused at that provider, and the rest wait untried: nothing bounced or
    suppressed beyond the addresses actually tried."""
    unknown = set(range(0, 10_000, 8))  # 12.5%, spread through the list
    messages = _campaign(10_000, unknown, upstream)
    async with start_relay(upstream.port, FAST) as relay:
        await _seed(relay, messages, clock)
        await eventually(lambda: _has_state(db, "paused"), timeout=60)
        attempts = await _quiet(db)
        row = await db.fetchrow("SELECT * FROM guardrails WHERE campaign = $1", CAMPAIGN)
    assert attempts < 1500, attempts
    assert row["state"] == "paused" and row["level"] == "pause"
    assert "unknown user rate" in row["reason"]
    evidence = json.loads(row["evidence"])
    assert evidence["counts"]["unknown_users"] >= 6
    assert evidence["samples"] and "does not exist" in evidence["samples"][0]["sample"]
    held = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE state = 'queued' AND attempts = 0"
    )
    assert held >= 10_000 - 1500
    # Pause, not bounce: no delivery failed but the ones tried; suppressions only for the
    # unknown users the upstream refused.
    bounced = await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'bounced'")
    suppressed = await db.fetchval("SELECT count(*) FROM suppressions")
    assert bounced == suppressed <= len(unknown) * attempts // 10_000 + 20
    assert len(upstream.rcpt_seen) == attempts
    tripped = await db.fetchval(
        "SELECT count(*) FROM webhook_outbox WHERE event = 'guardrail.tripped'"
    )
    assert tripped == 0  # no webhook configured: nothing queued for nobody


async def _has_state(db, state: str) -> bool:
    return await _state(db) == state


async def test_a_clean_list_opens_after_its_canary_and_is_delivered(
    upstream, start_relay, db, clock
):
    """0.5% unknown users: the canary passes, the held rest is due at once, all goes."""
    unknown = set(range(0, 3000, 200))
    messages = _campaign(3000, unknown, upstream)
    async with start_relay(upstream.port, FAST) as relay:
        await _seed(relay, messages, clock)
        await eventually(
            lambda: _count(db, "SELECT count(*) FROM deliveries WHERE state = 'queued'", 0),
            timeout=90,
        )
        row = await db.fetchrow("SELECT * FROM guardrails WHERE campaign = $1", CAMPAIGN)
    assert row["state"] == "open"
    assert row["canary_slice"] == 100 and row["canary_sent"] == 100
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'") == (
        3000 - len(unknown)
    )


async def _count(db, sql: str, expected: int) -> bool:
    return bool(await db.fetchval(sql) == expected)


async def test_a_release_resumes_the_send(upstream, start_relay, db, clock):
    """Paused by its canary (the bad addresses came first), released with a reason: the held
    deliveries go at once, judged afresh, and the rest of the list is clean."""
    unknown = set(range(12))
    messages = _campaign(1000, unknown, upstream)
    async with start_relay(upstream.port, FAST) as relay:
        await _seed(relay, messages, clock)
        await eventually(lambda: _has_state(db, "paused"), timeout=60)
        paused_at = await _quiet(db)
        assert paused_at <= 200
        assert await release_send(relay.store, GOOGLE, clock(), "ops@example.com", "list cleaned")
        await eventually(
            lambda: _count(db, "SELECT count(*) FROM deliveries WHERE state = 'queued'", 0),
            timeout=60,
        )
        row = await db.fetchrow("SELECT * FROM guardrails WHERE campaign = $1", CAMPAIGN)
        audit = await db.fetchrow("SELECT * FROM admin_audit WHERE action = 'guardrail.release'")
        # Released again: it is not paused, so there is nothing to release.
        assert not await release_send(relay.store, GOOGLE, clock(), "ops@example.com", "again")
    assert row["state"] == "open" and row["released_by"] == "ops@example.com"
    assert audit["actor"] == "ops@example.com" and audit["reason"] == "list cleaned"
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'") == 988


async def test_two_relays_agree(upstream, db_dsn, write_config, clock, db):
    """Two relays on one database: one judges, both hold the paused send."""
    from relay.config import load_config
    from tests.support.delivery import delivery_config

    unknown = set(range(0, 4000, 8))
    messages = _campaign(4000, unknown, upstream)
    config = load_config(write_config(delivery_config(upstream.port, FAST), replace_base=True))
    async with (
        Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as one,
        Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as two,
    ):
        await _seed(one, messages, clock)
        _wake(two)
        await eventually(lambda: _has_state(db, "paused"), timeout=60)
        await asyncio.sleep(0.5)  # both reload their holds (check_every 100ms)
        for relay in (one, two):
            assert relay.guardrail_gate is not None
            assert relay.guardrail_gate.holds.get(GOOGLE) == "paused"
        settled = await _quiet(db)
        # Everything held is due again at once (as after recheck): both claim it, neither
        # sends it.
        await db.execute(
            "UPDATE deliveries SET next_attempt_at = '-infinity' WHERE state = 'queued'"
        )
        _wake(one)
        _wake(two)
        await asyncio.sleep(1.0)
        assert await _attempts(db) == settled
    assert settled < 1500


async def test_a_trip_and_a_release_are_posted_to_webhooks(upstream, start_relay, db, clock):
    """guardrail.tripped and guardrail.released land in the webhook outbox of the hooks that
    subscribe, with the send and its evidence."""
    hooks = (
        FAST
        + """
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/ops"
events = ["guardrail.tripped", "guardrail.released"]
secret = "0123456789abcdef0123"
"""
    )
    messages = _campaign(300, set(range(12)), upstream)
    async with start_relay(upstream.port, hooks) as relay:
        await _seed(relay, messages, clock)
        await eventually(lambda: _has_state(db, "paused"), timeout=60)
        assert await release_send(relay.store, GOOGLE, clock(), "ops@example.com", "checked")
        rows = await db.fetch(
            "SELECT event, payload FROM webhook_outbox WHERE webhook = 'ops' ORDER BY id"
        )
    assert [r["event"] for r in rows] == ["guardrail.tripped", "guardrail.released"]
    tripped, released = (json.loads(r["payload"]) for r in rows)
    assert (tripped["campaign"], tripped["from_domain"], tripped["provider"]) == (
        CAMPAIGN,
        FROM,
        "google",
    )
    assert tripped["state"] == "paused" and "unknown user rate" in tripped["reason"]
    assert tripped["evidence"]["counts"]["unknown_users"] >= 6
    assert released["state"] == "open" and released["released_by"] == "ops@example.com"


async def test_mail_without_a_campaign_is_never_held(upstream, start_relay, db, clock):
    """Transactional mail (no campaign) goes whatever its bounces: no canary, no pause."""
    messages = [
        dataclasses.replace(m, campaign=None) for m in _campaign(300, set(range(40)), upstream)
    ]
    async with start_relay(upstream.port, FAST) as relay:
        await _seed(relay, messages, clock)
        await eventually(
            lambda: _count(db, "SELECT count(*) FROM deliveries WHERE state = 'queued'", 0),
            timeout=60,
        )
    assert await db.fetchval("SELECT count(*) FROM guardrails") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'") == 260


async def test_a_canary_whose_replies_stop_coming_is_judged_on_what_came(
    upstream, start_relay, db, clock
):
    """A spent canary with no attempts counted for it (its deliveries were counted under
    another provider once their MX host was known, or wait on a retry) opens after a minute
    without a new reply: its held deliveries never wait for ever."""
    from policies.guardrails import GuardrailRules
    from relay.delivery.guardrails import GuardrailWatch

    send = Send(CAMPAIGN, FROM, "other")
    # The relay's own watch stands aside (its rules say off); this test's watch, on the
    # default rules, does the judging at the times the test sets.
    async with start_relay(upstream.port, "[guardrails]\nenabled = false") as relay:
        assert relay.guardrail_gate is not None
        rules = GuardrailRules()
        watch = GuardrailWatch(relay.store, relay.guardrail_gate, lambda: rules, clock=clock)
        assert await relay.store.start_canary(send, clock(), 10) == ("canary", True)
        assert await relay.store.reserve_canary(send, 25) == 10  # spent: the rest is held
        assert await relay.store.reserve_canary(send, 1) == 0
        await watch.check()
        assert await _state(db, send) == "canary"
        clock.advance(seconds=59)
        await watch.check()
        assert await _state(db, send) == "canary"
        clock.advance(seconds=2)
        await watch.check()
        assert await _state(db, send) == "open"
        assert relay.guardrail_gate.holds.get(send) is None
