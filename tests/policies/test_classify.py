"""Reply classification: kind, category and suppression (policies/classify.py)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from policies.classify import (
    Category,
    ClassifyRule,
    Kind,
    SuppressOn,
    Verdict,
    category_of,
    classify,
)
from policies.smtp_reply import Reply, parse_reply, synthetic_reply

DATASET = Path(__file__).parent / "data" / "smtp-replies.jsonl"
ROWS = [json.loads(line) for line in DATASET.read_text().splitlines()]
# Issue 19's corpus of replies quoted by public sources, labelled by meaning
# (tests/data/README.md).
PUBLIC = Path(__file__).parents[1] / "data" / "public-replies.jsonl"
PUBLIC_ROWS = [json.loads(line) for line in PUBLIC.read_text().splitlines() if line.strip()]

# Replies whose labelled kind we knowingly do not reproduce, by id, with why.
# Empty today: every one of the 307 replies gets the labelled kind.
KIND_EXCEPTIONS: dict[str, str] = {}

# Dead addresses of this dataset that we knowingly do not suppress: their words
# give no positive evidence (tests/data/README.md labels the same wordings "not
# suppressed" in public-replies.jsonl). "Access denied" (r0007-r0009) and
# IronPort's "#5.1.0 Address rejected" (r0048) do suppress: they carry their
# vendor's mark for "not in our directory" (Exchange Online's front-end stamp,
# IronPort's own notation).
NOT_SUPPRESSED_BY_DESIGN: dict[str, str] = {
    "x0016": "a bare 'Recipient rejected' gives no reason",
    "x0019": "cPanel's 'the account or domain may not exist, they may be blacklisted' guesses",
}

# The dataset's taxonomy has no too_many_recipients; it files "too many
# recipients" under rate_limited, which is what our finer category refines.
DATASET_CATEGORY = {Category.TOO_MANY_RECIPIENTS: "rate_limited"}

# Measured 298/307 (97.1%). The misses are deliberate: r0077 "Message expired,
# DNS query failed" is `other` (the upstream gave up; the cause is no verdict);
# reverse-DNS refusals (r0180, r0195, r0196, r0197, x0047, x0048) are about the
# sending IP, `spam_block_ip`, as issue 19's corpus labels them; cPanel's guess
# (x0019) is `other`.
CATEGORY_THRESHOLD = 0.96

# Issue 19's targets on the public corpus (measured: kind 99.5%, category
# 92.3%, no false suppression, every dead address suppressed).
PUBLIC_KIND_THRESHOLD = 0.98
PUBLIC_CATEGORY_THRESHOLD = 0.92
PUBLIC_RECALL_THRESHOLD = 0.97


def _verdict(row: dict[str, object]) -> Verdict:
    return classify(parse_reply(str(row["reply"])))


def test_dataset_kind_matches_everywhere():
    """Every real reply gets its labelled kind (hard/soft), exceptions aside."""
    wrong = [
        (row["id"], row["kind"], _verdict(row).kind.value, row["reply"][:80])
        for row in ROWS
        if row["id"] not in KIND_EXCEPTIONS and _verdict(row).kind.value != row["kind"]
    ]
    assert len(ROWS) == 307
    assert wrong == []


def test_dataset_never_suppresses_a_good_address():
    """Zero false suppressions, and every recipient-caused hard bounce with
    positive evidence suppresses: the misses are exactly the ones by design."""
    false_suppress = [r["id"] for r in ROWS if _verdict(r).suppress and not r["suppress_recipient"]]
    missed = [r["id"] for r in ROWS if r["suppress_recipient"] and not _verdict(r).suppress]
    assert false_suppress == []
    assert missed == sorted(NOT_SUPPRESSED_BY_DESIGN)


def test_dataset_category_accuracy():
    """The category matches the label on at least CATEGORY_THRESHOLD of the
    replies; the misses are listed when it does not."""
    misses = []
    for row in ROWS:
        category = _verdict(row).category
        got = DATASET_CATEGORY.get(category, category.value)
        if got != row["category"]:
            misses.append(f"{row['id']}: want {row['category']} got {got}: {row['reply'][:70]}")
    accuracy = 1 - len(misses) / len(ROWS)
    assert accuracy >= CATEGORY_THRESHOLD, f"{accuracy:.3f}\n" + "\n".join(misses)


def test_public_corpus_never_suppresses_a_good_address():
    """Issue 19: on the public corpus no good address is suppressed, and at
    least PUBLIC_RECALL_THRESHOLD of the dead ones are."""
    verdicts = [(row, _verdict(row)) for row in PUBLIC_ROWS]
    false_suppress = [r["id"] for r, v in verdicts if v.suppress and not r["suppress_recipient"]]
    dead = [r["id"] for r, _ in verdicts if r["suppress_recipient"]]
    missed = [r["id"] for r, v in verdicts if r["suppress_recipient"] and not v.suppress]
    assert false_suppress == []
    assert 1 - len(missed) / len(dead) >= PUBLIC_RECALL_THRESHOLD, missed


def test_public_corpus_kind_and_category():
    """Issue 19's kind and category targets on the public corpus; the misses
    are listed when they are not met."""
    kind_misses, category_misses = [], []
    for row in PUBLIC_ROWS:
        verdict = _verdict(row)
        line = f"{row['id']}: {row['reply'][:70]!r}"
        if verdict.kind.value != row["kind"]:
            kind_misses.append(f"{line} want {row['kind']} got {verdict.kind.value}")
        if verdict.category.value != row["category"]:
            category_misses.append(f"{line} want {row['category']} got {verdict.category.value}")
    kind = 1 - len(kind_misses) / len(PUBLIC_ROWS)
    category = 1 - len(category_misses) / len(PUBLIC_ROWS)
    assert kind >= PUBLIC_KIND_THRESHOLD, f"{kind:.3f}\n" + "\n".join(kind_misses)
    assert category >= PUBLIC_CATEGORY_THRESHOLD, f"{category:.3f}\n" + "\n".join(category_misses)


@pytest.mark.parametrize(
    ("raw", "kind", "category"),
    [
        # 2xx: delivered, whatever the words.
        ("250 2.0.0 OK 1700000000 a1si1.1 - gsmtp", Kind.DELIVERED, Category.DELIVERED),
        ("250 2.6.0 <id@x> Queued mail for delivery", Kind.DELIVERED, Category.DELIVERED),
        # Every 4xx is soft, even a user unknown.
        (
            "450 4.1.1 <b@x>: Recipient address rejected: User unknown",
            Kind.SOFT,
            Category.USER_UNKNOWN,
        ),
        (
            "421 4.7.0 [192.0.2.1] low reputation of the sending IP",
            Kind.SOFT,
            Category.SPAM_BLOCK_IP,
        ),
        # 5xx that say nothing against the address are soft.
        ("552 5.2.2 Mailbox full", Kind.SOFT, Category.MAILBOX_FULL),
        ("552 5.3.4 Message size exceeds fixed limit", Kind.SOFT, Category.MESSAGE_TOO_LARGE),
        ("550 5.7.1 Sender rate limit exceeded", Kind.SOFT, Category.RATE_LIMITED),
        ("550 5.7.1 Greylisted, please try again in 300 seconds", Kind.SOFT, Category.GREYLISTED),
        ("552 5.5.3 Too many recipients", Kind.SOFT, Category.TOO_MANY_RECIPIENTS),
        # Every other 5xx is hard.
        ("550 5.1.1 User unknown", Kind.HARD, Category.USER_UNKNOWN),
        (
            "550 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",
            Kind.HARD,
            Category.SPAM_BLOCK_IP,
        ),
        ("554 Transaction failed", Kind.HARD, Category.OTHER),
        # No code: an MTA's own words; soft when they say "try again" or the
        # condition passes with time.
        (
            "Host or domain name not found. Name service error for name=x.example type=A: "
            "Host not found",
            Kind.HARD,
            Category.DOMAIN_NOT_FOUND,
        ),
        (
            "Host or domain name not found. Name service error for name=x.example type=MX: "
            "Host not found, try again",
            Kind.SOFT,
            Category.DOMAIN_NOT_FOUND,
        ),
        (
            "lost connection with mx.example[192.0.2.1] while receiving the initial server "
            "greeting",
            Kind.SOFT,
            Category.SERVICE_UNAVAILABLE,
        ),
        ("Temporary failure in MX lookup", Kind.SOFT, Category.SERVICE_UNAVAILABLE),
        ("mailbox is full (quota exceeded)", Kind.SOFT, Category.MAILBOX_FULL),
        # ... otherwise a summary without a code is the MTA's final word: hard.
        ("retry timeout exceeded", Kind.HARD, Category.OTHER),
        ("No valid route to remote MX", Kind.HARD, Category.SERVICE_UNAVAILABLE),
        # A qmail-style trailing status stands in for the missing code.
        (
            "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)",
            Kind.SOFT,
            Category.SERVICE_UNAVAILABLE,
        ),
        ("Sorry, no mailbox here by that name. (#5.1.1)", Kind.HARD, Category.USER_UNKNOWN),
        # A 3xx is no final answer: try again.
        ("354 End data with <CR><LF>.<CR><LF>", Kind.SOFT, Category.OTHER),
    ],
)
def test_kind_table(raw, kind, category):
    """The kind follows the table in the module docstring."""
    verdict = classify(parse_reply(raw))
    assert (verdict.kind, verdict.category) == (kind, category)


@pytest.mark.parametrize(
    ("raw", "category"),
    [
        ("552 5.1.1 Boite du destinataire pleine. Recipient overquota.", Category.MAILBOX_FULL),
        ("550 5.4.1 Recipient address rejected: Access denied.", Category.POLICY_AUTH),
        ("550 5.7.1 No such user!", Category.USER_UNKNOWN),
        (
            "450 4.2.1 <b@x>: Recipient address rejected: this mailbox is inactive and has been "
            "disabled",
            Category.MAILBOX_DISABLED,
        ),
        ("550 5.1.1 <b@x>: inactive email address", Category.MAILBOX_DISABLED),
        ("550 5.2.1 <b@x>... Addressee unknown", Category.USER_UNKNOWN),
        ("550 Ip frequency limited [Blocked IP 192.0.2.22]", Category.RATE_LIMITED),
        (
            "550 5.1.1 <b@x> - 192.0.2.1 has sent to too many recipients this hour.",
            Category.RATE_LIMITED,
        ),
        ("550 5.1.1 <bounces@us.example>: unauthorized sender", Category.POLICY_AUTH),
        ("550 5.2.0 Message rejected due to DMARC.", Category.POLICY_AUTH),
        ("554 5.2.3 MailPolicy violation", Category.OTHER),
    ],
)
def test_text_beats_contradicting_codes(raw, category):
    """Servers send enhanced and basic codes that contradict their words; the
    words win."""
    assert category_of(parse_reply(raw)) == category


@pytest.mark.parametrize(
    ("raw", "category"),
    [
        ("550 5.1.1 Not our Customer", Category.USER_UNKNOWN),
        ("550 5.1.10 no route", Category.DOMAIN_NOT_FOUND),
        ("550 5.2.1 x", Category.MAILBOX_DISABLED),
        ("452 4.2.2 x", Category.MAILBOX_FULL),
        ("550 5.2.3 x", Category.MESSAGE_TOO_LARGE),
        ("525 5.7.13 x", Category.MAILBOX_DISABLED),
        ("550 5.7.25 x", Category.SPAM_BLOCK_IP),
        ("421 4.7.28 x", Category.RATE_LIMITED),
        ("451 4.7.500 Server busy. Please try again later", Category.RATE_LIMITED),
        ("550 5.7.606 Access denied", Category.SPAM_BLOCK_IP),
        ("451 4.4.0 Message failed to be replicated", Category.SERVICE_UNAVAILABLE),
        ("554 5.6.1 Body type not supported", Category.CONTENT_REJECTED),
        ("550 5.1.0 x", Category.OTHER),
        ("421 x", Category.SERVICE_UNAVAILABLE),
        ("552 x", Category.MAILBOX_FULL),
        ("556 x", Category.DOMAIN_NOT_FOUND),
        ("550 x", Category.OTHER),
    ],
)
def test_codes_are_the_fallback(raw, category):
    """Without telling words the enhanced code decides (RFC 3463 and later
    registrations, Microsoft's X.7.5xx/6xx), then the basic code; a generic
    X.1.0 or plain 550 is `other`."""
    assert category_of(parse_reply(raw)) == category


# Wordings that are not in the dataset: the patterns must generalise.
@pytest.mark.parametrize(
    ("raw", "kind", "category", "suppress"),
    [
        (
            "550 5.1.1 <b@x>: Recipient address rejected: User unknown in virtual alias table",
            "hard",
            "user_unknown",
            True,
        ),
        ("550 Requested action not taken: mailbox unavailable", "hard", "user_unknown", True),
        ("550 No such recipient here", "hard", "user_unknown", True),
        (
            "553 5.1.3 The recipient address <b@@x> is not a valid RFC-5321 address.",
            "hard",
            "user_unknown",
            True,
        ),
        (
            "550 5.0.0 <b@x> User not listed in public Name & Address Book",
            "hard",
            "user_unknown",
            True,
        ),
        ("550 sorry, no mailbox here by that name. (#5.1.1)", "hard", "user_unknown", True),
        (
            "554 delivery error: dd Not a valid recipient - atlas1.mail.yahoo.com",
            "hard",
            "user_unknown",
            True,
        ),
        ("550 5.2.1 Mailbox unavailable. Account is disabled", "hard", "mailbox_disabled", True),
        (
            "550 5.1.1 Recipient address rejected: this mailbox has been suspended",
            "hard",
            "mailbox_disabled",
            True,
        ),
        (
            "550 5.1.2 Host unknown (Name server: x.invalid: host not found)",
            "hard",
            "domain_not_found",
            True,
        ),
        (
            "550 5.1.2 <b@nx.example>: Recipient address rejected: Domain not found",
            "hard",
            "domain_not_found",
            True,
        ),
        ("550 5.4.4 Unrouteable address", "hard", "user_unknown", False),
        (
            "552 5.2.2 The email account that you tried to reach is over quota.",
            "soft",
            "mailbox_full",
            False,
        ),
        ("550 The mailbox is full", "soft", "mailbox_full", False),
        ("552 5.2.3 Message exceeds maximum size", "soft", "message_too_large", False),
        (
            "421 Too many concurrent SMTP connections; please try again later.",
            "soft",
            "rate_limited",
            False,
        ),
        ("452 Too many recipients received this hour", "soft", "rate_limited", False),
        ("452 4.5.3 Error: too many recipients", "soft", "too_many_recipients", False),
        ("451 4.7.1 Please try again later", "soft", "greylisted", False),
        ("421 4.4.2 Connection dropped due to timeout", "soft", "service_unavailable", False),
        (
            "550 5.7.1 Recipient not authorized, your IP has been found on a block list",
            "hard",
            "spam_block_ip",
            False,
        ),
        ("550 5.7.1 Message rejected: address blacklisted", "hard", "spam_block_ip", False),
        (
            "554 5.7.1 The message was rejected because it contains prohibited virus or spam "
            "content",
            "hard",
            "content_rejected",
            False,
        ),
        (
            "554 5.7.1 <b@x>: Recipient address rejected: Rejected by SPAM filter",
            "hard",
            "content_rejected",
            False,
        ),
        (
            "554 5.7.1 <b@x>: Recipient address rejected: Please see "
            "http://www.openspf.net/Why?s=mfrom;id=a",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "550 5.1.8 <bounce@us.example>: Sender address rejected: Domain not found",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "554 5.7.1 <mail.us.example>: Helo command rejected: Host not found",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "550-Verification failed for <b@x>\n550-Unrouteable address\n550 Sender verify failed",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "550 5.7.1 Your account has been suspended for sending spam",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
            "soft",
            "spam_block_ip",
            False,
        ),
        (
            "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
            "hard",
            "relay_denied",
            False,
        ),
        ("530 5.7.0 Must issue a STARTTLS command first.", "hard", "tls_required", False),
        ("554 5.4.14 Hop count exceeded - possible mail loop", "hard", "other", False),
        (
            "451 4.3.0 <b@x>: Recipient address rejected: Temporary lookup failure",
            "soft",
            "service_unavailable",
            False,
        ),
    ],
)
def test_wording_families_generalise(raw, kind, category, suppress):
    """Replies worded differently from the dataset land where their meaning
    says, and addresses are suppressed only for recipient causes."""
    verdict = classify(parse_reply(raw))
    assert (verdict.kind, verdict.category, verdict.suppress) == (kind, category, suppress)


@pytest.mark.parametrize(
    ("raw", "recipient", "any_5xx"),
    [
        ("550 5.1.1 User unknown", True, True),
        ("550 5.2.1 The email account is disabled", True, True),
        ("550 5.7.1 Client host blocked using zen.spamhaus.org", False, True),
        ("554 5.7.1 Spam message rejected", False, True),
        ("550 5.7.26 DMARC policy", False, True),
        ("552 5.2.2 Mailbox full", False, True),
        ("550 5.7.1 rate limit exceeded", False, True),
        ("450 4.1.1 User unknown", False, False),
        ("250 2.0.0 OK", False, False),
    ],
)
def test_suppress_on(raw, recipient, any_5xx):
    """Under `recipient` only hard recipient causes suppress; under `any_5xx`
    (the literal rule) every 5xx is hard and suppresses, even a full mailbox;
    4xx and 2xx never do."""
    reply = parse_reply(raw)
    assert classify(reply).suppress is recipient
    literal = classify(reply, suppress_on=SuppressOn.ANY_5XX)
    assert literal.suppress is any_5xx
    if reply.code >= 500:
        assert literal.kind is Kind.HARD


@pytest.mark.parametrize(
    ("reply", "category"),
    [
        (
            synthetic_reply(
                451, "4.4.1", "connect to mx.example[192.0.2.1]:25: Connection refused"
            ),
            Category.CONNECTION_FAILED,
        ),
        (
            synthetic_reply(421, "4.4.2", "timeout after 300s reading the DATA reply"),
            Category.CONNECTION_FAILED,
        ),
        (
            synthetic_reply(451, "4.4.3", "DNS SERVFAIL for MX of x.example"),
            Category.CONNECTION_FAILED,
        ),
        (
            synthetic_reply(550, "5.1.1", "our own words that say user unknown"),
            Category.CONNECTION_FAILED,
        ),
        (
            synthetic_reply(451, "4.7.5", "TLS handshake failed: certificate verify failed"),
            Category.TLS_REQUIRED,
        ),
        (
            synthetic_reply(530, "5.7.10", "route requires TLS; server offers no STARTTLS"),
            Category.TLS_REQUIRED,
        ),
    ],
)
def test_synthetic_failures_are_soft_and_never_suppress(reply, category):
    """Our own network failure is about our path, not the recipient: soft,
    never suppressing, even under any_5xx and whatever code we put on it."""
    for suppress_on in SuppressOn:
        verdict = classify(reply, suppress_on=suppress_on)
        assert verdict == Verdict(Kind.SOFT, category, suppress=False)


@pytest.mark.parametrize(
    "reply",
    [
        synthetic_reply(556, "5.1.10", "x.example publishes a null MX (RFC 7505)"),
        synthetic_reply(550, "5.1.2", "x.example: NXDOMAIN"),
    ],
)
def test_synthetic_null_mx_and_nxdomain_are_hard(reply):
    """A definite "this domain takes no mail" is hard domain_not_found and
    suppresses, as the same answer from a server would."""
    for suppress_on in SuppressOn:
        verdict = classify(reply, suppress_on=suppress_on)
        assert verdict == Verdict(Kind.HARD, Category.DOMAIN_NOT_FOUND, suppress=True)


def test_synthetic_nxdomain_needs_a_5xx():
    """The same enhanced code on a 4xx (a lookup to retry) stays soft."""
    verdict = classify(synthetic_reply(451, "4.1.2", "x.example: NXDOMAIN?"))
    assert verdict == Verdict(Kind.SOFT, Category.CONNECTION_FAILED, suppress=False)


GMAIL_FULL = parse_reply("552 5.2.2 The email account that you tried to reach is over quota.")
UNKNOWN = parse_reply("550 5.1.1 <b@x>: Recipient address rejected: User unknown")
BLOCKED = parse_reply("554 5.7.1 Service unavailable; client [192.0.2.1] blocked using x.bl")


@pytest.mark.parametrize(
    ("rule", "reply", "domain", "expected"),
    [
        # A full mailbox that stays full for months is as good as dead.
        (
            ClassifyRule.build("full-is-dead", category="mailbox_full", kind="hard", suppress=True),
            GMAIL_FULL,
            "x",
            Verdict(Kind.HARD, Category.MAILBOX_FULL, True, "full-is-dead"),
        ),
        # Setting kind soft implies no suppression.
        (
            ClassifyRule.build("soft-unknown", codes=[550], kind="soft"),
            UNKNOWN,
            "x",
            Verdict(Kind.SOFT, Category.USER_UNKNOWN, False, "soft-unknown"),
        ),
        # Setting kind hard without suppress: the table decides the suppression.
        (
            ClassifyRule.build("hard-full", enhanced=["5.2.2"], kind="hard"),
            GMAIL_FULL,
            "x",
            Verdict(Kind.HARD, Category.MAILBOX_FULL, False, "hard-full"),
        ),
        # Re-categorising to a recipient cause brings suppression along.
        (
            ClassifyRule.build(
                "block-is-gone", text=r"blocked using x\.bl", category="user_unknown"
            ),
            BLOCKED,
            "x",
            Verdict(Kind.HARD, Category.USER_UNKNOWN, True, "block-is-gone"),
        ),
        # Only suppress is overridden.
        (
            ClassifyRule.build("trust-me", domains=["Example.COM"], suppress=False),
            UNKNOWN,
            "example.com",
            Verdict(Kind.HARD, Category.USER_UNKNOWN, False, "trust-me"),
        ),
    ],
)
def test_rules_override(rule, reply, domain, expected):
    """A matching operator rule overrides what it sets and names itself."""
    assert classify(reply, domain, rules=[rule]) == expected


def test_rule_wins_over_suppress_on():
    """An explicit rule beats `any_5xx`."""
    rule = ClassifyRule.build("keep", codes=[554], suppress=False)
    verdict = classify(BLOCKED, rules=[rule], suppress_on=SuppressOn.ANY_5XX)
    assert verdict == Verdict(Kind.HARD, Category.SPAM_BLOCK_IP, False, "keep")


def test_first_matching_rule_wins():
    """Rules are tried in order; the first whose criteria all hold decides."""
    rules = [
        ClassifyRule.build("other-domain", domains=["other.example"], kind="soft"),
        ClassifyRule.build("wrong-code", codes=[421], kind="soft"),
        ClassifyRule.build("first", enhanced=["5.1."], text="user unknown", category="other"),
        ClassifyRule.build("second", category="mailbox_disabled"),
    ]
    verdict = classify(UNKNOWN, "example.com", rules=rules)
    assert verdict == Verdict(Kind.HARD, Category.OTHER, False, "first")


@pytest.mark.parametrize(
    ("rule", "matches"),
    [
        (ClassifyRule.build("r", codes=[550, 551], kind="soft"), True),
        (ClassifyRule.build("r", codes=[421], kind="soft"), False),
        (ClassifyRule.build("r", enhanced=["5.1."], kind="soft"), True),
        (ClassifyRule.build("r", enhanced=["5.1.10"], kind="soft"), False),
        (ClassifyRule.build("r", domains=["example.com"], kind="soft"), True),
        (ClassifyRule.build("r", domains=["example.org"], kind="soft"), False),
        (ClassifyRule.build("r", text="USER UNKNOWN", kind="soft"), True),
        (ClassifyRule("r", text=re.compile("USER UNKNOWN"), kind=Kind.SOFT), False),
        (ClassifyRule.build("r", codes=[550], text="mailbox full", kind="soft"), False),
    ],
)
def test_rule_criteria(rule, matches):
    """Every given criterion must hold; text from build() ignores case, a
    pattern compiled by the caller keeps its own flags."""
    assert rule.matches(UNKNOWN, "Example.COM") is matches


def test_rules_do_not_touch_deliveries():
    """A 2xx is delivered even if a rule's criteria would match it."""
    rule = ClassifyRule.build("everything", kind="hard", suppress=True)
    verdict = classify(parse_reply("250 2.0.0 OK"), rules=[rule])
    assert verdict == Verdict(Kind.DELIVERED, Category.DELIVERED, suppress=False)


def test_rules_apply_to_synthetic_replies():
    """An operator may decide about our own failures too (rule beats all)."""
    rule = ClassifyRule.build("refused-is-hard", text="refused", kind="hard")
    reply = synthetic_reply(451, "4.4.1", "connection refused")
    verdict = classify(reply, rules=[rule], suppress_on=SuppressOn.ANY_5XX)
    assert verdict == Verdict(Kind.HARD, Category.CONNECTION_FAILED, False, "refused-is-hard")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "(unclosed", "kind": "soft"}, "text regex '(unclosed' does not compile"),
        ({"kind": "bounce"}, "kind 'bounce' is not one of soft, hard"),
        ({"kind": "delivered"}, "kind 'delivered'"),
        ({"category": "full"}, "category 'full' is not one of user_unknown"),
        ({"codes": [55], "kind": "soft"}, "code 55 is not 200-599"),
        ({"enhanced": ["5.x.1.1"], "kind": "soft"}, "enhanced '5.x.1.1'"),
        ({"suppress": "yes"}, "suppress must be true or false"),
        ({"codes": [550]}, "sets none of kind, category, suppress"),
    ],
)
def test_rule_validation_names_the_rule(kwargs, message):
    """A bad rule is refused with a message naming it and the bad value."""
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        ClassifyRule.build("my-rule", **kwargs)
    assert "classify rule 'my-rule'" in str(err.value)


