"""`bounce-relay guardrails list|show|release` as an operator meets them: the command run as a
process against a real database, whose sends were made as a relay makes them (messages
accepted, the real gate's canary, outcomes applied, the real watch's judgement: see
tests/relay/web/test_guardrails_page.py's ``seed``), dated on that module's fixed clock.

The commands run on the machine's clock; nothing here depends on what it says: ``show``'s
rates now are checked for their form, the numbers for the evidence the trip recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from relay.config import load_config
from relay.ops.app import open_store
from relay.store.guardrails import Send
from tests.relay.web.test_guardrails_page import HOSTILE, SPRING, TRIPPED, seed
from tests.support.cli import run


@pytest.fixture
async def config(db_dsn, write_config) -> Path:
    """A config naming the database, which holds spring (paused), autumn (a canary) and
    summer (open)."""
    path: Path = write_config(f'[store]\ndsn = "{db_dsn}"\n', replace_base=True)
    async with AsyncExitStack() as stack:
        store = await open_store(load_config(path), stack)
        await seed(store)
    return path


@pytest.fixture
async def db(db_dsn) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


def _rows(stdout: str) -> list[dict[str, str]]:
    header, *rows = stdout.splitlines()
    names = header.split("\t")
    return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]


def _fields(stdout: str) -> dict[str, str]:
    """``show``'s "name  value" lines, up to the evidence."""
    lines = stdout.partition("evidence (at the trip):")[0].splitlines()
    return {name: value.strip() for name, _, value in (line.partition(" ") for line in lines)}


def _evidence(stdout: str) -> dict[str, object]:
    _, marker, document = stdout.partition("evidence (at the trip):\n")
    assert marker, stdout
    evidence: dict[str, object] = json.loads(document)
    return evidence


async def test_list_shows_held_sends_first_and_filters_by_state(config):
    listed = await run(config, "guardrails", "list")
    assert listed.returncode == 0, listed.stderr
    rows = _rows(listed.stdout)
    assert [(r["campaign"], r["provider"], r["state"]) for r in rows] == [
        ("spring", "google", "paused"),
        ("autumn", "microsoft", "canary"),
        ("summer", "yahoo", "open"),
    ]
    spring, autumn, summer = rows
    assert spring["from_domain"] == "news.example.com"
    assert (spring["level"], spring["canary"]) == ("pause", "100 of 100")
    assert (spring["since"], spring["tripped_at"]) == ("2026-11-03 09:10:00", "2026-11-03 09:20:00")
    assert "unknown user rate 13.00% (13 of 100 attempts" in spring["reason"]
    assert (autumn["canary"], autumn["tripped_at"], autumn["level"]) == ("30 of 100", "", "unknown")
    assert (summer["level"], summer["released_at"]) == ("review", "")

    paused = await run(config, "guardrails", "list", "--state", "paused")
    assert [r["campaign"] for r in _rows(paused.stdout)] == ["spring"]
    others = await run(config, "guardrails", "list", "--state", "canary", "--state", "open")
    assert [r["campaign"] for r in _rows(others.stdout)] == ["autumn", "summer"]
    first = await run(config, "guardrails", "list", "--limit", "1")
    assert [r["campaign"] for r in _rows(first.stdout)] == ["spring"]
    bad = await run(config, "guardrails", "list", "--state", "stopped")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


