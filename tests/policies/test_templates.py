"""Bounce-text templates: one provider reply, one template (policies/templates.py)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from policies import template_families
from policies.smtp_reply import parse_reply
from policies.templates import PLACEHOLDERS, template_of, wording_of

DATASET = Path(__file__).parent / "data" / "smtp-replies.jsonl"
ROWS = [json.loads(line) for line in DATASET.read_text().splitlines()]
BY_ID = {row["id"]: row for row in ROWS}

# The file's `group` labels are the product owner's contract and are used as
# they are. Two rows of the file cannot be honoured by any template without
# merging replies the file keeps apart; each is excused from one check only,
# for the reason given (at most three such rows, and a test checks that each
# is still needed).
#
# Excused from "one group, one template":
OUTSIDE_ITS_GROUP: dict[str, str] = {
    "r0094": "free.fr's group, but its words are the stock Postfix + Dovecot quota reply "
    "('Recipient address rejected: Quota exceeded (mailbox for user is full)'), the same "
    "words r0100 (another group) sends from another Postfix/Dovecot host. Nothing in it "
    "(code, tag, host, URL) says free.fr: a rule folding it into free.fr's 'user quota "
    "exceeded' would claim every Postfix/Dovecot site's quota reply for free.fr.",
}
# Excused from "two groups, two templates", for the one pair named:
SAME_WORDS: dict[str, tuple[str, str]] = {
    "x0015": (
        "x0009",
        "NTT docomo's and Courier's replies are the same words, '550 Unknown user <address>', "
        "byte for byte but the address; the address is the variable part the contract masks.",
    ),
}


def _group(row: dict[str, str]) -> str:
    """The file's group; a row without one is a group of its own."""
    return row["group"] or row["id"]


def _templates() -> dict[str, str]:
    return {row["id"]: template_of(row["reply"]) for row in ROWS}


def test_dataset_same_group_same_template():
    """Replies of one group (the file's labels, unmodified) share one
    template; every split group is printed."""
    templates = _templates()
    groups: dict[str, list[str]] = defaultdict(list)
    for row in ROWS:
        if row["id"] not in OUTSIDE_ITS_GROUP:
            groups[_group(row)].append(row["id"])
    split = {
        group: {i: templates[i] for i in ids}
        for group, ids in groups.items()
        if len({templates[i] for i in ids}) > 1
    }
    assert len(ROWS) == 307
    assert sum(len(ids) > 1 for ids in groups.values()) == 37
    assert split == {}, "\n".join(
        f"{group}:\n" + "\n".join(f"  {i}: {t}" for i, t in members.items())
        for group, members in split.items()
    )


def test_dataset_different_groups_different_templates():
    """Replies of different groups (a row without a group is a group of its
    own) never share a template, over all pairs; every clash is printed."""
    templates = _templates()
    by_template: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in ROWS:
        by_template[templates[row["id"]]].append(row)
    excused = {frozenset((one, other)) for one, (other, _) in SAME_WORDS.items()}
    clashes = [
        f"{a['id']} ({_group(a)}) / {b['id']} ({_group(b)}): {template}"
        for template, rows in by_template.items()
        for a, b in itertools.combinations(rows, 2)
        if _group(a) != _group(b) and frozenset((a["id"], b["id"])) not in excused
    ]
    assert clashes == [], "\n".join(clashes)


def test_dataset_exceptions_are_few_and_still_needed():
    """At most three excused rows, each a row of the file with the label the
    file gives it, and each still needed: the table cannot go stale
    silently, nor grow into a relabelling."""
    templates = _templates()
    assert len(OUTSIDE_ITS_GROUP) + len(SAME_WORDS) <= 3
    for own in OUTSIDE_ITS_GROUP:
        group = BY_ID[own]["group"]
        others = [r["id"] for r in ROWS if r["group"] == group and r["id"] != own]
        assert others, own
        assert all(templates[own] != templates[other] for other in others), own
    for one, (other, _) in SAME_WORDS.items():
        assert _group(BY_ID[one]) != _group(BY_ID[other]), one
        assert templates[one] == templates[other], one


def test_dataset_idempotent():
    """A template is its own template, for every real reply."""
    not_fixed = []
    for row in ROWS:
        template = template_of(row["reply"])
        if template_of(template) != template:
            not_fixed.append(f"{row['id']}: {template!r} -> {template_of(template)!r}")
    assert not_fixed == [], "\n".join(not_fixed)


def test_dataset_cut_replies_are_stable():
    """A reply cut anywhere (a log line limit, a trimmed corpus) still gets a
    template, and that template is its own template."""
    not_fixed = []
    for row in ROWS:
        reply = row["reply"]
        for cut in range(0, len(reply), 7):
            for part in (reply[:cut], reply[cut:]):
                template = template_of(part)
                if template_of(template) != template:
                    not_fixed.append(f"{row['id']}@{cut}: {part!r} -> {template!r}")
    assert not_fixed == [], "\n".join(not_fixed[:20])


def test_dataset_reads_the_reply_as_policies_replies_does():
    """The template of a reply is the template of the reply as
    policies.smtp_reply reads it: its code, the enhanced code that follows the
    code (one found later is still in the message) and its message."""
    wrong = []
    for row in ROWS:
        reply = parse_reply(row["reply"])
        enhanced = reply.enhanced if _follows_code(reply.lines[0], reply.enhanced) else ""
        code = str(reply.code) if reply.code else ""
        rebuilt = " ".join(part for part in (code, enhanced, reply.message) if part)
        if template_of(rebuilt) != template_of(row["reply"]):
            wrong.append(f"{row['id']}: {template_of(row['reply'])} / {template_of(rebuilt)}")
    assert wrong == [], "\n".join(wrong)


