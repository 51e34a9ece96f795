"""Destination lookup over a scripted DNS server on loopback: MX hosts and their
addresses, each domain's answer kept until the first of its records' TTLs runs out, and
nothing kept from a lookup that failed.

The lookup's clock is injected: ``Clock.now`` is what it believes ``time.time()`` is.
The resolver has no cache of its own here, so every question that reaches the DNS server
is a question the lookup asked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from policies.smtp_reply import Reply
from relay.config import DeliveryConfig, RouteConfig, RouteMode
from relay.delivery.destinations import MAX_ADDRESSES, MAX_MX_HOSTS, DestinationLookup
from relay.resolver import MAX_TTL, make_resolver
from tests.support.dns_server import ScriptedDNS

ROUTE = RouteConfig(("*",), mode=RouteMode.MX, mx_port=2525)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def dns_server() -> AsyncIterator[ScriptedDNS]:
    async with ScriptedDNS() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lookup_for(server: ScriptedDNS, clock: Clock, cache_entries: int = 1000) -> DestinationLookup:
    config = DeliveryConfig(
        nameservers=("127.0.0.1",), dns_port=server.port, connect_timeout=timedelta(seconds=2)
    )
    uncached = make_resolver(config.nameservers, config.dns_port, 2.0)
    return DestinationLookup(
        config, now=lambda: clock.now, resolver=uncached, cache_entries=cache_entries
    )


async def hosts(lookup: DestinationLookup, domain: str) -> list[tuple[str, str]]:
    found = await lookup.find(ROUTE, domain)
    assert not isinstance(found, Reply), found
    return [(d.host, d.server_name) for d in found]


def asked(server: ScriptedDNS) -> int:
    return sum(server.queries.values())


async def test_mx_hosts_in_preference_order_with_their_addresses(dns_server, clock):
    dns_server.add("mx.test", "MX", "20 backup.mx.test.", "10 mail.mx.test.")
    dns_server.add("mail.mx.test", "A", "127.0.0.5")
    dns_server.add("mail.mx.test", "AAAA", "::1")
    dns_server.add("backup.mx.test", "A", "127.0.0.9")
    found = await lookup_for(dns_server, clock).find(ROUTE, "mx.test")
    assert not isinstance(found, Reply)
    assert [(d.host, d.port, d.name) for d in found] == [
        ("127.0.0.5", 2525, "mail.mx.test:2525"),
        ("::1", 2525, "mail.mx.test:2525"),
        ("127.0.0.9", 2525, "backup.mx.test:2525"),
    ]


async def test_a_domains_hosts_are_kept_while_its_records_live(dns_server, clock):
    """The second delivery to a domain asks the DNS nothing; once the records' TTL has run
    out it asks again and sees what changed."""
    dns_server.add("kept.test", "MX", "10 mail.kept.test.", ttl=300)
    dns_server.add("mail.kept.test", "A", "127.0.0.5", ttl=300)
    dns_server.negative_ttl = 300  # no AAAA, for as long as the A
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "kept.test") == [("127.0.0.5", "mail.kept.test")]
    first = asked(dns_server)
    assert first == 3  # MX, A, AAAA
    dns_server.add("mail.kept.test", "A", "127.0.0.6", ttl=300)
    clock.advance(299)
    assert await hosts(lookup, "kept.test") == [("127.0.0.5", "mail.kept.test")]
    assert asked(dns_server) == first
    clock.advance(2)
    assert await hosts(lookup, "kept.test") == [("127.0.0.6", "mail.kept.test")]
    assert asked(dns_server) == 2 * first


@pytest.mark.parametrize(
    ("mx_ttl", "a_ttl", "negative_ttl", "kept_for"),
    [
        (3600, 30, 3600, 30),  # the address record runs out first
        (20, 3600, 3600, 20),  # the MX record runs out first
        (3600, 3600, 45, 45),  # the missing AAAA may appear after its negative TTL
    ],
)
async def test_the_first_record_to_expire_decides(
    dns_server, clock, mx_ttl, a_ttl, negative_ttl, kept_for
):
    dns_server.add("short.test", "MX", "10 mail.short.test.", ttl=mx_ttl)
    dns_server.add("mail.short.test", "A", "127.0.0.5", ttl=a_ttl)
    dns_server.negative_ttl = negative_ttl
    lookup = lookup_for(dns_server, clock)
    await hosts(lookup, "short.test")
    first = asked(dns_server)
    dns_server.add("mail.short.test", "AAAA", "::1")
    clock.advance(kept_for - 1)
    assert await hosts(lookup, "short.test") == [("127.0.0.5", "mail.short.test")]
    assert asked(dns_server) == first
    clock.advance(2)
    assert await hosts(lookup, "short.test") == [
        ("127.0.0.5", "mail.short.test"),
        ("::1", "mail.short.test"),
    ]
    assert asked(dns_server) == 2 * first


async def test_a_domain_without_mx_is_its_own_host_and_is_kept_too(dns_server, clock):
    dns_server.add("plain.test", "A", "127.0.0.7")
    dns_server.negative_ttl = 60
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "plain.test") == [("127.0.0.7", "plain.test")]
    first = asked(dns_server)
    assert await hosts(lookup, "plain.test") == [("127.0.0.7", "plain.test")]
    assert asked(dns_server) == first


async def test_a_failed_lookup_is_never_kept(dns_server, clock):
    """SERVFAIL on the MX is a soft reply, and the next delivery asks again: the domain
    works as soon as its DNS does."""
    dns_server.servfail.add("flaky.test")
    lookup = lookup_for(dns_server, clock)
    reply = await lookup.find(ROUTE, "flaky.test")
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced, reply.synthetic) == (451, "4.4.3", True)
    assert "MX lookup for flaky.test failed" in reply.text
    dns_server.servfail.clear()
    dns_server.add("flaky.test", "MX", "10 mail.flaky.test.")
    dns_server.add("mail.flaky.test", "A", "127.0.0.5")
    assert await hosts(lookup, "flaky.test") == [("127.0.0.5", "mail.flaky.test")]


async def test_one_mx_host_that_fails_is_asked_again_next_time(dns_server, clock):
    """The hosts that resolved are used; the answer is not kept, so the host whose lookup
    failed is not left out for the others' TTL."""
    dns_server.add("half.test", "MX", "10 good.half.test.", "20 bad.half.test.")
    dns_server.add("good.half.test", "A", "127.0.0.5")
    dns_server.servfail.add("bad.half.test")
    dns_server.negative_ttl = 600
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "half.test") == [("127.0.0.5", "good.half.test")]
    dns_server.servfail.clear()
    dns_server.add("bad.half.test", "A", "127.0.0.6")
    assert await hosts(lookup, "half.test") == [
        ("127.0.0.5", "good.half.test"),
        ("127.0.0.6", "bad.half.test"),
    ]


