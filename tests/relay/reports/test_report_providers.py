"""--group-by provider: rows and attempts per mailbox provider, decided once per event from
the MX host that answered (else the recipient domain), through the real delivery path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from relay.config import load_config
from relay.ops.app import Relay
from relay.reports.export import parse_filter
from relay.store import DsnRecord, ReportRow, Store, create_store
from tests.support.delivery import events_of, eventually, in_state, send
from tests.support.dns_server import ScriptedDNS
from tests.support.report_seeds import QUOTA_T, T0, UNKNOWN_T, YAHOO_T, Seeder, seed_standard


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn)
    yield s
    await s.close()


async def rows(store: Store, **kw: Any) -> list[ReportRow]:
    flt = parse_filter(start=kw.pop("start", "2026-11-02"), end=kw.pop("end", "2026-11-03"), **kw)
    return [
        r
        async for r in store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, "provider", flt.top
        )
    ]


async def test_rows_and_attempts_per_provider(store):
    """Gmail's replies are google's rows with google's attempts (7, 2 delivered); Yahoo's
    one row carries yahoo's 2 attempts."""
    await seed_standard(store)
    got = [
        (r.group, r.bounce_text, r.amount, r.messages, r.attempts, r.delivered)
        for r in await rows(store, kind="all")
    ]
    assert got == [
        ("google", QUOTA_T, 4, 2, 7, 2),
        ("google", UNKNOWN_T, 1, 1, 7, 2),
        ("yahoo", YAHOO_T, 1, 1, 2, 1),
    ]


@pytest.fixture
async def dns_server() -> AsyncIterator[ScriptedDNS]:
    async with ScriptedDNS() as server:
        yield server


async def test_a_custom_domain_on_microsoft_365_is_microsofts(
    upstream, dns_server, db_dsn, write_config, clock, db
):
    """company.test's MX is its Microsoft 365 tenant: its bounce and its delivery count for
    microsoft. gmail.com's MX cannot be looked up (SERVFAIL): no host answered, the
    recipient's domain says google."""
    dns_server.add("company.test", "MX", "0 company-test.mail.protection.outlook.com.")
    dns_server.add("company-test.mail.protection.outlook.com", "A", "127.0.0.1")
    dns_server.servfail.add("gmail.com")
    upstream.on_rcpt("gone@company.test", "550 5.1.1 <gone@company.test>: Recipient not found")
    text = f"""
    [smtp]
    listen = "127.0.0.1:0"
    hostname = "relay.test"
    [[routes]]
    domains = ["*"]
    mode = "mx"
    mx_port = {upstream.port}
    [admin]
    listen = "127.0.0.1:0"
    [delivery]
    nameservers = ["127.0.0.1"]
    dns_port = {dns_server.port}
    connect_timeout = "2s"
    command_timeout = "5s"
    """
    config = load_config(write_config(text, replace_base=True))
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
        await send(relay, ["gone@company.test", "ok@company.test"])
        await send(relay, ["ann@gmail.com"])
        await eventually(in_state(db, "gone@company.test", "bounced"))
        await eventually(in_state(db, "ok@company.test", "delivered"))
        await eventually(lambda: _has_event(db, "ann@gmail.com"))
        flt = parse_filter(start=None, end=None, kind="all", group_by="provider", now=clock())
        report = [
            (r.group, r.amount, r.attempts, r.delivered)
            async for r in relay.store.iter_bounce_report(
                flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
            )
        ]
    assert sorted(report) == [("google", 1, 1, 0), ("microsoft", 1, 2, 1)]
    for address, provider in (
        ("gone@company.test", "microsoft"),
        ("ok@company.test", "microsoft"),
        ("ann@gmail.com", "google"),
    ):
        assert {e["provider"] for e in await events_of(db, address)} == {provider}


async def _has_event(db: Any, address: str) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM events WHERE recipient = $1", address))


@pytest.mark.parametrize(
    ("remote_mta", "provider"),
    [
        ("company-test.mail.protection.outlook.com", "microsoft"),  # the MTA the bounce names
        (None, "google"),  # none named: the delivery's recipient domain, gmail.com
        ("mx1.example.org", "google"),  # one of no known provider's: the same
    ],
)
async def test_a_bounce_messages_provider(store, db, remote_mta, provider):
    s = Seeder(store)
    await s.message("ann@gmail.com", "A", "news.example.com", T0)
    await s.finish(T0)
    [delivery] = await store.list_deliveries("delivered", 10)
    await store.apply_dsn_results(
        T0 + timedelta(hours=1),
        [
            DsnRecord(
                delivery_id=delivery.id,
                event="hard_bounce",
                finish_state="bounced",
                code=550,
                enhanced="5.1.1",
                reply_text="550 5.1.1 User unknown",
                template="550 5.1.1 User unknown",
                category="user_unknown",
                destination=remote_mta,
            )
        ],
    )
    [bounce] = [e for e in await events_of(db, "ann@gmail.com") if e["type"] == "hard_bounce"]
    assert bounce["provider"] == provider
    assert [(r.group, r.amount) for r in await rows(store, kind="hard")] == [(provider, 1)]
