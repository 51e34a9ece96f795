"""Shaping shared by the cluster: do relays on one database settle at an upstream's limits?

The issue's target: three relay processes against a scripted upstream that enforces 20
connections and 600 messages a minute per source IP settle, within ten minutes, within 10%
of those limits, with under 1% 4xx afterwards.

- Upstream: bench/limiting_sink.py, in this process on 127.0.0.1 (``--connections``,
  ``--per-minute``, ``--data-delay``), counting per source IP and per second.
- Relays: ``--relays`` processes (``bounce-relay serve``, ``[smtp] processes = 1``), relay
  i on 127.0.0.(2 + i) for SMTP and admin, standing in for machines; all on one scratch
  database (dropped at the end), all sending from the SAME pool of ``--source-ips`` K
  addresses 127.0.0.10 ... 127.0.0.(9 + K), so the upstream sees K sources shared by the
  cluster. Their config is the shipped one (as bench/relay-config.sh's shipped profile: a
  static route to the sink, TLS off, the admin listener on a free port) except logs at
  warning and ``[retry] schedule = ["1m"]``, so a deferred message is tried again a minute
  later (the shipped first step is 5 minutes) and the backlog stays in play. ``[shaping]``
  is config.toml's, read from it; ``--no-shaping`` adds ``enabled = false``: the
  comparison row. A relay that does not know ``[shaping]`` yet (an older checkout) is run
  without the table and labelled ``shaping=unsupported``: the baseline.
- Backlog: ``--messages`` sent over SMTP, spread over the relays (``--clients`` sessions
  each), one recipient each, no X-Campaign-ID (guardrails hold campaigns' mail behind
  their canary, which is not what this measures). Delivery starts as the first message is
  queued; the clock starts with the load.
- Observation: ``--minutes`` from the load's start. A row per minute and source IP: the
  messages the sink accepted, the most connections it saw open at once, the 421s (refused
  connections) and 451s (refused messages) it answered and their share of attempts
  (accepted + 421 + 451), and the backlog (queued or in flight) at the minute's end.

Verdict: the target per minute and source IP is ``--per-minute``, or what
``--connections`` allows with ``--data-delay`` (connections x 60 / delay) when less. A
minute's rate has settled when every source IP's accepted messages are within 10% of the
target (a shorter last row: of its share of it). The sink's own cap holds the rate there
while it refuses most attempts, so the rate alone is not the test: reported are the first
minute from which every later minute's rate has settled (and the 4xx share from it on), and
the first minute, from that one on, after which the 4xx share is under 1% too: the
cluster has settled (``pass``) when there is one. A backlog that ran out makes a short
minute that shaping did not cause: the output says so.

The output ends with one JSON line (``{"bench": "shaping_bench", ...}``) holding all of it.

    python bench/shaping_bench.py                                  # the issue's run, 10 min
    python bench/shaping_bench.py --no-shaping                     # the comparison row
    python bench/shaping_bench.py --minutes 0.5 --messages 200 --per-minute 120 \\
        --connections 4                                            # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from limiting_sink import Bucket, LimitingSink
from support import (
    DEFAULT_DSN,
    free_port_on,
    load_on,
    scratch_database,
    stop_all,
    wait_listening,
)

RELAY_BASE = ipaddress.ip_address("127.0.0.2")  # relay i listens on this + i
SOURCE_BASE = ipaddress.ip_address("127.0.0.10")  # source IP k of the shared pool
SINK_HOST = "127.0.0.1"
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"
SETTLED_WITHIN = 0.10  # of the target
MAX_4XX_SHARE = 0.01  # after settling
# No campaign header: see the module docstring.
BODY_HEAD = b"From: bench@example.com\r\nSubject: shaping bench\r\n\r\n"


def body_of(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return BODY_HEAD + line * max(1, (size - len(BODY_HEAD)) // len(line))


def relay_config(
    host: str,
    smtp_port: int,
    sink_port: int,
    dsn: str,
    source_ips: list[str],
    shaping_table: str,
) -> str:
    """The shipped config.toml, but for where things are, one process, logs at warning and a
    one-minute retry (module docstring)."""
    pool = ", ".join(f'"{ip}"' for ip in source_ips)
    return f"""