async def test_the_kept_answers_are_bounded(dns_server, clock):
    """Past its size the oldest domain is forgotten (and looked up again when next used)."""
    dns_server.negative_ttl = 600
    for name in ("a", "b", "c"):
        dns_server.add(f"{name}.test", "MX", f"10 mail.{name}.test.")
        dns_server.add(f"mail.{name}.test", "A", "127.0.0.5")
    lookup = lookup_for(dns_server, clock, cache_entries=2)
    for name in ("a", "b", "c"):
        await hosts(lookup, f"{name}.test")
    assert dns_server.queries[("a.test", "MX")] == 1
    await hosts(lookup, "c.test")
    await hosts(lookup, "b.test")
    assert (dns_server.queries[("b.test", "MX")], dns_server.queries[("c.test", "MX")]) == (1, 1)
    await hosts(lookup, "a.test")
    assert dns_server.queries[("a.test", "MX")] == 2


async def test_a_null_mx_ends_the_attempt(dns_server, clock):
    dns_server.add("nullmx.test", "MX", "0 .")
    reply = await lookup_for(dns_server, clock).find(ROUTE, "nullmx.test")
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced) == (556, "5.1.10")


async def test_a_domain_without_mx_is_looked_up_again_after_its_negative_ttl(dns_server, clock):
    """No MX: the domain is its own host until the "no MX" answer expires; an MX it
    publishes after that is used."""
    dns_server.add("moving.test", "A", "127.0.0.7", ttl=3600)
    dns_server.negative_ttl = 30
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "moving.test") == [("127.0.0.7", "moving.test")]
    dns_server.add("moving.test", "MX", "10 mail.moving.test.")
    dns_server.add("mail.moving.test", "A", "127.0.0.8")
    clock.advance(29)
    assert await hosts(lookup, "moving.test") == [("127.0.0.7", "moving.test")]
    clock.advance(2)
    assert await hosts(lookup, "moving.test") == [("127.0.0.8", "mail.moving.test")]