async def test_show_gives_the_state_the_rates_now_and_the_evidence(config):
    shown = await run(
        config, "guardrails", "show", "spring", "--from-domain", "news.example.com", "--provider",
        "google",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    fields = _fields(shown.stdout)
    assert (fields["campaign"], fields["from_domain"], fields["provider"]) == (
        "spring",
        "news.example.com",
        "google",
    )
    assert fields["state"] == "paused"
    assert fields["since"] == "2026-11-03T09:10:00+00:00"
    assert fields["tripped_at"] == TRIPPED.isoformat()
    assert fields["canary"] == "100 of 100 sent"
    assert fields["now"] in {"ok", "unknown", "review", "pause"}
    assert int(fields["attempts"]) >= 0 and fields["counted_from"]
    assert {f"rate.{r}" for r in ("bounce", "hard_bounce", "unknown_user", "complaint")} <= set(
        fields
    )
    assert fields["tripped_because"].startswith("bounce rate 13.00% (13 of 100 attempts")
    evidence = _evidence(shown.stdout)
    assert evidence["counts"] == {
        "attempts": 100,
        "delivered": 87,
        "bounced": 13,
        "hard_bounced": 13,
        "unknown_users": 13,
        "complaints": 0,
    }
    samples = evidence["samples"]
    assert isinstance(samples, list)
    assert [(s["amount"], s["category"]) for s in samples] == [
        (11, "user_unknown"),
        (2, "user_unknown"),
    ]
    assert "does not exist" in samples[0]["sample"]
    assert samples[1]["sample"] == HOSTILE
    assert "Empfänger unbekannt" in shown.stdout  # readable, not \u-escaped


async def test_show_of_an_unknown_send_and_bad_usage(config):
    unknown = await run(config, "guardrails", "show", "winter", "--provider", "google")
    assert unknown.returncode == 1
    assert "no guardrail for winter / (no From domain) / google" in unknown.stderr
    assert "guardrails list" in unknown.stderr
    wrong_domain = await run(
        config, "guardrails", "show", "spring", "--from-domain", "other.example", "--provider",
        "google",
    )  # fmt: skip
    assert wrong_domain.returncode == 1
    no_provider = await run(config, "guardrails", "show", "spring")
    assert no_provider.returncode == 2 and "--provider" in no_provider.stderr


async def test_release_is_audited_and_opens_the_send_once(config, db):
    """Without a reason (or a blank one): usage error, nothing released. A canary is not
    paused: nothing to release. spring, named in any case, is released as ops: audited, open,
    its page says who; a second release finds it open."""
    spring = ["spring", "--from-domain", "News.Example.com", "--provider", "Google"]
    missing = await run(config, "guardrails", "release", *spring)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    blank = await run(config, "guardrails", "release", *spring, "--reason", "  ")
    assert blank.returncode == 2 and "--reason" in blank.stderr
    canary = await run(
        config, "guardrails", "release", "autumn", "--from-domain", "news.example.com",
        "--provider", "microsoft", "--reason", "x",
    )  # fmt: skip
    assert canary.returncode == 1 and "is not paused" in canary.stderr
    assert await _state(db, SPRING) == "paused"
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 0

    released = await run(
        config, "guardrails", "release", *spring, "--reason", "list cleaned", "--actor", "ops"
    )
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith(
        "spring / news.example.com / google released (audited as ops): its held deliveries are "
        "due now"
    )
    assert await _state(db, SPRING) == "open"
    audit = await db.fetchrow("SELECT * FROM admin_audit WHERE action = 'guardrail.release'")
    assert (audit["actor"], audit["reason"]) == ("ops", "list cleaned")
    assert audit["subject"] == "guardrail spring / news.example.com / google"
    assert json.loads(audit["detail"])["evidence"]["counts"]["unknown_users"] == 13

    again = await run(config, "guardrails", "release", *spring, "--reason", "again")
    assert again.returncode == 1
    assert "spring / news.example.com / google is not paused" in again.stderr
    shown = await run(config, "guardrails", "show", *spring)
    fields = _fields(shown.stdout)
    assert (fields["state"], fields["released_by"]) == ("open", "ops")
    assert fields["released_at"] and fields["counted_from"] == fields["released_at"]
    assert "tripped_because" not in fields  # open now; the evidence stays below
    assert _evidence(shown.stdout)["counts"]["unknown_users"] == 13  # type: ignore[index]
    listed = _rows((await run(config, "guardrails", "list", "--state", "paused")).stdout)
    assert listed == []


async def test_stored_text_reaches_the_terminal_escaped(config, db_dsn):
    """A campaign with a tab, a newline and an escape sequence, a reply with a bidi override
    and an escape in its evidence: one row of ten fields, no control character raw."""
    evil = Send("evil\tcampaign\n\x1b[31mred", "news.example.com", "google")
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO guardrails (campaign, from_domain, provider, state, since, updated_at,"
            " level, reason, evidence, tripped_at) VALUES ($1, $2, $3, 'paused', $4, $4,"
            " 'pause', $5, $6, $4)",
            evil.campaign,
            evil.from_domain,
            evil.provider,
            TRIPPED,
            "unknown user rate \x1b]0;owned\x07 12%",
            json.dumps({"samples": [{"sample": "550 \u202egnp.exe\x1b[2J user unknown"}]}),
        )
    finally:
        await conn.close()
    listed = await run(config, "guardrails", "list", "--state", "paused")
    assert listed.returncode == 0, listed.stderr
    rows = _rows(listed.stdout)  # ten fields each, or this fails
    assert len(rows) == 2
    shown = await run(
        config, "guardrails", "show", evil.campaign, "--from-domain", evil.from_domain,
        "--provider", "google",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for out in (listed.stdout, shown.stdout):
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert _evidence(shown.stdout)["samples"] == [
        {"sample": "550 \u202egnp.exe\x1b[2J user unknown"}
    ]  # escaped in JSON's own way: the document reads back the same


async def _state(db: asyncpg.Connection, send: Send) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM guardrails WHERE campaign = $1 AND from_domain = $2 AND provider = $3",
        send.campaign,
        send.from_domain,
        send.provider,
    )
    return state
