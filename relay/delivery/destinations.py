"""Where mail for a recipient domain goes: the hosts a delivery connects to, or the Reply
that ends its attempt before any connection.

- A ``smarthost`` or ``static`` route: the route's own hosts.
- An ``mx`` route: the domain's MX hosts, best preference first, each host's A and AAAA
  addresses through the configured resolver (``relay.resolver``), at most MAX_ADDRESSES of
  them; a domain without MX records is its own mail host (RFC 5321 §5.1); a null MX
  (RFC 7505) accepts no mail.
- An address literal (``user@[192.0.2.1]``) is never looked up in DNS: a route with
  ``address_literals = true`` sends it to that IP (``mx``, on ``mx_port``) or to its hosts
  as usual (``smarthost``, ``static``). Through a route without it, and for a literal that
  is no host's address, the attempt fails soft (``550 5.4.4`` / ``550 5.1.3``, synthetic:
  our configuration, never "no such domain", which would suppress).

A DNS failure is a soft synthetic ``451 4.4.3`` naming the lookup; "no such domain" is
believed only when the resolver can vouch for it (``relay.resolver.can_vouch_absent``).

Each domain's resolved hosts are kept until the first of the records they came from
expires (their TTLs; a missing record or name by its negative TTL, RFC 2308; no longer
than ``relay.resolver``'s caps). Why: asking the resolver's own cache again for the MX and
two address records of every delivery took 13.5 % of the relay's samples in a profile of
bench/delivery_bench.py (BENCHMARKS.md, "Realistic delivery", session 13). A lookup that
failed is never kept: the next delivery asks again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.resolver
import structlog

from policies.addresses import is_address_literal
from policies.smtp_reply import Reply, domain_absent_reply, synthetic_reply
from relay.config import DeliveryConfig, RouteConfig
from relay.delivery.routing import literal_ip
from relay.errors import describe
from relay.resolver import MAX_NEGATIVE_TTL, can_vouch_absent, expiration_of, make_resolver

__all__ = ["Destination", "DestinationLookup"]

log = structlog.get_logger("relay.destinations")

# Names (with their record type) whose answers the resolver keeps, and domains whose
# resolved hosts this lookup keeps: a busy relay's destinations fit in either.
_DNS_CACHE_ENTRIES = 100_000
_DOMAIN_CACHE_ENTRIES = 100_000
# How many addresses one delivery attempt may try, best MX first, and how many MX hosts are
# looked up to find them: each address that does not answer holds a delivery slot for up to
# connect_timeout, and a domain may publish hundreds (Postfix: smtp_mx_address_limit = 5).
MAX_ADDRESSES = 5
MAX_MX_HOSTS = 10


@dataclass(frozen=True)
class Destination:
    host: str  # what we connect to: a name, or the MX host's address we resolved
    port: int
    tls: str = "opportunistic"
    username: str = ""
    password: str = ""
    server_name: str = ""  # the MX host name (TLS SNI, the record); "" when host is a name

    @property
    def name(self) -> str:
        return f"{self.server_name or self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A domain's mail hosts as DNS gave them: (address, MX host name) in the order they
    are tried, and when the first record they came from expires (``time.time()`` terms,
    as dnspython's)."""

    hosts: tuple[tuple[str, str], ...]
    expires: float