def _follows_code(line: str, enhanced: str | None) -> bool:
    return enhanced is not None and bool(
        re.match(rf"\s*(?:smtp;\s*)?(?:\d{{3}})?[\s-]*#?{re.escape(enhanced)}(?![\d.])", line, re.I)
    )


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "550-5.7.1 This message is not accepted. Please try\n"
            "550-5.7.1 double-checking the recipient's email address for typos or\n"
            "550 5.7.1  unnecessary spaces.",
            "This message is not accepted. Please try double-checking the recipient's "
            "email address for typos or unnecessary spaces",
        ),
        (
            "550-5.7.1 Unauthenticated email is not accepted due to the 550-5.7.1 domain's "
            "policy. 550 5.7.1 Please contact the administrator",
            "Unauthenticated email is not accepted due to the domain's policy. "
            "Please contact the administrator",
        ),
        ("smtp; 550 5.1.1 User Unknown", "User Unknown"),
        ("550 #5.1.0 Address rejected.", "Address rejected"),
        ("  550   5.2.2   Mailbox\r\n  full  ", "Mailbox full"),
        (
            "550 Requested action not taken: mailbox unavailable",
            "550 Requested action not taken: mailbox unavailable",
        ),
        ("5.1.1 user unknown", "User unknown"),
        (
            "553 Mail from 192.0.2.1 not allowed - 5.7.1 [BL23] Connections not accepted",
            "Mail from <ip> not allowed - 5.7.1 [<id>] Connections not accepted",
        ),
        (
            "550 5.1.1 host x.example said: 550 5.1.1 <a@x.example> User doesn't exist",
            "Host <domain> said: 550 5.1.1 <email> User doesn't exist",
        ),
        ("", ""),
    ],
)
def test_collapses_prefixes_and_whitespace(raw, template):
    """Continuation prefixes go, newline- or Postfix-joined, and so do the
    reply code and the enhanced code that follows it (a stock text keeps
    them in front); an enhanced code later in the words and a quoted reply
    stay where they are; whitespace collapses to single spaces."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("550 5.1.1 User unknown: bob@example.com", "User unknown: <email>"),
        ("550 Unknown user a.b+tag@mx.example.co.jp", "Unknown user <email>"),
        ("550 User not found:dueryi@139.com", "User not found:<email>"),
        (
            "550 5.1.0 <010001725d8ad4fc-9fe8fb1f-0292@amazonses.com> sender rejected",
            "<email> sender rejected",
        ),
        ("554 RCPT (bob@example.com) dosn't exist", "RCPT (<email>) dosn't exist"),
        ("550 5.7.1 Sender [bob@example.org] denied", "Sender [<email>] denied"),
    ],
)
def test_masks_addresses(raw, template):
    """An address becomes <email>, with the angle brackets it came in; other
    brackets and the punctuation around it stay."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("550 5.7.1 Client host [192.0.2.1] blocked", "Client host [<ip>] blocked"),
        ("554 IP=203.0.113.9 - bad reputation", "IP=<ip> - bad reputation"),
        ("550 5.7.1 [x.xx.xx.xx] blocked", "Blocked"),
        ("550 messages from x.xx.xx.xx refused", "Messages from <ip> refused"),
        ("550 from #.#.#.# refused", "From <ip> refused"),
        ("550 from 2001:db8::25 refused", "From <ip> refused"),
        ("550 from 2a00:1450:4864:20:0:0:0:32b refused", "From <ip> refused"),
        ("550 from ::ffff:192.0.2.1 refused", "From <ip> refused"),
        (
            "connect to mx.example.com[192.0.2.1]:25: refused",
            "Connect to <domain>[<ip>]:<n>: refused",
        ),
    ],
)
def test_masks_ip_addresses(raw, template):
    """IPv4 and IPv6 addresses become <ip>, redacted ones ("x.xx.xx.xx",
    "#.#.#.#") too, so that a corpus copy groups with the real reply."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("421 4.4.2 mx.dashone.net Error: timeout exceeded", "<domain> Error: timeout exceeded"),
        (
            "550 5.4.310 DNS domain yaloc.moc does not exist [LastAttemptedServerName=yaloc.moc]",
            "DNS domain <domain> does not exist [LastAttemptedServerName=<domain>]",
        ),
        (
            "550 5.7.509 Access denied, sending domain [EXAMPLE.JP] does not pass DMARC",
            "Access denied, sending domain [<domain>] does not pass DMARC",
        ),
        (
            "550 5.1.0 192.0.2.1 is not allowed to send from <example.net> per SPF",
            "<ip> is not allowed to send from <domain> per SPF",
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found",
            "RESOLVER.ADR.RecipientNotFound; not found",
        ),
        ("550 4.4.7 QUEUE.Expired; message expired", "QUEUE.Expired; message expired"),
        ("550 Domain example.com. Bye", "Domain <domain>. Bye"),
    ],
)
def test_masks_domain_names(raw, template):
    """A DNS name (last label letters of one case) becomes <domain>, whole:
    Microsoft's front-end names differ in letters as well as digits.
    Exchange's dotted status words (mixed-case last part) are not names."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        # Queue ids, session ids, hex and base64 blobs.
        ("250 2.0.0 Ok: queued as 4Sbnd53EO2z1LKLct", "Ok: queued as <id>"),
        (
            "550 5.7.1 Email 4Sbnd53EO2z1LKLct rejected per SPAM policy",
            "Email <id> rejected per SPAM policy",
        ),
        ("554 rejected, id 9fe8fb1f-0292-430b-a634-1eba65166dbb", "Rejected, id <id>"),
        ("554 rejected, ref 08DBF37C231BBFB9 here", "Rejected, ref <id> here"),
        (
            "550 limited [V2VkIEFwciAgMyAx=/RkNGMjlFQTVEQ0E Blocked IP 192.0.2.22]",
            "Limited [<id> Blocked IP <ip>]",
        ),
        ("550 Reject ;id=DLOkvMxsVeZooDLOkv7hl0;mta=mx12-prd-nl1;", "Reject ;id=<id>;mta=<id>"),
        # Vendor tags with numbers inside.
        ("421 4.7.0 [TSS04] Messages from 192.0.2.1 deferred", "Messages from <ip> deferred"),
        ("451 4.7.1 Try later (Z27/6DC2420) now", "Try later (<id>) now"),
        ("550 5.7.1 refused (S3140) today", "Refused (<id>) today"),
    ],
)
def test_masks_identifiers(raw, template):
    """A token with letters and digits in one run is an identifier and
    becomes <id>, whole, with what it is glued to by - + / = ."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("421 4.7.0 Try later. OFR_416 please", "Try later. OFR_<n> please"),
        ("421 Try later. OFR005_505 [505]", "Try later. OFR_<n>"),
        ("550 5.2.0 Mail rejected. ofr_506 [506]", "Mail rejected. OFR_<n>"),
        ("550 5.5.0 Service refused. LPN001_108", "Service refused. LPN_<n>"),
    ],
)
def test_vendor_reason_tags_keep_their_letters(raw, template):
    """A vendor's reason tag ("OFR_416", "LPN001_108") keeps its letters,
    upper-cased, and masks its numbers: the numbers change from one bounce
    to the next (Orange's OFR_999 and OFR005_505 are one reply), the letters
    tell Orange's reply from La Poste's same words. The bracketed number
    after it is a stamp."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("451 4.7.1 Greylisted for 5 minutes", "Greylisted for <n> minutes"),
        ("554 4.4.7 unable to deliver in 840 minutes", "Unable to deliver in <n> minutes"),
        (
            "554 5.6.0 spam with a probability of more than 90%",
            "Spam with a probability of more than <n>%",
        ),
        (
            "552 5.3.4 message of 10MB over the 5.5MB limit",
            "Message of <n>MB over the <n>MB limit",
        ),
        ("554 Message rejected: id=20025-09 - SPAM", "Message rejected: id=<n>-<n> - SPAM"),
        (
            "500 Remote server does not support TLS (state 6).",
            "Remote server does not support TLS (state <n>)",
        ),
        # Words that carry a digit stay words.
        ("550 5.6.9 improper use of 8-bit data", "Improper use of 8-bit data"),
        ("550 not over IPv6 or POP3", "Not over IPv6 or POP3"),
        ("554 failed in region AP-NORTHEAST-1: x", "Failed in region AP-NORTHEAST-1: x"),
        ("550 5.1.0 sender rejected. AUP#In-1310", "Sender rejected. AUP#In-1310"),
    ],
)
def test_masks_numbers(raw, template):
    """A number on its own becomes <n> (a unit glued to it stays); a number
    that is part of a word or a hyphenated name is left alone."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "554 Message rejected on 2023/11/23 18:59:46 GMT, policy",
            "Message rejected on <date>, policy",
        ),
        ("450 deferred until 2023-11-23T18:53:22.058Z, retry", "Deferred until <date>, retry"),
        ("450 deferred until 2024-05-09 23:34:45+02:00, retry", "Deferred until <date>, retry"),
        ("554 Received: Fri, 22 Sep 2023 01:01:01 +0000 Subject: x", "Received: <date> Subject: x"),
        ("554 at Wed Apr  3 16:36:59 JST 2019 blocked", "At <date> blocked"),
        ("421 try again after 16:36 UTC", "Try again after <date>"),
    ],
)
def test_masks_dates(raw, template):
    """Timestamps in the usual forms (ISO 8601, log style, RFC 5322, ctime,
    a bare clock) become <date>."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        # The help page: scheme, host and path, and a query that names the topic.
        (
            "550 5.7.1 Learn more at https://support.google.com/mail/?p=SomeTopic now",
            "Learn more at https://support.google.com/mail/?p=SomeTopic now",
        ),
        (
            "554 see http://go.microsoft.com/fwlink/?LinkID=526655.",
            "See http://go.microsoft.com/fwlink/?LinkID=526655",
        ),
        (
            "550 see http://help.example.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725",
            "See http://help.example.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725",
        ),
        (
            "554 see https://support.apple.com/en-us/HT204137 for info",
            "See https://support.apple.com/en-us/HT204137 for info",
        ),
        ("554 visit https://sender.office.com/ and", "Visit https://sender.office.com and"),
        (
            "554 visit HTTPS://Sender.Office.COM/Help and",
            "Visit https://sender.office.com/Help and",
        ),
        # Per-message values in the query, the path or the fragment.
        (
            "554 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.225",
            "Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=<ip>",
        ),
        (
            "550 see https://www.spamhaus.org/query/ip/192.0.2.1 (x)",
            "See https://www.spamhaus.org/query/ip/<ip> (x)",
        ),
        (
            "550 see http://help.mail.ru/notspam-support/id?c=7y4ytdHbuOGv3O50NYTwpz1F~ or",
            "See http://help.mail.ru/notspam-support/id?c=<id> or",
        ),
        (
            "550 see https://x.example/u?to=bob%40example.com&t=1700000000",
            "See https://x.example/u?to=<email>&t=<n>",
        ),
        ("550 see https://x.example/s/AbCdEf1234567890xyz/", "See https://x.example/s/<id>/"),
        ("550 see http://192.0.2.1/help", "See http://<ip>/help"),
        # Punctuation after the URL is the sentence's (and the final one goes).
        ("550 see (https://x.example/help) now.", "See (https://x.example/help) now"),
        (
            "550 see https://x.example/wiki/Foo_(bar) now",
            "See https://x.example/wiki/Foo_(bar) now",
        ),
        # A URL with "<...>" glued into it cannot be taken apart.
        ("550 see https://x.example/a<b>c?d=1 now", "See <url> now"),
        # A URL wrapped across continuation lines is mended.
        (
            "550-5.1.0 see https: 550 5.1.0 //www.spamhaus.org/query/lookup/ now",
            "See https://www.spamhaus.org/query/lookup/ now",
        ),
    ],
)
def test_urls_keep_the_help_page(raw, template):
    """A URL keeps scheme, host and path, and query values that are words or
    short numbers (they name the help topic: Gmail's p=NoSuchUser); values
    shaped like a per-message value (IP, address, date, long number, opaque
    token) are masked."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "554 5.7.9 Rejected. See https://postmaster.verizonmedia.com/error-codes",
            "Rejected. See https://senders.yahooinc.com/error-codes",
        ),
        (
            "421 4.7.0 Deferred; see https://postmaster.yahooinc.com/error-codes",
            "Deferred; see https://senders.yahooinc.com/error-codes",
        ),
        (
            "550 Limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000729",
            "Limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=<n>",
        ),
        (
            "550 Limited. http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=16&&no=1001508",
            "Limited. http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=16&&no=<n>",
        ),
    ],
)
def test_urls_follow_the_family_tables(raw, template):
    """A help page that moved is named by its current host (Yahoo's
    verizonmedia and postmaster hosts are senders.yahooinc.com), and a query
    value that names a reason inside the page's topic (QQ's no=) is masked:
    the topic (id=) stays."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    "wrapped",
    [
        "https://urldefense.com/v3/__https://support.google.com/mail/?p=NoSuchUser__;!!DCbAVzZNr"
        "Af4!Bsmtcs6WMpEc_8jVLdhqz_iB8KJIfswa-OeEBfWqV3l4li5LXHIeMp6o0iZa_9Au2YFDk50K4JYuoQ$",
        "https://urldefense.proofpoint.com/v2/url?u=https-3A__support.google.com_mail_-3Fp-3D"
        "NoSuchUser&d=DwIFaQ&c=euGZstcaTDllvimEN8b7jXrwqOf-v5A_CdpgnVfiiMM&r=abc&m=def&s=ghi&e=",
        "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fsupport.google.com"
        "%2Fmail%2F%3Fp%3DNoSuchUser&data=05%7C01%7C%7Cabc%7C0&sdata=xyz&reserved=0",
    ],
)
def test_urls_unwrap_rewriting_gateways(wrapped):
    """Proofpoint URL Defense (v2, v3) and Microsoft Safe Links rewrites give
    the template of the URL they wrap: here Gmail's NoSuchUser topic, which
    only the unwrapped URL names (the words say nothing else)."""
    plain = "550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp"
    assert template_of(plain) == "The email account that you tried to reach does not exist. - gsmtp"
    assert template_of(f"550 5.1.1 Learn more at {wrapped} - gsmtp") == template_of(plain)


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        # Gmail: "[ip score]" before the words, the session id before "- gsmtp".
        (
            "550 5.7.1 [192.0.2.22      18] Our system has detected spam. y3si675602plr.1 - gsmtp",
            "Our system has detected spam. - gsmtp",
        ),
        ("550 5.1.1 No such user ldE8NzE3RyeycidQ-DBxBg - nsmtp", "No such user - nsmtp"),
        # Microsoft: tags and [front end, timestamp, id] after the words.
        (
            "550 5.4.1 Recipient address rejected: Access denied. AS(234349959) "
            "[BMXCHD01FT014.eop-CHD01.prod.protection.outlook.com 2023-01-01T00:00:00.001Z "
            "08DBE218E349CA4F]",
            "Recipient address rejected: Access denied",
        ),
        (
            "451 4.7.650 rate limited, see https://postmaster.live.com (S3113) "
            "[5NY1SSJFSTZJRJBG.eurprd02.prod.outlook.com 2024-05-09T23:34:45.000Z "
            "GLXTWVLGZHZNHVXY]",
            "Rate limited, see https://postmaster.live.com",
        ),
        ("550 5.7.1 Access refused for now (S2017062302).", "Access refused for now"),
        ("554 5.2.121 limit. [#.prod.outlook.com #]", "Limit"),
        # A queue id after the codes, a vendor code after the last sentence.
        ("550 5.1.1 6FdDrBrGcZfMe Invalid recipient. 7y4ytdHbuOG", "Invalid recipient"),
        # ... and Orange's, with its role after it.
        ("421 mwinf5c77 ME Service refused. OFR_999 [999]", "Service refused. OFR_<n>"),
        # Yahoo: the answering host at the end.
        ("554 delivery error: dd Gone. [-20] - mta1061.mail.ne1.yahoo.com", "Gone. [-<n>]"),
    ],
)
def test_drops_session_stamps_at_the_edges(raw, template):
    """Diagnostics about the session at the start or end of the words are
    dropped, not masked, because some copies of a reply carry them and some
    do not."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "451 4.7.500 Server busy. Please try again later from [192.0.2.1].",
            "Server busy. Please try again later from [<ip>].",
        ),
        ("550 5.7.1 messages from [192.0.2.1] weren't sent", "Messages from [<ip>] weren't sent"),
        (
            "550 5.2.1 Addressee unknown <a@x.example>, relay=[192.0.2.1]",
            "Addressee unknown <email>, relay=[<ip>]",
        ),
        ("550 5.4.1 Access denied for [bob@example.org]", "Access denied for [<email>]"),
        ("550 User not found: bob@example.com", "User not found: <email>"),
        (
            "554 delivery error: dd bob@example.com is no longer valid.",
            "<email> is no longer valid",
        ),
        ("250 2.0.0 Ok: queued as 4Sbnd53EO2z1LKLct", "Ok: queued as <id>"),
        (
            "550 5.7.1 listed (see 192.0.2.1 at 12:00) by us",
            "Listed (see <ip> at <date>) by us",
        ),
        (
            "550 Bad SPF records for [example.org:192.0.2.2], see x",
            "Bad SPF records for [<domain>:<ip>], see x",
        ),
    ],
)
def test_keeps_values_that_belong_to_the_sentence(raw, template):
    """A masked value inside a sentence, an address that is the sentence's
    subject or object, and an id that is the object of a sentence ("queued
    as <id>") stay in the template as placeholders."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "511 sorry, no mailbox here by that name (#5.1.1 - chkuser)",
            "Sorry, no mailbox here by that name (#5.1.1 - chkuser)",
        ),
        (
            "451 Resources temporarily unavailable. Please try again later [#4.16.1].",
            "Resources temporarily unavailable. Please try again later [#4.16.1].",
        ),
        (
            "550 5.7.1 This message is not RFC 5322 compliant",
            "This message is not RFC 5322 compliant",
        ),
        ("554 Relay failed: 550 Host unknown", "Relay failed: <n> Host unknown"),
        (
            "554 4.4.7 Message expired: <421 4.4.2 Connection timed out>",
            "Message expired: <421 4.4.2 Connection timed out>",
        ),
        (
            "550 host x.example[192.0.2.1] said: 550 unknown user",
            "Host <domain>[<ip>] said: 550 unknown user",
        ),
    ],
)
def test_keeps_codes_in_the_words(raw, template):
    """Enhanced codes, RFC numbers and a reply code quoted from another
    server ("said: 550") are the message, not variable parts; a number in
    no such place is a number."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "connect to mx.example.com:25 (127.0.0.1): Connection refused",
            "Connect to <domain>:<n> (<ip>): Connection refused",
        ),
        (
            "connect to mx.example.com[2001:db8::1]:25: Connection timed out",
            "Connect to <domain>[<ip>]:<n>: Connection timed out",
        ),
        (
            "Host or domain name not found. Name service error for name=fireww.com type=A: "
            "Host not found",
            "Host or domain name not found. Name service error for name=<domain>",
        ),
        (
            "TLS handshake with mx.example.net[192.0.2.7] failed: certificate verify failed",
            "TLS handshake with <domain>[<ip>] failed: certificate verify failed",
        ),
    ],
)
def test_synthetic_relay_texts(raw, template):
    """The relay's own texts (no reply code) get the same masks: one row per
    kind of failure, not per MX host."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("550 5.2.2 <a@x.example>... Mailbox Full", "450 4.2.2 <b@y.example>... Mailbox Full"),
        ("550 5.5.0 Service refused. LPN001_108", "550 5.7.1 Service refused. LPN007_510"),
        ("421 Service refused. OFR_999 [999]", "421 4.2.0 Service refused. OFR005_505 [505]"),
        ("554 5.4.6 Too many hops", "554 5.4.0 Error: too many hops"),
        ("smtp; 550 5.1.1 No such mailbox", "No such mailbox"),
    ],
)
def test_codes_are_not_in_the_template(first, second):
    """The words are the reply: the same words with another reply code
    (Postfix's soft_bounce answers 450 where it would answer 550), another
    enhanced code or none (La Poste's 5.5.0 and 5.7.1, Orange's 421 with and
    without 4.2.0) are one template. The bounce record keeps the codes in
    their own columns."""
    assert template_of(first) == template_of(second)


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "550 5.1.1 Requested action not taken: mailbox unavailable",
            "550 5.1.1 Requested action not taken: mailbox unavailable",
        ),
        (
            "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
            "550 5.5.0 Requested action not taken: mailbox unavailable",
        ),
        (
            "421 Service not available, closing transmission channel",
            "421 Service not available, closing transmission channel",
        ),
        ("554 transaction failed.", "554 Transaction failed"),
        # A stock text with the server's own words after it is the server's.
        (
            "552 Requested mail action aborted: exceeded storage allocation, Quota exceeded.",
            "Requested mail action aborted: exceeded storage allocation. Quota exceeded",
        ),
        # No words at all: the codes are all there is.
        ("550 5.1.1", "550 5.1.1"),
        ("550-5.1.1 \n550 5.1.1 ", "550 5.1.1"),
        ("421", "421"),
    ],
)
def test_stock_texts_keep_their_codes(raw, template):
    """A reply that is nothing but an RFC 5321 stock text says no more than
    its codes, and many servers send it: the codes stay in front, so that
    Outlook's 5.5.0, SES's 5.1.1 and mail.com's bare 550 stay three rows. A
    reply without words keeps its codes too."""
    assert template_of(raw) == template


