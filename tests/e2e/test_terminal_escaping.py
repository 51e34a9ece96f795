"""No text from outside reaches the operator's terminal raw.

Hostile text is stored through the store's real write path (accept, claim, apply the
outcome, check incidents, suppress, allowlist), the way a remote server's reply, a message's
headers or another administrator's reason would be; then every command that prints stored
text runs as ``bounce-relay`` in a subprocess against that database. Its output holds no
raw control, format or line-separator character, shows the escaped form instead, and a
field's tab or newline cannot add a column or a row to tab-separated output.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import tty
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policies.incidents import IncidentRules
from policies.templates import template_of
from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store, create_store
from tests.support.cli import REPO, run_cli

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
PERIOD = ("--from", "2026-11-02T00:00", "--to", "2026-11-03T00:00")
REPLAY_PERIOD = ("--since", "2026-11-02T09:00", "--until", "2026-11-02T11:00")

# A remote server's reply: sets the terminal's title (OSC 0 ... BEL), clears the screen,
# reverses the rest of the line (RLO ... PDF), forges a second reply line after CR LF, a
# column (tab), a one-byte C1 CSI, DEL, a Unicode line separator, and a backslash.
HARD = (
    "550 5.1.1 \x1b]0;pwned\x07\x1b[2J user unknown \u202eexe.txt\u202c"
    "\r\n250 2.0.0 OK\tforged\x9b31m \x7f\u2028 C:\\x1b"
)
SOFT = "452 4.2.2 \x1b[8mhidden\x1b[0m mailbox full \u2066\u202etxt.exe\u2069 \u200bzw"
# An incident's reply: an OSC 8 hyperlink and OSC 52 (write the clipboard).
BLOCK = "554 5.7.1 \x1b]8;;http://evil.example/\x07click\x1b]8;;\x07 \x1b]52;c;cm0gLXJm\x07 ref"
CAMPAIGN = "spring\x1b[5m\u202e"
FROM_DOMAIN = "evil\x1b[8m.example"
MANUAL_REASON = "asked\tforged-column\nforged-row \x1b[2J\r"
ACTOR = "ops\u202e\x1b[31m"
SOFT_RECIPIENT = "soft\u202efdp.exe@example.org"

# What must not appear raw: C0 controls but tab and LF (the output's own structure), DEL,
# C1, the bidi controls, zero-width and other format characters, line/paragraph separators.
RAW = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u2066-\u2069\ufeff]"
)


def assert_escaped(out: str, *shown: str) -> None:
    """No raw control character in ``out``, and each escaped form in ``shown`` is there."""
    raw = RAW.findall(out)
    assert not raw, f"raw characters reached the terminal: {raw!r}\n{out!r}"
    for text in shown:
        assert text in out, f"{text!r} not in {out!r}"


def assert_columns(out: str, columns: int) -> None:
    """Tab-separated output: every line has exactly ``columns`` fields."""
    lines = out.splitlines()
    assert lines
    for line in lines:
        assert line.count("\t") == columns - 1, f"a field forged a column: {line!r}"


@dataclass(frozen=True)
class Seeded:
    config: Path
    soft_delivery: int
    incident: int


class Seeder:
    """Messages and their outcomes through the store's real write path, at T0."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.n = 0

    async def bounce(
        self,
        recipient: str,
        reply: str,
        *,
        category: str,
        hard: bool = True,
        destination: str = "mx.example.org:25",
        source_ip: str = "127.0.0.2",
    ) -> int:
        self.n += 1
        domain = recipient.rpartition("@")[2]
        await self.store.accept_messages(
            T0,
            [
                IncomingMessage(
                    queue_id=f"H{self.n}",
                    envelope_sender=f"bounces@{FROM_DOMAIN}",
                    recipients=(Recipient(recipient, recipient.lower(), domain),),
                    body=b"Subject: x\r\n\r\nx\r\n",
                    from_domain=FROM_DOMAIN,
                    message_id=None,
                    campaign=CAMPAIGN,
                    client_address="127.0.0.1",
                    session_id="s",
                    smtputf8=True,
                )
            ],
        )
        [d] = await self.store.claim_due_deliveries("seed", T0, timedelta(minutes=5), 10)
        assert d.recipient == recipient
        first_line = reply.splitlines()[0]
        await self.store.apply_outcomes(
            T0,
            [
                OutcomeRecord(
                    delivery_id=d.id,
                    lease_token=d.lease_token,
                    state="bounced" if hard else "queued",
                    event="hard_bounce" if hard else "soft_bounce",
                    next_attempt_at=None if hard else T0 + timedelta(hours=1),
                    suppress=hard,
                    suppress_reason=f"{category}: {first_line}",
                    code=int(reply[:3]),
                    enhanced=reply[4:9],
                    reply_text=reply,
                    template=template_of(reply),
                    category=category,
                    rule="greylisting" if not hard else None,
                    source_ip=source_ip,
                    destination=destination,
                )
            ],
        )
        return d.id


