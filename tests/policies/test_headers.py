"""Header summary: From domain, Message-ID and campaign from raw message bytes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import headers
from policies.headers import count_received, summarise_headers
from tests.support.budget import run_within
from tests.support.hostile_bounces import hostile_from_header, hostile_received_block


def test_reads_from_domain_message_id_and_campaign():
    """Display names, case and folding do not matter; the body is never read."""
    raw = (
        b'From: "News, Team" <News@Mail.Example.COM>\r\n'
        b"Message-ID:\r\n <abc@example.com>\r\n"
        b"X-Campaign-ID: spring\r\n\r\n"
        b"From: body@other.example\r\n"
    )
    summary = summarise_headers(raw, "X-Campaign-ID")
    assert summary.from_domain == "mail.example.com"
    assert summary.message_id == "<abc@example.com>"
    assert summary.campaign == "spring"


def test_campaign_header_name_is_configurable_and_case_insensitive():
    """The campaign comes from whichever header the config names."""
    raw = b"From: a@b.example\r\nx-mailing: autumn\r\n\r\n"
    assert summarise_headers(raw, "X-Mailing").campaign == "autumn"
    assert summarise_headers(raw, "X-Campaign-ID").campaign is None


def test_garbage_costs_fields_not_the_message():
    """Binary junk, a missing From or a bare-LF message still yields a summary."""
    assert summarise_headers(b"\xff\xfe\x00junk", "X-Campaign-ID").from_domain is None
    lf = summarise_headers(b"From: x@LF.example\nSubject: s\n\nbody", "X-Campaign-ID")
    assert lf.from_domain == "lf.example"
    no_from = summarise_headers(b"Subject: s\r\n\r\n", "X-Campaign-ID")
    assert no_from.from_domain is None


def _reference(raw: bytes, campaign_header: str) -> tuple[str | None, str | None]:
    """What the email package's compat32 parser reads (the relay's hot path must agree)."""
    from email.parser import HeaderParser
    from email.policy import compat32

    block = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    headers = HeaderParser(policy=compat32).parsestr(block + "\n\n", headersonly=True)
    out = []
    for name in ("Message-ID", campaign_header):
        value = headers.get(name)
        unfolded = re.sub(r"(?:\r\n|\r|\n)(?=[ \t])", "", str(value)) if value is not None else ""
        text = unfolded.strip()[:998]
        out.append(text or None)
    return out[0], out[1]


_FIELD_TEXT = st.text(
    alphabet=st.sampled_from([*'abc <>@.:;\t \r\n"()xyz-=', "é", "\x00"]), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Message-ID",
                    "message-id",
                    "X-Campaign-ID",
                    "Subject",
                    "X-Other",
                    " folded",
                    "bad line",
                    "From",
                ]
            ),
            _FIELD_TEXT,
        ),
        max_size=6,
    )
)
def test_hand_parser_agrees_with_the_email_package(fields):
    raw = (
        "".join(
            f"{name}{value}\r\n" if name.startswith(" ") or " " in name else f"{name}:{value}\r\n"
            for name, value in fields
        ).encode()
        + b"\r\nbody"
    )
    summary = summarise_headers(raw, "X-Campaign-ID")
    assert (summary.message_id, summary.campaign) == _reference(raw, "X-Campaign-ID")


def test_count_received_counts_header_fields_only():
    """Received fields in the header, any case, folded or not; none from the body."""
    raw = (
        b"Received: from a by b;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"received: from c by d; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"X-Received: not a hop\r\n"
        b"Subject: s\r\n\r\n"
        b"Received: in the body\r\n"
    )
    assert count_received(raw) == 2
    assert count_received(b"") == 0
    assert count_received(b"Subject: no trace\r\n\r\nbody") == 0


def _summarise_in_child(raw: bytes, budget: float) -> str:
    """summarise_headers and count_received of ``raw`` in a fresh interpreter, within
    ``budget`` seconds (a regression fails instead of hanging the run)."""
    code = (
        "import sys\n"
        "from policies.headers import count_received, summarise_headers\n"
        "raw = sys.stdin.buffer.read()\n"
        "print(summarise_headers(raw, 'X-Campaign-ID'), count_received(raw))\n"
    )
    return run_within(code, raw, budget, "reading the header").decode()


def test_a_from_folded_over_megabytes_is_read_in_bounded_time():
    """Intake summarises every message on its event loop: a From folded over 2 MB (a value
    built by repeated concatenation, then given whole to the address parser) costs a
    bounded moment, and its address is still read."""
    out = _summarise_in_child(hostile_from_header(2_000_000), budget=5.0)
    assert "from_domain='example.com'" in out


def test_a_35_mb_header_is_read_up_to_max_header_bytes():
    """A header of the largest message a client may send (35 MB of tiny fields): only the
    first MAX_HEADER_BYTES are read, so it costs what 100 KB costs; a Received field past
    them is not counted."""
    out = _summarise_in_child(hostile_received_block(35 * 1024 * 1024), budget=5.0)
    assert out.split()[-1] == "0"
    near = b"a:\r\n" * (headers.MAX_HEADER_BYTES // 4 - 100) + b"Received: x\r\n\r\n"
    assert count_received(near) == 1


def test_nested_comments_in_from_cost_the_field_not_the_message():
    """The address parser recurses once per "(": a thousand of them cost the From domain,
    never the message (intake would answer 451 forever)."""
    raw = b"From: " + b"(" * 1000 + b"a@b.example\r\nMessage-ID: <m@x>\r\n\r\n"
    summary = summarise_headers(raw, "X-Campaign-ID")
    assert summary.from_domain is None
    assert summary.message_id == "<m@x>"
