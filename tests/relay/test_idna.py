"""Internationalised domains end to end: one UTS 46 non-transitional (IDNA 2008) form.

What was seen: ``str.encode("idna")`` (IDNA 2003) turned ``straße.de`` into ``strasse.de``,
another domain. Mail went to the wrong MX, and a suppression of ``bob@straße.de`` blocked
``bob@strasse.de`` but not ``bob@xn--strae-oqa.de``. Here a real relay, a real PostgreSQL, a
scripted DNS server and a scripted upstream show where each spelling ends up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosmtplib
import asyncpg
import pytest

from relay.cli import suppression as commands
from relay.config import load_config
from relay.delivery.upstream import downgrade_address
from relay.ops.app import Relay
from tests.support.addresses import full_width
from tests.support.delivery import BODY, eventually
from tests.support.dns_server import ScriptedDNS
from tests.support.scripted import ScriptedUpstream

U_LABEL = "bob@straße.de"
A_LABEL = "bob@xn--strae-oqa.de"
IDNA_2003 = "bob@strasse.de"


async def _session(relay: Relay, *, utf8: bool) -> aiosmtplib.SMTP:
    """A client with an open transaction (MAIL FROM taken), SMTPUTF8 when ``utf8``."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    await client.mail("sender@mail.example.com", options=["SMTPUTF8"] if utf8 else [])
    return client


async def _rcpt(client: aiosmtplib.SMTP, address: str) -> tuple[int, str]:
    try:
        reply = await client.rcpt(address, encoding="utf-8")
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code, exc.message
    return reply.code, reply.message


# -- suppression keys --------------------------------------------------------------------------


async def test_suppressing_the_u_label_refuses_the_a_label_and_not_strasse(
    upstream, start_relay, db
):
    """`suppression add bob@straße.de` (the CLI's path to the key), then RCPT: the A-label
    spelling is refused 550 5.7.1, bob@strasse.de (another domain) is taken."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        assert await commands.suppression_add(relay.store, U_LABEL, "complaint", "ops") == 0
        client = await _session(relay, utf8=False)
        a_label = await _rcpt(client, A_LABEL)
        upper = await _rcpt(client, A_LABEL.upper())
        other = await _rcpt(client, IDNA_2003)
        await client.quit()
    assert a_label[0] == 550, a_label
    assert a_label[1].startswith("5.7.1 ")
    assert upper[0] == 550, upper
    assert other[0] == 250, other
    keys = await db.fetch("SELECT address FROM suppressions")
    assert [r["address"] for r in keys] == [A_LABEL]
    refused = await db.fetch(
        "SELECT recipient FROM events WHERE type = 'rejected_suppressed' ORDER BY id"
    )
    assert [r["recipient"] for r in refused] == [A_LABEL, A_LABEL]


async def test_suppressing_the_a_label_refuses_every_u_label_spelling(upstream, start_relay, db):
    """The other way round: the A-label is on the list, and the U-label, its upper-case and
    full-width spellings (SMTPUTF8) are refused; bob@strasse.de is still taken."""
    spellings = [U_LABEL, "bob@STRAẞE.DE", f"bob@{full_width('straße.de')}"]
    async with start_relay(upstream.port, "enabled = false") as relay:
        assert await commands.suppression_add(relay.store, A_LABEL, "complaint", "ops") == 0
        client = await _session(relay, utf8=True)
        replies = [await _rcpt(client, address) for address in spellings]
        other = await _rcpt(client, IDNA_2003)
        await client.quit()
    assert [code for code, _ in replies] == [550, 550, 550], replies
    assert other[0] == 250, other


REFUSED = {
    "zwj": "bob@a\u200db.example",
    "zwnj-without-virama": "bob@a\u200cb.example",
    "bogus-a-label": "bob@xn--bogus.example",
    "non-canonical-a-label": "bob@xn---bbk.example",
    "emoji": "bob@\U0001f600.example",
    "label-over-63-as-a-label": f"bob@{'ä' * 60}.example",
    "hyphen-at-end": "bob@straße-.de",
    "address-literal-not-an-ip": "bob@[192.0.2.300]",
}


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
async def test_a_domain_without_an_idna_2008_form_is_refused_at_rcpt(
    upstream, start_relay, db, address
):
    """501 5.1.3 with an ASCII reply saying what is wrong with the domain; nothing stored."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        client = await _session(relay, utf8=True)
        code, text = await _rcpt(client, address)
        await client.quit()
    assert code == 501, text
    assert text.startswith("5.1.3 Bad recipient address syntax: invalid domain: ")
    assert text.isascii()
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


# -- delivery ----------------------------------------------------------------------------------


@pytest.fixture
async def dns_server() -> AsyncIterator[ScriptedDNS]:
    async with ScriptedDNS() as server:
        yield server


