"""A scripted DNS server on loopback UDP (dnspython wire format) for MX route tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Self

import dns.message
import dns.rcode
import dns.rrset


class ScriptedDNS(asyncio.DatagramProtocol):
    """Answers from ``records[(name, type)] = [rdata, ...]`` with TTL ``ttls[(name, type)]``
    (60 s unless set); names in ``nxdomain`` get NXDOMAIN, names in ``servfail`` SERVFAIL;
    anything else NOERROR, empty. An empty answer or an NXDOMAIN carries an SOA whose minimum
    is ``negative_ttl`` in its authority section when that is set (RFC 2308's negative
    TTL). ``queries`` counts the questions asked, per (name, type)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.ttls: dict[tuple[str, str], int] = {}
        self.negative_ttl: int | None = None
        self.queries: Counter[tuple[str, str]] = Counter()
        self.nxdomain: set[str] = set()
        self.servfail: set[str] = set()
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = 60) -> None:
        key = (name.rstrip(".").lower(), rdtype)
        self.records[key] = list(rdatas)
        self.ttls[key] = ttl

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._add_soa(response)
        elif (name, rdtype) in self.records:
            response.answer.append(
                dns.rrset.from_text(
                    question.name,
                    self.ttls[(name, rdtype)],
                    "IN",
                    rdtype,
                    *self.records[(name, rdtype)],
                )
            )
        else:
            self._add_soa(response)
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)

    def _add_soa(self, response: dns.message.Message) -> None:
        """The negative answer's SOA (RFC 2308), when ``negative_ttl`` is set."""
        if self.negative_ttl is not None:
            soa = f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}"
            response.authority.append(dns.rrset.from_text("test.", 3600, "IN", "SOA", soa))

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._transport is not None:
            self._transport.close()