async def test_a_backup_mx_that_does_not_exist_does_not_stop_the_domain_being_kept(
    dns_server, clock
):
    """A dead backup MX host (NXDOMAIN) has no addresses for its negative TTL; the domain's
    answer is kept that long, not looked up for every delivery."""
    dns_server.add("mixed.test", "MX", "10 mail.mixed.test.", "20 gone.mixed.test.", ttl=600)
    dns_server.add("mail.mixed.test", "A", "127.0.0.5", ttl=600)
    dns_server.nxdomain.add("gone.mixed.test")
    dns_server.negative_ttl = 120
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "mixed.test") == [("127.0.0.5", "mail.mixed.test")]
    first = asked(dns_server)
    clock.advance(119)
    assert await hosts(lookup, "mixed.test") == [("127.0.0.5", "mail.mixed.test")]
    assert asked(dns_server) == first
    dns_server.nxdomain.clear()
    dns_server.add("gone.mixed.test", "A", "127.0.0.6")
    clock.advance(2)
    assert await hosts(lookup, "mixed.test") == [
        ("127.0.0.5", "mail.mixed.test"),
        ("127.0.0.6", "gone.mixed.test"),
    ]


async def test_a_ttl_of_decades_is_believed_for_a_day(dns_server, clock):
    """2^31 - 1 s is a valid TTL (RFC 2181 §8); no answer is kept past MAX_TTL, in the
    lookup's cache or the resolver's."""
    forever = 2**31 - 1
    dns_server.add("forever.test", "MX", "10 mail.forever.test.", ttl=forever)
    dns_server.add("mail.forever.test", "A", "127.0.0.5", ttl=forever)
    dns_server.add("mail.forever.test", "AAAA", "::1", ttl=forever)
    lookup = lookup_for(dns_server, clock)
    await hosts(lookup, "forever.test")
    first = asked(dns_server)
    clock.advance(MAX_TTL - 1)
    await hosts(lookup, "forever.test")
    assert asked(dns_server) == first
    clock.advance(2)
    await hosts(lookup, "forever.test")
    assert asked(dns_server) == 2 * first
    cached = make_resolver(("127.0.0.1",), dns_server.port, 2.0, cache_entries=10)
    answer = await cached.resolve("forever.test", "MX")
    assert answer.expiration <= time.time() + MAX_TTL
    again = await cached.resolve("forever.test", "MX")  # from the resolver's cache
    assert again.expiration <= time.time() + MAX_TTL


async def test_an_attempt_tries_a_bounded_number_of_addresses(dns_server, clock):
    """A domain publishing many MX hosts and addresses: the best MAX_ADDRESSES addresses,
    found among at most MAX_MX_HOSTS hosts, and the hosts after them are not even looked
    up (each address that does not answer would hold a slot for connect_timeout)."""
    many = [f"{10 + n} mx{n}.many.test." for n in range(30)]
    dns_server.add("many.test", "MX", *many)
    for n in range(30):
        dns_server.add(f"mx{n}.many.test", "A", f"127.0.2.{n + 1}")
    dns_server.add("wide.test", "MX", "10 wide.mx.test.")
    dns_server.add("wide.mx.test", "A", *[f"127.0.3.{n + 1}" for n in range(40)])
    dns_server.add("plain.test", "A", *[f"127.0.4.{n + 1}" for n in range(40)])
    dns_server.nxdomain.update(f"gone{n}.test" for n in range(30))
    dns_server.add("dead.test", "MX", *[f"{n} gone{n}.test." for n in range(30)])
    lookup = lookup_for(dns_server, clock)
    assert await hosts(lookup, "many.test") == [
        (f"127.0.2.{n + 1}", f"mx{n}.many.test") for n in range(MAX_ADDRESSES)
    ]
    assert not any(dns_server.queries[(f"mx{n}.many.test", "A")] for n in range(5, 30))
    assert len(await hosts(lookup, "wide.test")) == MAX_ADDRESSES
    assert len(await hosts(lookup, "plain.test")) == MAX_ADDRESSES
    reply = await lookup.find(ROUTE, "dead.test")
    assert isinstance(reply, Reply)
    looked_up = {name for (name, _) in dns_server.queries if name.startswith("gone")}
    assert len(looked_up) == MAX_MX_HOSTS
