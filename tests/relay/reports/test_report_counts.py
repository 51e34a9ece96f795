"""The report's attempts, deliveries and bounce rate, and its honest totals, over outcomes
written through the store's real write path (apply_outcomes, apply_dsn_results)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from relay.reports.export import TextSink, export, parse_filter
from relay.store import DsnRecord, OutcomeRecord, ReportRow, ReportTotals, Store, create_store
from tests.support.report_seeds import GMAIL_QUOTA, T0, YAHOO_FULL, Seeder, seed_standard


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn)
    yield s
    await s.close()


async def report(store: Store, **kw: Any) -> tuple[list[ReportRow], ReportTotals]:
    flt = parse_filter(start=kw.pop("start", "2026-11-02"), end=kw.pop("end", "2026-11-03"), **kw)
    stream = store.iter_bounce_report(
        flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
    )
    rows = [r async for r in stream]
    assert stream.totals is not None
    return rows, stream.totals


async def test_each_row_carries_its_groups_attempts_and_deliveries(store):
    """news.example.com tried 7 times (5 bounces, 2 deliveries), shop 2 times: every row of
    a group carries the group's numbers, whichever text it is."""
    await seed_standard(store)
    rows, _ = await report(store, kind="all")
    assert [(r.group, r.amount, r.attempts, r.delivered) for r in rows] == [
        ("news.example.com", 4, 7, 2),
        ("news.example.com", 1, 7, 2),
        ("shop.example.com", 1, 2, 1),
    ]


async def test_by_ip_the_attempts_are_the_ips(store):
    """127.0.0.2 answered 5 attempts with bounces; the deliveries went out from 127.0.0.9,
    which has no bounce and so no row, but counts in the total."""
    await seed_standard(store)
    rows, totals = await report(store, kind="all", group_by="ip")
    assert {(r.group, r.attempts, r.delivered) for r in rows} == {
        ("127.0.0.2", 5, 0),
        ("127.0.0.3", 1, 0),
    }
    assert (totals.attempts, totals.delivered) == (9, 3)


async def test_the_campaign_filter_and_the_period_apply_to_attempts(store):
    """--campaign B: shop's attempts only; one hour: that hour's attempts only."""
    await seed_standard(store)
    rows, totals = await report(store, campaigns=["B"])
    assert [(r.group, r.attempts, r.delivered) for r in rows] == [("shop.example.com", 2, 1)]
    assert (totals.attempts, totals.delivered) == (2, 1)
    # 10:00-11:00: ann's two soft bounces, gone's hard bounce; nothing delivered yet
    rows, totals = await report(store, start="2026-11-02T10:00", end="2026-11-02T11:00")
    assert [(r.group, r.amount, r.attempts, r.delivered) for r in rows] == [
        ("news.example.com", 2, 3, 0)
    ]


async def test_attempts_across_days_read_whole_days_and_edge_hours(store):
    """From 22:00 on day 1 to 01:00 on day 3: the day rows of day 2, the hour rows of the
    edges, nothing outside."""
    s = Seeder(store)
    day1 = T0.replace(day=1)
    times = [day1.replace(hour=21), day1.replace(hour=22), T0, T0.replace(day=3, hour=0)]
    times.append(T0.replace(day=3, hour=1))  # the period ends before this one
    await s.message("a@yahoo.com", "A", "news.example.com", times[0])
    for at in times:
        await s.bounce(at, YAHOO_FULL.format(rcpt="a@yahoo.com"), "127.0.0.2")
    rows, totals = await report(store, start="2026-11-01T22:00", end="2026-11-03T01:00")
    assert [(r.amount, r.attempts) for r in rows] == [(3, 3)]
    assert totals.attempts == 3


async def test_bounce_rate_is_the_rows_amount_over_its_groups_attempts(store):
    """The rates of a group's rows add up to the group's bounce rate."""
    await seed_standard(store)
    flt = parse_filter(start="2026-11-02", end="2026-11-03", kind="all")
    out = io.StringIO()
    await export(store, flt, "json", TextSink(out))
    document = json.loads(out.getvalue())
    news = [r for r in document["rows"] if r["from_domain"] == "news.example.com"]
    assert [r["bounce_rate"] for r in news] == [round(4 / 7, 4), round(1 / 7, 4)]
    assert document["totals"] == {
        "amount": 6,
        "attempts": 9,
        "delivered": 3,
        "bounce_rate": round(6 / 9, 4),
        "messages": 4,
        "first_seen": "2026-11-02T10:00:00+00:00",
        "last_seen": "2026-11-02T13:00:00+00:00",
    }


