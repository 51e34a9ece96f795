"""Which route a recipient takes and which source IP its message leaves from.

Routes: first match on the recipient domain (``*`` matches all, ``*.example.com``
subdomains). Pools: a campaign claim wins, then a sending (From) domain claim,
then the route's own pool; inside a pool source IPs take turns (round-robin).

A recipient domain in brackets is an address literal (RFC 5321 §4.1.3): an IP,
not a name; ``literal_ip`` reads it, and only a route with ``address_literals``
sends mail to it (relay.delivery.upstream).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator

from policies.addresses import is_address_literal
from relay.config import PoolConfig, RouteConfig, Rules

__all__ = ["SourceIPs", "literal_ip", "pool_for", "route_for"]


def literal_ip(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of the address literal ``domain``; ValueError saying why when it names
    none we deliver to: a general literal (``[tag:...]``, RFC 5321 §4.1.3), a malformed
    address, a zone index, or an address no host has (unspecified, multicast)."""
    inner = domain[1:-1] if is_address_literal(domain) else domain
    tag, colon, rest = inner.partition(":")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if not colon:
        ip = ipaddress.IPv4Address(inner)
    elif tag.lower() == "ipv6":
        ip = ipaddress.IPv6Address(rest)
        if ip.scope_id:
            raise ValueError(f"{rest!r} has a zone index, which means nothing off this host")
    else:
        raise ValueError(f"address literal tag {tag!r} is not supported (only IPv4 and IPv6:)")
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{ip} is not the address of a host")
    return ip


def route_for(routes: tuple[RouteConfig, ...], domain: str) -> RouteConfig | None:
    return next((r for r in routes if r.matches(domain)), None)


def pool_for(
    rules: Rules, route: RouteConfig, from_domain: str | None, campaign: str | None
) -> PoolConfig:
    if campaign:
        for pool in rules.pools:
            if campaign in pool.campaigns:
                return pool
    if from_domain:
        for pool in rules.pools:
            if from_domain in pool.from_domains:
                return pool
    return next((p for p in rules.pools if p.name == route.pool), rules.pools[0])


class SourceIPs:
    """Round-robin over each pool's source IPs, avoiding one when a rule asks."""

    def __init__(self) -> None:
        self._turns: dict[tuple[str, tuple[str, ...]], Iterator[str]] = {}

    def pick(self, pool: PoolConfig, avoid: set[str] | None = None) -> str:
        key = (pool.name, pool.source_ips)
        turns = self._turns.get(key)
        if turns is None:
            turns = self._turns[key] = itertools.cycle(pool.source_ips)
        for _ in range(len(pool.source_ips)):
            ip = next(turns)
            if not avoid or ip not in avoid:
                return ip
        return next(turns)  # every IP is to be avoided: a one-IP pool has no other
