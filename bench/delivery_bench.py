"""Realistic delivery: a backlog drained to 1,000 domains behind DNS, slow sinks, 4xx and TLS.

The relay runs with its shipped defaults (config.toml, relay/config_keys.py: `[delivery]
concurrency = 100`, `connections_per_destination = 10`, `messages_per_connection = 100`,
`[smtp] processes = "auto"`, log level info, the shipped retry schedule and its
greylisting rule) except what points it at the bench: an `mx` route whose `mx_port` is the
sinks' port, `[delivery] nameservers`/`dns_port` at bench/scripted_dns.py, a scratch
database, the admin listener on a free port. `--concurrency` and
`--connections-per-destination` override the two limits to explore.

- DNS (bench/scripted_dns.py, a process of its own): `d0000.bench.test` ... each have one
  MX, `mxNN.bench.test`, shared by --domains / --hosts domains, resolving to 127.0.1.1,
  127.0.1.2, ...
- Sinks (bench/latency_sink.py): one port on each of those addresses; every reply waits
  20-100 ms, 5 % of RCPTs get `451 4.7.1 try again later`, and with `--tls on` or
  `required` EHLO offers STARTTLS with a certificate from a CA made for the run
  (trustme). `on` is the shipped `tls = "opportunistic"` (STARTTLS when offered, the
  certificate not checked); `required` checks it (the CA is given to the relay through
  SSL_CERT_FILE).
- Backlog: the relay starts with `[delivery] enabled = false`, takes --messages messages
  by SMTP (one recipient each, spread over the domains, --clients sessions), and stops.
  Then it starts with delivery on and the drain is timed from its listener being up until
  no delivery is in flight or due: each one delivered, or deferred by a 4xx (greylisting:
  due again after 2 minutes, so a drain longer than that retries some of them too).

What it prints (one line, `delivery_bench key=value ...`): the drain's time and rate (and
the rate from 10 % to 90 % done, start and tail left out), connections the sinks saw per
message delivered, DNS queries per message, CPU per message delivered of the relay (all
its processes), PostgreSQL (all its processes), the sinks and the DNS server (from /proc,
over the drain), how busy the machine was, the relay's peak RSS, and `ceiling`: what
the delivery slots allow, slots / (round trips x the sinks' mean delay): 2 round trips a
message on a reused connection with PIPELINING (MAIL+RCPT+DATA together, then the end of
data), 4 without (`--no-pipelining`: the sinks do not offer it); `of_ceiling` is the rate
over it.

    python bench/delivery_bench.py --messages 100000 --domains 1000 --tls on
    python bench/delivery_bench.py --messages 500 --domains 50          # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import IO

import asyncpg
from support import DEFAULT_DSN, free_port, load, rss_mb, scratch_database, stop, wait_port

HERE = Path(__file__).resolve().parent
ZONE = "bench.test"
ADDRESS_BASE = "127.0.1.0"  # MX host k listens on 127.0.1.(k + 1)
TICKS = os.sysconf("SC_CLK_TCK")


# -- the processes around the relay ------------------------------------------------------------


@contextmanager
def helper(
    script: str, args: list[str], stats: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run bench/``script`` (it prints {"port": N} once it listens); (process, port). On the
    way out it is stopped, and writes its counters to ``stats``."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), *args, "--stats", str(stats)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{script} did not start")
        yield proc, int(json.loads(line)["port"])
    finally:
        stop(proc)  # type: ignore[arg-type]


def certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) PEM files: the sinks' certificate names every MX host."""
    import trustme  # a test dependency: the throwaway CA of the STARTTLS tests

    ca = trustme.CA()
    issued = ca.issue_cert(f"*.{ZONE}", ZONE)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    issued.cert_chain_pems[0].write_to_path(str(paths[1]))
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


