"""Where one session's time goes: each SMTP step timed, through the relay and the bare proxy.

One client on a raw socket (no library in the way) sends --messages messages in one session
and times every step: MAIL, RCPT, DATA (the 354), and the data to its 250. The targets are
`bounce-relay serve` (delivery on, a scratch database) and the peer benchmark's bare
aiosmtpd -> aiosmtplib proxy, both in front of the same sink, taken in turns --rounds times.
Medians per step, then the ratio of the per-message totals (the issue's single-session
target is relay <= 2 x proxy).

    python bench/session_latency.py                          # 2,000 messages, 3 rounds
    python bench/session_latency.py --messages 50 --rounds 1 # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from support import (
    DEFAULT_DSN,
    body_of,
    free_port,
    relay_process,
    scratch_database,
    sink_process,
    stop,
    wait_port,
)

STEPS = ("mail", "rcpt", "data", "body")
PEER_BENCH_DIR = os.environ.get(
    "PEER_BENCH_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "bench")
)
PROXY = Path(PEER_BENCH_DIR) / "baseline_relay.py"


def _session(port: int, messages: int, size: int) -> dict[str, list[float]]:
    """Seconds per step of each message, in one session."""
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as replies:

        def reply() -> bytes:
            while True:
                line = replies.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        sock.sendall(b"EHLO bench.test\r\n")
        reply()
        data = body_of(size) + b".\r\n"
        for n in range(messages):
            commands = (
                b"MAIL FROM:<bench@example.com>\r\n",
                b"RCPT TO:<r%d@example.org>\r\n" % n,
                b"DATA\r\n",
                data,
            )
            for step, command in zip(STEPS, commands, strict=True):
                started = time.perf_counter()
                sock.sendall(command)
                line = reply()
                times[step].append(time.perf_counter() - started)
                if line[:1] not in b"23":
                    raise SystemExit(f"{step} refused: {line!r}")
        sock.sendall(b"QUIT\r\n")
    return times


@contextlib.contextmanager
def _proxy(port: int, sink_port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            *(sys.executable, str(PROXY), "--mode", "sync", "--uvloop"),
            *("--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{sink_port}"),
        ]
    )
    try:
        yield proc
    finally:
        stop(proc)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not PROXY.exists():
        raise SystemExit(f"session_latency: no bare proxy at {PROXY} (set PEER_BENCH_DIR)")
    relay_port, proxy_port, sink_port = free_port(), free_port(), free_port()
    warmup = max(10, args.messages // 10)
    results: dict[str, dict[str, list[float]]] = {
        "relay": {s: [] for s in STEPS},
        "proxy": {s: [] for s in STEPS},
    }
    async with scratch_database(args.dsn) as dsn:
        config = (
            f'[smtp]\nlisten = "127.0.0.1:{relay_port}"\nhostname = "bench"\n'
            f'[store]\ndsn = "{dsn}"\n'
            '[[routes]]\ndomains = ["*"]\nmode = "static"\n'
            f'hosts = ["127.0.0.1:{sink_port}"]\ntls = "off"\n'
            '[admin]\nlisten = "127.0.0.1:0"\n[log]\nlevel = "warning"\n'
        )
        with (
            sink_process(sink_port),
            relay_process(config),
            _proxy(proxy_port, sink_port),
        ):
            for port in (relay_port, proxy_port, sink_port):
                await wait_port(port)
            for _ in range(args.rounds):
                for target, port in (("relay", relay_port), ("proxy", proxy_port)):
                    times = await asyncio.to_thread(
                        _session, port, args.messages + warmup, args.size
                    )
                    for step in STEPS:
                        results[target][step] += times[step][warmup:]
    ms = {
        target: {step: statistics.median(v) * 1000 for step, v in steps.items()}
        for target, steps in results.items()
    }
    totals = {target: sum(steps.values()) for target, steps in ms.items()}
    fields = " ".join(
        f"{target}_{step}_ms={ms[target][step]:.3f}" for target in ms for step in STEPS
    )
    print(
        f"session_latency messages={args.messages} rounds={args.rounds} size={args.size} "
        f"relay_ms={totals['relay']:.3f} proxy_ms={totals['proxy']:.3f} "
        f"relay_vs_proxy={totals['relay'] / totals['proxy']:.2f} {fields}"
    )


if __name__ == "__main__":
    asyncio.run(main())
