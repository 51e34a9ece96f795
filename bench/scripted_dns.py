"""A DNS server for the delivery benchmark: many domains, a few shared MX hosts, on UDP.

Domain ``d{n:04d}.{zone}`` (n below ``--domains``) has one MX, ``mx{k:02d}.{zone}`` with
k = n modulo ``--hosts``, and host k has the A record ``--address-base`` + k + 1 (127.0.1.1,
127.0.1.2, ...): 1,000 domains on 50 hosts, as big
providers host many domains each. AAAA is answered empty (NOERROR, no record), anything
else NXDOMAIN, the zone itself an SOA (the relay asks the parent zone before it believes
an NXDOMAIN). Every TTL is 300 s; an empty answer or an NXDOMAIN carries the zone's SOA
in its authority section, as RFC 2308 asks of an authoritative server, so it is kept for
the SOA's minimum, 60 s.

It runs as a process of its own so that answering costs the relay's event loop nothing.
Each distinct question is answered once through dnspython and its answer kept (without
its 2-byte ID); every later copy of the question is answered from that, with the query's
ID: a few microseconds of Python per query, so the server is never what the bench
measures. The keys are the query's bytes after its ID, so a question dnspython asks with
EDNS gets an answer with EDNS, exactly as the first time. At most ``_MAX_CACHED`` answers
are kept.

    python bench/scripted_dns.py --domains 1000 --hosts 50 --stats /tmp/dns.json

prints ``{"port": N}`` on its first line once it answers; on SIGTERM it writes its
counters (queries) to ``--stats`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

_MAX_CACHED = 100_000
_TTL = 300


def mx_host(index: int, zone: str) -> str:
    return f"mx{index:02d}.{zone}"


def domain_name(index: int, zone: str) -> str:
    return f"d{index:04d}.{zone}"


def host_address(index: int, base: str) -> str:
    """The loopback address of MX host ``index``: ``base`` + ``index`` + 1 (127.0.1.1 for the
    first with the default base)."""
    return str(ipaddress.ip_address(base) + index + 1)


class Zone:
    """What the server knows: MX per domain, A per MX host."""

    def __init__(self, zone: str, domains: int, hosts: int, address_base: str) -> None:
        self.zone = zone.rstrip(".").lower()
        self.mx = {domain_name(n, self.zone): mx_host(n % hosts, self.zone) for n in range(domains)}
        self.a = {mx_host(k, self.zone): host_address(k, address_base) for k in range(hosts)}
        self._soa = f"ns.{self.zone}. hostmaster.{self.zone}. 1 3600 600 86400 60"

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = question.rdtype
        if name in self.mx:
            if rdtype == dns.rdatatype.MX:
                exchange = f"10 {self.mx[name]}."
                response.answer.append(
                    dns.rrset.from_text(question.name, _TTL, "IN", "MX", exchange)
                )
        elif name in self.a:
            if rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text(question.name, _TTL, "IN", "A", self.a[name])
                )
        elif name == self.zone:
            if rdtype == dns.rdatatype.SOA:
                response.answer.append(
                    dns.rrset.from_text(question.name, _TTL, "IN", "SOA", self._soa)
                )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if not response.answer:
            zone = dns.name.from_text(self.zone)
            response.authority.append(dns.rrset.from_text(zone, _TTL, "IN", "SOA", self._soa))
        return response


class Server(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries = 0
        self.parsed = 0
        self._answers: dict[bytes, bytes] = {}
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        self.queries += 1
        key = data[2:]
        cached = self._answers.get(key)
        if cached is None:
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                return
            self.parsed += 1
            wire = self.zone.answer(query).to_wire()
            cached = wire[2:]
            if len(self._answers) < _MAX_CACHED:
                self._answers[key] = cached
        assert self._transport is not None
        self._transport.sendto(data[:2] + cached, addr)


async def serve(args: argparse.Namespace) -> dict[str, int]:
    """Answer until SIGTERM; the counters."""
    loop = asyncio.get_running_loop()
    server = Server(Zone(args.zone, args.domains, args.hosts, args.address_base))
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=(args.listen, args.port)
    )
    port = transport.get_extra_info("sockname")[1]
    print(json.dumps({"port": port}), flush=True)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    transport.close()
    return {"queries": server.queries, "parsed": server.parsed}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--zone", default="bench.test")
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=50, help="MX hosts the domains share")
    parser.add_argument(
        "--address-base", default="127.0.1.0", help="MX host k resolves to this + k + 1"
    )
    parser.add_argument("--stats", default="", help="write the counters here on SIGTERM")
    args = parser.parse_args(argv)
    counts = asyncio.run(serve(args))
    if args.stats:
        Path(args.stats).write_text(json.dumps(counts), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