async def seed(store: Store) -> tuple[int, int]:
    """A hard bounce that suppresses pat@, a soft one still queued, an incident of three
    blocks, a manual suppression and an allowlist entry, all carrying hostile text."""
    s = Seeder(store)
    await s.bounce("pat@example.org", HARD, category="user_unknown", destination="mx\x1b[2J:25")
    # Recorded as greylisted: a replay with the configured rules reads mailbox_full.
    soft = await s.bounce(SOFT_RECIPIENT, SOFT, category="greylisted", hard=False)
    for n in range(3):
        await s.bounce(f"i{n}@example.net", BLOCK, category="spam_block_ip", destination="mx:25")
    check = await store.check_incidents(
        T0 + timedelta(minutes=1), IncidentRules(min_recipients=3, lift_on_open=False)
    )
    assert check is not None
    [incident] = check.opened
    await store.add_suppression(
        "ann@example.org", MANUAL_REASON, "manual", profile_status="suppressed", actor=ACTOR
    )
    await store.allow("partner.example", "vip \x1b]52;c;cm0gLXJm\x07", ACTOR)
    return soft, incident.id


@pytest.fixture
async def seeded(db_dsn: str, write_config) -> Seeded:
    config = write_config(
        f'[smtp]\nlisten = "127.0.0.1:0"\n[store]\ndsn = "{db_dsn}"\n'
        '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n',
        replace_base=True,
    )
    store = await create_store(db_dsn)
    try:
        soft, incident = await seed(store)
    finally:
        await store.close()
    return Seeded(config, soft, incident)


async def cli(seeded: Seeded, *args: str) -> str:
    result = await asyncio.to_thread(run_cli, *args, "--config", str(seeded.config))
    assert result.returncode == 0, result.stderr
    assert_escaped(result.stderr)
    return result.stdout


TITLE = r"\x1b]0;pwned\x07\x1b[2J"
RLO = r"\u202eexe.txt\u202c"
FORGED = r"\r\n250 2.0.0 OK\tforged\x9b31m \x7f\u2028 C:\\x1b"


async def test_queue_list_and_show(seeded):
    listed = await cli(seeded, "queue", "list", "--state", "queued")
    assert_escaped(listed, r"\x1b[8mhidden\x1b[0m", r"\u2066\u202etxt.exe\u2069", r"\u200bzw")
    assert_escaped(listed, r"soft\u202efdp.exe@example.org")
    assert_columns(listed, 7)
    shown = await cli(seeded, "queue", "show", str(seeded.soft_delivery))
    assert_escaped(shown, r"\x1b[8mhidden", "campaign", r"spring\x1b[5m\u202e")


async def test_profile_show(seeded):
    out = await cli(seeded, "profile", "show", "pat@example.org")
    # The suppression reason (first line of the reply) and the bounce's reply in full.
    assert_escaped(out, "user_unknown: 550 5.1.1 " + TITLE, TITLE + " user unknown " + RLO)
    assert_escaped(out, r"campaign=spring\x1b[5m\u202e")
    assert r"\r\n250 2.0.0 OK" in out


async def test_suppression_list_and_audit(seeded):
    listed = await cli(seeded, "suppression", "list")
    assert_escaped(listed, r"asked\tforged-column\nforged-row \x1b[2J\r", TITLE)
    assert_columns(listed, 4)
    assert len(listed.splitlines()) == 5  # pat, i0..i2 (hard bounces) and ann (manual)
    audit = await cli(seeded, "suppression", "audit")
    assert_escaped(audit, r"ops\u202e\x1b[31m", r"asked\tforged-column\nforged-row")
    assert_columns(audit, 6)


async def test_suppression_why_text_and_json(seeded):
    out = await cli(seeded, "suppression", "why", "pat@example.org")
    assert_escaped(out, "reply:    550 5.1.1 " + TITLE, RLO, FORGED, r"destination=mx\x1b[2J:25")
    assert_escaped(out, r"\x1b]<n>;pwned\x07\x1b[<id>")  # the template
    ann = await cli(seeded, "suppression", "why", "ann@example.org")
    assert_escaped(ann, r"asked\tforged-column\nforged-row", r"ops\u202e\x1b[31m")
    as_json = await cli(seeded, "suppression", "why", "pat@example.org", "--json")
    assert_escaped(as_json)
    [bounce] = json.loads(as_json)["bounces"]
    assert bounce["reply_text"] == HARD  # JSON's own escapes: the value is intact


async def test_incidents_list_and_show(seeded):
    listed = await cli(seeded, "incidents", "list")
    assert_escaped(listed, r"\x1b]<n>;;http://evil.example/\x07click\x1b]8;;\x07")
    assert_columns(listed, 12)
    shown = await cli(seeded, "incidents", "show", str(seeded.incident))
    assert_escaped(shown, r"\x1b]8;;http://evil.example/\x07click", r"\x1b]52;c;cm0gLXJm\x07")


