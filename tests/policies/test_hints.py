"""Provider throttling hints read from replies (policies/hints.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import policies.hints
from policies.classify import Kind, classify
from policies.hints import HINTS, ProviderHint, hint_for
from policies.smtp_reply import Reply, parse_reply, reply_from_smtp, synthetic_reply

DATASET = Path(__file__).parent / "data" / "smtp-replies.jsonl"
ROWS = [json.loads(line) for line in DATASET.read_text().splitlines()]

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)

# Every reply of the data file that carries a hint, and which one; all the
# other 298 give None.
DATASET_HINTS = {
    "r0155": "microsoft-s3140",  # 550 5.7.1 ... block list (S3140)
    "r0213": "gmail-4.2.1",  # 450-4.2.1 ... ?p=ReceivingRate
    "r0214": "gmail-5.2.1",  # 550-5.2.1 ... ?p=ReceivingRatePerm
    "r0215": "gmail-4.7.28",  # 421-4.7.28, truncated before "gsmtp"
    "r0216": "gmail-4.7.28",
    "r0218": "yahoo-ts04",  # 421 4.7.0 [TSS04]
    "r0219": "yahoo-ts04",
    "r0222": "microsoft-4.7.650",  # 451 4.7.650 ... (S843)
    "r0223": "microsoft-s3113",  # 451 4.7.650 ... (S3113)
}


def _hint_name(raw: str) -> str | None:
    hint = hint_for(parse_reply(raw))
    return hint.name if hint else None


def _row(row_id: str) -> dict[str, object]:
    return next(row for row in ROWS if row["id"] == row_id)


def test_dataset_gives_exactly_the_expected_hints():
    """Over all 307 real replies, only the listed ones give a hint, each the listed one."""
    got = {row["id"]: _hint_name(row["reply"]) for row in ROWS}
    assert len(ROWS) == 307
    assert {k: v for k, v in got.items() if v is not None} == DATASET_HINTS


def test_yahoo_ts04_deferral_schedules_per_the_hint():
    """A real Yahoo [TSS04] deferral says: come back to Yahoo in 2 hours, with
    less traffic, from the same IP."""
    hint = hint_for(parse_reply(str(_row("r0218")["reply"])))
    assert hint == HINTS["yahoo-ts04"]
    assert hint is not None
    assert (hint.provider, hint.retry_after, hint.slow_down, hint.other_ip) == (
        "yahoo",
        2 * H,
        True,
        False,
    )
    assert T0 + hint.retry_after == datetime(2024, 3, 1, 14, 0, tzinfo=UTC)


def test_hints_do_not_change_classification():
    """A hinted reply keeps the category and kind ``classify`` gives it (the
    dataset's labels): a hint is extra information, not a verdict."""
    for row_id in DATASET_HINTS:
        row = _row(row_id)
        verdict = classify(parse_reply(str(row["reply"])))
        assert (verdict.category.value, verdict.kind.value) == (row["category"], row["kind"])
    ts04 = classify(parse_reply(str(_row("r0218")["reply"])))
    s3140 = classify(parse_reply(str(_row("r0155")["reply"])))
    assert (ts04.kind, s3140.kind) == (Kind.SOFT, Kind.HARD)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        # Yahoo: TS, TSS and IPTS spellings, brackets or parentheses, any case.
        (
            "421 4.16.55 [TS01] Messages from 192.0.2.1 temporarily deferred due to "
            "excessive user complaints",
            "yahoo-ts01",
        ),
        (
            "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred - 4.16.56.1; "
            "see https://help.yahoo.com/kb/postmaster/SLN3326.html",
            "yahoo-ts02",
        ),
        (
            "421 4.7.0 [TSS02] Messages from 198.51.100.1 temporarily deferred due to user "
            "complaints or because the IP/domain is in the unverified category. ec=ax9 [16]",
            "yahoo-ts02",
        ),
        (
            "421 4.7.1 [TS03] All messages from 192.0.2.9 will be permanently deferred; "
            "Retrying will NOT succeed. See https://help.yahoo.com/kb/postmaster/SLN3436.html",
            "yahoo-ts03",
        ),
        (
            "421-4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to\n"
            "421 4.7.0 unexpected volume or user complaints - 4.16.55.1",
            "yahoo-ts04",
        ),
        (
            "smtp; 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to "
            "user complaints - 4.16.55.1; see https://help.yahoo.com/kb/postmaster/SLN3434.html",
            "yahoo-ts04",
        ),
        (
            "SMTP error from remote mail server after MAIL FROM:<a@example.com> SIZE=1789: "
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred",
            "yahoo-ts04",
        ),
        ("421 4.7.0 [TS04] Messages from 192.0.2.1 temporarily deferred", "yahoo-ts04"),
        ("421 4.7.0 (TSS04) Messages from 192.0.2.1 temporarily deferred", "yahoo-ts04"),
        ("421 4.7.0 [ tss04 ] messages from 192.0.2.1 temporarily deferred", "yahoo-ts04"),
        ("421 [IPTS04] Messages from 192.0.2.1 temporarily deferred", "yahoo-ts04"),
        ("421 4.7.0 [TSS05] Messages from 192.0.2.1 temporarily deferred", "yahoo-ts05"),
        ("421 [IPTS05] Messages from 192.0.2.1 temporarily deferred", "yahoo-ts05"),
        (
            "553 5.7.2 [TSS06] All messages from 192.0.2.1 will be permanently deferred;\n"
            "    Retrying will NOT succeed. See https://help.yahoo.com/kb/postmaster/SLN3436.html",
            "yahoo-ts06",
        ),
        # Gmail: the help link names the case, or 4.7.28 from Google.
        (
            "421-4.7.0 [192.0.2.1 15] Our system has detected an unusual rate of\n"
            "421-4.7.0 unsolicited mail originating from your IP address. To protect our\n"
            "421-4.7.0 users from spam, mail sent from your IP address has been temporarily\n"
            "421-4.7.0 rate limited. Please visit\n"
            "421-4.7.0 https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
            "421 4.7.0 review our Bulk Email Senders Guidelines. p4si3522070uam.9 - gsmtp",
            "gmail-4.7.0",
        ),
        (
            "421 4.7.28 Gmail has detected an unusual rate of mail. Scope: DKIM domain example.com",
            "gmail-4.7.28",
        ),
        (
            "450-4.2.1 The user you are trying to contact is receiving mail too quickly. "
            "450 4.2.1 https://urldefense.com/v3/__https://support.google.com/mail/"
            "?p=ReceivingRate__;!!AbC$ x1si2 - gsmtp",
            "gmail-4.2.1",
        ),
        # Microsoft: the S code in parentheses, else the 4.7.650/651 detail.
        (
            "451 4.7.651 The mail server [203.0.113.10] has been temporarily rate limited due "
            "to IP reputation. For e-mail delivery information, see https://postmaster.live.com "
            "(S3114) [AM0PR01.eurprd01.prod.outlook.com 2024-01-01T00:00:00.000Z]",
            "microsoft-s3114",
        ),
        (
            "451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due "
            "to IP reputation. (S775) [Name=Protocol Filter Agent][AGT=PFA]",
            "microsoft-4.7.650",
        ),
        (
            "451 4.7.651 The mail server [203.0.113.10] has been temporarily rate limited",
            "microsoft-4.7.651",
        ),
        (
            "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please\n"
            "    contact your Internet service provider since part of their network\n"
            "    is on our block list (S3150). You can also refer your provider to\n"
            "    http://mail.live.com/mail/troubleshooting.aspx#errors.",
            "microsoft-s3150",
        ),
    ],
)
def test_hand_written_variants(raw, name):
    """Each hint family is found in the formats replies really arrive in:
    multi-line, Postfix-joined, DSN ``smtp;`` and Exim-prefixed, folded."""
    assert _hint_name(raw) == name


