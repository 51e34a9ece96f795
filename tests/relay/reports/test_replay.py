"""`classify --replay`: real history recorded through a scripted upstream, replayed with
other rules; the output lists exactly the bounces whose verdict would change."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest

from relay.config import Config, Rules
from relay.reports.replay import Tally, run_replay
from relay.store import Store, create_store
from tests.support.bounces import DSN_CONFIG, dsn_message, mail_bounce
from tests.support.delivery import delivery_config, eventually, in_state, retry_due, send
from tests.support.scripted import FakeClock

# What the upstream answers at RCPT under rules A (delivery_config's: [retry] 1m, 5m;
# greylisting 30 s), and what the relay recorded for it.
GONE = "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown"  # hard, suppress
NOBODY = "550 5.1.1 <nobody@example.net>: User unknown in virtual mailbox table"  # hard, suppress
FULL = "452 4.2.2 <full@example.org>: Mailbox full"  # soft, default 1m (then 5m: twice)
QUOTA = "552 5.2.2 <quota@example.org>: Quota exceeded"  # soft (5xx), default 1m
GREY = (
    "451 4.7.1 <grey@example.org>: Recipient address rejected: Greylisted, "
    "see http://postgrey.schweikert.ch/help/example.org.html"
)  # soft, greylisting 30 s
# hard, spam_block_ip, no suppression
BLOCKED = "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"
OLD = "550 5.1.1 <old@example.net>: User unknown in virtual mailbox table"  # ten days earlier


@dataclass
class History:
    store: Store
    db: asyncpg.Connection
    now: datetime  # when the recent bounces happened (the relay's clock)

    async def replay(self, rules: Rules, *, days: int = 7, jsonl: bool = False) -> Replay:
        out = io.StringIO()
        tally = await run_replay(
            self.store,
            rules,
            self.now - timedelta(days=days),
            self.now + timedelta(hours=1),
            out,
            as_jsonl=jsonl,
        )
        return Replay(out.getvalue().splitlines(), tally)


@dataclass
class Replay:
    lines: list[str]
    tally: Tally

    @property
    def rows(self) -> list[dict[str, object]]:
        """--jsonl: the changed bounces as (recipient, changes), without the summary."""
        return [json.loads(line) for line in self.lines[:-1]]

    def changes(self) -> list[tuple[object, object]]:
        return [(r["recipient"], r["changes"]) for r in self.rows]


def rules_a(make_config: Callable[..., Config], *, edit: tuple[str, str] = ("", "")) -> Rules:
    """The rules the history was recorded with; ``edit`` replaces one piece of text."""
    text = delivery_config(2525)
    if edit[0]:
        assert edit[0] in text
        text = text.replace(edit[0], edit[1])
    return make_config(text, replace_base=True).rules


def rules_plus(make_config: Callable[..., Config], extra: str) -> Rules:
    return make_config(delivery_config(2525, extra), replace_base=True).rules


@pytest.fixture
async def history(upstream, start_relay, db, db_dsn, clock: FakeClock) -> AsyncIterator[History]:
    """Seven bounces of real deliveries through rules A now, one more ten days before."""
    for address, reply in [
        ("gone@example.org", GONE),
        ("nobody@example.net", NOBODY),
        ("blocked@example.org", BLOCKED),
        ("old@example.net", OLD),
        ("full@example.org", FULL),  # every time
    ]:
        upstream.on_rcpt(address, reply)
    upstream.on_rcpt("quota@example.org", QUOTA, "250 2.1.5 OK")
    upstream.on_rcpt("grey@example.org", GREY, "250 2.1.5 OK")
    async with start_relay(upstream.port) as relay:
        await send(relay, ["old@example.net"])
        await eventually(in_state(db, "old@example.net", "bounced"))
        clock.advance(days=10)
        now = clock()
        await send(
            relay,
            [
                "gone@example.org",
                "nobody@example.net",
                "full@example.org",
                "quota@example.org",
                "grey@example.org",
                "blocked@example.org",
                "ok@example.org",
            ],
        )
        for address in ("gone@example.org", "nobody@example.net", "blocked@example.org"):
            await eventually(in_state(db, address, "bounced"))
        for address in ("full@example.org", "quota@example.org", "grey@example.org"):
            await eventually(in_state(db, address, "queued"))
        await retry_due(relay, clock, minutes=1, seconds=1)
        await eventually(in_state(db, "quota@example.org", "delivered"))
        await eventually(in_state(db, "grey@example.org", "delivered"))
        await eventually(lambda: _soft_bounces(db, "full@example.org", 2))
    store = await create_store(db_dsn)
    try:
        yield History(store, db, now)
    finally:
        await store.close()


async def _soft_bounces(db: asyncpg.Connection, recipient: str, n: int) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM events WHERE recipient = $1 AND type = 'soft_bounce'", recipient
    )
    return bool(count == n)


async def test_the_same_rules_change_nothing(history, make_config):
    """Replaying the rules the history was recorded with reports no change at all."""
    result = await history.replay(rules_a(make_config))
    assert result.tally.replayed == 7
    assert result.tally.changed == 0
    assert len(result.lines) == 1  # the summary only
    expected = "replayed 7 bounce(s), 0 changed (kind 0, category 0, suppress 0, timing 0)"
    assert expected in result.lines[0]


async def test_a_classify_rule_lists_exactly_the_bounce_it_changes(history, make_config):
    """A rule making 5.1.1 at example.net soft changes one recorded bounce: kind and
    suppression, as a table row with the time, recipient, code and reply; the summary counts
    one address no longer suppressed."""
    rules = rules_plus(
        make_config,
        """
        [[classify.rules]]
        name = "example-net-unknown-is-soft"
        match = { domain = ["example.net"], enhanced = ["5.1.1"] }
        kind = "soft"
        """,
    )
    result = await history.replay(rules)
    when = history.now.strftime("%Y-%m-%d %H:%M:%S")
    header, row, summary = result.lines
    assert header.split() == ["time", "(UTC)", "recipient", "code", "reply", "changes"]
    assert row == (
        f"{when}  nobody@example.net            550   "
        "550 5.1.1 <nobody@example.net>: User unknown in…  kind: hard → soft; suppress: yes → no"
    )
    assert summary.endswith(
        "replayed 7 bounce(s), 1 changed (kind 1, category 0, suppress 1, timing 0); "
        "addresses newly suppressed 0, no longer suppressed 1; "
        "not compared: 0 deferred by an incident, 0 held by confirm_hard"
    )


async def test_the_period_leaves_out_older_bounces(history, make_config):
    """The bounce of ten days ago is replayed only when the period reaches back to it."""
    rules = rules_plus(
        make_config,
        """
        [[classify.rules]]
        name = "example-net-unknown-is-soft"
        match = { domain = ["example.net"], enhanced = ["5.1.1"] }
        kind = "soft"
        """,
    )
    week = await history.replay(rules, days=7, jsonl=True)
    fortnight = await history.replay(rules, days=14, jsonl=True)
    assert [r for r, _ in week.changes()] == ["nobody@example.net"]
    assert [r for r, _ in fortnight.changes()] == ["old@example.net", "nobody@example.net"]
    assert (week.tally.replayed, fortnight.tally.replayed) == (7, 8)
    assert fortnight.tally.no_longer_suppressed == 2


async def test_a_retry_schedule_change_shows_the_old_and_new_delay(history, make_config):
    """Greylisting retried after 5 minutes instead of 30 s: only the greylisted bounce, with
    the recorded and the new timing (JSON lines, summary last)."""
    rules = rules_a(make_config, edit=('schedule = ["30s"]', 'schedule = ["5m"]'))
    result = await history.replay(rules, jsonl=True)
    [row] = result.rows
    assert row["recipient"] == "grey@example.org"
    assert row["source"] == "smtp"
    assert (row["code"], row["enhanced"], row["reply"]) == (451, "4.7.1", GREY)
    assert row["occurred_at"] == history.now.isoformat(timespec="seconds")
    assert row["changes"] == {
        "timing": {
            "old": {"rule": "greylisting", "gives_up": False, "retry_after_seconds": 30},
            "new": {"rule": "greylisting", "gives_up": False, "retry_after_seconds": 300},
        }
    }
    summary = json.loads(result.lines[-1])["summary"]
    assert summary["replayed"] == 7
    assert summary["changed"] == 1
    assert summary["changes"] == {"kind": 0, "category": 0, "suppress": 0, "timing": 1}


async def test_giving_up_earlier_is_a_timing_change(history, make_config):
    """max_attempts = 2 on the default rule: the second soft bounce of the full mailbox would
    end the delivery instead of retrying in 5 minutes; its first bounce stays as it was."""
    rules = rules_a(make_config, edit=('max_age = "1d"', 'max_age = "1d"\n    max_attempts = 2'))
    result = await history.replay(rules, jsonl=True)
    assert result.changes() == [
        (
            "full@example.org",
            {
                "timing": {
                    "old": {"rule": "default", "gives_up": False, "retry_after_seconds": 300},
                    "new": {"rule": "default", "gives_up": True, "retry_after_seconds": None},
                }
            },
        )
    ]


@pytest.mark.parametrize("delivery_gone", [False, True])
async def test_max_age_counts_from_the_first_failure(history, make_config, delivery_gone):
    """max_age 5m: the second attempt of the full mailbox (61 s after its first failure, next
    one 5 minutes later) would give up. The first failure comes from the delivery row, or,
    when that row is gone, from the delivery's own first soft bounce."""
    if delivery_gone:
        await history.db.execute("DELETE FROM deliveries WHERE recipient_key = 'full@example.org'")
    rules = rules_a(make_config, edit=('max_age = "1d"', 'max_age = "5m"'))
    result = await history.replay(rules, jsonl=True)
    assert result.changes() == [
        (
            "full@example.org",
            {
                "timing": {
                    "old": {"rule": "default", "gives_up": False, "retry_after_seconds": 300},
                    "new": {"rule": "default", "gives_up": True, "retry_after_seconds": None},
                }
            },
        )
    ]