[smtp]
listen = "{host}:{smtp_port}"
hostname = "relay-{host}.bench.test"
allowed_clients = ["127.0.0.0/8", "::1/128"]
max_message_size = "35MB"
max_recipients = 1000
processes = 1

[store]
dsn = "{dsn}"

[campaign]
header = "X-Campaign-ID"

[[pools]]
name = "default"
source_ips = [{pool}]

[[routes]]
domains = ["*"]
mode = "static"
hosts = ["{SINK_HOST}:{sink_port}"]
pool = "default"
tls = "off"

[retry]
schedule = ["1m"]
max_age = "3d"

[[retry.rules]]
name = "greylisting"
match = {{ category = ["greylisted"] }}
schedule = ["2m", "5m", "15m"]
max_attempts = 6

[policy]
suppress_on = "recipient"

[recipients]
typo = "refuse"
no_mail_domain = "off"
lookup_timeout = "2s"

[guardrails]
canary_size = 100
bounce_pause = 0.10
complaint_pause = 0.003

[log]
level = "warning"

[admin]
listen = "{host}:0"
{shaping_table}"""


def shipped_shaping_table(*, enabled: bool, connections: int = 0) -> str:
    """config.toml's ``[shaping]`` keys, with ``enabled`` as asked and ``connections`` (the
    ceiling) when given. Its ``[[shaping.groups]]`` are left out: none is shipped."""
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text(encoding="utf-8")).get("shaping", {})
    keys = {key: value for key, value in shipped.items() if not isinstance(value, list | dict)}
    keys["enabled"] = enabled
    if connections:
        keys["connections"] = connections
    # JSON's true/false, numbers and quoted strings are TOML's too.
    lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n[shaping]\n" + "\n".join(lines) + "\n"


def relay_knows_shaping(config: str, directory: Path) -> bool:
    """Whether the relay's config loader takes a ``[shaping]`` table (before the shaping
    code landed it is an unknown key). Any other complaint about ``config`` stops the bench."""
    path = directory / "check-shaping.toml"
    path.write_text(config + "\n[shaping]\nenabled = true\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return True
    errors = [line.strip() for line in result.stderr.splitlines()[1:] if line.strip()]
    if errors and all(line.startswith("shaping") for line in errors):
        return False
    raise SystemExit(f"the bench's relay config does not load:\n{result.stderr}")


class BenchClock:
    """The sink's clock: seconds since the load started (``rebase``), so that its per-second
    buckets line up with the bench's minutes."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def rebase(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.origin


@dataclass
class Minute:
    """One row of the table: a minute (or the shorter last part of one) of the sink's view."""

    minute: int
    seconds: float
    per_ip: dict[str, Bucket]
    backlog: int = 0  # deliveries queued or in flight at its end
    delivered: int = 0  # deliveries the relays recorded delivered by its end
    settled: bool = False

    def refusals(self, ip: str) -> int:
        counters = self.per_ip[ip]
        return counters.refused_connections + counters.refused_messages

    def attempts(self, ip: str) -> int:
        return self.per_ip[ip].accepted + self.refusals(ip)


@dataclass
class Verdict:
    """The issue's test. The rate alone does not show settling: the sink's own cap holds
    the accepted messages at the limit while it refuses most attempts, so a minute counts
    as settled when the rate has held from it on AND the 4xx share from it on is under 1%."""

    target_per_minute: float
    # The first minute from which every later minute's accepted messages, for every source
    # IP, are within 10% of the target; and the 4xx share of attempts from it on.
    rate_settled_from_minute: int | None
    share_4xx_after_rate_settled: float | None
    # The first minute from that one on after which the 4xx share is under 1% too: the
    # cluster has settled. None: it has not (the test fails).
    settled_from_minute: int | None
    share_4xx_after: float | None
    backlog_ran_out: bool

    @property
    def passed(self) -> bool:
        return self.settled_from_minute is not None


def target_per_minute(per_minute: int, connections: int, data_delay: float) -> float:
    """What one source IP can have accepted a minute: the rate limit, or what the connection
    limit allows when every message holds a connection ``data_delay`` seconds."""
    if data_delay > 0:
        return min(float(per_minute), connections * 60 / data_delay)
    return float(per_minute)


