"""Route and pool selection (first matching route; campaign, then From domain, then route),
and where an address literal goes."""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta

import pytest

from policies.addresses import is_address_literal
from policies.classify import Kind, classify
from policies.smtp_reply import Reply
from relay.config import DeliveryConfig, RouteConfig, RouteMode, load_config
from relay.delivery.destinations import DestinationLookup
from relay.delivery.routing import SourceIPs, literal_ip, pool_for, route_for

CONFIG = """
[[pools]]
name = "default"
source_ips = ["127.0.0.2", "127.0.0.3"]
[[pools]]
name = "news"
source_ips = ["127.0.0.4"]
from_domains = ["news.example.com"]
[[pools]]
name = "promo"
source_ips = ["127.0.0.5"]
campaigns = ["black-friday"]
[[routes]]
domains = ["internal.example", "*.corp.example"]
mode = "static"
hosts = ["127.0.0.1:2526"]
pool = "news"
[[routes]]
domains = ["*"]
mode = "mx"
"""


def _route(routes: tuple[RouteConfig, ...], domain: str) -> RouteConfig:
    route = route_for(routes, domain)
    assert route is not None, f"no route for {domain}"
    return route


def test_first_matching_route_wins(write_config):
    """Exact and wildcard-subdomain matches take the first route; anything else the catch-all."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    assert _route(rules.routes, "internal.example").mode == "static"
    assert _route(rules.routes, "a.corp.example").mode == "static"
    assert _route(rules.routes, "corp.example").mode == "mx"
    assert _route(rules.routes, "gmail.com").mode == "mx"


def test_pool_by_campaign_then_from_domain_then_route(write_config):
    """A campaign claim beats a From-domain claim, which beats the route's pool."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    mx = _route(rules.routes, "gmail.com")
    static = _route(rules.routes, "internal.example")
    assert pool_for(rules, mx, "news.example.com", "black-friday").name == "promo"
    assert pool_for(rules, mx, "news.example.com", None).name == "news"
    assert pool_for(rules, mx, "other.example", None).name == "default"
    assert pool_for(rules, static, None, None).name == "news"


def test_round_robin_and_avoid(write_config):
    """IPs take turns; an IP to avoid is skipped unless it is the pool's only one."""
    rules = load_config(write_config(CONFIG, replace_base=True)).rules
    default = rules.pools[0]
    ips = SourceIPs()
    assert [ips.pick(default) for _ in range(4)] == ["127.0.0.2", "127.0.0.3"] * 2
    assert {ips.pick(default, {"127.0.0.2"}) for _ in range(3)} == {"127.0.0.3"}
    assert ips.pick(rules.pools[1], {"127.0.0.4"}) == "127.0.0.4"


# -- address literals: an IP, never a name ---------------------------------------------------


def _literal_route(mode: RouteMode = RouteMode.MX, allowed: bool = True) -> RouteConfig:
    hosts = (("127.0.0.1", 2526),) if mode is not RouteMode.MX else ()
    return RouteConfig(("*",), mode=mode, hosts=hosts, mx_port=2525, address_literals=allowed)


@pytest.fixture
def no_dns() -> DestinationLookup:
    """A lookup whose resolver points at a port where nothing answers: any DNS lookup
    ends in a failure Reply (after 1 s), so a Destination proves none was made."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        silent_port = probe.getsockname()[1]
    config = DeliveryConfig(
        nameservers=("127.0.0.1",), dns_port=silent_port, connect_timeout=timedelta(seconds=1)
    )
    return DestinationLookup(config)


@pytest.mark.parametrize(
    ("domain", "ip"),
    [
        ("[127.0.0.5]", "127.0.0.5"),
        ("[ipv6:2001:db8::1]", "2001:db8::1"),  # recipient domains are stored lower-cased
        ("[IPv6:2001:DB8::1]", "2001:db8::1"),
        ("[ipv6:::ffff:127.0.0.5]", "::ffff:7f00:5"),  # RFC 5321 IPv6v4 form
    ],
)
async def test_an_allowed_literal_on_an_mx_route_is_its_ip_on_mx_port(no_dns, domain, ip):
    """No MX, no A lookup: the literal's IP on the route's mx_port."""
    [destination] = await no_dns.find(_literal_route(), domain)
    assert (destination.host, destination.port, destination.name) == (
        ip,
        2525,
        f"{ip}:2525",
    )


async def test_a_literal_on_a_smarthost_route_goes_to_its_hosts_only_when_allowed(no_dns):
    """Allowed, the literal is just a recipient the smarthost routes; not allowed, it goes
    nowhere (the same soft reply as on an mx route)."""
    [destination] = await no_dns.find(_literal_route(RouteMode.SMARTHOST), "[127.0.0.5]")
    assert (destination.host, destination.port) == ("127.0.0.1", 2526)
    refused = await no_dns.find(_literal_route(RouteMode.SMARTHOST, False), "[127.0.0.5]")
    assert isinstance(refused, Reply)
    assert (refused.code, refused.enhanced) == (550, "5.4.4")


async def test_a_literal_through_a_route_that_does_not_allow_it_is_soft(no_dns):
    """Queued before the route changed (the intake refuses new ones at RCPT): a synthetic
    reply the classifier reads as soft and never suppressing (never X.1.2, which means
    "no such domain" and suppresses)."""
    reply = await no_dns.find(_literal_route(allowed=False), "[127.0.0.5]")
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced, reply.synthetic) == (550, "5.4.4", True)
    assert "address_literals = true" in reply.text
    verdict = classify(reply, "[127.0.0.5]")
    assert (verdict.kind, verdict.suppress) == (Kind.SOFT, False)


@pytest.mark.parametrize(
    "domain",
    [
        "[999.0.0.1]",
        "[127.0.0.05]",  # a leading zero reads as octal to some resolvers: refused
        "[ipv6:127.0.0.5]",
        "[ipv6:fe80::1%eth0]",
        "[x-tag:whatever]",  # an RFC 5321 general address literal
        "[0.0.0.0]",
        "[224.0.0.1]",
    ],
)
async def test_a_literal_that_is_no_host_address_fails_without_dns(no_dns, domain):
    reply = await no_dns.find(_literal_route(), domain)
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced, reply.synthetic) == (550, "5.1.3", True)
    assert domain in reply.text
    verdict = classify(reply, domain)
    assert (verdict.kind, verdict.suppress) == (Kind.SOFT, False)
    with pytest.raises(ValueError, match=r"."):
        literal_ip(domain)


def test_literals_are_told_from_names():
    assert is_address_literal("[127.0.0.5]")
    assert not is_address_literal("example.org")
    assert literal_ip("[127.0.0.5]") == ipaddress.IPv4Address("127.0.0.5")