async def test_total_counts_a_message_once_across_ips_texts_and_types(store):
    """One message bounced from two IPs, with two texts, soft then hard: each row counts it,
    the total once."""
    s = Seeder(store)
    await s.message("ann@gmail.com", "A", "news.example.com", T0)
    await s.bounce(T0, GMAIL_QUOTA.format(id="a1si1.1"), "127.0.0.2")
    await s.bounce(T0 + timedelta(hours=1), GMAIL_QUOTA.format(id="b2si2.2"), "127.0.0.3")
    await s.bounce(T0 + timedelta(hours=2), "452 4.2.2 Mailbox full", "127.0.0.3")
    await s.bounce(T0 + timedelta(hours=3), "550 5.1.1 No such user", "127.0.0.3", kind="hard")
    rows, totals = await report(store, group_by="ip")
    assert [(r.group, r.messages) for r in rows] == [
        ("127.0.0.2", 1),
        ("127.0.0.3", 1),
        ("127.0.0.3", 1),
    ]
    assert (totals.amount, totals.messages) == (3, 1)
    _, totals = await report(store, kind="all")
    assert (totals.amount, totals.messages, totals.attempts) == (4, 1, 4)
    _, totals = await report(store, kind="hard")
    assert (totals.amount, totals.messages) == (1, 1)


async def test_totals_are_the_whole_filters_whatever_top_keeps(store):
    await seed_standard(store)
    rows, totals = await report(store, kind="all", top=1)
    assert len(rows) == 1
    assert (totals.amount, totals.messages, totals.attempts) == (6, 4, 9)


async def test_no_totals_without_bounces_and_no_rate_without_attempts(store):
    """An empty period: zeros and no times. A bounce message for a delivery the relay sent
    counts as a bounce, not as a second attempt."""
    _, totals = await report(store)
    assert totals == ReportTotals(0, 0, 0, 0, None, None)
    s = Seeder(store)
    await s.message("gone@example.org", "A", "news.example.com", T0)
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
                destination="mx1.example.org",
            )
        ],
    )
    rows, totals = await report(store, kind="hard")
    assert [(r.amount, r.attempts, r.delivered) for r in rows] == [(1, 1, 1)]
    assert (totals.amount, totals.messages, totals.attempts) == (1, 1, 1)


async def test_outcomes_that_were_no_attempt_are_not_counted(store):
    """A cancellation (suppressed) and a delivery given up untried write events but were
    no attempt."""
    s = Seeder(store)
    for n in range(2):
        await s.message(f"u{n}@example.org", "A", "news.example.com", T0)
    claimed = await store.claim_due_deliveries("seed", T0, timedelta(minutes=5), 10)
    cancelled, given_up = claimed
    await store.apply_outcomes(
        T0,
        [
            OutcomeRecord(
                cancelled.id, cancelled.lease_token, "cancelled", "suppressed", counts_attempt=False
            ),
            OutcomeRecord(
                given_up.id,
                given_up.lease_token,
                "expired",
                "soft_bounce",
                counts_attempt=False,
                code=451,
                reply_text="451 4.3.0 given up",
                template="451 4.3.0 given up",
                category="other",
                synthetic=True,
            ),
        ],
    )
    rows, totals = await report(store)
    assert [(r.amount, r.attempts) for r in rows] == [(1, 0)]
    assert (totals.amount, totals.attempts) == (1, 0)


async def test_rows_rolled_up_before_0014_count_in_the_total_as_their_rows_did(store, db_dsn):
    """A rollup row from before the migration has no overall message count: the total
    counts its messages per text, as the report did then."""
    await seed_standard(store)
    db = await asyncpg.connect(db_dsn)
    try:
        await db.execute(
            "UPDATE bounce_rollup SET messages_overall = NULL, messages_overall_any = NULL"
        )
    finally:
        await db.close()
    _, totals = await report(store, kind="all")
    assert totals.messages == 2 + 1 + 1
