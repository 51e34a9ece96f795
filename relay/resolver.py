"""The relay's DNS resolver, and when its "no such domain" can be believed. Delivery (MX
routes) and the intake's recipient-domain check ([recipients]) both ask it, and both must
judge an absent domain the same way.

A resolver that answers NXDOMAIN for every name (misconfigured, hijacked, a machine without
outside DNS) would otherwise condemn every recipient it is asked about: a domain is absent
only when the resolver can vouch for it, that is when the domain's parent zone answers (or,
when the parent is absent too, the root does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

__all__ = [
    "MAX_NEGATIVE_TTL",
    "MAX_TTL",
    "can_vouch_absent",
    "expiration_of",
    "make_resolver",
    "zone_answers",
]

# No answer is believed for longer than a day, nor a negative one (no such record, no such
# name) for longer than an hour: Unbound's cache-max-ttl and cache-max-negative-ttl. A zone
# that publishes a TTL of decades (2^31 - 1 s is valid, RFC 2181 §8) must not pin a
# destination until the relay restarts.
MAX_TTL = 86_400
MAX_NEGATIVE_TTL = 3_600


def expiration_of(answer: dns.resolver.Answer) -> float:
    """When ``answer`` expires (``time.time()`` terms), its TTL capped at MAX_TTL, or
    MAX_NEGATIVE_TTL for an answer with no record."""
    cap = MAX_NEGATIVE_TTL if answer.rrset is None else MAX_TTL
    return min(answer.expiration, time.time() + cap)


class _CappedCache(dns.resolver.LRUCache):
    """dnspython's LRU cache, keeping no answer past ``expiration_of``."""

    def put(self, key: Any, value: dns.resolver.Answer) -> None:
        value.expiration = expiration_of(value)
        super().put(key, value)


def make_resolver(
    nameservers: Sequence[str], port: int, lifetime: float, cache_entries: int = 0
) -> dns.asyncresolver.Resolver:
    """The configured servers (the system's when none); answers kept for their TTLs in an
    LRU cache of ``cache_entries`` names (0: none), no longer than MAX_TTL."""
    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = list(nameservers)
    if port:
        resolver.port = port
    resolver.lifetime = lifetime
    if cache_entries:
        resolver.cache = _CappedCache(cache_entries)
    return resolver


async def zone_answers(resolver: dns.asyncresolver.Resolver, zone: str) -> bool | None:
    """True when ``zone`` exists by ``resolver`` (its SOA, or any answer for the name), None
    when it says NXDOMAIN, False when it cannot tell (SERVFAIL, timeout)."""
    try:
        await resolver.resolve(zone, "SOA")
    except dns.resolver.NoAnswer:
        return True
    except dns.resolver.NXDOMAIN:
        return None
    except (dns.exception.DNSException, OSError):
        return False
    return True


async def can_vouch_absent(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[bool, str]:
    """Whether ``resolver``'s "``domain`` is absent" can be believed, and the parent zone it
    asked (for the caller's log line)."""
    parent = domain.partition(".")[2] or "."
    vouched = await zone_answers(resolver, parent)
    if vouched is None and parent != ".":
        vouched = await zone_answers(resolver, ".")
    return bool(vouched), parent