async def test_kind_category_and_rule_changes_together(history, make_config):
    """A category override and a new retry rule: each changed bounce once, with every field
    that changed; the retry rule's name is a timing change even at the same delay."""
    rules = rules_plus(
        make_config,
        """
        [[classify.rules]]
        name = "spamhaus-is-policy"
        match = { text = "spamhaus" }
        category = "policy_auth"

        [[retry.rules]]
        name = "full-mailboxes"
        match = { category = ["mailbox_full"] }
        schedule = ["1m", "5m"]
        """,
    )
    result = await history.replay(rules, jsonl=True)
    timing = {
        "old": {"rule": "default", "gives_up": False, "retry_after_seconds": 60},
        "new": {"rule": "full-mailboxes", "gives_up": False, "retry_after_seconds": 60},
    }
    second = {
        "old": {"rule": "default", "gives_up": False, "retry_after_seconds": 300},
        "new": {"rule": "full-mailboxes", "gives_up": False, "retry_after_seconds": 300},
    }
    assert sorted(result.changes(), key=str) == sorted(
        [
            ("blocked@example.org", {"category": {"old": "spam_block_ip", "new": "policy_auth"}}),
            ("full@example.org", {"timing": timing}),
            ("quota@example.org", {"timing": timing}),
            ("full@example.org", {"timing": second}),
        ],
        key=str,
    )
    assert result.tally.fields == {"category": 1, "timing": 3}


