"""Relays on several hosts sharing one database: does throughput add up?

One invocation measures one relay and two relays, interleaved over ``--rounds`` rounds
(medians), on the same PostgreSQL (a fresh database each run, dropped afterwards). Each
relay is one process (``[smtp] processes = 1``) on its own loopback address, 127.0.0.2 and
127.0.0.3, standing in for a machine: its SMTP listener, admin listener and source IP are
there. Each relay is given the same load (``--messages`` over ``--clients`` sessions), so
two relays carry twice the messages; the sink is Postfix's smtp-sink where installed (else
a bare aiosmtpd).

Two rates per run: accepted (every message has its 250, so durably queued) and delivered
(every delivery final: taken by the sink and recorded), each the messages over the time
from the first connection. The ratio of the two-relay rate to the one-relay rate is what
"adds up" means: 2.0 would be perfect scaling.

Be careful reading it on a small machine: here the relays, PostgreSQL, the load generator
and the sink all share the same cores (``cores=`` in the output). On 2 cores a second
relay process can use the second core only as far as the others leave it free, so the
ratio cannot reach 2; on real hosts each relay brings its own CPU and only the database is
shared.

    python bench/multi_host_bench.py --messages 2000 --clients 10 --rounds 3

``--data-delay 1`` makes the sink wait a second before it answers each message's data, as a
slow upstream does: each relay's deliveries are then bounded by its own connection limit
(``connections_per_destination = 100`` here: about 100 messages a second), not by the
shared cores, and the delivered ratio shows whether the shared database lets two relays
carry twice the deliveries (claims that do not wait on each other, one outcome each):

    python bench/multi_host_bench.py --messages 2000 --clients 10 --rounds 3 --data-delay 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import asyncpg
from support import (
    DEFAULT_DSN,
    body_of,
    free_port,
    free_port_on,
    scratch_database,
    sink_process,
    stop,
    wait_listening,
)

HOSTS = ("127.0.0.2", "127.0.0.3")


def _config(host: str, port: int, sink_port: int, dsn: str) -> str:
    # As bench/relay-config.sh's tuned profile (wide delivery limits, logs at warning), one
    # process per host.
    return f"""
[smtp]
listen = "{host}:{port}"
hostname = "relay-{host}.bench"
processes = 1
max_recipients = 1000
[store]
dsn = "{dsn}"
pool_max_size = 20
[[pools]]
name = "default"
source_ips = ["{host}"]
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{sink_port}"]
tls = "off"
[delivery]
concurrency = 200
connections_per_destination = 100
messages_per_connection = 100000
[shaping]
connections = 200
[admin]
listen = "{host}:0"
[log]
level = "warning"
"""


async def _load(host: str, port: int, clients: int, messages: int, body: bytes, tag: str) -> None:
    per_client = messages // clients

    async def one(n: int) -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
        await client.connect()
        for i in range(per_client):
            await client.sendmail("bench@example.com", [f"r{tag}.{n}.{i}@example.org"], body)
        await client.quit()

    await asyncio.gather(*(one(n) for n in range(clients)))


async def _wait_delivered(dsn: str, total: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < deadline:
            final = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE state NOT IN ('queued', 'inflight')"
            )
            if final >= total:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise SystemExit(f"not every delivery was final after {timeout:.0f} s")


async def _run(
    server_dsn: str, relays: int, sink_port: int, messages: int, clients: int, size: int
) -> tuple[float, float]:
    """(accepted/s, delivered/s) with ``relays`` relays, each given ``messages``."""
    body = body_of(size)
    async with scratch_database(server_dsn) as dsn:
        with tempfile.TemporaryDirectory() as tmp:
            procs: list[subprocess.Popen[bytes]] = []
            listeners = []
            try:
                for host in HOSTS[:relays]:
                    port = free_port_on(host)
                    path = Path(tmp) / f"{host}.toml"
                    path.write_text(_config(host, port, sink_port, dsn), encoding="utf-8")
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "relay", "serve", "--config", str(path)]
                        )
                    )
                    # One at a time: the first migrates the new database.
                    await wait_listening(host, port)
                    listeners.append((host, port))
                total = messages * relays
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        _load(host, port, clients, messages, body, tag=str(i))
                        for i, (host, port) in enumerate(listeners)
                    )
                )
                accepted = time.perf_counter() - started
                await _wait_delivered(dsn, total)
                delivered = time.perf_counter() - started
            finally:
                for proc in procs:
                    stop(proc)
    return total / accepted, total / delivered


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="a server to make databases on")
    parser.add_argument("--messages", type=int, default=2000, help="messages per relay")
    parser.add_argument("--clients", type=int, default=10, help="SMTP sessions per relay")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each, interleaved; medians reported"
    )
    parser.add_argument(
        "--data-delay",
        type=int,
        default=0,
        help="whole seconds the sink waits before answering each message (a slow upstream)",
    )
    args = parser.parse_args()
    sink_port = free_port()
    cores = os.cpu_count()
    rates: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with sink_process(sink_port, data_delay=args.data_delay):
        await wait_listening("127.0.0.1", sink_port)
        for round_ in range(args.rounds):
            # Interleaved, the order turned each round: a machine busy for a while weighs
            # on both.
            for relays in (1, 2) if round_ % 2 == 0 else (2, 1):
                rates[relays].append(
                    await _run(args.dsn, relays, sink_port, args.messages, args.clients, args.size)
                )
    medians = {
        n: tuple(statistics.median(r[i] for r in runs) for i in (0, 1)) for n, runs in rates.items()
    }
    for relays, (accepted, delivered) in medians.items():
        print(
            f"multi_host_bench relays={relays} cores={cores} rounds={args.rounds} "
            f"messages={args.messages * relays} clients_per_relay={args.clients} "
            f"size={args.size} data_delay={args.data_delay} "
            f"accepted_msgs_per_sec={accepted:.0f} "
            f"delivered_msgs_per_sec={delivered:.0f}"
        )
    print(
        f"multi_host_bench ratio cores={cores} data_delay={args.data_delay} "
        f"accepted={medians[2][0] / medians[1][0]:.2f} "
        f"delivered={medians[2][1] / medians[1][1]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