def test_reply_without_anything():
    """An empty reply is no verdict on anyone: soft other."""
    assert classify(Reply(0, None, "")) == Verdict(Kind.SOFT, Category.OTHER, suppress=False)


@pytest.mark.parametrize(
    ("raw", "kind", "category", "suppress"),
    [
        # Sender-side faults read once as the recipient's (issue 19's shapes, own wording).
        ("550 Verification failed for <news@sender.example>", "hard", "policy_auth", False),
        (
            "553 5.7.1 Sender address does not match the logged in user",
            "hard",
            "policy_auth",
            False,
        ),
        ("550 Message sending for this account is disabled", "hard", "policy_auth", False),
        ("554 Reject due to policy restrictions", "hard", "policy_auth", False),
        ("550 5.7.1 remote ip check error.", "hard", "spam_block_ip", False),
        (
            "550 5.1.8 <news@sender.example>: invalid DNS MX or A/AAAA resource record",
            "hard",
            "policy_auth",
            False,
        ),
        # The words after "Recipient address rejected:" decide, not the prefix.
        (
            "550 5.1.1 <a@x.example>: Recipient address rejected: Mailer error",
            "hard",
            "service_unavailable",
            False,
        ),
        (
            "554 5.7.1 <a@x.example>: Recipient address rejected: No relaying",
            "hard",
            "relay_denied",
            False,
        ),
        ("550 5.7.1 <a@x.example>: Recipient address rejected: On hold", "hard", "other", False),
        (
            "554 5.7.1 <a@x.example>: Recipient address rejected: Delivery not authorized, "
            "message refused",
            "hard",
            "policy_auth",
            False,
        ),
        (
            "550 <a@x.example>: Recipient address rejected: Internal system error",
            "hard",
            "service_unavailable",
            False,
        ),
        # A resolver's failure is not a missing domain.
        (
            "550 5.4.4 Host or domain name not found. Name service error for name=x.example "
            "type=MX: Malformed or unexpected name server reply",
            "hard",
            "service_unavailable",
            False,
        ),
        # Sending quotas sent as 5xx are pace: soft.
        ("550 5.4.5 Daily user sending limit exceeded", "soft", "rate_limited", False),
        ("554 5.7.0 Submission quota exceeded", "soft", "rate_limited", False),
        (
            "550 You have reached the limit on the number of allowed outgoing messages",
            "soft",
            "rate_limited",
            False,
        ),
        # Dead addresses and domains that were missed.
        ("554 5.4.4 NoMxHostFoundException", "hard", "domain_not_found", True),
        ("556 5.1.10 x.example does not accept mail (RFC 7505)", "hard", "domain_not_found", True),
        ("550 No mx record found for domain x.example", "hard", "domain_not_found", True),
        (
            "550 5.1.10 an MX or SRV record indicated no SMTP service",
            "hard",
            "domain_not_found",
            True,
        ),
        ("550 5.1.1 Invalid final delivery userid", "hard", "user_unknown", True),
        ("550 5.1.1 the address couldn't be found", "hard", "user_unknown", True),
        ("550 5.2.1 jsmith@x.example is now disabled", "hard", "mailbox_disabled", True),
        # ... and what must not move: a block "from" us is no null MX.
        (
            "554 5.7.1 x.example does not accept mail from your network",
            "hard",
            "policy_auth",
            False,
        ),
    ],
)
def test_the_reason_decides_not_the_prefix(raw, kind, category, suppress):
    """Issue 19's shapes: a sign of fault on the sender's side vetoes suppression; the words
    after a generic prefix decide; pace is soft; dead domains and mailboxes are caught."""
    verdict = classify(parse_reply(raw))
    assert (verdict.kind, verdict.category, verdict.suppress) == (kind, category, suppress)