async def test_events_before_0006_are_compared_without_suppress_and_delay(history, make_config):
    """Rows written before 0006 have no suppress and no retry_at: a kind change still shows,
    the suppression is not compared, and of the timing only the retry rule's name."""
    await history.db.execute("UPDATE events SET suppress = NULL, retry_at = NULL")
    soft_net = rules_plus(
        make_config,
        """
        [[classify.rules]]
        name = "example-net-unknown-is-soft"
        match = { domain = ["example.net"], enhanced = ["5.1.1"] }
        kind = "soft"
        """,
    )
    result = await history.replay(soft_net, jsonl=True)
    assert result.changes() == [("nobody@example.net", {"kind": {"old": "hard", "new": "soft"}})]
    assert result.tally.no_longer_suppressed == 0
    slower = rules_a(make_config, edit=('schedule = ["30s"]', 'schedule = ["5m"]'))
    assert (await history.replay(slower)).tally.changed == 0
    renamed = rules_a(make_config, edit=('name = "greylisting"', 'name = "greylist"'))
    assert (await history.replay(renamed, jsonl=True)).changes() == [
        (
            "grey@example.org",
            {
                "timing": {
                    "old": {"rule": "greylisting", "gives_up": None, "retry_after_seconds": None},
                    "new": {"rule": "greylist", "gives_up": False, "retry_after_seconds": 30},
                }
            },
        )
    ]


