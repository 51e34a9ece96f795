"""Bounce message parsing: real corpus rates, hand-written MTA families, limits, fuzzing.

Measured on ``data/dsn`` (278 real bounces from the sisimai corpus), run with
``.venv/bin/pytest tests/policies/test_dsn.py -q -s``:

* recipient count equals the expected count: 273/278 = 0.982
  (misses: two RFC 3834 vacation auto-replies, which are not bounces and give
  None by design; an mbox file holding two DSNs; a mailing-list "you are not
  a member" notice; a Verizon bounce that names no address);
* expected RFC 3463 status matched on class.subject: 212/220 = 0.964, all of
  them exact to the detail as well. The denominator leaves out null statuses
  and sisimai's own pseudo codes (X.0.9xx, which it invents from its reason
  name and which no message carries). Most misses are DSNs whose precise
  ``Status`` field disagrees with the diagnostic's code: we keep the
  reporting MTA's ``Status`` (see ``policies.dsn``), sisimai prefers the
  diagnostic;
* ARF files with the right feedback_type: 7/7 = 1.0.

Status is compared by class and subject ("5.1") because that is what
classification and suppression read; the detail is reported as well.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.dsn import (
    BounceRecipient,
    MalformedBounce,
    NotAMessage,
    ParsedBounce,
    parse_bounce,
)
from policies.smtp_reply import Reply
from tests.support.budget import run_within

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "dsn"
FAMILIES = DATA / "dsn-families"


def _expected() -> dict[str, list[dict[str, object]]]:
    rows: dict[str, list[dict[str, object]]] = defaultdict(list)
    for line in (CORPUS / "expected.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["file"]].append(row)
    for found in rows.values():
        found.sort(key=lambda r: int(str(r["index"])))
    return rows


def _sisimai_pseudo(status: str) -> bool:
    """sisimai's invented X.0.9xx codes: derived from its reason, not the message."""
    _, subject, detail = status.split(".")
    return subject == "0" and int(detail) >= 900


# --------------------------------------------------------------------------- corpus


def test_corpus_rates() -> None:
    expected = _expected()
    count_ok = 0
    status_total = status_class_subject = status_exact = 0
    arf_total = arf_ok = 0
    for name, rows in sorted(expected.items()):
        parsed = parse_bounce((CORPUS / name).read_bytes())
        got = parsed.recipients if parsed else ()
        count_ok += len(got) == len(rows)
        for i, row in enumerate(rows):
            want = row["status"]
            if isinstance(want, str) and not _sisimai_pseudo(want):
                status_total += 1
                have = got[i].status if i < len(got) else None
                if have and have.split(".")[:2] == want.split(".")[:2]:
                    status_class_subject += 1
                status_exact += have == want
        if name.startswith("arf-"):
            arf_total += 1
            want_type = rows[0]["feedback_type"]
            arf_ok += bool(got) and all(r.feedback_type == want_type for r in got)
    count_rate = count_ok / len(expected)
    status_rate = status_class_subject / status_total
    exact_rate = status_exact / status_total
    arf_rate = arf_ok / arf_total
    print(
        f"\ncorpus: recipients counted right {count_ok}/{len(expected)} = {count_rate:.3f}; "
        f"status class.subject {status_class_subject}/{status_total} = {status_rate:.3f} "
        f"(exact {exact_rate:.3f}); ARF feedback_type {arf_ok}/{arf_total} = {arf_rate:.3f}"
    )
    assert count_rate >= 0.96
    assert status_rate >= 0.94
    assert exact_rate >= 0.94
    assert arf_rate >= 0.99


def test_corpus_rfc3464_files_are_nearly_perfect() -> None:
    """Files with a message/delivery-status part: the standard path."""
    expected = _expected()
    total = ok = 0
    for name, rows in expected.items():
        raw = (CORPUS / name).read_bytes()
        if b"message/delivery-status" not in raw.lower():
            continue
        total += 1
        parsed = parse_bounce(raw)
        ok += parsed is not None and len(parsed.recipients) == len(rows)
    print(f"\nrfc3464 files counted right: {ok}/{total} = {ok / total:.3f}")
    assert ok / total >= 0.98


def test_corpus_vacation_replies_are_not_bounces() -> None:
    for path in sorted(CORPUS.glob("rfc3834-*.eml")):
        assert parse_bounce(path.read_bytes()) is None, path.name


