"""Reply classification: kind, category and suppression (policies/classify.py)."""

from __future__ import annotations

import json
import re
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

# Replies whose labelled kind we knowingly do not reproduce, by id, with why.
# Empty today: every one of the 307 replies gets the labelled kind.
KIND_EXCEPTIONS: dict[str, str] = {}

# The dataset's taxonomy has no too_many_recipients; it files "too many
# recipients" under rate_limited, which is what our finer category refines.
DATASET_CATEGORY = {Category.TOO_MANY_RECIPIENTS: "rate_limited"}

# Measured 306/307 (99.7%). The miss is r0077 "550 5.4.312 Message expired,
# DNS query failed": labelled domain_not_found but not suppressing; we read
# "message expired" first (the upstream gave up, the cause is not a verdict
# on the address), so it is `other`, which keeps suppression right.
CATEGORY_THRESHOLD = 0.99


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
    """Zero false suppressions, and every recipient-caused hard bounce
    suppresses: suppress equals the label on all 307 replies."""
    false_suppress = [r["id"] for r in ROWS if _verdict(r).suppress and not r["suppress_recipient"]]
    missed = [r["id"] for r in ROWS if r["suppress_recipient"] and not _verdict(r).suppress]
    assert false_suppress == []
    assert missed == []


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
        # No code: an MTA's own words; definite unless they say "try again".
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
        ("550 5.4.1 Recipient address rejected: Access denied.", Category.USER_UNKNOWN),
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
        ("550 5.7.25 x", Category.POLICY_AUTH),
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
        ("550 5.4.4 Unrouteable address", "hard", "domain_not_found", True),
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
        ("451 4.7.1 Please try again later", "soft", "service_unavailable", False),
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
            "policy_auth",
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
        (
            "550 all relevant MX records point to non-existent hosts",
            "hard",
            "domain_not_found",
            True,
        ),
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
