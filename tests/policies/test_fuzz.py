"""No input makes the pure parsers and classifiers raise (hypothesis).

Remote servers and operators' files are the input here: every reply text, every reply code a
socket can carry, every address a client can type, every CSV line. Each function either
answers or raises its documented error, nothing else.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.addresses import AddressError, normalise_address, validate_address
from policies.classify import SuppressOn, classify
from policies.hints import hint_for
from policies.outcome import decide_reported
from policies.replies import parse_reply, reply_from_smtp
from policies.suppression_file import read_suppression_csv
from policies.templates import template_of

# Replies as servers send them: codes, enhanced codes, continuation lines, URLs, IPs,
# addresses, control characters and plain noise, mixed.
_PIECES = st.sampled_from(
    [
        "550",
        "550-",
        "4",
        "5.1.1",
        "4.7.0",
        "#5.0.0",
        "<",
        ">",
        "@",
        "[",
        "]",
        "(",
        ")",
        "http://x.example/?p=NoSuchUser&a=1",
        "[TSS04]",
        "(S3140)",
        "192.0.2.1",
        "::1",
        "user@example.org",
        "\r\n",
        "\n",
        "\t",
        "\x00",
        "\x7f",
        " ",
        "-",
        ".",
        ";",
        ":",
        "Mailbox full",
        "User unknown",
        "gsmtp",
        "quota",
        "\u00e9",
        "\U0001f600",
        "%",
        "\\",
    ]
)
REPLIES = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join),
)
FAST = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@FAST
@given(REPLIES)
def test_reply_parsing_templates_hints_and_classification_never_raise(raw):
    reply = parse_reply(raw)
    template_of(raw)
    hint_for(reply)
    for suppress_on in SuppressOn:
        classify(reply, "example.org", suppress_on=suppress_on)
    decide_reported("failed", reply, "example.org")


@FAST
@given(st.integers(min_value=-1000, max_value=100_000), REPLIES)
def test_replies_from_any_code_never_raise(code, message):
    reply = reply_from_smtp(code, message)
    classify(reply, "example.org")
    template_of(reply.text)


@FAST
@given(st.text(max_size=300))
def test_addresses_either_validate_or_raise_address_error(raw):
    try:
        address = validate_address(raw)
    except AddressError:
        return
    key = normalise_address(address)
    assert key == normalise_address(key)  # one key per mailbox, whatever the spelling


@FAST
@given(st.lists(st.text(max_size=120), max_size=30))
def test_suppression_files_never_raise(lines):
    parsed = read_suppression_csv([line + "\n" for line in lines], "imported")
    assert len(parsed.entries) + len(parsed.errors) + parsed.duplicates <= len(lines) + 1
