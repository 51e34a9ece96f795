"""Whether a recipient domain can receive mail, by DNS, for the RCPT check ([recipients]
no_mail_domain): cached, bounded, and never a reason to refuse on a DNS fault.

The judgement is delivery's (``relay.delivery.upstream``): MX first; no MX records means
the domain is its own mail host if it has an A or AAAA record (RFC 5321 §5.1); a single
``0 .`` MX is a null MX (RFC 7505): the domain says it takes no mail. A domain is absent
(NXDOMAIN, or no MX and no address) only when the resolver can vouch for it: its parent
zone (or, when that is absent too, the root) must answer. A resolver that says NXDOMAIN
for everything (misconfigured, hijacked, no outside DNS) would otherwise refuse every
recipient. Anything else -- a timeout, SERVFAIL, a refused query, a parent that cannot be
asked -- is ``UNKNOWN``, and the recipient is accepted: delivery will ask again.

Answers are kept ``cache_ttl`` (found or not; an ``UNKNOWN`` 30 seconds at most, so that
a resolver that is down costs one lookup per domain and half-minute, not one per RCPT) in
an LRU of ``cache_size`` domains. Concurrent RCPTs for one domain share one lookup. A
lookup that takes longer than ``timeout`` answers ``UNKNOWN`` to the RCPT that waits; it
goes on to fill the cache for the next one (the resolver gives up at the same time).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.resolver
import structlog

from relay.resolver import can_vouch_absent, make_resolver

__all__ = ["DomainCheck", "DomainState", "DomainStatus"]

log = structlog.get_logger("relay.intake")

# The longest an answer that could not be had is kept: long enough that a resolver that is
# down is not asked again by every RCPT, short enough that it is soon asked again.
UNKNOWN_TTL_SECONDS = 30.0


class DomainState(StrEnum):
    ACCEPTS_MAIL = "accepts_mail"  # an MX, or an address as its implicit MX
    NO_SUCH_DOMAIN = "no_such_domain"  # NXDOMAIN, vouched for
    NO_MAIL_HOSTS = "no_mail_hosts"  # no MX, no A, no AAAA, vouched for
    NULL_MX = "null_mx"  # RFC 7505: it says it accepts no mail
    UNKNOWN = "unknown"  # the resolver could not tell (timeout, SERVFAIL, ...): accept


@dataclass(frozen=True)
class DomainStatus:
    state: DomainState
    detail: str = ""  # what the resolver said, for the log

    @property
    def receives_no_mail(self) -> bool:
        return self.state in (
            DomainState.NO_SUCH_DOMAIN,
            DomainState.NO_MAIL_HOSTS,
            DomainState.NULL_MX,
        )


_UNKNOWN_TIMEOUT = DomainStatus(DomainState.UNKNOWN, "no answer within the lookup timeout")


class DomainCheck:
    """Cached MX/A/AAAA judgement of recipient domains through the configured resolver."""

    def __init__(
        self,
        *,
        nameservers: tuple[str, ...] = (),
        dns_port: int = 0,
        timeout: float = 2.0,
        cache_size: int = 10000,
        cache_ttl: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # The servers delivery asks (relay.resolver); every query of one check (MX, A, AAAA,
        # the parent's SOA) ends within ``timeout``. Its answers are cached below, as
        # judgements.
        self._resolver = make_resolver(nameservers, dns_port, timeout)
        self.timeout = timeout
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[float, DomainStatus]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[DomainStatus]] = {}
        self.lookups = 0  # lookups started (not answered from the cache): tests, the bench

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cached(self, domain: str) -> DomainStatus | None:
        """The kept answer for ``domain`` (an A-label, lower case), or None."""
        entry = self._cache.get(domain)
        if entry is None:
            return None
        expires, status = entry
        if self._monotonic() >= expires:
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return status

    async def status(self, domain: str) -> DomainStatus:
        """Whether ``domain`` can receive mail; ``UNKNOWN`` after ``timeout`` at most."""
        status = self.cached(domain)
        if status is not None:
            return status
        task = self._inflight.get(domain)
        if task is None:
            self.lookups += 1
            task = asyncio.create_task(self._look_up(domain), name=f"domain-check {domain}")
            self._inflight[domain] = task
        try:
            # shield: one RCPT that gives up (its session ends) does not end the others' lookup
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            return _UNKNOWN_TIMEOUT

    async def _look_up(self, domain: str) -> DomainStatus:
        try:
            status = await self._judge(domain)
        except (dns.exception.DNSException, OSError) as exc:
            status = DomainStatus(DomainState.UNKNOWN, _describe(exc))
        finally:
            self._inflight.pop(domain, None)
        self._keep(domain, status)
        return status

    def _keep(self, domain: str, status: DomainStatus) -> None:
        ttl = self._cache_ttl
        if status.state is DomainState.UNKNOWN:
            ttl = min(ttl, UNKNOWN_TTL_SECONDS)
        self._cache[domain] = (self._monotonic() + ttl, status)
        self._cache.move_to_end(domain)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _judge(self, domain: str) -> DomainStatus:
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return await self._absent(domain, DomainState.NO_SUCH_DOMAIN, "NXDOMAIN")
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        records = list(answer)
        if len(records) == 1 and str(records[0].exchange) == ".":
            return DomainStatus(DomainState.NULL_MX, "a null MX (RFC 7505)")
        # MX hosts are not resolved here: a host without an address is delivery's to judge
        # (and retry), not a reason to refuse at RCPT.
        return DomainStatus(DomainState.ACCEPTS_MAIL, f"{len(records)} MX record(s)")

    async def _implicit_mx(self, domain: str) -> DomainStatus:
        """RFC 5321 §5.1: without MX records, an A or AAAA record makes the domain its own
        mail host."""
        for rdtype in ("A", "AAAA"):
            try:
                await self._resolver.resolve(domain, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            return DomainStatus(DomainState.ACCEPTS_MAIL, f"no MX; an {rdtype} record")
        return await self._absent(domain, DomainState.NO_MAIL_HOSTS, "no MX, A or AAAA record")

    async def _absent(self, domain: str, state: DomainState, detail: str) -> DomainStatus:
        """``state`` if the resolver can vouch for it (``relay.resolver``)."""
        vouched, parent = await can_vouch_absent(self._resolver, domain)
        if not vouched:
            log.warning(
                "intake.resolver_unreliable",
                domain=domain,
                parent=parent,
                action="accepted the recipient; check the resolver ([delivery] nameservers, "
                "/etc/resolv.conf): it says the parent zone is absent too",
            )
            return DomainStatus(DomainState.UNKNOWN, f"{detail}, but {parent} does not answer")
        return DomainStatus(state, detail)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
