"""What the [recipients] checks cost RCPT: latency with them on and off, in one run.

Three `bounce-relay serve` processes on one scratch database (delivery off): `off` (both
checks off), `typo` (the defaults: `typo = "refuse"`, no DNS) and `dns` (`typo` and
`no_mail_domain = "refuse"` on an MX route: every new domain is looked up). A scripted DNS
server on loopback (a process of its own) answers an MX for every domain. One client on a
raw socket per relay times each RCPT (MAIL and RSET around it are not timed), taking the
relays in turns, RCPT by RCPT:

- cold: every RCPT names a domain not seen before, so the checking relay asks DNS each time
  (MX over loopback UDP: the least a lookup costs; a real resolver adds its own time, bounded
  by `lookup_timeout`);
- warm: the same domains again, answered from the cache.

p50 and p99 of each, and each p99's difference from `off` (the issue's target: at most
2 ms).

    python bench/rcpt_typo_bench.py                 # 5,000 RCPTs per phase and relay
    python bench/rcpt_typo_bench.py --rcpts 300     # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from pathlib import Path

from support import DEFAULT_DSN, free_port, percentile, relay_process, scratch_database, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.dns_server import ScriptedDNS

CONFIG = """
[smtp]
listen = "127.0.0.1:{port}"
hostname = "bench.test"
max_recipients = 100
max_rsets = 1000000
[store]
dsn = "{dsn}"
[delivery]
enabled = false
nameservers = ["127.0.0.1"]
dns_port = {dns_port}
[recipients]
typo = "{typo}"
no_mail_domain = "{no_mail_domain}"
[admin]
listen = "127.0.0.1:{admin_port}"
[log]
level = "warning"
"""


class Session:
    """One SMTP session on a raw socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.replies = self.sock.makefile("rb")
        self.reply()
        self.ask(b"EHLO bench.test\r\n")

    def reply(self) -> bytes:
        while True:
            line = self.replies.readline()
            if line[3:4] != b"-":
                return line

    def ask(self, command: bytes) -> bytes:
        self.sock.sendall(command)
        return self.reply()

    def rcpt_seconds(self, recipient: str) -> float:
        """Seconds from sending RCPT to its reply (MAIL before it, RSET after)."""
        self.ask(b"MAIL FROM:<bench@example.com>\r\n")
        started = time.perf_counter()
        line = self.ask(b"RCPT TO:<%s>\r\n" % recipient.encode())
        took = time.perf_counter() - started
        if not line.startswith(b"250"):
            raise SystemExit(f"RCPT {recipient} refused: {line!r}")
        self.ask(b"RSET\r\n")
        return took

    def close(self) -> None:
        self.ask(b"QUIT\r\n")
        self.sock.close()


MODES = {"off": ("off", "off"), "typo": ("refuse", "off"), "dns": ("refuse", "refuse")}


def serve_dns(domains: int, port: multiprocessing.SimpleQueue[int]) -> None:
    """The scripted DNS server, in a process of its own (no GIL shared with the client)."""

    async def run() -> None:
        dns = ScriptedDNS()
        for n in range(domains):
            dns.add(f"d{n}.example", "MX", "10 mx.example.")
        async with dns:
            port.put(dns.port)
            await asyncio.Event().wait()

    asyncio.run(run())


def measure(ports: dict[str, int], rcpts: int) -> dict[str, dict[str, list[float]]]:
    sessions = {mode: Session(port) for mode, port in ports.items()}
    times: dict[str, dict[str, list[float]]] = {p: {m: [] for m in ports} for p in ("cold", "warm")}
    for phase in ("cold", "warm"):
        for n in range(rcpts):
            for mode, session in sessions.items():  # in turns, RCPT by RCPT
                times[phase][mode].append(session.rcpt_seconds(f"r{n}@d{n}.example"))
    for session in sessions.values():
        session.close()
    return times


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rcpts", type=int, default=5000, help="RCPTs per phase and relay")
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    args = parser.parse_args(argv)

    dns_port: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    dns = multiprocessing.Process(target=serve_dns, args=(args.rcpts, dns_port), daemon=True)
    dns.start()
    port_of_dns = dns_port.get()
    ports = {mode: free_port() for mode in MODES}
    try:
        async with scratch_database(args.dsn) as dsn:
            configs = [
                CONFIG.format(
                    port=ports[mode],
                    dsn=dsn,
                    dns_port=port_of_dns,
                    typo=typo,
                    no_mail_domain=no_mail_domain,
                    admin_port=free_port(),
                )
                for mode, (typo, no_mail_domain) in MODES.items()
            ]
            with relay_process(configs[0]), relay_process(configs[1]), relay_process(configs[2]):
                for port in ports.values():
                    await wait_port(port)
                times = await asyncio.to_thread(measure, ports, args.rcpts)
    finally:
        dns.terminate()
        dns.join(5)

    print(f"RCPT latency, {args.rcpts} RCPTs per phase and relay, in turns (ms)")
    print(f"{'phase':6} {'check':6} {'p50':>7} {'p99':>7}")
    for phase, by_mode in times.items():
        for mode, values in by_mode.items():
            p50, p99 = (percentile(values, p) * 1000 for p in (50, 99))
            print(f"{phase:6} {mode:6} {p50:7.3f} {p99:7.3f}")
        for mode in ("typo", "dns"):
            difference = (percentile(by_mode[mode], 99) - percentile(by_mode["off"], 99)) * 1000
            print(f"{phase:6} p99 {mode} - off: {difference:+.3f} ms (target <= 2 ms)")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
