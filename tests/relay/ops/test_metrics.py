"""/metrics, /healthz and /readyz on the admin listener while mail flows."""

from __future__ import annotations

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.delivery import eventually, in_state, send
from tests.support.pg import database_unreachable


async def _get(relay, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{relay.admin_port}{path}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def _samples(relay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await _get(relay, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_move_as_mail_flows(upstream, start_relay, db):
    """Accepted, rejected, delivered, bounced, queue depth and session histogram all move."""
    upstream.on_rcpt("full@example.org", "452 4.2.2 Mailbox full")
    upstream.on_rcpt("gone@example.org", "550 5.1.1 User unknown")
    async with start_relay(upstream.port) as relay:
        before = await _samples(relay)
        assert before[("bounce_relay_messages_accepted_total", ())] == 0
        await send(relay, ["ok@example.org", "full@example.org", "gone@example.org"])
        await eventually(in_state(db, "gone@example.org", "bounced"))
        await eventually(in_state(db, "ok@example.org", "delivered"))
        await eventually(in_state(db, "full@example.org", "queued"))
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.mail("s@example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await client.rcpt("gone@example.org")
        await client.quit()
        await eventually(lambda: _has_session(relay), timeout=5)
        after = await _samples(relay)
    assert after[("bounce_relay_messages_accepted_total", ())] == 1
    assert after[("bounce_relay_rejected_total", (("reason", "suppressed"),))] == 1
    delivered = (("category", "delivered"), ("outcome", "delivered"))
    assert after[("bounce_relay_deliveries_total", delivered)] == 1
    hard = (("category", "user_unknown"), ("outcome", "hard_bounce"))
    assert after[("bounce_relay_deliveries_total", hard)] == 1
    assert after[("bounce_relay_bounces_total", (("kind", "soft"),))] == 1
    assert after[("bounce_relay_bounces_total", (("kind", "hard"),))] == 1
    assert after[("bounce_relay_queue_depth", (("state", "queued"),))] == 1
    assert after[("bounce_relay_oldest_queued_seconds", ())] >= 0
    assert after[("bounce_relay_delivery_latency_seconds_count", ())] == 1
    assert after[("bounce_relay_smtp_session_seconds_count", ())] >= 2
    assert after[("bounce_relay_db_pool_connections", (("state", "open"),))] >= 1


async def _has_session(relay) -> bool:
    samples = await _samples(relay)
    return samples.get(("bounce_relay_smtp_session_seconds_count", ()), 0) >= 2


async def test_health_and_readiness(upstream, start_relay, db_dsn):
    """/healthz is 200 while running; /readyz turns 503 while the database is unreachable."""
    async with start_relay(upstream.port) as relay:
        assert await _get(relay, "/healthz") == (200, "ok\n")
        assert await _get(relay, "/readyz") == (200, "ready\n")
        async with database_unreachable(db_dsn):
            status, text = await _get(relay, "/readyz")
        assert status == 503
        assert text.startswith("database:")
        assert (await _get(relay, "/readyz"))[0] == 200
