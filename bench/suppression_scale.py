"""The RCPT suppression check with a huge list: throughput and RCPT latency.

Two scratch databases, one with an empty suppression list and one with
--suppressed addresses (10 million by default; loaded with generate_series),
each behind its own `bounce-relay serve` (delivery off). The same load goes
through both, interleaved --rounds times: messages/s with --clients sessions;
then one session each times every RCPT's round trip (p50, p99). The recipients are
never suppressed (the common case: the check must say "no" fast); a sample
of suppressed ones is checked to be refused.

    python bench/suppression_scale.py                       # 10M addresses
    python bench/suppression_scale.py --suppressed 10000 --messages 200   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiosmtplib
import asyncpg
from support import (
    DEFAULT_DSN,
    free_port,
    load,
    percentile,
    relay_process,
    scratch_database,
    wait_port,
)


def _config(port: int, dsn: str) -> str:
    return (
        f'[smtp]\nlisten = "127.0.0.1:{port}"\nhostname = "bench"\n'
        f'[store]\ndsn = "{dsn}"\n'
        '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n[log]\nlevel = "warning"\n'
    )


async def _fill(dsn: str, count: int) -> float:
    """Suppress s<n>@list.example.org for n < count; seconds it took."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT 1 FROM suppressions LIMIT 1")  # migrated by the relay
        step = 1_000_000
        for low in range(0, count, step):
            await conn.execute(
                "INSERT INTO suppressions (address, reason, source) "
                "SELECT 's' || n || '@list.example.org', 'bench', 'import' "
                "FROM generate_series($1::bigint, $2::bigint) AS n",
                low,
                min(count, low + step) - 1,
            )
        await conn.execute("ANALYZE suppressions")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _refused(port: int, address: str) -> bool:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    await client.mail("bench@example.com")
    try:
        await client.rcpt(address)
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code == 550
    finally:
        await client.quit()
    return False


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--suppressed", type=int, default=10_000_000)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    empty_port, full_port = free_port(), free_port()
    async with scratch_database(args.dsn) as empty_dsn, scratch_database(args.dsn) as full_dsn:
        with (
            relay_process(_config(empty_port, empty_dsn)),
            relay_process(_config(full_port, full_dsn)),
        ):
            await wait_port(empty_port)
            await wait_port(full_port)
            fill_seconds = await _fill(full_dsn, args.suppressed)
            assert await _refused(full_port, f"s{args.suppressed - 1}@list.example.org")
            rates: dict[str, list[float]] = {"empty": [], "full": []}
            latencies: dict[str, list[float]] = {"empty": [], "full": []}
            for r in range(args.rounds):
                for name, port in (("empty", empty_port), ("full", full_port)):
                    rates[name].append(
                        await load(
                            port,
                            args.clients,
                            args.messages,
                            2048,
                            recipient=lambda n, i, r=r: f"ok{r}.{n}.{i}@example.org",
                        )
                    )
            # Latency on its own: one session, so queueing behind 49 others on two cores
            # does not hide what the lookup costs.
            for name, port in (("empty", empty_port), ("full", full_port)):
                await load(
                    port,
                    1,
                    min(args.messages, 1000),
                    2048,
                    recipient=lambda n, i: f"lat.{n}.{i}@example.org",
                    rcpt_seconds=latencies[name],
                )
    empty, full = statistics.median(rates["empty"]), statistics.median(rates["full"])
    ms = {k: (percentile(v, 50) * 1000, percentile(v, 99) * 1000) for k, v in latencies.items()}
    print(
        f"suppression_scale suppressed={args.suppressed} load_seconds={fill_seconds:.0f} "
        f"clients={args.clients} empty_msgs_per_sec={empty:.0f} full_msgs_per_sec={full:.0f} "
        f"ratio={full / empty:.2f} "
        f"rcpt_p50_ms_empty={ms['empty'][0]:.2f} rcpt_p99_ms_empty={ms['empty'][1]:.2f} "
        f"rcpt_p50_ms_full={ms['full'][0]:.2f} rcpt_p99_ms_full={ms['full'][1]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