def test_stock_texts_differ_by_their_codes():
    """The same stock text under other codes is another reply."""
    text = "Requested action not taken: mailbox unavailable"
    templates = {template_of(f"550 5.5.0 {text}"), template_of(f"550 5.1.1 {text}")}
    assert len(templates | {template_of(f"550 {text}")}) == 3


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        # The recipient echoed in front, in its usual forms, or an empty echo.
        ("550 5.1.1 <bob@example.com>: User unknown", "User unknown"),
        ("550 5.7.1 [bob@example.org]: Access denied", "Access denied"),
        ("550 5.1.1 <bob@example.com>... User unknown", "User unknown"),
        ("550 : user unknown", "User unknown"),
        # Yahoo's legacy lead and its sub-code after the reply code.
        ("554 delivery error: dd Sorry, mailbox disabled (554.30).", "Sorry, mailbox disabled"),
        ("554 30 Sorry, mailbox disabled (554.30).", "Sorry, mailbox disabled"),
        # An "Error:" label, a code quoted again, a CamelCase tag at the end.
        ("554 5.4.0 Error: too many hops", "Too many hops"),
        ("554 <a@x.example>... 550 Host unknown", "Host unknown"),
        ("552 5.2.2 user quota exceeded (UserSearch)", "User quota exceeded"),
        # One word, two spellings.
        ("552 5.2.2 <a@x.example>: user is overquota", "User is over quota"),
        # A bare address in front is the sentence's subject: it stays.
        ("554 a@x.example is no longer valid", "<email> is no longer valid"),
        ("550 5.1.1 <a@x.example> User unknown", "<email> User unknown"),
        # Glued to the next token, which is then masked as it stands alone.
        ("550 <a@x.example>...x.xx.xx.xx", "<ip>"),
    ],
)
def test_drops_decorations(raw, template):
    """What decorates a reply rather than says it goes: the recipient echoed
    in front ("<a@b>:", "[a@b]:", "<a@b>...", or empty), Yahoo's "delivery
    error: dd" and sub-code, an "Error:" label, a quoted code at the start,
    a CamelCase tag and the final punctuation; the first word is
    capitalised. Some copies of a reply carry them and some do not."""
    assert template_of(raw) == template


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Gmail: the help topic, or its key phrase when the URL is gone.
        (
            "550-5.2.1 The email account that you tried to reach is inactive. Learn more at\n"
            "550 5.2.1  https://support.google.com/mail/?p=DisabledUser a1si2.3 - gsmtp",
            "550 5.2.1 The email account that you tried to reach is disabled. b4si5.6",
        ),
        (
            "452 4.2.2 The recipient's inbox is out of storage space. Please direct the "
            "recipient to https://support.google.com/mail/?p=OverQuotaTemp x9si1.2 - gsmtp",
            "552 5.2.2 Mailbox gone over. https://support.google.com/mail/?p=OverQuotaPerm - gsmtp",
        ),
        (
            "421 4.7.0 [192.0.2.9 15] Our system has detected that this message is suspicious "
            "due to the very low reputation of the sending IP address. - gsmtp",
            "550 5.7.1 Blocked. Please visit https://support.google.com/mail/answer/188131 for "
            "more information. - gsmtp",
        ),
        (
            "550 5.7.26 Unauthenticated email from a.example is not accepted due to domain's "
            "DMARC policy. See https://support.google.com/mail/answer/2451690 - gsmtp",
            "550 5.7.1 Rejected: see https://support.google.com/mail/?p=DmarcRejection - gsmtp",
        ),
        # Exchange: the status name, with or without the recipient.
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient a@b.example not found here",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found here",
        ),
        # Postfix: whichever table missed.
        (
            "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in local "
            "recipient table",
            "450 4.1.1 <c@d.example>: Recipient address rejected: User unknown in virtual "
            "alias table",
        ),
        # DNS failures: the record type and the resolver's answer.
        (
            "Host or domain name not found. Name service error for name=a.example type=AAAA: "
            "Host not found",
            "Host or domain name not found. Name service error for name=b.example type=MX: "
            "Host not found, try again",
        ),
        (
            "DNS Error: 12345 DNS type 'mx' lookup of a.example responded with code SERVFAIL",
            "DNS Error: 67890 DNS type 'mx' lookup of b.example responded with code NXDOMAIN "
            "Domain name not found: b.example",
        ),
        # Mail.ru's reason, Rambler's account state, T-Online's reason, QQ's kind of limit.
        (
            "550 Message was not accepted -- invalid mailbox.  Local mailbox a@mail.ru is "
            "unavailable: mailbox is frozen",
            "550 Message was not accepted -- invalid mailbox.  Local mailbox b@bk.ru is "
            "unavailable: user not found",
        ),
        (
            "540 5.7.1 <a@rambler.ru>: recipient address rejected: Suspended",
            "540 5.7.1 <b@rambler.ru>: recipient address rejected: Inactive",
        ),
        (
            "554 IP=192.0.2.1 - Spam. Ask your postmaster for help or to contact tobr@x.example "
            "for reset. (SPAM)",
            "554 IP=192.0.2.2 - Dynamic IP. (Ask your postmaster for help or to contact "
            "tobr@x.example to clarify.) (DYN)",
        ),
        (
            "550 Domain frequency limited [QmxvY2s= Blocked IP 192.0.2.1]. "
            "http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726",
            "550 Ip frequency limited [V2VkIEFw Blocked IP 192.0.2.2]. "
            "http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725",
        ),
    ],
)
def test_reply_families_match(first, second):
    """Where one provider words one reply several ways, the family's
    template: Gmail's topics (?p= with its Temp/Perm forms, answer numbers,
    or the key phrase of a copy without its URL), Exchange's status names,
    Postfix's tables and DNS failures, Google's DNS failures, and the
    variable tail of Mail.ru's, Rambler's, T-Online's and QQ's replies."""
    assert template_of(first) == template_of(second)