def _judged(raw: str) -> tuple[str, str, bool]:
    verdict = classify(parse_reply(raw))
    return verdict.kind.value, verdict.category.value, verdict.suppress


@pytest.mark.parametrize(
    ("raw", "kind", "category"),
    [
        # RFC 5321 §4.2.1/§4.2.3: a syntax or sequence error says nothing about a
        # mailbox, whatever its words (Mimecast: "503 user unknown" is a bad sequence).
        ("501 invalid address", "hard", "other"),
        ("503 user unknown", "hard", "other"),
        ("502 5.5.1 No such user, send HELO first", "hard", "other"),
        # RFC 3463 X.1.7 / X.1.8, RFC 7505 X.7.27: the sender's address or domain.
        ("5.1.7 Invalid address", "hard", "other"),
        ("553 5.1.7 The sender address <news@sender.example> is not valid", "hard", "other"),
        ("550 5.1.8 Address unknown", "hard", "user_unknown"),
        ("550 5.7.27 The sender address has a null MX", "hard", "policy_auth"),
        # Our own identity: a domain or HELO name that "does not exist" is ours.
        ("550 Your domain does not exist", "hard", "domain_not_found"),
        ("550 5.7.1 HELO domain does not exist", "hard", "domain_not_found"),
        ("550 5.7.1 The sender's domain does not exist", "hard", "policy_auth"),
        # Recipient words next to a sign of another fault, or a code that names one.
        ("552 5.1.1 <b@x.example> Mailbox delivery failure policy error", "hard", "policy_auth"),
        (
            "550 5.1.1 <b@x.example>: Recipient address rejected: user unknown, see our spam "
            "policy",
            "hard",
            "user_unknown",
        ),
        ("550 5.7.1 Requested action not taken: mailbox unavailable", "hard", "user_unknown"),
        # "Access denied" after "Recipient address rejected:": Microsoft's edge
        # blocking, but also gateways' own rules.
        ("5.4.1 Recipient address rejected: Access denied", "hard", "policy_auth"),
        (
            "550 cuda_nsu 5.4.1 [b@x.example]: Recipient address rejected: Access denied",
            "hard",
            "policy_auth",
        ),
        (
            "550 5.7.1 <b@x.example>: Recipient address rejected: Access denied by gateway rule",
            "hard",
            "policy_auth",
        ),
        # Words that name the recipient but not the cause.
        ("550 5.1.1 b@x.example recipient rejected", "hard", "user_unknown"),
        ("550 5.1.0 Address rejected.", "hard", "user_unknown"),
        ("invalid address (in reply to RCPT TO command)", "hard", "user_unknown"),
        ('552 "RCPT TO" mailbox unavailable', "hard", "user_unknown"),
        ("mailbox currently unavailable", "hard", "other"),
        ("450 mailbox unavailable.", "soft", "other"),
        ("550 unrouteable address", "hard", "user_unknown"),
        ("Bad recipient address syntax", "hard", "user_unknown"),
        ("No valid recipients", "hard", "user_unknown"),
        # Someone else's resolver, or a domain that exists but is broken.
        ("all relevant MX records point to non-existent hosts", "hard", "domain_not_found"),
        ("5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", "hard", "domain_not_found"),
        ("554 5.4.4 SMTPSEND.DNS.MxLoopback", "hard", "other"),
        ("Invalid domain name", "hard", "other"),
        ("Unknown host", "hard", "domain_not_found"),
        ("all host address lookups failed permanently", "hard", "domain_not_found"),
        (
            "Host or domain name not found. Name service error for name=mx.x.example type=A: "
            "Host found but no data record of requested type",
            "hard",
            "domain_not_found",
        ),
        # Hedges, and states that may pass.
        (
            "The mail server could not deliver mail to b@x.example. The account or domain may "
            "not exist, they may be blacklisted, or missing the proper dns entries.",
            "hard",
            "other",
        ),
        ("This account has been temporarily suspended", "hard", "mailbox_disabled"),
        ("550 5.7.1 Policy rejection on the target address", "hard", "mailbox_disabled"),
        # The upstream gave up: no verdict on the address.
        ("550 5.4.316 Message expired, connection refused", "hard", "other"),
    ],
)
def test_no_positive_evidence_never_suppresses(raw, kind, category):
    """Issue 19: suppression needs positive evidence that the recipient's mailbox or
    domain is gone. A syntax code, a code about the sender, a sign of another fault,
    an ambiguous or hedged wording, someone else's DNS: hard at most, never suppressed."""
    assert _judged(raw) == (kind, category, False)