def relay_config(
    args: argparse.Namespace, port: int, dsn: str, sink_port: int, dns_port: int, *, deliver: bool
) -> str:
    """The shipped config.toml, but for where things are (and the limits asked for)."""
    tls = {"off": "off", "on": "opportunistic", "required": "required"}[args.tls]
    processes = f"processes = {args.processes}\n" if args.processes else ""
    limits = "".join(
        f"{key} = {value}\n"
        for key, value in (
            ("concurrency", args.concurrency),
            ("connections_per_destination", args.connections_per_destination),
        )
        if value
    )
    return f"""
[smtp]
listen = "127.0.0.1:{port}"
hostname = "relay.bench.test"
allowed_clients = ["127.0.0.0/8", "::1/128"]
max_message_size = "35MB"
max_recipients = 1000
{processes}
[store]
dsn = "{dsn}"

[campaign]
header = "X-Campaign-ID"

[[pools]]
name = "default"
source_ips = ["127.0.0.1"]

[[routes]]
domains = ["*"]
mode = "mx"
pool = "default"
tls = "{tls}"
mx_port = {sink_port}

[retry]
schedule = ["5m", "15m", "1h", "4h", "12h"]
max_age = "3d"

[[retry.rules]]
name = "greylisting"
match = {{ category = ["greylisted"] }}
schedule = ["2m", "5m", "15m"]
max_attempts = 6

[policy]
suppress_on = "recipient"

[log]
level = "info"

[admin]
listen = "127.0.0.1:0"

[delivery]
enabled = {"true" if deliver else "false"}
nameservers = ["127.0.0.1"]
dns_port = {dns_port}
{limits}"""


@contextmanager
def relay(
    config: str, directory: Path, log: IO[bytes], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    path = directory / "relay.toml"
    path.write_text(config, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(path)],
        stderr=log,  # a line or two per delivery at info: kept off the terminal
        env={**os.environ, **env},
    )
    try:
        yield proc
    finally:
        stop(proc)


@contextmanager
def _log_file(path: Path) -> Iterator[IO[bytes]]:
    with path.open("wb") as log:
        yield log


# -- CPU from /proc -----------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str, int]]:
    """Every process: pid -> (parent pid, command name, user + system ticks)."""
    found: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), name, int(fields[11]) + int(fields[12]))
    return found


def _tree(root: int, table: dict[int, tuple[int, str, int]]) -> set[int]:
    pids, grew = {root}, True
    while grew:
        more = {pid for pid, (parent, _, _) in table.items() if parent in pids} - pids
        pids |= more
        grew = bool(more)
    return pids & set(table)


class CpuMeter:
    """CPU seconds of groups of processes (each root and its descendants) between ``start``
    and ``read``; a process born in between counts from its birth."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots
        self.before: dict[int, int] = {}
        self.machine_before = 0

    def start(self) -> None:
        self.before = {pid: ticks for pid, (_, _, ticks) in _processes().items()}
        self.machine_before = _machine_busy()

    def read(self, postgres: set[int]) -> tuple[dict[str, float], float]:
        """(CPU seconds per group, and of the ``postgres`` pids; the machine's busy CPU
        seconds, all cores and everyone's)."""
        table = _processes()
        groups = {
            name: set().union(*(_tree(r, table) for r in roots))
            for name, roots in self.roots.items()
        }
        groups["postgres"] = postgres & set(table)
        seconds = {
            name: sum(table[p][2] - self.before.get(p, 0) for p in pids) / TICKS
            for name, pids in groups.items()
        }
        return seconds, (_machine_busy() - self.machine_before) / TICKS


def _machine_busy() -> int:
    """Busy ticks of the whole machine (all cores, everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]


# -- the run -------------------------------------------------------------------------------------


async def _open(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """(in flight, queued and due, never tried yet)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM deliveries WHERE state = 'inflight') AS inflight,"
        " (SELECT count(*) FROM deliveries WHERE state = 'queued' AND next_attempt_at <= now())"
        " AS due,"
        " (SELECT count(*) FROM deliveries WHERE state IN ('queued', 'inflight')"
        " AND attempts = 0) AS untried"
    )
    assert row is not None
    return int(row["inflight"]), int(row["due"]), int(row["untried"])


