"""A large backlog while the upstream is down: memory stays flat, and it drains when the
upstream returns.

--messages messages (100,000 by default) are committed straight into a scratch database
through the store (as intake would, in batches), while `bounce-relay serve` delivers
to a port where nothing listens: every delivery fails (a synthetic soft bounce) and
waits for its next attempt. The relay's RSS (all its processes) is sampled all along.
Then a sink starts, every deferred delivery is made due (what the retry schedule
would do later) and the drain is timed until all are delivered.

    python bench/backlog.py                         # 100,000 messages
    python bench/backlog.py --messages 500          # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import asyncpg
from support import (
    DEFAULT_DSN,
    body_of,
    free_port,
    relay_process,
    rss_mb,
    scratch_database,
    sink_name,
    sink_process,
    wait_port,
)

from relay.clock import utc_now
from relay.store import IncomingMessage, Recipient, create_store


async def _count(conn: asyncpg.Connection, where: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM deliveries WHERE {where}"))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    relay_port, sink_port = free_port(), free_port()
    async with scratch_database(args.dsn) as dsn:
        config = (
            f'[smtp]\nlisten = "127.0.0.1:{relay_port}"\nhostname = "bench"\n'
            f'[store]\ndsn = "{dsn}"\npool_max_size = 20\n'
            '[[routes]]\ndomains = ["*"]\nmode = "static"\n'
            f'hosts = ["127.0.0.1:{sink_port}"]\ntls = "off"\n'
            '[retry]\nschedule = ["1h"]\nmax_age = "3d"\n'
            "[delivery]\nconcurrency = 200\nconnections_per_destination = 100\n"
            'connect_timeout = "2s"\n'
            "[shaping]\nconnections = 200\n"
            '[admin]\nlisten = "127.0.0.1:0"\n[log]\nlevel = "warning"\n'
        )
        with relay_process(config) as relay:
            await wait_port(relay_port)
            peak = rss_mb(relay.pid)
            store = await create_store(dsn, min_size=1, max_size=4)
            conn = await asyncpg.connect(dsn)
            body = body_of(2048)
            started = time.perf_counter()
            for low in range(0, args.messages, 1000):
                batch = [
                    IncomingMessage(
                        queue_id=secrets.token_hex(8).upper(),
                        envelope_sender="bench@example.com",
                        recipients=(
                            Recipient(f"r{n}@example.org", f"r{n}@example.org", "example.org"),
                        ),
                        body=body,
                        from_domain="example.com",
                        message_id=None,
                        campaign="backlog",
                        client_address="127.0.0.1",
                        session_id="bench",
                        smtputf8=False,
                    )
                    for n in range(low, min(args.messages, low + 1000))
                ]
                await store.accept_messages(utc_now(), batch)
                peak = max(peak, rss_mb(relay.pid))
            # Upstream down: wait until every delivery has failed once and is deferred.
            while await _count(conn, "state = 'queued' AND attempts = 0 OR state = 'inflight'"):
                peak = max(peak, rss_mb(relay.pid))
                await asyncio.sleep(0.5)
            deferred_seconds = time.perf_counter() - started
            held = rss_mb(relay.pid)
            with sink_process(sink_port):
                await wait_port(sink_port)
                drain_started = time.perf_counter()
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = now() WHERE state = 'queued'"
                )
                while await _count(conn, "state <> 'delivered'"):
                    peak = max(peak, rss_mb(relay.pid))
                    await asyncio.sleep(0.2)
                drain_seconds = time.perf_counter() - drain_started
            await conn.close()
            await store.close()
    print(
        f"backlog messages={args.messages} deferred_after_seconds={deferred_seconds:.0f} "
        f"rss_mb_deferred={held:.0f} rss_mb_peak={peak:.0f} "
        f"drain_seconds={drain_seconds:.1f} drain_msgs_per_sec={args.messages / drain_seconds:.0f} "
        f"sink={sink_name()}"
    )


if __name__ == "__main__":
    asyncio.run(main())
