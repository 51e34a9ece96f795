"""Suppression administration from the command line, checked against a live relay."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import re

import asyncpg
import pytest

from relay.intake import responses as replies
from relay.ops.app import Relay
from tests.support.cli import rcpt_code, run


@pytest.fixture
def config_path(db_dsn, write_config):
    return write_config(
        f'[smtp]\nlisten = "127.0.0.1:0"\n[store]\ndsn = "{db_dsn}"\n'
        '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n',
        replace_base=True,
    )


@pytest.mark.slow
async def test_add_remove_audit_profile_and_smtp(config_path, db_dsn):
    """add refuses the address at RCPT; remove (with a reason) lets it through again, sets the
    profile active and leaves an audit row with who, why and the entry removed."""
    from relay.config import load_config

    async with Relay(load_config(config_path), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        added = await run(
            config_path,
            "suppression",
            "add",
            "Pat@Example.org",
            "--reason",
            "asked by phone",
            "--actor",
            "alice",
        )
        assert added.returncode == 0, added.stderr
        assert await rcpt_code(relay, "pat@example.org") == 550
        removed = await run(
            config_path,
            "suppression",
            "remove",
            "pat@example.org",
            "--reason",
            "user confirmed the address",
            "--actor",
            "bob",
        )
        assert removed.returncode == 0, removed.stderr
        assert "profile is active again" in removed.stdout
        assert await rcpt_code(relay, "pat@example.org") == 250
        again = await run(config_path, "suppression", "remove", "pat@example.org", "--reason", "x")
        assert again.returncode == 1
        assert "not on the suppression list" in again.stderr
    db = await asyncpg.connect(db_dsn)
    try:
        audit = await db.fetch(
            "SELECT actor, action, subject, reason, detail FROM admin_audit ORDER BY id"
        )
        status = await db.fetchval("SELECT status FROM profiles WHERE address = 'pat@example.org'")
    finally:
        await db.close()
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("alice", "suppression.add"),
        ("bob", "suppression.remove"),
    ]
    assert audit[1]["reason"] == "user confirmed the address"
    assert '"removed_reason": "asked by phone"' in audit[1]["detail"]
    assert status == "active"
    log = await run(config_path, "suppression", "audit")
    assert "suppression.remove" in log.stdout


@pytest.mark.slow
async def test_import_reports_bad_lines_keeps_good_ones_and_is_idempotent(config_path, tmp_path):
    """Bad lines named by number, exit 1; good ones added; a second run adds nothing."""
    source = tmp_path / "old-esp.csv"
    source.write_text(
        "address,reason\na@example.org,complaint\nnot-an-address\n"
        'b@example.org\nA@EXAMPLE.org\n=HYPERLINK("x")@evil.example,=cmd\n'
        "=cmd@evil.example,=1+1\n"
    )
    first = await run(config_path, "suppression", "import", str(source))
    assert first.returncode == 1
    assert f"{source}:3: malformed address" in first.stderr
    assert f"{source}:6: malformed address" in first.stderr
    assert "3 added" in first.stdout
    assert "1 duplicate lines" in first.stdout
    second = await run(config_path, "suppression", "import", str(source))
    assert "0 added, 3 already listed" in second.stdout
    listed = await run(config_path, "suppression", "list", "--reason", "complaint")
    assert listed.stdout.splitlines()[0].startswith("a@example.org\timport")
    exported = await run(config_path, "suppression", "export")
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert rows[0] == ["address", "reason", "source", "created_at"]
    # a cell a spreadsheet would evaluate is neutralised (=cmd... is a valid address)
    assert [r[:3] for r in rows[1:]] == [
        ["'=cmd@evil.example", "'=1+1", "import"],
        ["a@example.org", "complaint", "import"],
        ["b@example.org", "imported", "import"],
    ]
    paged = await run(config_path, "suppression", "list", "--limit", "1", "--page", "2")
    assert len(paged.stdout.splitlines()) == 1


@pytest.mark.slow
async def test_import_skips_a_byte_order_mark_as_the_admin_page_does(config_path, tmp_path):
    """A file a spreadsheet saved as "CSV UTF-8" starts with a byte order mark: its header is
    still a header and a first line's address still an address (the page's import reads it
    the same way); a byte that is not UTF-8 is named by its offset in the file, mark counted."""
    with_header = tmp_path / "excel.csv"
    with_header.write_bytes(codecs.BOM_UTF8 + b"address,reason\r\nann@example.org,asked\r\n")
    without = tmp_path / "bare.csv"
    without.write_bytes(codecs.BOM_UTF8 + b"bob@example.org\r\n")
    broken = tmp_path / "broken.csv"
    broken.write_bytes(codecs.BOM_UTF8 + b"cy@example.org\n\xff\n")
    first = await run(config_path, "suppression", "import", str(with_header))
    assert first.returncode == 0, first.stderr
    assert "1 added, 0 already listed, 0 duplicate lines, 0 bad lines" in first.stdout
    second = await run(config_path, "suppression", "import", str(without))
    assert second.returncode == 0, second.stderr
    assert "1 added, 0 already listed, 0 duplicate lines, 0 bad lines" in second.stdout
    refused = await run(config_path, "suppression", "import", str(broken))
    assert refused.returncode == 2
    assert f"{broken} is not UTF-8 text (invalid start byte at byte 18)" in refused.stderr
    listed = await run(config_path, "suppression", "list")
    assert sorted(line.split("\t")[:2] for line in listed.stdout.splitlines()) == [
        ["ann@example.org", "import"],
        ["bob@example.org", "import"],
    ]


HOSTILE_REASONS = [
    "user_unknown: 550 5.1.1 x\r\n250 2.1.5 OK",  # would end the 550 and forge a 250
    "bare\rcarriage",
    "bare\nline feed",
    "nul\x00byte",
    "escape \x1b]0;pwned\x07\x1b[2J",
    "bidi \u202eevil\u202c, NEL\x85, separator\u2028, DEL\x7f",
    "Müller asked by phone",
    "x" * 10_240,
]
_ONE_LINE = re.compile(
    r"550 5\.7\.1 <[\x20-\x7e]*> is on the suppression list \([\x20-\x7e]*\); message not sent"
)


@pytest.mark.parametrize("reason", HOSTILE_REASONS)
def test_suppressed_reply_is_one_line_of_printable_ascii(reason):
    """The reason in the RCPT refusal was set by an administrator or taken from a remote
    server's bounce: it reaches the client as one line of printable ASCII, and the reply
    stays within RFC 5321's 512 octets with CRLF."""
    reply = replies.suppressed("pat@example.org", reason)
    assert _ONE_LINE.fullmatch(reply), reply
    assert reply.startswith("550 5.7.1 <pat@example.org> is on the suppression list (")
    assert len(reply) <= replies.MAX_REPLY_LINE