@pytest.mark.parametrize(
    ("raw", "category"),
    [
        # RFC 5321's 550 "mailbox unavailable" and 553 name the mailbox; so does an
        # enhanced X.1.1 / X.1.3, even on a 501.
        ("550 Requested action not taken: mailbox unavailable", "user_unknown"),
        ("550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", "user_unknown"),
        ("553 invalid address", "user_unknown"),
        ("501 5.1.3 Invalid address [outlook.com]", "user_unknown"),
        (
            "550 5.1.1 <b@x.example>: Recipient address rejected: undeliverable address: host "
            "mx.x.example[192.0.2.1] said: 550 5.1.1 no such mailbox",
            "user_unknown",
        ),
        # Misspellings and wordings seen in real replies.
        ("user not exist", "user_unknown"),
        ("550 abcd:user not exist", "user_unknown"),
        ("550 RC:LD The email account that you tried to reach does no exists.", "user_unknown"),
        ("local server don't exists that user", "user_unknown"),
        ("550 5.1.1 mailbox does not exists", "user_unknown"),
        ("550 #2175041 unavailable mail user", "user_unknown"),
        ("user not known", "user_unknown"),
        ("550 user not known here", "user_unknown"),
        ("550 recipient e-mail adress unknown", "user_unknown"),
        ("not user of this server", "user_unknown"),
        ("delivery error: dd This user doesn\u2019t have a example.org account", "user_unknown"),
        ("554 5.7.1 <b@x.example>: Recipient address rejected: Invalid-Recipient.", "user_unknown"),
        (
            "550 5.7.1 <b@x.example>: Recipient address rejected: User email address is "
            "marked as invalid",
            "user_unknown",
        ),
        (
            "554 5.7.1 <b@x.example>: Recipient address rejected: Not in recipient list",
            "user_unknown",
        ),
        (
            "550 5.1.6 <b@x.example>: Recipient address rejected: Destination mailbox has "
            "moved, No forwarding address",
            "user_unknown",
        ),
        (
            "553 5.1.2 The recipient address <.@gmail.com> is not a valid RFC-5321 address.",
            "user_unknown",
        ),
        # Disabled, archived, closed.
        ("Mailaddress is administratively disabled", "mailbox_disabled"),
        (
            "550 5.5.0 Boite du destinataire archivee. Archived recipient. LPN007_420",
            "mailbox_disabled",
        ),
        ("550 Recipient address rejected: Account closed", "mailbox_disabled"),
        # Domains: qmail's DNS summaries, a reserved name, no MX, an unknown host
        # named with its address or under a 5xx.
        ("Sorry, I couldn't find any host named nowhere.example. (#5.1.2)", "domain_not_found"),
        ("Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)", "domain_not_found"),
        ("5.1.4 Recipient address reserved by RFC 2606", "domain_not_found"),
        ("No MX found for domain", "domain_not_found"),
        ("b@nowhere.example ... unknown host", "domain_not_found"),
        ("550 Host unknown", "domain_not_found"),
    ],
)
def test_dead_addresses_are_suppressed(raw, category):
    """General wordings of a dead mailbox or domain, misspelt as real servers spell
    them, are hard and suppress."""
    assert _judged(raw) == ("hard", category, True)


