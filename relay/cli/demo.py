"""``bounce-relay demo``: the whole product in under a minute, with no configuration.

It starts the relay on a throw-away embedded PostgreSQL, a simulated upstream on
loopback that answers like real providers (unknown users, over quota, greylisting
that later passes, an IP block on one source IP), sends a small campaign from two
From domains through two source IPs, waits for the resends on a seconds-scale
schedule, and prints the bounces report grouped both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, add_command
from relay.cli.common import CommandFailed

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, Envelope, Session

    from relay.ops.app import Relay

__all__ = ["register", "run_demo"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    # No --config: the demo writes its own into a temporary directory.
    demo = add_command(
        subparsers,
        "demo",
        "see it work in under a minute, no config file needed: embedded PostgreSQL, "
        "simulated upstream, sample campaign, the bounces report",
    )
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from relay.ops.logging import configure_logging

    configure_logging("warning")
    if not asyncio.run(run_demo()):
        raise CommandFailed(
            "the demo's bounces report came out empty", "the lines above say how far it got"
        )
    return 0


_BLOCKED_IP = "127.0.0.3"
_CONFIG = """
[smtp]
listen = "127.0.0.1:0"
hostname = "demo.bounce-relay.test"
[store]
data_dir = "{data_dir}"
[admin]
listen = "127.0.0.1:0"
[[pools]]
name = "demo"
source_ips = ["127.0.0.2", "{blocked_ip}"]
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:{upstream_port}"]
pool = "demo"
[retry]
schedule = ["2s", "3s"]
max_age = "1h"
max_attempts = 3
[[retry.rules]]
name = "greylisting"
match = {{ category = ["greylisted"] }}
schedule = ["2s"]
[delivery]
poll_interval = "0.5s"
connect_timeout = "5s"
command_timeout = "10s"
[log]
level = "warning"
"""

# (recipient local part, how many of them) per From domain of the sample campaign
_CAMPAIGN = {
    "news.example.com": [("reader", 6), ("unknown", 3), ("full", 2), ("grey", 2)],
    # unknown0 hard-bounced for news already: the relay refuses it at RCPT
    "shop.example.com": [("buyer", 5), ("unknown", 1), ("gone", 2), ("full", 1), ("blocked", 2)],
}


class _SimulatedUpstream:
    """Answers RCPT like real providers do, by the recipient's local part."""

    def __init__(self) -> None:
        self.greylisted: set[str] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.split("@", 1)[0]
        if local.startswith("unknown"):
            return (
                "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
                "550 5.1.1 double-checking the recipient's email address. q8si123.45 - gsmtp"
            )
        if local.startswith("gone"):
            return (
                f"550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient {address} not found by "
                "SMTP address lookup"
            )
        if local.startswith("full"):
            return f"452 4.2.2 <{address}>: Mailbox full, quota exceeded (id {id(address):x})"
        if local.startswith("grey") and address not in self.greylisted:
            self.greylisted.add(address)
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try later"
        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        if local.startswith("blocked") and peer == _BLOCKED_IP:
            return (
                f"554 5.7.1 Service unavailable; Client host [{_BLOCKED_IP}] blocked using "
                "zen.spamhaus.org"
            )
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK accepted"


async def _send_campaign(port: int, out: TextIO) -> int:
    import aiosmtplib

    sent = refused = 0
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for from_domain, recipients in _CAMPAIGN.items():
        for local, count in recipients:
            for n in range(count):
                body = (
                    f"From: News <news@{from_domain}>\r\nX-Campaign-ID: demo-week-48\r\n"
                    f"Subject: demo {n}\r\n\r\nHello.\r\n"
                ).encode()
                rcpt = f"{local}{n}@example.net"
                try:
                    await client.sendmail(f"bounces@{from_domain}", [rcpt], body)
                    sent += 1
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    # Hard-bounced by an earlier message: refused at RCPT, never sent again.
                    refused += 1
                    print(
                        f"  RCPT {rcpt}: {exc.recipients[0].code} "
                        f"{exc.recipients[0].message[:60]}...",
                        file=out,
                    )
                await asyncio.sleep(0.05)  # a campaign trickles; earlier bounces land first
    await client.quit()
    print(
        f"accepted {sent} messages from {len(_CAMPAIGN)} From domains; "
        f"{refused} refused at RCPT as suppressed",
        file=out,
    )
    return sent


async def _wait_until_settled(relay: Relay, timeout: float, out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        stats = await relay.store.queue_stats()
        if not stats:
            return
        waiting = sum(n for n, _ in stats.values())
        print(f"  {waiting} deliveries waiting for a resend ...", file=out)
        await asyncio.sleep(2)
    print("  gave up waiting; the report shows what happened so far", file=out)


async def run_demo(out: TextIO = sys.stdout, timeout: float = 45) -> int:
    """Run the demo; returns the number of report rows printed (both groupings)."""
    from aiosmtpd.smtp import SMTP

    from relay.config import load_config
    from relay.ops.app import Relay
    from relay.reports.export import parse_filter, render_table

    started = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    simulated = _SimulatedUpstream()  # one for all connections: it remembers greylisting
    upstream = await loop.create_server(
        lambda: SMTP(simulated, hostname="upstream.demo", loop=loop), "127.0.0.1", 0
    )
    rows = 0
    with tempfile.TemporaryDirectory(prefix="bounce-relay-demo-") as tmp:
        path = Path(tmp) / "demo.toml"
        path.write_text(
            _CONFIG.format(
                data_dir=Path(tmp) / "var",
                blocked_ip=_BLOCKED_IP,
                upstream_port=upstream.sockets[0].getsockname()[1],
            )
        )
        print("starting the relay on an embedded PostgreSQL ...", file=out)
        async with Relay(load_config(path)) as relay:
            await _send_campaign(relay.port, out)
            await _wait_until_settled(relay, timeout, out)
            hour = started.replace(minute=0, second=0, microsecond=0)
            for group_by in ("from-domain", "ip"):
                flt = parse_filter(
                    start=hour.isoformat(),
                    end=(hour + timedelta(hours=2)).isoformat(),
                    kind="all",
                    group_by=group_by,
                )
                print(f"\nbounces report, all bounces, grouped by {group_by}:\n", file=out)
                report = relay.store.iter_bounce_report(
                    flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
                )
                rows += await render_table(report, flt, out, width=60)
    upstream.close()
    return rows
