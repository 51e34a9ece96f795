"""The suppression list page over HTTP: listing, removal (CSRF, audit), import and export."""

from __future__ import annotations

import aiosmtplib

from tests.support.admin import base, logged_in


async def test_remove_needs_csrf_and_works_with_it(relay):
    """POST without the CSRF token is 403; with it the address is removed, audited, and the
    relay accepts it again over SMTP."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay)
    async with http:
        form = {"address": "gone@example.org", "reason": "customer called", "confirm": "yes"}
        own = {"Origin": base(relay)}
        async with http.post(base(relay) + "/suppression/remove", data=form, headers=own) as r:
            assert r.status == 403
        async with http.post(
            base(relay) + "/suppression/remove", data={**form, "csrf": csrf}, headers=own
        ) as r:
            assert r.status == 200
            page = await r.text()
    assert "Removed gone@example.org." in page
    assert "customer called" in page  # the audit log on the same page
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail("s@example.com")
    assert (await client.rcpt("gone@example.org")).code == 250
    await client.quit()