@pytest.mark.parametrize(
    ("raw", "kind", "category"),
    [
        # A cause named next to the pace is what to fix: authentication, TLS, the IP.
        (
            "421 4.7.27 Your email has been rate limited because SPF authentication didn't pass "
            "for this message.",
            "soft",
            "policy_auth",
        ),
        (
            "421 4.7.0 Your mail has been rate limited because DKIM did not pass.",
            "soft",
            "policy_auth",
        ),
        (
            "451 4.7.24 The SPF record of the sending domain has one or more suspicious entries. "
            "Mail sent from your IP address has been temporarily rate limited.",
            "soft",
            "policy_auth",
        ),
        (
            "421 4.7.29 Your email has been rate limited because this message wasn't sent over a "
            "TLS connection.",
            "soft",
            "tls_required",
        ),
        (
            "421 4.7.0 Mail from your IP address has been rate limited due to its poor reputation.",
            "soft",
            "spam_block_ip",
        ),
        (
            "554 This IP has been blocked for the day, for attempting to send too many messages "
            "containing content judged to be spam",
            "hard",
            "spam_block_ip",
        ),
        # The sending IP or host: reverse DNS, dial-up ranges, a bare IP refusal.
        (
            "550 5.7.25 The sending IP does not match the IP address of the hostname specified in "
            "the pointer (PTR) record.",
            "hard",
            "spam_block_ip",
        ),
        ("554 5.7.1 No PTR record found for your IP address", "hard", "spam_block_ip"),
        ("421 Temporarily rejected. Reverse DNS for this IP failed.", "soft", "spam_block_ip"),
        ("554: Dialup/transient IP not allowed.", "hard", "spam_block_ip"),
        ("550 Sorry, no access for this ip", "hard", "spam_block_ip"),
        ("IP is rejected", "hard", "spam_block_ip"),
        ("550 5.7.1 host mx.x.invalid [192.0.2.1] from unknown TLD", "hard", "spam_block_ip"),
        (
            "550 5.7.1 Service refuse. Veuillez essayer plus tard. Service refused.",
            "hard",
            "spam_block_ip",
        ),
        (
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints",
            "soft",
            "spam_block_ip",
        ),
        # Block lists of senders (not IPs) kept by the receiver: its policy.
        ("550 5.7.1 sender <news@sender.example> black listed", "hard", "policy_auth"),
        (
            "550 Rejected by header based Blocked Senders: news@sender.example",
            "hard",
            "policy_auth",
        ),
        ("550 Envelope blocked - User Entry", "hard", "policy_auth"),
        ("550 Administrative prohibition", "hard", "policy_auth"),
        ("550 Denied by policy", "hard", "policy_auth"),
        (
            "421 4.7.0 IP not in whitelist for RCPT domain, closing connection.",
            "soft",
            "policy_auth",
        ),
        # The sender's account, credentials and authentication mechanisms.
        ("550 5.7.0, Mail Sending denied.", "hard", "policy_auth"),
        (
            "550 5.7.0 Email relay denied. The sending email account has been temporarily "
            "suspended due to abuse.",
            "hard",
            "policy_auth",
        ),
        ("454 4.7.0 Too many login attempts, please try again later.", "soft", "policy_auth"),
        ("550 command rejected due to Sender ID validation failure.", "hard", "policy_auth"),
        ("530 SMTP authentication is required.", "hard", "policy_auth"),
        ("451 auth error.", "soft", "policy_auth"),
        ("5.5.3 Mail from not owned by user.", "hard", "policy_auth"),
        # ... but a temporary fault named as the cause is the receiver's trouble.
        (
            "454 4.7.0 Cannot authenticate due to a temporary system problem. Try again later.",
            "soft",
            "service_unavailable",
        ),
        # Relaying and TLS.
        ("553 host denies relay.", "hard", "relay_denied"),
        (
            "553 Sorry, this domain is not in my list of allowed hosts (#5.7.1)",
            "hard",
            "relay_denied",
        ),
        ("550 Domain of forward path is not allowed", "hard", "relay_denied"),
        ("553 this route requires encryption (tls)", "hard", "tls_required"),
        ("451 TLS/SSLv3 Connection required. (#4.7.1)", "soft", "tls_required"),
        ("451 4.2.2 Server accepts messages only on TLS connection", "soft", "tls_required"),
        # Greylisting answers with nothing but "try again later".
        ("451 Please try again later.", "soft", "greylisted"),
        ("450 4.2.1 Please try again later. (#id-5.9.4)", "soft", "greylisted"),
        ("421 4.7.0 Try again later, closing connection.", "soft", "service_unavailable"),
        # The client's protocol or the address's form.
        ("554 5.7.0 Too many unauthenticated commands.", "hard", "other"),
        ("421 4.7.0 me.com Error: too many errors", "soft", "other"),
        (
            "523 5.7.10 SMTP protocol violation, no commands allowed to pipeline after STARTTLS",
            "hard",
            "other",
        ),
        ("Recipient address rejected: need fully-qualified address", "hard", "other"),
        ("5.1.6 Recipient addresses in single label domains not accepted", "hard", "other"),
        # Loops and expiry summaries.
        ("554 Too many Received: headers", "hard", "other"),
        (
            "I'm not going to try again; this message has been in the queue too long.",
            "hard",
            "other",
        ),
        # Full mailboxes and large messages worded without "quota".
        ("550 User has exhausted allowed storage space.", "soft", "mailbox_full"),
        ("550 User has too many messages on the server.", "soft", "mailbox_full"),
        ("User mailbox exceeds allowed size", "soft", "mailbox_full"),
        ("552 5.3.4 The number of attachments exceeds the limit", "soft", "message_too_large"),
        ("552 message is too long.", "soft", "message_too_large"),
        # Content: filtering and broken line ends.
        ("553 - Message Filtered", "hard", "content_rejected"),
        ("451 stray newline", "soft", "content_rejected"),
        ("550 jane@x.example Blank From: addresses are not allowed.", "hard", "content_rejected"),
        # The receiver's own trouble.
        (
            "Requested action not taken: mailbox unavailable (not enough free space)",
            "hard",
            "service_unavailable",
        ),
        ("422 License Expired", "soft", "service_unavailable"),
        ("Unable to contact LDAP server", "soft", "service_unavailable"),
    ],
)
def test_wordings_that_recur_across_providers(raw, kind, category):
    """Category families of issue 19: the condition the reply names decides, in the
    order of the patterns; none of these suppresses."""
    assert _judged(raw) == (kind, category, False)