async def inject(
    args: argparse.Namespace, tmp: Path, dsn: str, ports: tuple[int, int], log: IO[bytes]
) -> tuple[int, float]:
    """The backlog, by SMTP into a relay that does not deliver: (messages, messages/s)."""
    clients = min(args.clients, args.messages)
    messages = args.messages - args.messages % clients  # whole sessions

    def recipient(n: int, i: int) -> str:
        index = i * clients + n  # message index: the domains take turns
        return f"r{index}@d{index % args.domains:04d}.{ZONE}"

    port = free_port()
    config = relay_config(args, port, dsn, *ports, deliver=False)
    with relay(config, tmp, log, {}):
        await wait_port(port)
        rate = await load(port, clients, messages, args.size, recipient)
    return messages, rate


async def drain(
    args: argparse.Namespace,
    tmp: Path,
    dsn: str,
    ports: tuple[int, int],
    log: IO[bytes],
    env: dict[str, str],
    helpers: list[int],
) -> dict[str, float]:
    """Deliver the backlog; its timings, CPU, memory and what became of each delivery."""
    port = free_port()
    config = relay_config(args, port, dsn, *ports, deliver=True)
    conn = await asyncpg.connect(dsn)
    try:
        total = int(await conn.fetchval("SELECT count(*) FROM deliveries"))
        with relay(config, tmp, log, env) as proc:
            meter = CpuMeter({"relay": [proc.pid], "helpers": helpers})
            await wait_port(port)
            meter.start()
            own = time.process_time()  # this process alone (its polling), not its children
            started = time.perf_counter()
            peak = rss_mb(proc.pid)
            progress: list[tuple[float, int]] = []  # (seconds, deliveries with an outcome)
            first: dict[str, float] = {}  # at the end of the first pass
            deadline = started + args.timeout
            while True:
                inflight, due, untried = await _open(conn)
                now = time.perf_counter()
                peak = max(peak, rss_mb(proc.pid))
                if untried == 0 and not first:
                    # Every delivery tried once: what the slots and the cores did is read
                    # here, before the wait for the retries (idle, mostly) dilutes it.
                    cpu, busy = meter.read(await _postgres_pids(conn))
                    first = {
                        "first_seconds": now - started,
                        "attempts": int(
                            await conn.fetchval("SELECT sum(attempts) FROM deliveries")
                        ),
                        "busy": busy,
                        "cpu_bench": time.process_time() - own,
                        **{f"cpu_{name}": value for name, value in cpu.items()},
                    }
                # Untried and not due: held by a guardrail's canary (the shipped defaults),
                # due again the moment the canary's replies are judged.
                if inflight == 0 and due == 0 and untried == 0:
                    break
                if now > deadline:
                    raise SystemExit(
                        f"not drained after {args.timeout:.0f} s: {inflight} in flight, {due} due"
                    )
                progress.append((now - started, total - untried))
                await asyncio.sleep(args.poll)
            seconds = time.perf_counter() - started
            peak = max(peak, rss_mb(proc.pid))
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,"
            " count(*) FILTER (WHERE state = 'queued') AS deferred,"
            " count(*) FILTER (WHERE state = 'bounced') AS bounced,"
            " count(*) FILTER (WHERE state NOT IN ('delivered', 'queued', 'bounced')) AS other,"
            " coalesce(sum(attempts), 0) AS attempts FROM deliveries"
        )
        assert row is not None
        # The campaign's guardrail (shipped defaults: a canary, then watched): how it ended.
        guards = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'paused') AS paused,"
            " count(*) FILTER (WHERE state = 'open') AS open FROM guardrails"
        )
        assert guards is not None
    finally:
        await conn.close()
    return {
        **first,
        "total": total,
        "seconds": seconds,
        "steady": _steady_rate(progress, total),
        "delivered": int(row["delivered"]),
        "deferred": int(row["deferred"]),
        "bounced": int(row["bounced"]),
        "other": int(row["other"]),
        "guardrails_paused": int(guards["paused"]),
        "guardrails_open": int(guards["open"]),
        "all_attempts": int(row["attempts"]),
        "rss_peak": peak,
    }


