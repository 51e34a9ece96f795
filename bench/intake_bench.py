"""Intake throughput: messages/s accepted (durably) with 1 and 50 concurrent clients.

Starts `bounce-relay serve` as a subprocess (delivery off, so only the intake
is measured) against the PostgreSQL named by --dsn / $BOUNCE_RELAY_TEST_DSN,
in a fresh database it creates and drops. In the same run it measures a bare
aiosmtpd sink that stores nothing, so the result is also reported as a ratio
against that baseline (absolute numbers drift from run to run).

    python bench/intake_bench.py --messages 2000 --clients 1,50
"""

from __future__ import annotations

import argparse
import asyncio

from support import (
    DEFAULT_DSN,
    free_port,
    load,
    relay_process,
    scratch_database,
    sink_process,
    wait_port,
)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--processes", type=int, default=0, help="[smtp] processes (0: auto)")
    args = parser.parse_args()
    relay_port, sink_port = free_port(), free_port()
    processes = f"processes = {args.processes}\n" if args.processes else ""
    async with scratch_database(args.dsn) as dsn:
        config = (
            f'[smtp]\nlisten = "127.0.0.1:{relay_port}"\nhostname = "bench"\n{processes}'
            f'[store]\ndsn = "{dsn}"\npool_max_size = 10\n'
            '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n'
            '[log]\nlevel = "warning"\n'
        )
        with relay_process(config), sink_process(sink_port):
            await wait_port(relay_port)
            await wait_port(sink_port)
            for clients in (int(c) for c in args.clients.split(",")):
                base = await load(sink_port, clients, args.messages, args.size)
                ours = await load(relay_port, clients, args.messages, args.size)
                print(
                    f"intake_bench clients={clients} size={args.size} messages={args.messages} "
                    f"relay_msgs_per_sec={ours:.0f} bare_sink_msgs_per_sec={base:.0f} "
                    f"ratio={ours / base:.2f}"
                )


if __name__ == "__main__":
    asyncio.run(main())