@pytest.mark.parametrize(
    ("raw", "kind", "category"),
    [
        # NetEase's published return fields.
        ("421 HL:ICC", "soft", "rate_limited"),
        ("421 HL:REP", "soft", "spam_block_ip"),
        ("450 RP:DRC", "soft", "too_many_recipients"),
        ("450 WM:BLU", "soft", "policy_auth"),
        ("550 MI:SPF", "hard", "policy_auth"),
        ("554 DT:SPM", "hard", "content_rejected"),
        ("451 RP:CEL", "soft", "other"),
        # AOL's block codes and Cox's AUP# codes.
        ("554 RTR:BL", "hard", "spam_block_ip"),
        ("554 RLY:B1", "hard", "spam_block_ip"),
        ("421 CON:B1", "soft", "rate_limited"),
        ("554 cmsmtp blocked. Refer to Error Codes section. AUP#CXBL", "hard", "spam_block_ip"),
        ("421 cmsmtp blocked. Refer to Error Codes section. AUP#CXCNCT", "soft", "rate_limited"),
        ("550 message rejected. AUP#CXSNDR", "hard", "policy_auth"),
        # Microsoft's X.7.5xx/7xx/8xx details behind "Access denied".
        ("5.7.501 Access denied, spam abuse detected", "hard", "policy_auth"),
        ("5.7.507 Access denied, rejected by recipient", "hard", "spam_block_ip"),
        (
            "5.7.508 Access denied, [192.0.2.1] has exceeded permitted limits",
            "soft",
            "rate_limited",
        ),
        (
            "5.7.510 Access denied, [x.example] does not accept email over IPv6",
            "hard",
            "policy_auth",
        ),
        ("5.7.708 Access denied, traffic not accepted from this IP", "hard", "spam_block_ip"),
        (
            "5.7.750 Service unavailable. Client blocked from sending from unregistered domains",
            "hard",
            "policy_auth",
        ),
        ("451 4.7.851 Access denied, please try again later", "soft", "spam_block_ip"),
        (
            "5.7.322 certificate-expired: Destination mail server's certificate is expired.",
            "hard",
            "tls_required",
        ),
    ],
)
def test_published_vendor_codes(raw, kind, category):
    """Codes whose meaning the provider publishes decide before the words, which
    often say no more than "blocked" or "Access denied"."""
    assert _judged(raw) == (kind, category, False)