class DestinationLookup:
    """Finds a recipient domain's destinations on a route; owns the resolver and the
    per-domain cache of resolved hosts."""

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        now: Callable[[], float] = time.time,
        resolver: dns.asyncresolver.Resolver | None = None,
        cache_entries: int = _DOMAIN_CACHE_ENTRIES,
    ) -> None:
        self._resolver = resolver or make_resolver(
            config.nameservers,
            config.dns_port,
            config.connect_timeout.total_seconds(),
            cache_entries=_DNS_CACHE_ENTRIES,
        )
        self._now = now
        self._cache: dict[str, _Resolved] = {}
        self._cache_entries = cache_entries

    async def find(self, route: RouteConfig, domain: str) -> list[Destination] | Reply:
        """Where mail for ``domain`` goes on ``route``, or the Reply that ends the attempt."""
        if is_address_literal(domain):
            return _literal_destinations(route, domain)
        if route.mode != "mx":
            return _route_hosts(route)
        resolved = self._cache.get(domain)
        if resolved is None or resolved.expires <= self._now():
            found = await self._resolve(domain)
            if isinstance(found, Reply):
                return found
            resolved = found
            self._keep(domain, resolved)
        return [
            Destination(ip, route.mx_port, route.tls, server_name=host)
            for ip, host in resolved.hosts
        ]

    def _keep(self, domain: str, resolved: _Resolved) -> None:
        self._cache.pop(domain, None)
        if resolved.expires <= self._now():
            return  # nothing to keep: it would only take a live domain's place
        if len(self._cache) >= self._cache_entries:
            # The oldest entry goes (dicts keep insertion order): bounded memory, and a
            # domain still in use is looked up again at most once more.
            del self._cache[next(iter(self._cache))]
        self._cache[domain] = resolved

    async def _resolve(self, domain: str) -> _Resolved | Reply:
        try:
            answer = await self._resolver.resolve(domain, "MX", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return await self._absent(domain, "does not exist (NXDOMAIN)")
        except (dns.exception.DNSException, OSError) as exc:
            return synthetic_reply(
                451, "4.4.3", f"DNS: MX lookup for {domain} failed: {describe(exc)}"
            )
        if answer.rrset is None:
            # RFC 5321 §5.1: no MX -> the domain itself is the implicit MX (if it has A/AAAA).
            return await self._implicit_mx(domain, expiration_of(answer))
        records = sorted(answer.rrset, key=lambda r: r.preference)
        if len(records) == 1 and str(records[0].exchange) == ".":
            return synthetic_reply(
                556, "5.1.10", f"DNS: {domain} publishes a null MX (RFC 7505): it accepts no mail"
            )
        hosts = [str(r.exchange).rstrip(".") for r in records if str(r.exchange) != "."]
        found: list[tuple[str, str]] = []
        expires = expiration_of(answer)
        failure: Reply | None = None
        for host in hosts[:MAX_MX_HOSTS]:
            addresses = await self._addresses(host)
            if isinstance(addresses, Reply):
                failure = failure or addresses
                continue
            found += [(ip, host) for ip in addresses[0]]
            expires = min(expires, addresses[1])
            if len(found) >= MAX_ADDRESSES:
                break  # the hosts after these are never tried: their records do not matter
        if failure is not None:
            # Deliver to the hosts that resolved, but keep nothing: the one that failed is
            # asked again by the next delivery, not forgotten for the others' TTL.
            expires = 0.0
        if not found:
            return failure or synthetic_reply(
                451, "4.4.3", f"DNS: no address for any MX host of {domain}"
            )
        return _Resolved(tuple(found[:MAX_ADDRESSES]), expires)

    async def _addresses(self, host: str) -> tuple[list[str], float] | Reply:
        """A and AAAA of ``host`` through our resolver (the one the operator configured),
        and when the first of the two answers expires."""
        addresses: list[str] = []
        expires = float("inf")
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN as absent:
                # A host that does not exist (a dead backup MX is common) has no addresses
                # for as long as its negative answer lives.
                expires = min(expires, _nxdomain_expiration(absent))
                continue
            except (dns.exception.DNSException, OSError) as exc:
                return synthetic_reply(
                    451, "4.4.3", f"DNS: {rdtype} lookup for {host} failed: {describe(exc)}"
                )
            expires = min(expires, expiration_of(answer))
            if answer.rrset is not None:
                addresses += [r.to_text() for r in answer.rrset]
        return addresses, expires

    async def _implicit_mx(self, domain: str, mx_expires: float) -> _Resolved | Reply:
        """RFC 5321 §5.1: a domain without MX records is its own mail host."""
        addresses = await self._addresses(domain)
        if isinstance(addresses, Reply):
            return addresses
        if not addresses[0]:
            return await self._absent(domain, "has no MX and no address records")
        hosts = tuple((ip, domain) for ip in addresses[0][:MAX_ADDRESSES])
        return _Resolved(hosts, min(mx_expires, addresses[1]))

    async def _absent(self, domain: str, detail: str) -> Reply:
        """The reply for a domain our resolver says is absent, if the resolver can vouch
        for it (``relay.resolver``); otherwise a soft one: nothing is suppressed on the word
        of a resolver that says the parent zone is absent too."""
        vouched, parent = await can_vouch_absent(self._resolver, domain)
        if not vouched:
            log.warning(
                "upstream.resolver_unreliable",
                domain=domain,
                parent=parent,
                action="check the resolver ([delivery] nameservers, /etc/resolv.conf): it says "
                "the parent zone is absent too; nothing is suppressed on its word",
            )
            return synthetic_reply(
                451,
                "4.4.3",
                f"DNS: {domain} {detail}, but the resolver cannot vouch for it "
                f"({parent} does not answer either)",
            )
        return domain_absent_reply(domain, detail)


def _nxdomain_expiration(absent: dns.resolver.NXDOMAIN) -> float:
    """When an NXDOMAIN expires: its negative TTL (the SOA it carries, RFC 2308) from now,
    capped as every answer is; now (keep nothing) when the response cannot say. From the
    resolver's cache the TTL counts from now again, so a name looked up late in its
    cached life may be believed absent up to one TTL longer than the zone asked."""
    try:
        responses: dict[Any, dns.message.QueryMessage] = absent.responses()  # type: ignore[no-untyped-call]
        ttl: int = min(r.resolve_chaining().minimum_ttl for r in responses.values())
    except (dns.exception.DNSException, ValueError, AttributeError):
        return 0.0
    return time.time() + min(ttl, MAX_NEGATIVE_TTL)


def _route_hosts(route: RouteConfig) -> list[Destination]:
    return [Destination(h, p, route.tls, route.username, route.password) for h, p in route.hosts]


def _literal_destinations(route: RouteConfig, domain: str) -> list[Destination] | Reply:
    """Where a recipient at an address literal goes: never through DNS. Failures are
    synthetic 5xx the classifier reads as soft (our configuration, not the recipient's
    fault; never X.1.2, which would suppress the address as a domain that does not exist)."""
    if not route.address_literals:
        return synthetic_reply(
            550,
            "5.4.4",
            f"address literal {domain}: the route for it does not allow address literals "
            "(set address_literals = true on that [[routes]] entry to deliver to the IP)",
        )
    if route.mode != "mx":
        return _route_hosts(route)  # the literal is just a recipient the smarthost routes
    try:
        ip = literal_ip(domain)
    except ValueError as exc:
        return synthetic_reply(550, "5.1.3", f"address literal {domain} cannot be delivered: {exc}")
    return [Destination(str(ip), route.mx_port, route.tls)]