@pytest.mark.parametrize(
    "reply",
    [
        # Another provider's full mailbox in Gmail's words, unsigned: its own row.
        "452 4.2.2 The recipient's inbox is out of storage space. Please try again later",
        "550 5.7.1 This message is likely unsolicited mail. Rejected by policy",
        # A copy of Gmail's lead with a typo is somebody else's reply (NetEase).
        "550 RC:LD The email account that you tried to reach does no exists.",
    ],
)
def test_borrowed_gmail_words_keep_their_own_template(reply):
    """A phrase other servers say too is Gmail's only in a copy Gmail signed
    ("- gsmtp") or that carries its help URL; otherwise the row shows, and
    groups by, the server's own words."""
    assert "gsmtp" not in template_of(reply)
    assert template_of(reply) == wording_of(reply)


def test_signed_gmail_words_join_their_topic():
    signed = "452 4.2.2 The recipient's inbox is out of storage space. z1si2.3 - gsmtp"
    topic = "452 4.2.2 See https://support.google.com/mail/?p=OverQuotaTemp - gsmtp"
    assert template_of(signed) == template_of(topic)


def test_a_row_shows_words_its_replies_had():
    """Two rewordings share a template; each shows its own words, masked."""
    temp = (
        "452-4.2.2 The email account that you tried to reach is over quota. Please direct\n"
        "452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp a1si1.1"
        " - gsmtp"
    )
    perm = "552 5.2.2 Mailbox gone over. https://support.google.com/mail/?p=OverQuotaPerm - gsmtp"
    assert template_of(temp) == template_of(perm)
    assert wording_of(perm) == (
        "Mailbox gone over. https://support.google.com/mail/?p=OverQuotaPerm - gsmtp"
    )
    assert wording_of(temp).startswith("The email account that you tried to reach is over quota")
    assert "a1si1.1" not in wording_of(temp)


