"""[recipients] at RCPT: likely typos and domains that receive no mail, refused or tagged;
the DNS judgement (relay.intake.domain_check) against a scripted DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiosmtplib
import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.config import Config
from relay.intake.domain_check import DomainCheck, DomainState
from relay.ops.app import Relay
from tests.support.dns_server import ScriptedDNS

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
async def dns() -> AsyncIterator[ScriptedDNS]:
    async with ScriptedDNS() as server:
        server.add("example.org", "MX", "10 mx.example.org.")
        server.add("bare.example", "A", "127.0.0.1")
        server.add("nullmx.example", "MX", "0 .")
        server.nxdomain.add("gone.example")
        server.nxdomain.add("nomail.example")  # for A/AAAA; MX is empty below
        server.servfail.add("broken.example")
        yield server


def check(dns: ScriptedDNS, **kwargs: object) -> DomainCheck:
    return DomainCheck(nameservers=("127.0.0.1",), dns_port=dns.port, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("domain", "state"),
    [
        ("example.org", DomainState.ACCEPTS_MAIL),
        ("bare.example", DomainState.ACCEPTS_MAIL),  # no MX: its A is the implicit MX
        ("nullmx.example", DomainState.NULL_MX),
        ("gone.example", DomainState.NO_SUCH_DOMAIN),
        ("empty.example", DomainState.NO_MAIL_HOSTS),  # NOERROR, nothing for MX, A, AAAA
        ("broken.example", DomainState.UNKNOWN),  # SERVFAIL: never refused on it
    ],
)
async def test_a_domain_is_judged_as_delivery_judges_it(dns, domain, state):
    checker = check(dns)
    assert (await checker.status(domain)).state is state
    await checker.close()


async def test_nxdomain_that_the_resolver_cannot_vouch_for_is_unknown(dns):
    """A resolver that says NXDOMAIN for the parent and the root too is not believed."""
    dns.nxdomain.update({"lost.example", "example", ""})
    checker = check(dns)
    assert (await checker.status("lost.example")).state is DomainState.UNKNOWN
    await checker.close()


async def test_answers_are_cached_shared_and_bounded(dns):
    now = [0.0]
    checker = check(dns, cache_size=2, cache_ttl=60.0, monotonic=lambda: now[0])
    # concurrent RCPTs for one domain: one lookup
    results = await asyncio.gather(*(checker.status("gone.example") for _ in range(20)))
    assert {r.state for r in results} == {DomainState.NO_SUCH_DOMAIN}
    assert checker.lookups == 1
    await checker.status("gone.example")
    assert checker.lookups == 1  # cached, the negative answer too
    await checker.status("example.org")
    await checker.status("nullmx.example")  # a third domain: the least recently used goes
    assert checker.cached("gone.example") is None
    assert checker.cached("nullmx.example") is not None
    now[0] = 61.0  # past the TTL
    assert checker.cached("nullmx.example") is None
    await checker.status("nullmx.example")
    assert checker.lookups == 4
    await checker.close()


async def test_an_answer_that_could_not_be_had_is_kept_briefly(dns):
    now = [0.0]
    checker = check(dns, cache_ttl=600.0, monotonic=lambda: now[0])
    await checker.status("broken.example")
    await checker.status("broken.example")
    assert checker.lookups == 1
    now[0] = 31.0
    await checker.status("broken.example")
    assert checker.lookups == 2
    await checker.close()


async def test_a_silent_resolver_accepts_after_the_timeout():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        checker = DomainCheck(
            nameservers=("127.0.0.1",), dns_port=silent.getsockname()[1], timeout=0.3
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        status = await checker.status("example.org")
        assert status.state is DomainState.UNKNOWN
        assert loop.time() - start < 1.0
        await checker.close()
    finally:
        silent.close()


# -- through a relay ------------------------------------------------------------------------


@pytest.fixture
def start_relay(db_dsn: str, make_config: Callable[..., Config], dns: ScriptedDNS):
    @asynccontextmanager
    async def start(recipients: str, routes: str = "") -> AsyncIterator[Relay]:
        config = make_config(
            f"""
            [recipients]
            {recipients}
            [delivery]
            enabled = false
            nameservers = ["127.0.0.1"]
            dns_port = {dns.port}
            {routes}
            """
        )
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
            yield relay

    return start


async def _rcpt(relay: Relay, *recipients: str) -> list[tuple[int, str]]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    await client.mail("sender@example.com")
    answers = []
    for rcpt in recipients:
        try:
            reply = await client.rcpt(rcpt)
            answers.append((reply.code, reply.message))
        except aiosmtplib.SMTPRecipientRefused as exc:
            answers.append((exc.code, exc.message))
    if any(code == 250 for code, _ in answers):
        await client.data(MESSAGE)
    await client.quit()
    return answers


async def test_typos_and_mailless_domains_are_refused_with_why(start_relay, db_dsn):
    async with start_relay('typo = "refuse"\nno_mail_domain = "refuse"') as relay:
        answers = await _rcpt(
            relay,
            "Ann@gmial.com",
            "bob@gone.example",
            "cy@nullmx.example",
            "dee@empty.example",
            "eve@broken.example",
            "fay@example.org",
        )
    assert answers[0] == (
        550,
        "5.1.2 <Ann@gmial.com>: did you mean Ann@gmail.com? (gmial.com is a likely typo)",
    )
    assert answers[1] == (550, "5.1.2 <bob@gone.example>: the domain gone.example does not exist")
    assert answers[2][0] == 556
    assert answers[2][1].startswith("5.1.10 <cy@nullmx.example>: the domain nullmx.example")
    assert answers[3][0] == 550
    assert "no mail server" in answers[3][1]
    assert answers[4][0] == 250  # SERVFAIL: accepted, delivery asks again
    assert answers[5][0] == 250
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT recipient, recipient_domain_flag FROM deliveries")
    finally:
        await conn.close()
    assert sorted((r["recipient"], r["recipient_domain_flag"]) for r in rows) == [
        ("eve@broken.example", None),
        ("fay@example.org", None),
    ]


async def test_tagged_recipients_are_accepted_and_their_deliveries_say_why(start_relay, db_dsn):
    async with start_relay('typo = "tag"\nno_mail_domain = "tag"') as relay:
        with capture_logs() as logs:
            answers = await _rcpt(
                relay, "ann@hotmail.con", "bob@gone.example", "cy@nullmx.example", "d@example.org"
            )
        metrics = relay.metrics.render().decode()
    assert [code for code, _ in answers] == [250, 250, 250, 250]
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT recipient, recipient_domain_flag FROM deliveries")
    finally:
        await conn.close()
    assert sorted((r["recipient"], r["recipient_domain_flag"]) for r in rows) == [
        ("ann@hotmail.con", "likely_typo:hotmail.com"),
        ("bob@gone.example", "no_such_domain"),
        ("cy@nullmx.example", "null_mx"),
        ("d@example.org", None),
    ]
    flagged = [e for e in logs if e["event"] == "intake.recipient_domain_flagged"]
    assert {e["reason"] for e in flagged} == {"likely_typo", "no_such_domain", "null_mx"}
    assert (
        'bounce_relay_recipient_domains_flagged_total{action="tagged",reason="null_mx"} 1.0'
        in metrics
    )


async def test_off_and_smarthost_routes_ask_no_dns(start_relay):
    """Defaults: typos refused, no DNS at RCPT; a smarthost route resolves no recipient
    domain, so it is never asked even with no_mail_domain on."""
    async with start_relay("") as relay:
        answers = await _rcpt(relay, "a@gone.example", "b@gmail.con")
    assert [code for code, _ in answers] == [250, 550]
    smarthost = '[[routes]]\ndomains = ["*"]\nmode = "smarthost"\nhosts = ["127.0.0.1:2599"]'
    async with start_relay('no_mail_domain = "refuse"', smarthost) as relay:
        answers = await _rcpt(relay, "a@gone.example")
        checker = relay.handler._domain_check
    assert [code for code, _ in answers] == [250]
    assert checker is None


async def test_hostile_bytes_are_not_reflected(start_relay):
    async with start_relay('typo = "refuse"') as relay:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        await client.mail("s@example.com", options=["SMTPUTF8"])
        code, message = await client.execute_command("RCPT TO:<bøb@gmial.com>".encode())
        await client.quit()
    assert code == 550
    assert message.isascii()
    assert "did you mean b?b@gmail.com?" in message
