"""Relays on several hosts sharing one database: two ``bounce-relay serve`` processes, one on
127.0.0.2 and one on 127.0.0.3 (loopback addresses standing in for two machines), each
with its SMTP listener, its admin listener and its source IP on its own address.

Messages go in through both; each relay delivers from the shared queue. The accounting
must come out exactly once: one message row per message, one delivery per recipient, one
``accepted`` event per message and one final event per delivery, the upstream given each
delivered message once, and the report's counts exact. Throughput adding up is measured in
bench/multi_host_bench.py, not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import aiosmtplib
import asyncpg
import pytest

from tests.chaos.harness import Behaviour, ChaosUpstream, body, wait_settled
from tests.support.cli import run_with_config

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("127.0.0.2", "127.0.0.3")
MESSAGES_PER_HOST = 100
SESSIONS_PER_HOST = 4
BOUNCED_EVERY = 10  # r0, r10, ... get a 550 at RCPT from the upstream


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class HostRelay:
    """``bounce-relay serve`` on ``host``: SMTP and admin listeners and source IP there."""

    def __init__(self, host: str, upstream_port: int, dsn: str, workdir: Path) -> None:
        self.host = host
        self.port = _free_port(host)
        self.admin_port = _free_port(host)
        self.config = workdir / f"relay-{host}.toml"
        self.config.write_text(
            f"""
[smtp]
listen = "{host}:{self.port}"
hostname = "relay-{host}.test"
processes = 1
[store]
dsn = "{dsn}"
[[pools]]
name = "default"
source_ips = ["{host}"]
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{upstream_port}"]
tls = "off"
[admin]
listen = "{host}:{self.admin_port}"
[delivery]
poll_interval = "0.2s"
[log]
level = "warning"
""",
            encoding="utf-8",
        )
        self.log = workdir / f"relay-{host}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                cwd=REPO,
            )
        for _ in range(600):
            assert self.proc.poll() is None, f"relay on {self.host} exited:\n{self.log_tail()}"
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise AssertionError(f"relay on {self.host} did not listen:\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"relay on {self.host} ignored SIGTERM:\n{self.log_tail()}"
            ) from None
        assert code == 0, f"relay on {self.host} exited {code}:\n{self.log_tail()}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def _send(relay: HostRelay, seqs: list[int]) -> list[int]:
    """Send each numbered message (to r<seq>@example.org) through ``relay`` over a few
    sessions at once; the numbers that did not get 250."""
    pending = list(seqs)
    refused: list[int] = []

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname=relay.host, port=relay.port, start_tls=False)
        await client.connect()
        try:
            while pending:
                seq = pending.pop()
                try:
                    await client.sendmail("s@example.com", [f"r{seq}@example.org"], body(seq))
                except aiosmtplib.SMTPException:
                    refused.append(seq)
        finally:
            await client.quit()

    await asyncio.gather(*(session() for _ in range(SESSIONS_PER_HOST)))
    return refused


async def test_two_hosts_share_one_database_with_exactly_once_accounting(
    db_dsn: str, tmp_path: Path
) -> None:
    """Two relays (127.0.0.2, 127.0.0.3) on one database take 100 messages each; both
    deliver, from their own address; every message is stored, accounted and delivered
    exactly once, and the report counts the 180 delivered and 20 bounced exactly."""

    def rcpt(address: str) -> str | None:
        seq = int(address.split("@", maxsplit=1)[0].lstrip("<r"))
        return "550 5.1.1 no such user" if seq % BOUNCED_EVERY == 0 else None

    total = MESSAGES_PER_HOST * len(HOSTS)
    bounced = total // BOUNCED_EVERY
    async with ChaosUpstream(behaviour=Behaviour(on_rcpt=rcpt)) as up:
        relays = [HostRelay(host, up.port, db_dsn, tmp_path) for host in HOSTS]
        try:
            await asyncio.gather(*(r.start() for r in relays))
            refused = await asyncio.gather(
                *(
                    _send(r, list(range(i * MESSAGES_PER_HOST, (i + 1) * MESSAGES_PER_HOST)))
                    for i, r in enumerate(relays)
                )
            )
            states = await wait_settled(db_dsn, timeout=60)
            health = [await _healthz(r) for r in relays]
            report = await asyncio.to_thread(
                run_with_config, relays[0].config, "report", "--type", "all", "--format", "json"
            )
        finally:
            stopped = await asyncio.gather(*(r.stop() for r in relays), return_exceptions=True)
    for outcome in stopped:
        if isinstance(outcome, BaseException):
            raise outcome
    assert refused == [[], []]
    assert health == [200, 200]
    assert states == {"delivered": total - bounced, "bounced": bounced}, states
    assert sorted(up.received) == [s for s in range(total) if s % BOUNCED_EVERY], up.received
    assert up.duplicates() == 0
    accounting, delivered_from = await _accounting(db_dsn)
    assert accounting == {
        "messages": total,
        "message_ids_twice": 0,
        "deliveries": total,
        "accepted_events": total,
        "delivered_events": total - bounced,
        "hard_bounce_events": bounced,
        "deliveries_without_one_final_event": 0,
    }
    # Both relays delivered, each from its own address.
    assert set(delivered_from) == set(HOSTS), delivered_from
    assert report.returncode == 0, report.stderr
    totals = json.loads(report.stdout)["totals"]
    assert (totals["attempts"], totals["delivered"], totals["messages"]) == (
        total,
        total - bounced,
        bounced,
    ), totals


async def _healthz(relay: HostRelay) -> int:
    """The admin listener answers on the relay's own address."""
    url = f"http://{relay.host}:{relay.admin_port}/healthz"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def _accounting(dsn: str) -> tuple[dict[str, int], dict[str, int]]:
    """Counts of rows and events; and the delivered events per source IP."""
    conn = await asyncpg.connect(dsn)
    try:
        counts = await conn.fetchrow(
            """
            SELECT
              (SELECT count(*) FROM messages) AS messages,
              (SELECT count(*) FROM (SELECT message_id FROM messages
                                     GROUP BY message_id HAVING count(*) > 1) x)
                AS message_ids_twice,
              (SELECT count(*) FROM deliveries) AS deliveries,
              (SELECT count(*) FROM events WHERE type = 'accepted') AS accepted_events,
              (SELECT count(*) FROM events WHERE type = 'delivered') AS delivered_events,
              (SELECT count(*) FROM events WHERE type = 'hard_bounce') AS hard_bounce_events,
              (SELECT count(*) FROM deliveries d
               WHERE (SELECT count(*) FROM events e
                      WHERE e.delivery_id = d.id
                        AND e.type IN ('delivered', 'hard_bounce', 'non_delivery')) <> 1)
                AS deliveries_without_one_final_event
            """
        )
        delivered_from = await conn.fetch(
            "SELECT source_ip, count(*) AS n FROM events WHERE type = 'delivered' GROUP BY 1"
        )
    finally:
        await conn.close()
    assert counts is not None
    return dict(counts), {r["source_ip"]: r["n"] for r in delivered_from}