@pytest.fixture
def start_mx_relay(db_dsn, write_config, clock, dns_server):
    @asynccontextmanager
    async def start(upstream_port: int) -> AsyncIterator[Relay]:
        text = f"""
        [smtp]
        listen = "127.0.0.1:0"
        hostname = "relay.test"
        [[routes]]
        domains = ["*"]
        mode = "mx"
        mx_port = {upstream_port}
        [admin]
        listen = "127.0.0.1:0"
        [delivery]
        nameservers = ["127.0.0.1"]
        dns_port = {dns_server.port}
        connect_timeout = "2s"
        command_timeout = "5s"
        """
        config = load_config(write_config(text, replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            yield relay

    return start


async def _send_utf8(relay: Relay, recipients: list[str]) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.sendmail("bounces@mail.example.com", recipients, BODY, mail_options=["SMTPUTF8"])
    await client.quit()


async def _final_state(db: asyncpg.Connection, recipient: str) -> str:
    """The state of the delivery to ``recipient`` (as written) once it is decided."""

    async def decided() -> bool:
        state = await db.fetchval("SELECT state FROM deliveries WHERE recipient = $1", recipient)
        return state in ("delivered", "bounced")

    await eventually(decided)
    state: str = await db.fetchval("SELECT state FROM deliveries WHERE recipient = $1", recipient)
    return state


async def test_mail_to_a_sharp_s_domain_goes_to_its_own_mx_not_to_strasse(
    upstream: ScriptedUpstream, dns_server: ScriptedDNS, start_mx_relay, db
):
    """straße.de's MX is looked up as xn--strae-oqa.de, never as strasse.de (NXDOMAIN here:
    under IDNA 2003 the mail bounced as domain_not_found and suppressed a good address)."""
    dns_server.add("xn--strae-oqa.de", "MX", "10 mail.mx.test.")
    dns_server.add("mail.mx.test", "A", "127.0.0.1")
    dns_server.nxdomain.add("strasse.de")
    async with start_mx_relay(upstream.port) as relay:
        await _send_utf8(relay, [U_LABEL])
        state = await _final_state(db, U_LABEL)
    assert state == "delivered"
    row = await db.fetchrow(
        "SELECT recipient_key, recipient_domain FROM deliveries WHERE recipient = $1", U_LABEL
    )
    assert (row["recipient_key"], row["recipient_domain"]) == (A_LABEL, "xn--strae-oqa.de")
    assert [r.recipients for r in upstream.received] == [[U_LABEL]]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


def test_a_sharp_s_domain_downgrades_to_its_own_a_label():
    """For a next hop without SMTPUTF8 the domain goes as its IDNA 2008 A-label."""
    assert downgrade_address(U_LABEL) == A_LABEL
    assert downgrade_address(f"bob@{full_width('straße.de')}") == A_LABEL
    assert downgrade_address("bob@\u03c2.gr") == "bob@xn--3xa.gr"  # final sigma kept


async def test_a_sharp_s_recipient_reaches_a_7bit_server_as_its_a_label(
    upstream: ScriptedUpstream, start_relay, db
):
    """The envelope a server without SMTPUTF8 sees names xn--strae-oqa.de, not strasse.de."""
    upstream.smtputf8 = False
    async with start_relay(upstream.port) as relay:
        await _send_utf8(relay, [U_LABEL])
        state = await _final_state(db, U_LABEL)
    assert state == "delivered"
    assert [r.recipients for r in upstream.received] == [[A_LABEL]]


def test_config_domains_take_the_form_of_every_key(make_config):
    """Route, pool, classify-rule and DSN domains written as U-labels match the A-label keys
    the intake makes (before, `domains = ["straße.de"]` never matched anything)."""
    config = make_config(
        '[[pools]]\nname = "p"\nsource_ips = ["127.0.0.1"]\nfrom_domains = ["STRAẞE.de"]\n'
        '[[routes]]\ndomains = ["*.straße.de", "ｅｘａｍｐｌｅ．com"]\nmode = "mx"\npool = "p"\n'  # noqa: RUF001
        '[[classify.rules]]\nname = "r"\nmatch = { domain = ["straße.de."] }\n'
        'kind = "soft"\ncategory = "mailbox_full"\n'
        '[dsn]\ndomain = "bounces.straße.de"\nsecret = "0123456789abcdef0123"\n',
        replace_base=True,
    )
    [pool] = [p for p in config.rules.pools if p.name == "p"]
    assert pool.from_domains == frozenset({"xn--strae-oqa.de"})
    assert config.rules.routes[0].domains == ("*.xn--strae-oqa.de", "example.com")
    assert config.rules.routes[0].matches("mx.xn--strae-oqa.de")
    assert not config.rules.routes[0].matches("mx.strasse.de")
    assert config.dsn.domain == "bounces.xn--strae-oqa.de"
    paths = config.dsn.return_paths
    assert paths is not None and paths.is_ours("x@BOUNCES.STRAẞE.DE")


def test_config_refuses_a_domain_without_an_idna_2008_form(write_config):
    from relay.config import ConfigErrors

    with pytest.raises(ConfigErrors, match="domains"):
        load_config(write_config('[[routes]]\ndomains = ["xn--bogus.de"]\n', replace_base=True))


async def test_searching_the_suppression_list_by_a_u_label_finds_the_a_label_key(
    upstream, start_relay
):
    """Keys hold A-labels: a search written with the U-label (the address or just the
    domain) finds the entry, and finds nothing at strasse.de."""
    async with start_relay(upstream.port, "enabled = false") as relay:
        await _search_by_u_label(relay.store)


async def _search_by_u_label(store) -> None:
    assert await commands.suppression_add(store, U_LABEL, "complaint", "ops") == 0
    await store.add_suppression(IDNA_2003, "other domain", "manual")
    for text in (U_LABEL, "STRAẞE.DE", "straße", A_LABEL):
        assert [r.address for r in await store.list_suppressions(search=text)] == [A_LABEL], text
        assert [r.address for r in await store.suppressions_with_cause(text, 10, 0)] == [A_LABEL], (
            text
        )