def test_suppressed_reply_with_the_longest_address_and_a_long_reason():
    address = "a" * 64 + "@" + ".".join(["b" * 61] * 3) + ".ccc"  # 254 characters
    assert len(address) == 254
    reply = replies.suppressed(address, "y" * 10_240)
    assert f"<{address}>" in reply
    assert len(reply) == replies.MAX_REPLY_LINE
    assert reply.endswith("...); message not sent")
    # An SMTPUTF8 address and a reason with ordinary text keep their readable parts.
    assert replies.suppressed("jörg@example.de", "asked  by\tphone") == (
        "550 5.7.1 <j?rg@example.de> is on the suppression list (asked by phone); message not sent"
    )


@pytest.mark.slow
async def test_suppression_refusal_is_one_line_whatever_the_reason(config_path, db_dsn):
    """A reason holding CR LF cannot end the 550 early and forge a reply the client reads as
    the answer to its next command: the client hears exactly one line for RCPT."""
    from relay.config import load_config

    reason = "asked\r\n250 2.1.5 OK \x1b[2J"
    added = await run(config_path, "suppression", "add", "pat@example.org", "--reason", reason)
    assert added.returncode == 0, added.stderr
    async with Relay(load_config(config_path), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        try:
            writer.write(b"HELO client.test\r\nMAIL FROM:<s@example.com>\r\n")
            writer.write(b"RCPT TO:<pat@example.org>\r\nQUIT\r\n")
            await writer.drain()
            lines = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n")
        finally:
            writer.close()
    assert lines[3:] == [
        b"550 5.7.1 <pat@example.org> is on the suppression list (asked 250 2.1.5 OK ?[2J); "
        b"message not sent",
        lines[4],
        b"",
    ]
    assert lines[4].startswith(b"221 ")