def test_corpus_never_raises_and_reply_is_usable() -> None:
    for path in sorted(CORPUS.glob("*.eml")):
        parsed = parse_bounce(path.read_bytes())
        for recipient in parsed.recipients if parsed else ():
            reply = recipient.reply()
            assert isinstance(reply, Reply)
            if recipient.code is not None:
                assert reply.code == recipient.code


# --------------------------------------------------------------------------- families


def _family(name: str) -> ParsedBounce:
    parsed = parse_bounce((FAMILIES / name).read_bytes())
    assert parsed is not None
    return parsed


def test_postfix_dsn() -> None:
    parsed = _family("postfix-dsn.eml")
    assert parsed.format == "rfc3464"
    assert parsed.loop is False
    assert parsed.recipients == (
        BounceRecipient(
            recipient="alice@example.org",
            action="failed",
            status="5.1.1",
            code=550,
            diagnostic="550 5.1.1 <alice@example.org>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
            remote_mta="mx.example.org",
            answered_command="RCPT",  # the text part's "(in reply to RCPT TO command)"
        ),
    )
    assert parsed.returned_headers.startswith("Return-Path: <news@example.com>\n")
    assert "Subject: June newsletter" in parsed.returned_headers
    assert parsed.recipients[0].reply() == Reply(
        code=550, enhanced="5.1.1", text=parsed.recipients[0].diagnostic
    )


def test_postfix_dsn_with_crlf_line_ends() -> None:
    raw = (FAMILIES / "postfix-dsn.eml").read_bytes().replace(b"\n", b"\r\n")
    assert parse_bounce(raw) == _family("postfix-dsn.eml")


def test_exim_text() -> None:
    parsed = _family("exim-text.eml")
    assert parsed.format == "text"
    assert parsed.loop is False
    assert parsed.recipients == (
        BounceRecipient(
            recipient="bob@example.org",
            action="failed",
            status="5.2.1",
            code=550,
            diagnostic="550 5.2.1 The email account that you tried to reach is disabled",
            remote_mta="mx.example.org",
            answered_command="RCPT",
        ),
        BounceRecipient(
            recipient="carol@example.org",
            action="failed",
            status="5.2.2",
            code=552,
            diagnostic="552 5.2.2 Mailbox full",
            remote_mta="mx2.example.org",
            answered_command="RCPT",
        ),
    )
    assert parsed.returned_headers.startswith("Return-path: <news@example.com>\n")
    assert parsed.returned_headers.endswith("Message-ID: <notes-77@example.com>")


def test_sendmail_dsn() -> None:
    parsed = _family("sendmail-dsn.eml")
    assert parsed.format == "rfc3464"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="dave@example.org",
            action="failed",
            status="5.7.1",
            code=550,
            diagnostic="550 5.7.1 <dave@example.org>... Relaying denied",
            remote_mta="mx.example.org",
            answered_command="RCPT",  # the transcript's ">>> RCPT To:<dave@example.org>"
        ),
    )
    # text/rfc822-headers is the returned original too
    assert parsed.returned_headers.endswith("Message-ID: <invoice-1234@example.com>")


def test_exchange_dsn() -> None:
    parsed = _family("exchange-dsn.eml")
    assert parsed.format == "rfc3464"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="erin@example.org",
            action="failed",
            status="5.1.10",
            code=550,
            diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient erin@example.org "
            "not found by SMTP address lookup",
            remote_mta=None,
        ),
    )
    assert "Message-ID: <q2-report@example.com>" in parsed.returned_headers


def test_exchange_text_without_report_part() -> None:
    parsed = _family("exchange-text.eml")
    assert parsed.format == "text"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="frank@example.org",
            action="failed",
            status="5.1.10",
            code=550,
            diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
            "SMTP address lookup ##",
            remote_mta=None,
        ),
    )
    assert parsed.returned_headers.startswith("Received: from app.example.com")
    assert parsed.returned_headers.endswith("Message-ID: <q2-report-2@example.com>")