def test_reply_from_aiosmtplib_gives_the_hint():
    """A reply as aiosmtplib hands it over (code stripped from each line)."""
    reply = reply_from_smtp(
        421,
        "4.7.28 [192.0.2.1] Our system has detected an unusual rate of\n"
        "4.7.28 unsolicited mail originating from your IP address. Please visit\n"
        "4.7.28 https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
        "4.7.28 review our Bulk Email Senders Guidelines. - gsmtp",
    )
    assert hint_for(reply) == HINTS["gmail-4.7.28"]


@pytest.mark.parametrize(
    "raw",
    [
        "250 2.0.0 OK [TSS04] queued as 12345",  # a delivery is a delivery
        "550 5.1.1 <TSS04user@example.com>: Recipient address rejected",
        "421 4.7.0 Messages from 192.0.2.1 temporarily deferred TSS04",  # no brackets
        "451 4.3.0 queue [TSS041] deferred",
        "421 4.7.0 [TS07] Messages from 192.0.2.1 temporarily deferred",  # not a known code
        "421 4.7.0 [BL21] Connections will not be accepted from 192.0.2.1",
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (AS77712344)",
        "550 5.7.1 Service unavailable, blocked (S31400)",
        "550 5.7.1 Service unavailable, blocked S3140",
        "421 4.7.28 Too many messages from your network, slow down",  # not Google's
        "550-5.7.1 [192.0.2.1 1] Our system has detected an unusual rate of 550-5.7.1 "
        "unsolicited mail. https://support.google.com/mail/?p=UnsolicitedIPError - gsmtp",
        "450 4.2.1 see https://support.google.com/mail/?p=ReceivingRateX - gsmtp",
        "",
    ],
)
def test_not_hints(raw):
    """Tokens inside words, without brackets, unknown, or from the wrong reply: no hint."""
    assert _hint_name(raw) is None


