"""The queue page over HTTP: deliveries listed and filtered, retry and purge, attempts."""

from __future__ import annotations

from tests.support.admin import base, logged_in
from tests.support.report_seeds import seed_standard


async def test_queue_page_shows_counts_and_reasons(relay):
    """The queue page shows counts and reasons."""
    await seed_standard(relay.store)
    http, _ = await logged_in(relay)
    async with http, http.get(base(relay) + "/queue") as r:
        queue = await r.text()
    assert "Top deferral reasons" in queue