@pytest.mark.parametrize(
    ("first", "second", "masked"),
    [
        (
            "451 4.4.3 DNS lookup of MX for a.example failed: record type MX",
            "451 4.4.3 DNS lookup of MX for b.example failed: record type AAAA",
            "record type <type>",
        ),
        (
            "550 Rejected, see https://postmaster.example.net/why?ip=192.0.2.1&domain=a.example",
            "550 Rejected, see https://postmaster.example.net/why?ip=192.0.2.9&domain=shop.b.example",
            "why?ip=<ip>&domain=<domain>",
        ),
    ],
)
def test_record_types_and_domains_in_queries_are_masked(first, second, masked):
    assert template_of(first) == template_of(second)
    assert masked in template_of(first)


def test_family_templates_are_their_own_templates():
    """Every Gmail topic's template is its own template (a second reading
    finds the topic again by its key phrase), and the topics are distinct."""
    sentences = {f"{words} - gsmtp" for _, _, words in template_families._GMAIL_TOPICS}
    assert len(sentences) == len(template_families._GMAIL_TOPICS)
    assert {template_of(sentence) for sentence in sentences} == sentences


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("550 5.1.1 user unknown", "552 5.2.2 mailbox full"),
        (
            "550 Requested action not taken: mailbox unavailable",
            "550 5.1.1 Requested action not taken: mailbox unavailable",
        ),
        (
            "550 5.1.1 see https://support.google.com/mail/?p=NoSuchUser",
            "550 5.1.1 see https://support.google.com/mail/?p=DisabledUser",
        ),
        (
            "550 see http://service.mail.qq.com/cgi-bin/help?id=20022&no=1000725",
            "550 see http://service.mail.qq.com/cgi-bin/help?id=16&no=1000725",
        ),
        ("550 Host not found", "550 Host not found, try again"),
        ("550 5.6.9 improper use of 8-bit data", "550 5.6.9 improper use of 7-bit data"),
        ("550 Spectrum AUP#In-1310", "550 Spectrum AUP#In-1000"),
        ("550 5.7.1 not RFC 5322 compliant", "550 5.7.1 not RFC 5321 compliant"),
        ("550 unknown user (#5.1.1)", "550 unknown user (#5.1.2)"),
        # The same words from two providers, told apart by their tags.
        ("550 5.5.0 Service refused. LPN001_108", "421 Service refused. OFR_999 [999]"),
        # A family's variable tail is variable inside that family only.
        (
            "550 5.7.1 <a@x.example>: Recipient address rejected: Inactive",
            "550 5.7.1 <a@x.example>: Recipient address rejected: Blocked",
        ),
        (
            "550 5.1.1 <a@x.example>: Recipient address rejected: User unknown",
            "550 5.1.1 <a@x.example>: Recipient address rejected: Access denied",
        ),
        (
            "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
            "550 5.1.1 RESOLVER.ADR.RecipientNotFound; not found",
        ),
        (
            "550 5.1.1 <a@x.example>: user unknown",
            "550 5.1.1 <a@x.example>: user is over quota",
        ),
    ],
)
def test_distinct_meanings_stay_distinct(first, second):
    """Replies that differ in words, help topic, tag, or (for a stock text)
    codes keep different templates.

    Four pairs that used to be here now match, because the product owner's
    groups (tests/policies/data/smtp-replies.jsonl) say they are one reply:
    the same words under 550 5.1.1 and 450 4.1.1, or 5.5.0 and 5.7.1 (see
    test_codes_are_not_in_the_template); Rambler's 540 "Inactive" and
    "Blocked"; QQ's no=1000725 and no=1000722 under one topic (see
    test_reply_families_match)."""
    assert template_of(first) != template_of(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Gmail's NoSuchUser with different session ids, wire lines or not.
        (
            "550-5.1.1 The email account that you tried to reach does not exist. Learn more at\n"
            "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser y3si675602plr.1 - gsmtp",
            "550-5.1.1 The email account that you tried to reach does not exist. Learn more at "
            "550 5.1.1 https://support.google.com/mail/?p=NoSuchUser "
            "v11-20020a170906564b00b009fd6f428f93si881612ejr.222 - gsmtp",
        ),
        (
            "550 5.1.1 The email account that you tried to reach does not exist. - gsmtp",
            "550 5.1.1 The email account that you tried to reach does not exist. "
            "az10-29348239488-9285349r8sd8gds8fdfdfg.1 - gsmtp",
        ),
        # Outlook with different front ends and timestamps, or none.
        (
            "550 5.4.1 Recipient address rejected: Access denied. "
            "[AMS0EPF0293901AB.eurprd05.prod.outlook.com 2023-01-01T00:00:00.000Z "
            "08DBE74C0FA349500]",
            "550 5.4.1 Recipient address rejected: Access denied. "
            "[BN8NAM12FT054.eop-nam12.prod.protection.outlook.com 2024-06-24T08:58:06.389Z 08DB9A]",
        ),
        (
            "451 4.7.500 Server busy. Please try again later from [39.177.48.16]. (S77714) "
            "[QE2FRA04FT039.eop-fra04.prod.protection.outlook.com 2023-11-23T18:53:22.058Z "
            "10DSKD34941BC6NE]",
            "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (AS77712344) "
            "[#.prod.protection.outlook.com]",
        ),
        # Same reply, other recipient, other sender domain, other server.
        ("550 5.1.1 <a@x.example>: User unknown", "550 5.1.1 <b.c+d@y.example.org>: User unknown"),
        (
            "550 5.7.26 Unauthenticated email from example.jp is not accepted",
            "550 5.7.26 Unauthenticated email from acme.com is not accepted",
        ),
        (
            "421 4.4.2 mx.dashone.net Error: timeout exceeded",
            "421 4.4.2 mail.yandex.net Error: timeout exceeded",
        ),
        # Same reply with another queue id, or without it.
        (
            "550 5.2.0 6FcArPEpSDkj6 Mail rejected. OFR_506 [506]",
            "550 5.2.0 Mail rejected. ofr_506 [506]",
        ),
        # Same reply with the recipient echoed in front, or not.
        (
            "550 5.4.1 [a@x.example]: Recipient address rejected: Access denied",
            "550 5.4.1 Recipient address rejected: Access denied. AS(2343) [X.example 08DB]",
        ),
    ],
)
def test_same_reply_with_other_ids_matches(first, second):
    """The same reply with other ids, hosts, addresses or timestamps has one
    template."""
    assert template_of(first) == template_of(second)


