"""PROXY protocol (v1 and v2) from the load balancers in ``[smtp] proxy_protocol_from``.

aiosmtpd reads the header (``proxy_protocol_timeout``, before the greeting); this module
decides who must send one and who the client then is:

- a connection from a listed proxy must start with a PROXY header; a missing, malformed or
  unusable one closes it before the greeting;
- the header's source address is the client from then on: ``allowed_clients``, the logs
  and the stored ``client_address`` see it, never the proxy's own address;
- v1 ``UNKNOWN`` and v2 ``LOCAL`` (a proxy's health check) mean the connection is the
  proxy's own, as the protocol says: the client is the proxy;
- anyone else's PROXY header is an SMTP command like any other, refused with 421 (see
  ``relay.intake.RelaySMTP.smtp_PROXY``), and never honoured.
"""

from __future__ import annotations

import ipaddress

from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, ProxyData

__all__ = ["HEADER_TIMEOUT_SECONDS", "Networks", "UnusableHeader", "client_behind", "is_listed"]

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

# A proxy sends its header with the connection; waiting long only holds a slot.
HEADER_TIMEOUT_SECONDS = 10.0


class UnusableHeader(ValueError):
    """A well-formed header the relay does not honour (UDP, a unix socket, no address)."""


def is_listed(peer: object, proxies: Networks) -> bool:
    """Whether the connection ``peer`` (a peername tuple) comes from a listed proxy."""
    if not proxies or not isinstance(peer, tuple) or not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in proxies)


def client_behind(data: ProxyData) -> tuple[str, int] | None:
    """The client's (address, port) a valid header names; None when the connection is
    the proxy's own (v1 UNKNOWN, v2 LOCAL). Raises ``UnusableHeader`` for the rest."""
    if data.version == 2 and data.command == V2_CMD.LOCAL:
        return None
    if data.version == 1 and data.protocol == PROTO.UNSPEC:
        return None
    if data.protocol != PROTO.STREAM or data.family not in (AF.INET, AF.INET6):
        raise UnusableHeader(f"not TCP over IPv4/IPv6 (family {data.family}, {data.protocol})")
    if data.src_addr is None or data.src_port is None:
        raise UnusableHeader("no source address")
    return str(data.src_addr), int(data.src_port)