def test_synthetic_reply_is_never_a_hint():
    """Our own words about a failure are not a provider's code, whatever they quote."""
    reply = synthetic_reply(421, "4.4.2", "timed out after 421 4.7.0 [TSS04] (S3113)")
    assert hint_for(reply) is None


def test_hint_table_is_consistent():
    """Every hint is in the docstring table, names its provider, has a positive
    delay and a one-line reason, and never asks both to slow the destination
    and to leave the IP."""
    doc = policies.hints.__doc__ or ""
    for name, hint in HINTS.items():
        assert hint.name == name
        assert name in doc
        assert name.startswith(f"{hint.provider}-")
        assert hint.provider in {"yahoo", "gmail", "microsoft"}
        assert hint.retry_after > timedelta(0)
        assert "\n" not in hint.why
        assert len(hint.why) <= 100
        assert not (hint.slow_down and hint.other_ip)


TOKENS = [
    "[TSS04]",
    "(S3140)",
    "[TS03]",
    "?p=ReceivingRate",
    "?p=UnsolicitedRateLimitError",
    "4.7.28 ",
    "gsmtp",
    "421-",
    "\n",
    "4.7.650",
    "smtp;",
]


@given(
    text=st.lists(st.one_of(st.text(max_size=12), st.sampled_from(TOKENS)), max_size=12).map(
        "".join
    ),
    code=st.integers(min_value=-1000, max_value=1000),
    enhanced=st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["4.7.28", "2.0.0"])),
    synthetic=st.booleans(),
)
def test_hint_for_never_raises(text, code, enhanced, synthetic):
    """Any text, code and enhanced code, parsed or hand-built: a known hint or None."""
    for reply in (
        parse_reply(text),
        reply_from_smtp(code, text),
        Reply(code=code, enhanced=enhanced, text=text, synthetic=synthetic),
    ):
        hint = hint_for(reply)
        assert hint is None or (isinstance(hint, ProviderHint) and HINTS[hint.name] is hint)


def test_module_stays_pure():
    """Importing the hints loads no I/O, event loop, randomness or relay module."""
    code = (
        "import sys, policies.hints\n"
        "banned = ('asyncio', 'relay', 'asyncpg', 'aiosmtplib', 'socket', 'random', 'secrets')\n"
        "print(','.join(m for m in banned if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