@pytest.mark.parametrize(
    "raw",
    [
        "550 5.1.1 <email>: User unknown",
        "550 see https://x.example/q?ip=<ip>&id=<id>",
        "550 [<ip> <n>] <id> text (<id>). - gsmtp",
        "<<<>>> ((( [[[ ]]] ::: ### ...",
        "550-",
        "550 5.1.1",
        "smtp;",
        "552 5.3.4 10MB/s over 5.5MB, 7-day",
        "550 from x.xx.xx.xx-1 and 2001:db8::1:25:",
        "550 a1<b@c.example>d",
        "250 ok <id> said: 550 x",
        "550 <a@b.example>...550-5.1.1over-quota 450",
        "540 5.7.1 <a@b.example>: Error: 550 delivery error: dd 30 x (UserSearch).",
        "421 mwinf5c77 ME said: 450 x",
        "550 https://postmaster.verizonmedia.com/error-codesoverquota[416] (UserSearch)",
        "550 RESOLVER.ADR.X; a <a@b.example>: 450 <c@d.example>",
    ],
)
def test_idempotent_on_odd_input(raw):
    """Placeholders, brackets, bare codes and decorations piled up or glued
    together are stable: a template is its own template, and odd input does
    not raise."""
    template = template_of(raw)
    assert template_of(template) == template


def test_placeholders_are_the_documented_ones():
    """Every placeholder a template can hold is in PLACEHOLDERS."""
    seen = {token for row in ROWS for token in re.findall(r"<[a-z]+>", template_of(row["reply"]))}
    assert seen <= PLACEHOLDERS


def test_module_stays_pure():
    """Importing the templates loads no I/O, event loop, randomness or relay
    module (a fresh interpreter checks)."""
    code = (
        "import sys, policies.templates\n"
        "banned = ('asyncio', 'relay', 'asyncpg', 'aiosmtplib', 'socket', 'random', 'secrets')\n"
        "print(','.join(m for m in banned if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