def _steady_rate(progress: list[tuple[float, int]], total: int) -> float:
    """First attempts per second between 10 % and 90 % of them (0: too few samples)."""
    low = next((p for p in progress if p[1] >= total * 0.1), None)
    high = next((p for p in progress if p[1] >= total * 0.9), None)
    if low is None or high is None or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


async def _postgres_pids(conn: asyncpg.Connection) -> set[int]:
    """PostgreSQL's processes that work for this run: the backends on its database and the
    server's own (WAL writer, checkpointer, ...), not other databases' backends (other
    work on a shared server), nor this bench's own backend: its progress polls count the
    deliveries every second, which is no work of the relay's."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE (datname = current_database() OR backend_type <> 'client backend')"
        " AND pid <> pg_backend_pid()"
    )
    return {int(r["pid"]) for r in rows}


async def run(args: argparse.Namespace) -> str:
    """The whole bench; its output line."""
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="delivery-bench-")))
        log = stack.enter_context(_log_file(Path(args.log or tmp / "relay.log")))
        tls_args: list[str] = []
        env: dict[str, str] = {}
        if args.tls != "off":
            ca, cert, key = certificate(tmp)
            tls_args = ["--cert", str(cert), "--key", str(key)]
            if args.tls == "required":
                env["SSL_CERT_FILE"] = str(ca)  # ssl's default context trusts the CA then
        dns_args = [
            "--domains", str(args.domains), "--hosts", str(args.hosts), "--zone", ZONE,
            "--address-base", ADDRESS_BASE,
        ]  # fmt: skip
        dns, dns_port = stack.enter_context(helper("scripted_dns.py", dns_args, tmp / "dns.json"))
        sink_args = [
            "--hosts", str(args.hosts), "--address-base", ADDRESS_BASE,
            "--processes", str(args.sink_processes),
            "--min-delay", str(args.min_delay), "--max-delay", str(args.max_delay),
            "--tempfail", str(args.tempfail), "--unknown", str(args.unknown), *tls_args,
            "--pipelining" if args.pipelining else "--no-pipelining",
        ]  # fmt: skip
        sinks: list[subprocess.Popen[str]] = []
        sink_port = 0
        for index in range(args.sink_processes):
            seed = [] if args.seed is None else ["--seed", str(args.seed + index)]
            sink, sink_port = stack.enter_context(
                helper(
                    "latency_sink.py",
                    [*sink_args, "--index", str(index), "--port", str(sink_port), *seed],
                    tmp / f"sink{index}.json",
                )
            )
            sinks.append(sink)
        dsn = await stack.enter_async_context(scratch_database(args.dsn))
        ports = (sink_port, dns_port)
        messages, inject_rate = await inject(args, tmp, dsn, ports, log)
        helpers = [dns.pid, *(s.pid for s in sinks)]
        result = await drain(args, tmp, dsn, ports, log, env, helpers)
        # Stopped now, the helpers write their counters.
        for proc in (*sinks, dns):
            stop(proc)  # type: ignore[arg-type]
        sink = _summed(tmp / f"sink{i}.json" for i in range(args.sink_processes))
        dns_counts = _summed([tmp / "dns.json"])
    return _line(args, messages, inject_rate, result, sink, dns_counts)


def _summed(paths: Iterable[Path]) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in paths:
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            total[key] = total.get(key, 0) + int(value)
    return total


def _line(
    args: argparse.Namespace,
    messages: int,
    inject_rate: float,
    r: dict[str, float],
    sink: dict[str, int],
    dns: dict[str, int],
) -> str:
    processes = args.processes or os.cpu_count() or 1
    concurrency = args.concurrency or 100  # the shipped default (relay/config_keys.py)
    per_destination = args.connections_per_destination or 10
    delivered = max(1, int(r["delivered"]))
    slots = processes * concurrency
    round_trips = 2 if args.pipelining else 4
    ceiling = slots / (round_trips * (args.min_delay + args.max_delay) / 2)
    first_seconds = r["first_seconds"]
    attempts = max(1, int(r["attempts"]))  # by the end of the first pass

    def per_attempt(seconds: float) -> str:
        return f"{seconds * 1000 / attempts:.3f}"

    ours = r["cpu_relay"] + r["cpu_postgres"] + r["cpu_helpers"]
    cores = os.cpu_count() or 1
    # What the cores would carry if the run had them to itself: the delivery slots' limit is
    # the bound when it is the lower of the two.
    cpu_capacity = cores * attempts / ours if ours else float("inf")
    fields = {
        "messages": messages,
        "domains": args.domains,
        "hosts": args.hosts,
        "tls": args.tls,
        "pipelining": "on" if args.pipelining else "off",
        "processes": processes,
        "concurrency": concurrency,
        "connections_per_destination": per_destination,
        "inject_msgs_per_sec": f"{inject_rate:.0f}",
        "first_pass_seconds": f"{first_seconds:.1f}",
        "drain_seconds": f"{r['seconds']:.1f}",
        "delivered": int(r["delivered"]),
        "deferred_4xx": int(r["deferred"]),
        "bounced_5xx": int(r["bounced"]),
        "other_final": int(r["other"]),
        "guardrails_open": int(r["guardrails_open"]),
        "guardrails_paused": int(r["guardrails_paused"]),
        "attempts": int(r["all_attempts"]),
        "attempts_per_sec": f"{attempts / first_seconds:.0f}",
        "steady_per_sec": f"{r['steady']:.0f}",
        "ceiling_per_sec": f"{ceiling:.0f}",
        "of_ceiling": f"{r['steady'] / ceiling:.2f}",
        "sink_messages": sink.get("messages", 0),
        "sink_rcpt_4xx": sink.get("rcpt_4xx", 0),
        "sink_rcpt_5xx": sink.get("rcpt_5xx", 0),
        "connections": sink.get("connections", 0),
        "connections_per_msg": f"{sink.get('connections', 0) / delivered:.4f}",
        "tls_handshakes": sink.get("tls_handshakes", 0),
        "dns_queries_per_msg": f"{dns.get('queries', 0) / delivered:.2f}",
        "relay_cpu_ms_per_attempt": per_attempt(r["cpu_relay"]),
        "postgres_cpu_ms_per_attempt": per_attempt(r["cpu_postgres"]),
        "helpers_cpu_ms_per_attempt": per_attempt(r["cpu_helpers"]),
        "cpu_capacity_per_sec": f"{cpu_capacity:.0f}",
        "bound": "concurrency" if ceiling < cpu_capacity else "cpu",
        "machine_busy_cores": f"{r['busy'] / first_seconds:.2f}",
        "others_busy_cores": f"{max(0.0, r['busy'] - ours - r['cpu_bench']) / first_seconds:.2f}",
        "cores": cores,
        "rss_mb_peak": f"{r['rss_peak']:.0f}",
    }
    return "delivery_bench " + " ".join(f"{k}={v}" for k, v in fields.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="a server to make a database on")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=50, help="MX hosts the domains share")
    parser.add_argument("--tls", choices=("off", "on", "required"), default="on")
    parser.add_argument("--concurrency", type=int, default=0, help="0: the shipped default")
    parser.add_argument(
        "--connections-per-destination", type=int, default=0, help="0: the shipped default"
    )
    parser.add_argument("--processes", type=int, default=0, help='0: the shipped "auto"')
    parser.add_argument("--clients", type=int, default=50, help="SMTP sessions injecting")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sink-processes", type=int, default=1)
    parser.add_argument("--min-delay", type=float, default=0.020)
    parser.add_argument("--max-delay", type=float, default=0.100)
    parser.add_argument("--tempfail", type=float, default=0.05)
    parser.add_argument(
        "--unknown",
        type=float,
        default=0.0,
        help="share of addresses the sinks refuse with 550 5.1.1 (a list this stale)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--pipelining",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sinks offer PIPELINING, as the big providers' servers do (default: on)",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    parser.add_argument("--timeout", type=float, default=3600, help="give up on the drain")
    parser.add_argument("--log", default="", help="keep the relay's log (stderr) in this file")
    args = parser.parse_args()
    print(asyncio.run(run(args)), flush=True)


if __name__ == "__main__":
    main()