def test_gmail_dsn_status_refined_from_diagnostic() -> None:
    """Status 5.0.0 with a same-class 5.1.1 in the diagnostic becomes 5.1.1."""
    parsed = _family("gmail-dsn.eml")
    assert parsed.format == "rfc3464"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="grace@example.net",
            action="failed",
            status="5.1.1",
            code=550,
            diagnostic="550-5.1.1 The email account that you tried to reach does not exist. "
            "550 5.1.1 Please try double-checking the recipient's email address.",
            remote_mta="mx.example.net",
        ),
    )


def test_qmail_text() -> None:
    parsed = _family("qmail-text.eml")
    assert parsed.format == "text"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="heidi@example.org",
            action="failed",
            status="5.1.1",
            code=550,
            diagnostic="550 5.1.1 <heidi@example.org>: Recipient address rejected: User unknown "
            "Giving up on 192.0.2.50.",
            remote_mta="192.0.2.50",
            answered_command="RCPT",  # "192.0.2.50 does not like recipient."
        ),
        BounceRecipient(
            recipient="ivan@example.org",
            action="failed",
            status="5.1.1",
            code=None,
            diagnostic="Sorry, no mailbox here by that name. (#5.1.1)",
            remote_mta=None,
        ),
    )
    assert parsed.recipients[1].reply() == Reply(
        code=0, enhanced="5.1.1", text="Sorry, no mailbox here by that name. (#5.1.1)"
    )
    assert "Message-ID: <party-1@example.com>" in parsed.returned_headers


def test_delayed_dsn() -> None:
    parsed = _family("delayed-dsn.eml")
    assert parsed.format == "rfc3464"
    assert parsed.recipients == (
        BounceRecipient(
            recipient="judy@example.org",
            action="delayed",
            status="4.4.7",
            code=None,
            diagnostic="connect to mx.example.org[192.0.2.60]:25: Connection timed out",
            remote_mta=None,
        ),
    )
    assert parsed.recipients[0].reply() == Reply(
        code=0, enhanced="4.4.7", text=parsed.recipients[0].diagnostic
    )


def test_arf_abuse_report() -> None:
    parsed = _family("arf-abuse.eml")
    assert parsed.format == "arf"
    assert parsed.loop is False
    assert parsed.recipients == (
        BounceRecipient(
            recipient="kim@example.net",
            action="complaint",
            status=None,
            code=None,
            diagnostic="",
            remote_mta=None,
            feedback_type="abuse",
        ),
    )
    assert "Message-ID: <deals-42@example.com>" in parsed.returned_headers
    assert parsed.recipients[0].reply() == Reply(code=0, enhanced=None, text="")