async def test_incident_and_confirm_hard_bounces_are_counted_not_compared(history, make_config):
    """A bounce an incident deferred or confirm_hard held was not decided by the rules alone:
    it is counted apart, never listed as a change of the rules."""
    await history.db.execute(
        "UPDATE events SET incident_id = 1 WHERE recipient = 'nobody@example.net'"
    )
    await history.db.execute(
        "UPDATE events SET rule = 'confirm_hard' WHERE recipient = 'gone@example.org'"
        " AND type = 'hard_bounce'"
    )
    all_unknown_soft = rules_plus(
        make_config,
        """
        [[classify.rules]]
        name = "unknown-is-soft"
        match = { enhanced = ["5.1.1"] }
        kind = "soft"
        """,
    )
    result = await history.replay(all_unknown_soft, jsonl=True)
    assert result.changes() == []
    assert dict(result.tally.not_compared) == {"incident": 1, "confirm_hard": 1}
    summary = json.loads(result.lines[-1])["summary"]
    assert summary["not_compared"] == {"incident": 1, "confirm_hard": 1}


async def test_bounces_read_from_bounce_messages_are_replayed_as_reported(
    upstream, start_relay, db, db_dsn, clock, make_config
):
    """A bounce message's failure is hard or soft by the verdict, with no retry timing; a
    delayed report stays soft whatever the rules say. Such rows carry no suppress."""
    async with start_relay(upstream.port, DSN_CONFIG) as relay:
        for address, kwargs in [
            ("far@example.com", {}),
            (
                "slow@example.com",
                {
                    "action": "delayed",
                    "status": "4.4.1",
                    "diagnostic": "smtp; 451 4.4.1 Connection timed out",
                },
            ),
        ]:
            await send(relay, [address])
            await eventually(in_state(db, address, "delivered"))
            [got] = upstream.delivered_to(address)
            await mail_bounce(relay, got.sender, dsn_message(got.sender, address, **kwargs))
        await eventually(in_state(db, "far@example.com", "bounced"))
    store = await create_store(db_dsn)
    try:
        bounces = History(store, db, clock())
        same = await bounces.replay(rules_a(make_config), jsonl=True)
        swapped = await bounces.replay(
            rules_plus(
                make_config,
                """
                [[classify.rules]]
                name = "unknown-is-soft"
                match = { enhanced = ["5.1.1"] }
                kind = "soft"

                [[classify.rules]]
                name = "timeouts-are-hard"
                match = { enhanced = ["4.4.1"] }
                kind = "hard"
                """,
            ),
            jsonl=True,
        )
    finally:
        await store.close()
    assert (same.tally.replayed, same.tally.changed) == (2, 0)
    # The suppression the bounce message made is recorded with its event, so replay says the
    # new rules would not have made it.
    assert swapped.changes() == [
        (
            "far@example.com",
            {"kind": {"old": "hard", "new": "soft"}, "suppress": {"old": True, "new": False}},
        )
    ]
    assert swapped.rows[0]["source"] == "dsn"