def minutes_of(
    sink: LimitingSink, source_ips: list[str], duration: float, bucket_seconds: float
) -> list[Minute]:
    """The sink's buckets summed into minutes from 0 (the load's start) to ``duration``
    seconds; what came later (while the relays stopped) is left out."""
    rows = [
        Minute(m, min(60.0, duration - 60 * m), {ip: Bucket() for ip in source_ips})
        for m in range(math.ceil(duration / 60))
    ]
    for ip, buckets in sink.buckets.items():
        for key, counters in buckets.items():
            start = key * bucket_seconds
            if not 0 <= start < duration:
                continue
            total = rows[int(start // 60)].per_ip.setdefault(ip, Bucket())
            total.opened += counters.opened
            total.refused_connections += counters.refused_connections
            total.max_open = max(total.max_open, counters.max_open)
            total.accepted += counters.accepted
            total.refused_messages += counters.refused_messages
    return rows


def judge(rows: list[Minute], target: float) -> Verdict:
    """Mark each row settled or not; the first minute from which every row is, and the 4xx
    share from it on."""
    for row in rows:
        expected = target * row.seconds / 60
        row.settled = all(
            abs(counters.accepted - expected) <= SETTLED_WITHIN * expected
            for counters in row.per_ip.values()
        )
    rate_from = None
    for row in reversed(rows):
        if not row.settled:
            break
        rate_from = row.minute
    settled_from = None
    if rate_from is not None:
        settled_from = next(
            (m for m in range(rate_from, len(rows)) if _share_4xx(rows[m:]) < MAX_4XX_SHARE),
            None,
        )
    return Verdict(
        target_per_minute=target,
        rate_settled_from_minute=rate_from,
        share_4xx_after_rate_settled=None if rate_from is None else _share_4xx(rows[rate_from:]),
        settled_from_minute=settled_from,
        share_4xx_after=None if settled_from is None else _share_4xx(rows[settled_from:]),
        backlog_ran_out=any(row.backlog == 0 for row in rows),
    )


def _share_4xx(rows: list[Minute]) -> float:
    """421s and 451s over attempts (accepted + 421 + 451), every source IP of ``rows``."""
    refusals = sum(row.refusals(ip) for row in rows for ip in row.per_ip)
    attempts = sum(row.attempts(ip) for row in rows for ip in row.per_ip)
    return refusals / attempts if attempts else 0.0


def print_table(rows: list[Minute], target: float) -> None:
    print(
        f"{'minute':>6} {'source_ip':<15} {'accepted':>8} {'of_target':>9} {'max_conn':>8} "
        f"{'conn_421':>8} {'msg_451':>8} {'4xx_share':>9} {'backlog':>8} {'settled':>7}"
    )
    for row in rows:
        expected = target * row.seconds / 60
        for ip, counters in sorted(row.per_ip.items()):
            attempts = row.attempts(ip)
            share = row.refusals(ip) / attempts if attempts else 0.0
            label = f"{row.minute}" if row.seconds >= 60 else f"{row.minute}({row.seconds:.0f}s)"
            print(
                f"{label:>6} {ip:<15} {counters.accepted:>8} "
                f"{counters.accepted / expected:>9.2f} {counters.max_open:>8} "
                f"{counters.refused_connections:>8} {counters.refused_messages:>8} "
                f"{share:>9.1%} {row.backlog:>8} {'yes' if row.settled else 'no':>7}"
            )


async def queue_counts(dsn: str) -> tuple[int, int]:
    """(deliveries queued or in flight, deliveries delivered)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state IN ('queued', 'inflight')) AS open,"
            " count(*) FILTER (WHERE state = 'delivered') AS delivered FROM deliveries"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["open"]), int(row["delivered"])


def recipients_of(relay: int) -> Callable[[int, int], str]:
    """Addresses unique over the whole backlog: relay, loading session, message."""
    return lambda session, i: f"r{relay}.{session}.{i}@example.org"


def relay_failure(procs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> str | None:
    """What a relay that exited said last, if one did."""
    for host, proc, log in procs:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            return f"the relay on {host} exited ({proc.returncode}):\n{tail}"
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    relay_hosts = [str(RELAY_BASE + i) for i in range(args.relays)]
    source_ips = [str(SOURCE_BASE + k) for k in range(args.source_ips)]
    target = target_per_minute(args.per_minute, args.connections, args.data_delay)
    duration = args.minutes * 60
    needed = target * args.minutes * args.source_ips
    if args.messages < needed * 1.1:
        print(
            f"shaping_bench: warning: {args.messages} messages may run out before the end "
            f"({needed:.0f} are needed at the target); give --messages more",
            file=sys.stderr,
        )
    clock = BenchClock()
    bucket_seconds = 1.0
    sink = LimitingSink(
        SINK_HOST,
        0,
        connections=args.connections,
        per_minute=args.per_minute,
        data_delay=args.data_delay,
        clock=clock,
        bucket_seconds=bucket_seconds,
    )
    sink_port = await sink.start()
    body = body_of(args.size)
    rows: list[Minute] = []
    shaping, load_seconds = "unknown", 0.0
    try:
        async with scratch_database(args.dsn) as dsn:
            with tempfile.TemporaryDirectory() as tmp:
                directory = Path(tmp)
                first = relay_config(relay_hosts[0], 25, sink_port, dsn, source_ips, "")
                if not relay_knows_shaping(first, directory):
                    shaping, table = "unsupported", ""  # the relay predates [shaping]
                else:
                    shaping = "off" if args.no_shaping else "on"
                    table = shipped_shaping_table(
                        enabled=not args.no_shaping, connections=args.ceiling_connections
                    )
                procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
                listeners: list[tuple[str, int]] = []
                try:
                    for host in relay_hosts:
                        port = free_port_on(host)
                        path = directory / f"relay-{host}.toml"
                        path.write_text(
                            relay_config(host, port, sink_port, dsn, source_ips, table),
                            encoding="utf-8",
                        )
                        log = directory / f"relay-{host}.log"
                        with log.open("wb") as stderr:
                            proc = subprocess.Popen(
                                [sys.executable, "-m", "relay", "serve", "--config", str(path)],
                                stderr=stderr,
                            )
                        procs.append((host, proc, log))
                        # One at a time: the first migrates the new database.
                        try:
                            await wait_listening(host, port)
                        except SystemExit as silent:
                            raise SystemExit(relay_failure(procs) or str(silent)) from None
                        listeners.append((host, port))
                    rows, load_seconds = await observe(
                        args, sink, clock, dsn, listeners, procs, body, duration
                    )
                finally:
                    await asyncio.to_thread(stop_all, [proc for _, proc, _ in procs])
    finally:
        await sink.close()
    rows = merge_counts(minutes_of(sink, source_ips, duration, bucket_seconds), rows)
    verdict = judge(rows, target)
    print(
        f"shaping_bench relays={args.relays} source_ips={args.source_ips} "
        f"connections={args.connections} per_minute={args.per_minute} "
        f"data_delay={args.data_delay:g} messages={args.messages} minutes={args.minutes:g} "
        f"shaping={shaping} target_per_minute={target:.0f} load_seconds={load_seconds:.1f}"
    )
    print_table(rows, target)
    print(
        f"verdict rate_settled_from_minute={_minute(verdict.rate_settled_from_minute)} "
        f"share_4xx_after_it={_percent(verdict.share_4xx_after_rate_settled)} "
        f"settled_from_minute={_minute(verdict.settled_from_minute)} "
        f"share_4xx_after={_percent(verdict.share_4xx_after)} "
        f"pass={'yes' if verdict.passed else 'no'}"
        + (
            " (the backlog ran out: a short minute is not shaping's doing)"
            if verdict.backlog_ran_out
            else ""
        )
    )
    return {
        "bench": "shaping_bench",
        "relays": args.relays,
        "source_ips": source_ips,
        "connections": args.connections,
        "per_minute": args.per_minute,
        "data_delay": args.data_delay,
        "messages": args.messages,
        "minutes": args.minutes,
        "shaping": shaping,
        "load_seconds": round(load_seconds, 1),
        "rows": [
            {
                "minute": row.minute,
                "seconds": row.seconds,
                "backlog": row.backlog,
                "delivered": row.delivered,
                "settled": row.settled,
                "per_ip": {ip: asdict(counters) for ip, counters in row.per_ip.items()},
            }
            for row in rows
        ],
        **asdict(verdict),
        "passed": verdict.passed,
    }


def _minute(minute: int | None) -> str:
    return "never" if minute is None else str(minute)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.2%}"


async def observe(
    args: argparse.Namespace,
    sink: LimitingSink,
    clock: BenchClock,
    dsn: str,
    listeners: list[tuple[str, int]],
    procs: list[tuple[str, subprocess.Popen[bytes], Path]],
    body: bytes,
    duration: float,
) -> tuple[list[Minute], float]:
    """Load the backlog and watch for ``duration`` seconds from the load's start; a row per
    minute holding the queue's counts at its end (the sink's counters are added later), and
    how long the load took."""
    if any(sink.buckets.values()):
        raise SystemExit("the sink saw traffic before the load: nothing should have sent")
    clock.rebase()
    started = time.monotonic()
    share = [args.messages // len(listeners)] * len(listeners)
    share[0] += args.messages % len(listeners)
    loading = asyncio.gather(
        *(
            load_on(
                host,
                port,
                args.clients,
                count,
                body,
                recipient=recipients_of(relay),
            )
            for relay, ((host, port), count) in enumerate(zip(listeners, share, strict=True))
        )
    )
    load_seconds = 0.0

    def loaded(_: object) -> None:
        nonlocal load_seconds
        load_seconds = time.monotonic() - started

    loading.add_done_callback(loaded)
    rows: list[Minute] = []
    ends = [min(60.0 * (m + 1), duration) for m in range(math.ceil(duration / 60))]
    try:
        for minute, end in enumerate(ends):
            while clock() < end:
                sink.tick()
                failure = relay_failure(procs)
                if failure:
                    raise SystemExit(failure)
                if loading.done() and loading.exception() is not None:
                    raise SystemExit(f"loading the backlog failed: {loading.exception()!r}")
                await asyncio.sleep(min(1.0, max(0.0, end - clock())))
            backlog, delivered = await queue_counts(dsn)
            rows.append(Minute(minute, end - 60 * minute, {}, backlog, delivered))
        if not loading.done():
            raise SystemExit("the backlog was still loading at the end: give --minutes more")
        await loading
    finally:
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
    return rows, load_seconds


def merge_counts(rows: list[Minute], queue_rows: list[Minute]) -> list[Minute]:
    """The sink's rows with the queue's counts at each minute's end."""
    for row, counted in zip(rows, queue_rows, strict=False):
        row.backlog, row.delivered = counted.backlog, counted.delivered
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="a server to make databases on")
    parser.add_argument("--relays", type=int, default=3, help="relay processes (1-8)")
    parser.add_argument(
        "--source-ips", type=int, default=1, help="addresses in the pool the relays share"
    )
    parser.add_argument("--connections", type=int, default=20, help="sink: per source IP")
    parser.add_argument("--per-minute", type=int, default=600, help="sink: per source IP")
    parser.add_argument(
        "--data-delay", type=float, default=0.0, help="sink: seconds before answering the data"
    )
    parser.add_argument("--messages", type=int, default=12000, help="the backlog")
    parser.add_argument("--clients", type=int, default=8, help="SMTP sessions per relay to load")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--minutes", type=float, default=10.0, help="observed from the load")
    parser.add_argument(
        "--no-shaping", action="store_true", help="[shaping] enabled = false: the comparison"
    )
    parser.add_argument(
        "--ceiling-connections",
        type=int,
        default=0,
        help="[shaping] connections (0: config.toml's): above the sink's, the limit is learned",
    )
    args = parser.parse_args()
    if not 1 <= args.relays <= 8:
        parser.error("--relays is 1 to 8 (relays sit on 127.0.0.2-9, below the source IPs)")
    if not 1 <= args.source_ips <= 200:
        parser.error("--source-ips is 1 to 200")
    if args.minutes <= 0 or args.messages < args.relays * args.clients:
        parser.error("--minutes must be positive and --messages at least relays x clients")
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