def test_arf_recipient_from_returned_to_when_no_original_rcpt_to() -> None:
    raw = (
        (FAMILIES / "arf-abuse.eml")
        .read_bytes()
        .replace(b"Original-Rcpt-To: <kim@example.net>\n", b"")
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [r.recipient for r in parsed.recipients] == ["kim@example.net"]


def test_bounce_of_a_bounce_is_a_loop() -> None:
    parsed = _family("bounce-of-bounce.eml")
    assert parsed.format == "rfc3464"
    assert parsed.loop is True
    assert [(r.recipient, r.status, r.code) for r in parsed.recipients] == [
        ("bounces@example.com", "5.1.1", 550)
    ]
    assert parsed.returned_headers.startswith("Return-Path: <>\n")


def test_ordinary_mail_is_not_a_bounce() -> None:
    assert parse_bounce((FAMILIES / "ordinary.eml").read_bytes()) is None


def test_ordinary_mail_mentioning_failures_is_not_a_bounce() -> None:
    raw = (
        b"From: Bob <bob@example.com>\nTo: alice@example.org\nSubject: Re: the report\n\n"
        b"The report could not be delivered to carol@example.net yesterday, user unknown.\n"
        b"550 5.1.1 is what the log said.\n"
    )
    assert parse_bounce(raw) is None


# ---------------------------------------------------------------------- reports without RFC 3464


def test_exchange_ims_status_code_is_read() -> None:
    """Exchange 2003's Internet Mail Service gives no SMTP reply, its own status code."""
    parsed = parse_bounce((CORPUS / "lhost-exchange2003-02.eml").read_bytes())
    assert parsed is not None
    assert [(r.recipient, r.status, r.code) for r in parsed.recipients] == [
        ("kijitora@example.co.jp", "5.1.1", None),
        ("mikeneko@example.co.jp", "5.1.1", None),
    ]
    assert "The recipient name is not recognized" in parsed.recipients[0].diagnostic
    assert parsed.recipients[0].reply().enhanced == "5.1.1"


@pytest.mark.parametrize(
    ("ims", "status"),
    [
        ("0 (000C05A6) Unknown Recipient", "5.1.1"),
        ("0 (000C0595) Ambiguous Recipient", "5.1.4"),
        # "Error messages by remote MTA": no one meaning
        ("0 (000B09B6) Error messages by remote MTA", None),
    ],
)
def test_exchange_ims_status_codes(ims: str, status: str | None) -> None:
    raw = (
        "From: postmaster@example.net\nSubject: Undeliverable: hello\n\n"
        "Your message did not reach the following recipient(s):\n\n"
        "ann@example.org on Thu, 29 Apr 2007 16:51:51 -0500\n"
        "    The recipient name is not recognized\n"
        f"    MSEXCH:IMS:EXAMPLE:SITE:MAIL01 {ims}\n"
    ).encode()
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [(r.recipient, r.status, r.code) for r in parsed.recipients] == [
        ("ann@example.org", status, None)
    ]


def test_transcript_reply_after_the_arrows_is_a_reply() -> None:
    """KDDI (ezweb) reports the session: the code follows "<<<"."""
    parsed = parse_bounce((CORPUS / "lhost-ezweb-04.eml").read_bytes())
    assert parsed is not None
    (found,) = parsed.recipients
    assert found.code == 550
    assert found.diagnostic == (
        "550 <this-local-part-does-not-exist-on-the-server@ezweb.ne.jp>: User unknown"
    )
    assert found.answered_command == "RCPT"


def test_failure_without_a_code_is_its_paragraph_not_the_boilerplate() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mail.example.net>\n"
        b"Subject: Mail delivery failed: returning message to sender\n\n"
        b"A message that you sent could not be delivered to one or more of its\n"
        b"recipients. This is a permanent error. The following address(es) failed:\n\n"
        b"  ann@example.org\n"
        b"    Unrouteable address\n\n"
        b"Please check the addresses of your recipients.\n\n"
        b"------ This is a copy of the message, including all the headers. ------\n"
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [(r.recipient, r.diagnostic) for r in parsed.recipients] == [
        ("ann@example.org", "Unrouteable address")
    ]


def test_failure_without_a_code_reads_past_its_lead_in() -> None:
    raw = (
        b"From: Mail Delivery System <mailer-daemon@mail.example.net>\n"
        b"Subject: Mail delivery failed: returning message to sender\n\n"
        b"A message that you sent could not be delivered to one or more of\n"
        b"its recipients. This is a permanent error.\n\n"
        b"The following address failed:\n\n"
        b"ann@example.org\n\n"
        b"For the following reason:\n\n"
        b"Mail size limit exceeded.\n\n"
        b"--- The header of the original message is following. ---\n"
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [r.diagnostic for r in parsed.recipients] == [
        "For the following reason: Mail size limit exceeded."
    ]


@pytest.mark.parametrize(
    ("name", "failure"),
    [
        # DragonFly's own DNS lookup failed: it never talked to a server
        ("lhost-dragonfly-04.eml", "DNS lookup failure: host cx.libsisimai.org not found"),
        # InterScan's notice names no reply and no status, only a guess to check the address
        ("lhost-interscanmss-02.eml", "Please check if address is correct."),
        # Exim's router found no route: its own words, no server answered
        ("lhost-mailru-06.eml", "Unrouteable address"),
        # vpopmail's local delivery refused: no SMTP at all
        ("lhost-qmail-10.eml", "vdelivermail: account is locked"),
        # legacy Yahoo: its own "[#102]", no reply code or RFC 3463 status
        ("lhost-x2-02.eml", "This account has been disabled or discontinued [#102]."),
    ],
)
def test_reports_without_any_status_keep_the_failure_words(name: str, failure: str) -> None:
    """No reply code and no status anywhere in these: the words are kept for an operator,
    but no status is made up from them."""
    parsed = parse_bounce((CORPUS / name).read_bytes())
    assert parsed is not None
    assert all(r.status is None and r.code is None for r in parsed.recipients)
    assert any(failure in r.diagnostic for r in parsed.recipients)


# --------------------------------------------------------------------------- answered command


def _text_bounce(sender: str, subject: str, body: str) -> bytes:
    return f"From: {sender}\nTo: news@example.com\nSubject: {subject}\n\n{body}".encode()


def test_answered_command_postfix() -> None:
    raw = _text_bounce(
        "MAILER-DAEMON@mail.example.net (Mail Delivery System)",
        "Undelivered Mail Returned to Sender",
        "This is the mail system at host mail.example.net.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n\n"
        "                   The mail system\n\n"
        "<ann@example.org>: host mx.example.org[192.0.2.10] said: 550 5.1.1\n"
        "    <ann@example.org>: Recipient address rejected: User unknown (in reply to RCPT\n"
        "    TO command)\n\n"
        "<ben@example.net>: host mx.example.net[192.0.2.20] said: 550 Unknown user\n"
        "    ben@example.net (in reply to end of DATA command)\n\n"
        "<cat@example.com>: host mx.example.com[192.0.2.30] refused to talk to me: 554\n"
        "    5.7.1 Service unavailable; client host blocked\n\n"
        "<dan@example.info>: host mx.example.info[192.0.2.40] said: 553 5.1.8 Sender\n"
        "    address rejected: Domain not found (in reply to MAIL FROM command)\n\n"
        "<eve@example.biz>: connect to mx.example.biz[192.0.2.50]:25: Connection timed out\n",
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [(r.recipient, r.answered_command) for r in parsed.recipients] == [
        ("ann@example.org", "RCPT"),
        ("ben@example.net", "DATA"),
        ("cat@example.com", "CONNECT"),
        ("dan@example.info", "MAIL"),
        ("eve@example.biz", None),  # no server replied
    ]
    assert [r.code for r in parsed.recipients[:4]] == [550, 550, 554, 553]


def _sendmail(failed: str, transcript: str) -> bytes:
    return _text_bounce(
        "Mail Delivery Subsystem <MAILER-DAEMON@mail.example.net>",
        "Returned mail: see transcript for details",
        "The original message was received at Tue, 4 Jun 2024 11:20:01 GMT\n"
        "from app.example.com [198.51.100.7]\n\n"
        "   ----- The following addresses had permanent fatal errors -----\n"
        f"{failed}\n"
        "   ----- Transcript of session follows -----\n"
        f"{transcript}\n"
        "   ----- Original message follows -----\n",
    )


ANN_BEN = "<ann@example.org>\n    (reason: 550 User unknown)\n<ben@example.org>\n"
ANN = "<ann@example.org>\n    (reason: 550 5.1.1 User unknown)\n"


@pytest.mark.parametrize(
    ("failed", "transcript", "answered"),
    [
        # a pipelined RCPT's refusal, read once DATA was sent: Sendmail holds it against
        # the recipient; the DATA reply after it is no recipient's failure
        (
            ANN_BEN,
            "... while talking to mx.example.org.:\n>>> DATA\n"
            "<<< 550 5.1.1 <ann@example.org>... User unknown\n"
            "550 5.1.1 <ann@example.org>... User unknown\n"
            "<<< 550 5.1.1 <ben@example.org>... User unknown\n"
            "550 5.1.1 <ben@example.org>... User unknown\n"
            "<<< 554 5.5.1 Error: no valid recipients\n",
            ["RCPT", "RCPT"],
        ),
        # DATA itself refused: "Service unavailable" names no one
        (
            ANN_BEN,
            "... while talking to mx.example.org.:\n>>> DATA\n"
            "<<< 550 Unknown user ann@example.org\n554 5.0.0 Service unavailable\n",
            ["DATA", "DATA"],
        ),
        (
            ANN,
            "... while talking to mx.example.org.:\n>>> RCPT To:<ann@example.org>\n"
            "<<< 550 5.1.1 Requested action not taken: mailbox unavailable\n"
            "550 5.1.1 <ann@example.org>... User unknown\n"
            ">>> DATA\n<<< 503 Error: need RCPT command\n",
            ["RCPT"],
        ),
        (
            ANN,
            "... while talking to mx.example.org.:\n"
            ">>> MAIL From:<news@example.com> SIZE=1543\n"
            "<<< 553 5.1.8 Domain of sender address news@example.com does not exist\n"
            "554 5.0.0 Service unavailable\n",
            ["MAIL"],
        ),
        # the greeting, at each MX; the reply to QUIT is no failure
        (
            ANN,
            "... while talking to mx1.example.org.:\n<<< 554 mx1 not accepting connections\n"
            ">>> QUIT\n<<< 421 4.7.0 too many errors\n"
            "... while talking to mx2.example.org.:\n<<< 554 mx2 not accepting connections\n"
            "554 5.0.0 Service unavailable\n",
            ["CONNECT"],
        ),
        # sessions in the order they were tried: the last one is what the bounce reports
        (
            ANN,
            "... while talking to mx1.example.org.:\n<<< 450 busy - please try later\n"
            "... while talking to mx2.example.org.:\n>>> DATA\n<<< 551 not our customer\n"
            "550 5.1.1 <ann@example.org>... User unknown\n<<< 503 need RCPT command [data]\n",
            ["RCPT"],
        ),
        # a reply after something that is no command: what it answered is not known
        (
            ANN,
            "... while talking to mx.example.org.:\n>>> ann@example.org\n"
            "<<< 550 5.1.1 User unknown\n",
            [None],
        ),
    ],
)
def test_answered_command_sendmail_transcript(
    failed: str, transcript: str, answered: list[str | None]
) -> None:
    parsed = parse_bounce(_sendmail(failed, transcript))
    assert parsed is not None
    assert [r.answered_command for r in parsed.recipients] == answered


def test_answered_command_exim() -> None:
    raw = _text_bounce(
        "Mail Delivery System <Mailer-Daemon@mail.example.net>",
        "Mail delivery failed: returning message to sender",
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  ann@example.org\n"
        "    host mx.example.org [192.0.2.10]\n"
        "    SMTP error from remote mail server after RCPT TO:<ann@example.org>:\n"
        "    550 5.1.1 User unknown\n"
        "  ben@example.net\n"
        "    host mx.example.net [192.0.2.20]\n"
        "    SMTP error from remote mail server after end of data:\n"
        "    550 5.7.1 Message rejected as spam\n"
        "  cat@example.com\n"
        "    SMTP error from remote mail server after initial connection:\n"
        "    host mx.example.com [192.0.2.30]: 554 5.7.1 No PTR record for 203.0.113.9\n"
        "  dan@example.info\n"
        "    host mx.example.info [192.0.2.40]\n"
        "    SMTP error from remote mail server after pipelined MAIL FROM:"
        "<news@example.com> SIZE=1543:\n"
        "    550 5.7.1 Sender rejected\n\n"
        "------ This is a copy of the message, including all the headers. ------\n",
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [(r.recipient, r.code, r.answered_command) for r in parsed.recipients] == [
        ("ann@example.org", 550, "RCPT"),
        ("ben@example.net", 550, "DATA"),
        ("cat@example.com", 554, "CONNECT"),
        ("dan@example.info", 550, "MAIL"),
    ]


@pytest.mark.parametrize(
    ("said", "answered"),
    [
        ("192.0.2.10 does not like recipient.", "RCPT"),
        ("Connected to 192.0.2.10 but sender was rejected.", "MAIL"),
        ("Connected to 192.0.2.10 but my name was rejected.", "HELO"),
        ("Connected to 192.0.2.10 but greeting failed.", "CONNECT"),
        ("192.0.2.10 failed after I sent the message.", "DATA"),
        ("mx.example.org [192.0.2.10] did not like our RCPT TO:", "RCPT"),
        ("mx.example.org [192.0.2.10] did not like our final DATA:", "DATA"),
        ("Giving up on 192.0.2.10.", None),
    ],
)
def test_answered_command_qmail_and_dragonfly_sentences(said: str, answered: str | None) -> None:
    raw = _text_bounce(
        "MAILER-DAEMON@mail.example.net",
        "failure notice",
        "Hi. This is the qmail-send program at mail.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        f"<ann@example.org>:\n{said}\nRemote host said: 550 5.7.1 Refused\n\n"
        "--- Below this line is a copy of the message.\n",
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [(r.code, r.answered_command) for r in parsed.recipients] == [(550, answered)]


@pytest.mark.parametrize(
    ("name", "answered"),
    [
        ("lhost-postfix-02.eml", ["RCPT", "RCPT"]),  # in the text part of a DSN
        ("lhost-postfix-62.eml", ["DATA"]),
        ("rhost-nttdocomo-02.eml", ["DATA"]),  # "Unknown user" after DATA: a carrier's filter
        ("lhost-postfix-54.eml", ["MAIL"]),
        ("lhost-postfix-38.eml", ["CONNECT"]),
        ("lhost-exim-58.eml", ["DATA"]),
        ("lhost-exim-32.eml", ["CONNECT"]),
        ("lhost-sendmail-40.eml", ["DATA"]),
        ("lhost-sendmail-28.eml", ["RCPT"]),  # pipelined, held against the recipient
        ("lhost-sendmail-56.eml", ["CONNECT"]),
        ("lhost-courier-02.eml", ["DATA"]),
        ("lhost-ezweb-08.eml", ["MAIL"]),
        ("lhost-qmail-04.eml", ["HELO"]),
        ("lhost-qmail-20.eml", ["DATA"]),
        ("lhost-dragonfly-02.eml", ["DATA"]),
        ("lhost-yahoo-14.eml", ["RCPT"]),
        ("lhost-gmx-02.eml", ["RCPT"]),
        ("lhost-x6-02.eml", ["RCPT"]),
        ("lhost-mfilter-02.eml", ["DATA"]),
        ("lhost-qmail-10.eml", [None]),  # a local delivery: no SMTP
        ("lhost-exchange2007-02.eml", [None]),  # Exchange does not say
    ],
)
def test_answered_command_corpus(name: str, answered: list[str | None]) -> None:
    parsed = parse_bounce((CORPUS / name).read_bytes())
    assert parsed is not None
    assert [r.answered_command for r in parsed.recipients] == answered


def test_answered_command_only_for_a_failure() -> None:
    """A delivered recipient of the same report answered nothing that failed."""
    dsn = (
        b"From: MAILER-DAEMON@mail.example.net\nSubject: Delivery Status Notification\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\n"
        b"... while talking to mx.example.org.:\n>>> DATA\n"
        b"<<< 554 5.7.1 Message refused\n554 5.0.0 Service unavailable\n\n"
        b"--b\nContent-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mail.example.net\n\n"
        b"Final-Recipient: rfc822; ann@example.org\nAction: failed\nStatus: 5.7.1\n\n"
        b"Final-Recipient: rfc822; ben@example.org\nAction: delivered\nStatus: 2.0.0\n\n"
        b"--b--\n"
    )
    parsed = parse_bounce(dsn)
    assert parsed is not None
    assert [(r.action, r.answered_command) for r in parsed.recipients] == [
        ("failed", "DATA"),
        ("delivered", None),
    ]


_ANSWERED_PARSE = """
import sys
from policies.dsn import parse_bounce
parsed = parse_bounce(sys.stdin.buffer.read())
print(parsed and [r.answered_command for r in parsed.recipients])
"""
_BOUNCE_HEAD = (
    b"From: MAILER-DAEMON@mail.example.net\nSubject: Undelivered Mail Returned to Sender\n\n"
    b"<bob@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 unknown\n"
)


@pytest.mark.parametrize(
    "tail",
    [
        b"<bob@example.org>: " + b"in reply to end of " * 100_000 + b"\n",
        b"<bob@example.org>: " + b"SMTP error from remote mail server after pipelined " * 40_000,
        b"<bob@example.org>: " + b"MSEXCH:IMS:" * 180_000 + b"\n",
        b">>> DATA\n" + b"<<< 550 x\n550 5.1.1 <a@example.org>... User unknown\n" * 40_000,
        b"\n" + (b"x" * 900 + b":\n\n") * 2_000,
    ],
    ids=["in-reply-to", "exim-after", "exchange-ims", "transcript", "lead-ins"],
)
def test_answered_command_and_failure_text_stay_linear(tail: bytes) -> None:
    """2 MB shapes built to make the new readers rescan: parsed well within the budget of
    the hostile-input tests (a linear parse of 2 MB takes about a second)."""
    run_within(_ANSWERED_PARSE, _BOUNCE_HEAD + tail, 10.0, "parse_bounce")


# --------------------------------------------------------------------------- limits and garbage


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n\n\r\n",
        b"\x00\x01\x02\xff\xfe binary",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"just a line of text\nand another\n",
        b"Subject: x\x00y\n\nbody",
    ],
)
def test_not_a_message(raw: bytes) -> None:
    with pytest.raises(NotAMessage):
        parse_bounce(raw)


def test_mbox_from_line_is_accepted() -> None:
    raw = (
        b"From MAILER-DAEMON Wed Jun  5 11:00:00 2024\n"
        + (FAMILIES / "postfix-dsn.eml").read_bytes()
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert parsed.recipients == _family("postfix-dsn.eml").recipients


def test_deep_nesting_is_malformed() -> None:
    raw = b"From: a@example.com\nSubject: deep\n"
    for level in range(50):
        raw += f'Content-Type: multipart/mixed; boundary="b{level}"\n\n--b{level}\n'.encode()
    raw += b"Content-Type: text/plain\n\nhello\n"
    with pytest.raises(MalformedBounce):
        parse_bounce(raw)


def test_deep_message_rfc822_nesting_is_malformed() -> None:
    raw = b"Subject: inner\n\nhello\n"
    for _ in range(50):
        raw = b"From: a@example.com\nContent-Type: message/rfc822\n\n" + raw
    with pytest.raises(MalformedBounce):
        parse_bounce(raw)


def test_too_many_parts_is_malformed() -> None:
    parts = b"".join(b"--x\nContent-Type: text/plain\n\npart\n" for _ in range(10_000))
    raw = (
        b'From: a@example.com\nContent-Type: multipart/mixed; boundary="x"\n\n' + parts + b"--x--\n"
    )
    with pytest.raises(MalformedBounce):
        parse_bounce(raw)


def test_huge_input_is_truncated_not_refused() -> None:
    base = (FAMILIES / "exim-text.eml").read_bytes()
    raw = base + b"x" * 80 + (b"\n" + b"y" * 99) * 40_000  # ~4 MB of returned body
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert [r.recipient for r in parsed.recipients] == ["bob@example.org", "carol@example.org"]


def test_undecodable_bytes_and_bad_charsets_do_not_raise() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail Returned to Sender\n"
        b'Content-Type: text/plain; charset="x-no-such-charset"\n'
        b"Content-Transfer-Encoding: base64\n\n"
        b"!!!not base64\xff\xfe===\n"
    )
    parse_bounce(raw)  # may be None; must not raise
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: =?bogus?Q?Undelivered=ZZ?=\n"
        b'Content-Type: text/plain; charset="hex"\n\n'
        b"<m\xe4x@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 unknown \xff\n"
    )
    parsed = parse_bounce(raw)
    assert parsed is not None
    assert parsed.recipients[0].code == 550
    assert parsed.recipients[0].status == "5.1.1"


def test_reply_never_raises() -> None:
    odd = BounceRecipient(None, "failed", "5.1.1", 550, "no code here at all", None)
    assert odd.reply() == Reply(code=550, enhanced="5.1.1", text="no code here at all")
    bogus = BounceRecipient(None, "failed", None, 999, "999 what", None)
    assert bogus.reply() == Reply(code=0, enhanced=None, text="999 what")
    bare = BounceRecipient(None, "failed", None, None, "", None)
    assert bare.reply() == Reply(code=0, enhanced=None, text="")


# --------------------------------------------------------------------------- fuzzing

_SEED = (FAMILIES / "postfix-dsn.eml").read_bytes()
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_safely(raw: bytes) -> None:
    try:
        parsed = parse_bounce(raw)
    except (NotAMessage, MalformedBounce):
        return
    for recipient in parsed.recipients if parsed else ():
        recipient.reply()


@_FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _parse_safely(raw)


@_FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_body_after_headers(body: bytes) -> None:
    _parse_safely(b"From: MAILER-DAEMON@example.net\nSubject: Returned mail\n\n" + body)


@_FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(_SEED)),
            st.integers(min_value=0, max_value=40),
            st.binary(max_size=40),
        ),
        max_size=6,
    )
)
def test_fuzz_mutated_dsn(edits: list[tuple[int, int, bytes]]) -> None:
    raw = _SEED
    for position, cut, insert in edits:
        raw = raw[:position] + insert + raw[position + cut :]
    _parse_safely(raw)


@_FUZZ
@given(st.text(max_size=300))
def test_fuzz_mutated_delivery_status_fields(text: str) -> None:
    raw = _SEED.replace(b"Action: failed\nStatus: 5.1.1", text.encode("utf-8", "surrogatepass"))
    _parse_safely(raw)
