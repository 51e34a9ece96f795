"""classify, queue and profile commands as an operator runs them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from datetime import datetime, timedelta

import pytest

from policies.templates import template_of
from relay.config import load_config
from relay.ops.app import Relay
from tests.support.cli import REPO
from tests.support.cli import run_cli as cli
from tests.support.delivery import delivery_config, eventually, in_state, send
from tests.support.scripted import ScriptedUpstream


def test_classify_shows_kind_category_rule_and_schedule():
    """A greylisting reply matches the repo config's greylisting rule and shows its times."""
    result = cli(
        "classify",
        "451 4.7.1 Greylisted, try again later",
        "--json",
        "--config",
        str(REPO / "config.toml"),
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["kind"], out["category"], out["suppress"], out["rule"]) == (
        "soft",
        "greylisted",
        False,
        "greylisting",
    )
    assert len(out["next_attempts"]) == 5  # max_attempts 6: attempts 2..6


def test_classify_decides_as_the_relay_does_with_a_provider_hint():
    """Yahoo's 421 TSS04: the relay's worker stays away two hours under rule yahoo-ts04;
    `classify` asks the same decision and says so (it said `default` and minutes before)."""
    result = cli(
        "classify",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "--domain",
        "yahoo.com",
        "--json",
        "--config",
        str(REPO / "config.toml"),
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["kind"], out["rule"]) == ("soft", "yahoo-ts04")
    assert out["hint"]["name"] == "yahoo-ts04"
    assert (out["hint"]["retry_after"], out["hint"]["slow_down"]) == ("2h", True)
    first, second = (datetime.fromisoformat(t) for t in out["next_attempts"][:2])
    assert second - first == timedelta(hours=2)


def test_classify_jsonl_reads_stdin_and_reports_bad_lines():
    """--jsonl: one result per line; a bad line is named and the rest still classified."""
    lines = "\n".join(
        [
            json.dumps({"reply": "550 5.1.1 <a@gmail.com>: user unknown", "domain": "gmail.com"}),
            "{not json",
            json.dumps({"reply": "554 5.7.1 blocked using zen.spamhaus.org"}),
        ]
    )
    result = cli("classify", "--jsonl", "--config", str(REPO / "config.toml"), stdin=lines)
    assert result.returncode == 1
    first, bad, third = (json.loads(x) for x in result.stdout.splitlines())
    assert (first["kind"], first["category"], first["suppress"]) == ("hard", "user_unknown", True)
    assert bad["line"] == 2
    assert (third["kind"], third["category"], third["suppress"]) == ("hard", "spam_block_ip", False)


@pytest.mark.slow
async def test_queue_and_profile_commands(db_dsn, write_config):
    """queue list/show/retry/purge and profile show against a relay's database."""
    async with ScriptedUpstream() as up:
        up.on_rcpt("soft@example.org", "452 4.2.2 Mailbox full")
        up.on_rcpt("hard@example.org", "550 5.1.1 User unknown")
        text = delivery_config(up.port) + f'\n[store]\ndsn = "{db_dsn}"\n'
        path = write_config(text, replace_base=True)
        config = load_config(path)
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            import asyncpg

            db = await asyncpg.connect(db_dsn)
            try:
                await send(relay, ["soft@example.org", "hard@example.org"])
                await eventually(in_state(db, "hard@example.org", "bounced"))
                await eventually(in_state(db, "soft@example.org", "queued"))
                await eventually(lambda: _soft_events(db))
                delivery_id = await db.fetchval(
                    "SELECT id FROM deliveries WHERE recipient_key = 'soft@example.org'"
                )
            finally:
                await db.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--config", str(path))

    listed = await asyncio.to_thread(run, "queue", "list", "--state", "queued")
    assert listed.returncode == 0, listed.stderr
    assert "soft@example.org" in listed.stdout
    assert "hard@example.org" not in listed.stdout
    shown = await asyncio.to_thread(run, "queue", "show", str(delivery_id))
    assert "soft_bounce" in shown.stdout
    assert "mailbox_full" in shown.stdout
    retried = await asyncio.to_thread(
        run, "queue", "retry", str(delivery_id), "--reason", "mailbox emptied", "--actor", "ops"
    )
    assert retried.returncode == 0, retried.stderr
    assert "audited as ops" in retried.stdout
    purged = await asyncio.to_thread(
        run, "queue", "purge", str(delivery_id), "--reason", "test", "--actor", "ops"
    )
    assert purged.returncode == 0
    again = await asyncio.to_thread(run, "queue", "purge", str(delivery_id), "--reason", "x")
    assert again.returncode == 1
    profile = await asyncio.to_thread(run, "profile", "show", "Hard@Example.org")
    assert profile.returncode == 0, profile.stderr
    assert "hard_bounced" in profile.stdout
    assert "user_unknown" in profile.stdout
    suppressions = await asyncio.to_thread(run, "suppression", "list")
    assert suppressions.stdout.startswith("hard@example.org\thard_bounce")
    unknown = await asyncio.to_thread(run, "profile", "show", "nobody@example.org")
    assert unknown.returncode == 1


