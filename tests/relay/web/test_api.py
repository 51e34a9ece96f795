"""The JSON API: bearer tokens, the bounces report in three formats, suppression GET/DELETE."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import aiohttp
import aiosmtplib
import asyncpg
import openpyxl
import pytest

from relay.ops.app import Relay
from relay.passwords import hash_password
from relay.reports.export import parse_filter, write_csv
from tests.support.report_seeds import QUOTA_T, YAHOO_T, seed_standard

TOKEN = "tok-7f3a9c"


@pytest.fixture(scope="module")
def token_hash() -> str:
    return hash_password(TOKEN)


@pytest.fixture
async def relay(db_dsn, make_config, token_hash) -> AsyncIterator[Relay]:
    config = make_config(
        f'[[admin.tokens]]\nname = "crm"\nhash = "{token_hash}"\n[delivery]\nenabled = false\n'
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as r:
        yield r


async def call(relay: Relay, method: str, path: str, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{relay.admin_port}{path}", headers=headers
        ) as response,
    ):
        return response.status, response.headers, await response.read()


REPORT = "/api/v1/reports/bounces?from=2026-11-02&to=2026-11-03"


async def test_without_or_with_a_wrong_token_401(relay):
    """No Authorization header, a wrong token, a wrong scheme: 401 for every route."""
    for path, method in (
        (REPORT, "GET"),
        ("/api/v1/suppression/a@example.org", "GET"),
        ("/api/v1/suppression/a@example.org?reason=x", "DELETE"),
    ):
        assert (await call(relay, method, path, token=None))[0] == 401
        assert (await call(relay, method, path, token="wrong"))[0] == 401


async def test_json_report_rows(relay):
    """format=json returns the report's rows with the filter echoed."""
    await seed_standard(relay.store)
    status, _, body = await call(relay, "GET", REPORT + "&group_by=ip")
    assert status == 200
    data = json.loads(body)
    assert data["group_by"] == "source_ip"
    assert [
        (r["source_ip"], r["bounce_text"], r["amount"], r["messages"]) for r in data["rows"]
    ] == [("127.0.0.2", QUOTA_T, 4, 2), ("127.0.0.3", YAHOO_T, 1, 1)]


async def test_json_report_by_provider_with_attempts_and_totals(relay):
    """group_by=provider: a row per provider and text, the provider's attempts on each, and
    the total line's numbers under "totals"."""
    await seed_standard(relay.store)
    status, _, body = await call(relay, "GET", REPORT + "&group_by=provider")
    assert status == 200
    data = json.loads(body)
    assert data["group_by"] == "provider"
    assert [
        (r["provider"], r["amount"], r["attempts"], r["delivered"], r["bounce_rate"])
        for r in data["rows"]
    ] == [("google", 4, 7, 2, 0.5714), ("yahoo", 1, 2, 1, 0.5)]
    assert data["totals"] == {
        "amount": 5,
        "attempts": 9,
        "delivered": 3,
        "bounce_rate": 0.5556,
        "messages": 3,
        "first_seen": "2026-11-02T10:00:00+00:00",
        "last_seen": "2026-11-02T13:00:00+00:00",
    }


async def test_series_by_day_in_json_and_xlsx(relay):
    """by=day: a point per day and group; the workbook charts it over time."""
    await seed_standard(relay.store)
    status, _, body = await call(relay, "GET", REPORT + "&by=day&type=all")
    assert status == 200
    data = json.loads(body)
    assert data["by"] == "day"
    assert [(r["bucket"], r["from_domain"], r["amount"], r["attempts"]) for r in data["rows"]] == [
        ("2026-11-02T00:00:00+00:00", "news.example.com", 5, 7),
        ("2026-11-02T00:00:00+00:00", "shop.example.com", 1, 2),
    ]
    status, _, xlsx = await call(relay, "GET", REPORT + "&by=day&format=xlsx")
    assert status == 200
    assert openpyxl.load_workbook(io.BytesIO(xlsx)).sheetnames == ["bounces", "over time"]


async def test_csv_bytes_match_the_cli_writer_and_xlsx_opens(relay):
    """format=csv is byte for byte what the CLI writes; format=xlsx is a workbook."""
    await seed_standard(relay.store)
    status, headers, body = await call(relay, "GET", REPORT + "&format=csv&campaign=A")
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    flt = parse_filter(start="2026-11-02", end="2026-11-03", campaigns=["A"])
    expected = io.StringIO(newline="")
    await write_csv(
        relay.store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        ),
        flt,
        expected,
    )
    assert body == expected.getvalue().encode()
    status, _, xlsx = await call(relay, "GET", REPORT + "&format=xlsx")
    assert status == 200
    book = openpyxl.load_workbook(io.BytesIO(xlsx))
    assert book["bounces"]["B2"].value == QUOTA_T


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("&group_by=campaign", "use from_domain, ip or provider"),
        ("&type=bogus", "use soft, hard or all"),
        ("&format=pdf", "use json, csv or xlsx"),
        ("&top=ten", "top 'ten': use a whole number from 1 to"),
        ("&by=week", "use hour or day"),
    ],
)
async def test_bad_report_filters_are_400(relay, query, message):
    """A filter the report cannot honour is a 400 with the reason, not a 500."""
    status, _, body = await call(relay, "GET", REPORT + query)
    assert status == 400
    assert message in body.decode()


async def test_delete_needs_a_reason_audits_the_token_and_the_relay_accepts_again(relay, db_dsn):
    """DELETE without a reason is 400; with one the entry goes, audited as token:crm, and the
    next RCPT to the address is accepted."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    status, _, body = await call(relay, "GET", "/api/v1/suppression/Gone@Example.org")
    assert status == 200
    assert b'"suppressed": true' in body
    assert (await call(relay, "DELETE", "/api/v1/suppression/gone@example.org"))[0] == 400
    status, _, body = await call(
        relay, "DELETE", "/api/v1/suppression/gone@example.org?reason=ticket%2042"
    )
    assert status == 200
    assert (await call(relay, "GET", "/api/v1/suppression/gone@example.org"))[0] == 404
    assert (await call(relay, "DELETE", "/api/v1/suppression/gone@example.org?reason=again"))[
        0
    ] == 404
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail("s@example.com")
    assert (await client.rcpt("gone@example.org")).code == 250
    await client.quit()
    db = await asyncpg.connect(db_dsn)
    try:
        audit = await db.fetchrow("SELECT actor, action, reason FROM admin_audit")
    finally:
        await db.close()
    assert tuple(audit) == ("token:crm", "suppression.remove", "ticket 42")