async def test_allowlist_list(seeded):
    out = await cli(seeded, "allowlist", "list")
    assert_escaped(out, r"vip \x1b]52;c;cm0gLXJm\x07", r"ops\u202e\x1b[31m")
    assert_columns(out, 4)


async def test_report_table(seeded):
    out = await cli(seeded, "report", "--format", "table", "--type", "all", "--raw", *PERIOD)
    assert_escaped(out, r"evil\x1b[8m.example", r"\x1b]<n>;pwned\x07\x1b[<id>", TITLE)
    lines = out.splitlines()
    assert lines[0].startswith("from_domain") and lines[-1].startswith("total")
    assert len(lines) == 2 + 3 + 2  # header and rule, hard, soft and block rows, rule and total


async def test_classify_replay_table_and_jsonl(seeded):
    table = await cli(seeded, "classify", "--replay", *REPLAY_PERIOD)
    _header, row, _summary = table.splitlines()
    assert "category: greylisted → mailbox_full" in row
    assert_escaped(table, r"soft\u202efdp.exe@example.org", r"\x1b[8mhidden\x1b[0m")
    lines = await cli(seeded, "classify", "--replay", "--jsonl", *REPLAY_PERIOD)
    assert_escaped(lines, r"\u202e", r"\u200b")
    first = json.loads(lines.splitlines()[0])
    assert (first["recipient"], first["reply"]) == (SOFT_RECIPIENT, SOFT)


def test_classify_reply_argument():
    """A reply copied from a log into the command line is outside text too."""
    config = ("--config", str(REPO / "config.toml"))
    text = run_cli("classify", HARD, *config)
    assert text.returncode == 0, text.stderr
    assert_escaped(text.stdout, r"template  \x1b]<n>;pwned\x07\x1b[<id> user unknown")
    as_json = run_cli("classify", HARD, "--json", *config)
    assert_escaped(as_json.stdout)
    assert json.loads(as_json.stdout)["reply"] == HARD


def test_dsn_parse(tmp_path):
    """The JSON lines of `dsn parse` (ensure_ascii off, so UTF-8 stays readable) escape DEL,
    C1 and the bidi controls as well; each line still parses to the text as read."""
    eml = tmp_path / "hostile.eml"
    eml.write_bytes(
        (
            "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@mail.example.com\r\n"
            "Subject: Undelivered\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.net\r\n\r\n"
            "Final-Recipient: rfc822; pat@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Remote-MTA: dns; mx\u202egro.example.net\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 \x1b[2J user \u202eunknown\u202c \x9b31m \x7f é\r\n"
            "\r\n--B--\r\n"
        ).encode()
    )
    config = tmp_path / "c.toml"
    config.write_text('[smtp]\nlisten = "127.0.0.1:2525"\n')
    result = run_cli("dsn", "parse", "--config", str(config), str(eml))
    assert result.returncode == 0, result.stderr
    assert_escaped(result.stdout, r"\u202eunknown\u202c", r"\u009b31m", r"\u007f", "é")
    [line] = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["diagnostic"].endswith("550 5.1.1 \x1b[2J user \u202eunknown\u202c \x9b31m \x7f é")
    assert line["remote_mta"] == "mx\u202egro.example.net"


def _on_a_terminal(*args: str) -> str:
    """Run the command with stdout on a pseudo-terminal in raw mode (no CRLF translation):
    what a terminal would receive."""
    leader, follower = pty.openpty()
    tty.setraw(follower)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr
    return b"".join(chunks).decode("utf-8")


async def test_csv_on_a_terminal_is_escaped(seeded):
    """`report --format csv` and `suppression export` written to a terminal: rows keep their
    line ends, every control character inside a cell is escaped. To a pipe (or a file) CSV
    is data: its cells are the stored text, formula-neutralised only."""
    config = ("--config", str(seeded.config))
    piped = await cli(seeded, "report", "--format", "csv", "--type", "all", "--raw", *PERIOD)
    assert "\x1b]0;pwned\x07" in piped
    report = await asyncio.to_thread(
        _on_a_terminal, "report", "--format", "csv", "--type", "all", *PERIOD, *config
    )
    assert report.startswith("from_domain,bounce_text,")
    assert_escaped(report.replace("\r\n", "\n"), r"evil\x1b[8m.example")
    exported = await asyncio.to_thread(_on_a_terminal, "suppression", "export", *config)
    assert exported.startswith("address,reason,source,created_at\r\n")
    # The manual reason's LF and CR are inside a quoted cell: shown escaped, not as lines.
    assert_escaped(exported.replace("\r\n", "\n"), r"asked\tforged-column\nforged-row")
    assert len(exported.splitlines()) == 6  # header, ann, pat, i0..i2