@pytest.mark.parametrize(
    "raw",
    [
        "550 " + "a" * 1_000_000,
        "550 " + "user account mailbox recipient address " * 25_000,
        "550 " + "b@x.example ... " * 60_000,
        "550-5.1.1 " + "x\n550-5.1.1 " * 100_000 + "y",
        "Recipient address rejected: " + "does " * 200_000 + "(#5.1.1)",
    ],
)
def test_hostile_reply_classifies_quickly(raw):
    """A megabyte of hostile reply text is read in time independent of its size:
    no pattern backtracks over it and only the first part is read."""
    reply = Reply(int(raw[:3]) if raw[:3].isdigit() else 0, None, raw)
    started = time.perf_counter()
    classify(reply)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("reply", "suppress"),
    [
        # Exchange Online's Directory-Based Edge Blocking, stamped by its front end.
        (
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
            "[DB5EUR03FT011.eop-EUR03.prod.protection.outlook.com 2026-01-01T00:00:00.000Z]",
            True,
        ),
        (
            "550 5.4.1 Recipient address rejected: Access denied. "
            "[VI1EUR04FT022.eop-eur04.prod.outlook.com]",
            True,
        ),
        # The same words without the stamp (a gateway's copy, a documentation table).
        ("550 5.4.1 Recipient address rejected: Access denied", False),
        ("550 cuda_nsu 5.4.1 <b@x.example>: Recipient address rejected: Access denied", False),
        # Stamped, but another fault named in the same reply.
        (
            "550 5.4.1 Recipient address rejected: Access denied, spam policy [X.prod.outlook.com]",
            False,
        ),
        # IronPort's LDAP accept refusal, in its own notation; not the same words elsewhere.
        ("550 #5.1.0 Address rejected.", True),
        ("550 #5.1.0 Address rejected", True),
        ("550 5.1.0 Address rejected.", False),
        ("451 #5.1.0 Address rejected.", False),
    ],
)
def test_a_vendor_mark_makes_a_directory_refusal_proof(reply, suppress):
    """A vendor's documented "not in our directory" suppresses only with the vendor's mark."""
    verdict = classify(parse_reply(reply))
    assert verdict.suppress is suppress
    if suppress:
        assert verdict.category is Category.USER_UNKNOWN
