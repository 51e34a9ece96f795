"""Header summary: From domain, Message-ID and campaign from raw message bytes."""

from __future__ import annotations

from policies.headers import summarise_headers


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
