"""`bounce-relay classify --replay` as an operator runs it, against a relay's database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from relay.config import load_config
from relay.ops.app import Relay
from tests.support.cli import REPO
from tests.support.cli import run_cli as cli
from tests.support.delivery import delivery_config, eventually, in_state, send
from tests.support.scripted import ScriptedUpstream

SOFT_NET = """
[[classify.rules]]
name = "example-net-unknown-is-soft"
match = { domain = ["example.net"], enhanced = ["5.1.1"] }
kind = "soft"
"""


@pytest.mark.slow
async def test_replay_prints_the_changed_bounces_and_a_summary(db_dsn, write_config):
    """NEW.toml (same database, one more classify rule): one table row for the bounce it
    changes, the summary last, exit 0; --rules takes the rules from another file; --jsonl
    prints JSON lines."""
    async with ScriptedUpstream() as up:
        up.on_rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: User unknown")
        up.on_rcpt("nobody@example.net", "550 5.1.1 <nobody@example.net>: User unknown")
        text = delivery_config(up.port) + f'\n[store]\ndsn = "{db_dsn}"\n'
        live = write_config(text, replace_base=True)
        async with Relay(load_config(live), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            db = await asyncpg.connect(db_dsn)
            try:
                await send(relay, ["gone@example.org", "nobody@example.net"])
                await eventually(in_state(db, "gone@example.org", "bounced"))
                await eventually(in_state(db, "nobody@example.net", "bounced"))
            finally:
                await db.close()
    new = write_config(text + SOFT_NET, replace_base=True, name="new.toml")
    rules_only = write_config(SOFT_NET, replace_base=True, name="rules.toml")

    table = await asyncio.to_thread(
        cli, "classify", "--replay", "--since", "1h", "--config", str(new)
    )
    assert table.returncode == 0, table.stderr
    header, row, summary = table.stdout.splitlines()
    assert header.startswith("time (UTC)")
    assert "nobody@example.net" in row
    assert row.endswith("kind: hard → soft; suppress: yes → no")
    assert "replayed 2 bounce(s), 1 changed" in summary
    assert "no longer suppressed 1" in summary

    same = await asyncio.to_thread(cli, "classify", "--replay", "--config", str(live))
    assert same.returncode == 0, same.stderr
    assert "replayed 2 bounce(s), 0 changed" in same.stdout

    # The rules file has no [retry]: its default schedule differs, but both were hard.
    lines = await asyncio.to_thread(
        cli, "classify", "--replay", "--jsonl", "--config", str(live), "--rules", str(rules_only)
    )
    assert lines.returncode == 0, lines.stderr
    row_json, summary_json = (json.loads(x) for x in lines.stdout.splitlines())
    assert row_json["recipient"] == "nobody@example.net"
    assert row_json["changes"] == {
        "kind": {"old": "hard", "new": "soft"},
        "suppress": {"old": True, "new": False},
    }
    assert summary_json["summary"]["changed"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "a week"], "--since 'a week' is neither a duration"),
        (["--since", "1d", "--until", "2d"], "is not before --until"),
        (["--until", "2026-13-01"], "--until '2026-13-01' is neither"),
        (["452 4.2.2 Mailbox full"], "no REPLY, --domain or --json"),
    ],
)
def test_replay_bad_input_exits_2_with_one_line(args, message):
    """Bad input is one clear line on stderr and exit 2, before any database is touched."""
    result = cli("classify", "--replay", *args, "--config", str(REPO / "config.toml"))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_replay_with_a_bad_rules_file_names_the_key(tmp_path: Path):
    """A rules file with an error is reported the way every command reports config errors."""
    bad = tmp_path / "rules.toml"
    bad.write_text('[[classify.rules]]\nname = "x"\nkind = "sometimes"\n', encoding="utf-8")
    result = cli("classify", "--replay", "--config", str(REPO / "config.toml"), "--rules", str(bad))
    assert result.returncode == 2
    assert "classify.rules[0].kind" in result.stderr
    assert "Traceback" not in result.stderr