async def _soft_events(db) -> bool:
    count: int = await db.fetchval("SELECT count(*) FROM events WHERE type = 'soft_bounce'")
    return count >= 1


@pytest.mark.slow
async def test_report_after_a_real_relay_run(db_dsn, write_config):
    """Mail through the relay to a scripted upstream; the CSV report shows what it answered."""
    import asyncpg

    async with ScriptedUpstream() as up:
        for n in range(3):
            up.on_rcpt(
                f"full{n}@example.org",
                f"452 4.2.2 <full{n}@example.org>: Mailbox full, id Q{n}X7AB{n}",
            )
        up.on_rcpt("gone@example.net", "550 5.1.1 <gone@example.net>: User unknown")
        text = delivery_config(up.port) + f'\n[store]\ndsn = "{db_dsn}"\n'
        path = write_config(text, replace_base=True)
        async with Relay(load_config(path), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            db = await asyncpg.connect(db_dsn)
            try:
                await send(
                    relay,
                    [f"full{n}@example.org" for n in range(3)]
                    + ["gone@example.net", "ok@example.org"],
                )
                await eventually(in_state(db, "gone@example.net", "bounced"))
                for n in range(3):
                    await eventually(in_state(db, f"full{n}@example.org", "queued"))
                await eventually(in_state(db, "ok@example.org", "delivered"))
            finally:
                await db.close()
    result = await asyncio.to_thread(
        cli, "report", "--type", "all", "--format", "csv", "--config", str(path)
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [
        (r["from_domain"], r["amount"], r["messages"], r["recipient_domains"], r["category"])
        for r in rows
    ] == [
        ("mail.example.com", "3", "1", "1", "mailbox_full"),
        ("mail.example.com", "1", "1", "1", "user_unknown"),
    ]
    assert rows[0]["bounce_text"] == template_of(
        "452 4.2.2 <full0@example.org>: Mailbox full, id Q0X7AB0"
    )
    by_ip = await asyncio.to_thread(
        cli,
        "report",
        "--type",
        "hard",
        "--group-by",
        "ip",
        "--format",
        "csv",
        "--config",
        str(path),
    )
    [hard_row] = list(csv.DictReader(io.StringIO(by_ip.stdout)))
    assert hard_row["source_ip"] == "127.0.0.1"
    # --format json: the same rows, with numbers as numbers, and the filter echoed.
    as_json = await asyncio.to_thread(
        cli, "report", "--type", "all", "--format", "json", "--config", str(path)
    )
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["types"] == ["soft_bounce", "hard_bounce"]
    assert [(r["from_domain"], r["amount"], r["category"]) for r in document["rows"]] == [
        ("mail.example.com", 3, "mailbox_full"),
        ("mail.example.com", 1, "user_unknown"),
    ]
    assert [r["bounce_text"] for r in document["rows"]] == [r["bounce_text"] for r in rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-03", "--to", "2026-11-02"], "is not before"),
        (["--from", "last tuesday"], "not an ISO date"),
        (["--tz", "Nowhere/Land"], "not a known time zone"),
    ],
)
def test_report_bad_filters_exit_2_with_one_line(args, message):
    """A bad filter is one clear line on stderr and exit 2, no traceback."""
    result = cli("report", *args, "--config", str(REPO / "config.toml"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
