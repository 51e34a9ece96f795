"""Which route a recipient takes and which source IP its message leaves from.

Routes: first match on the recipient domain (``*`` matches all, ``*.example.com``
subdomains). Pools: a campaign claim wins, then a sending (From) domain claim,
then the route's own pool; inside a pool source IPs take turns (round-robin).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from relay.config import PoolConfig, RouteConfig, Rules

__all__ = ["SourceIPs", "pool_for", "route_for"]


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
