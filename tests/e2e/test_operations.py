"""Operating the relay: systemd unit and notify protocol, SIGHUP reload, SIGTERM under load."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest
import trustme

from tests.e2e.relay_process import relay_config, send, start, stop, wait_delivered, wait_port
from tests.support.cli import free_port
from tests.support.scripted import ScriptedUpstream

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fresh_dsn(pg_server):
    dsn = await pg_server.create_database()
    yield dsn
    await pg_server.drop_database(dsn)


@pytest.mark.slow
async def test_sighup_reloads_routes_and_refuses_a_bad_file(fresh_dsn, tmp_path):
    """A good file switches the route at once; a bad one is refused with the key named."""
    async with ScriptedUpstream() as first, ScriptedUpstream() as second:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(relay_config(port, first.port, fresh_dsn))
        proc = start(path)
        try:
            await wait_port(port, proc)
            await send(port, "a@example.org")
            await wait_delivered(fresh_dsn, 1)
            path.write_text(relay_config(port, second.port, fresh_dsn))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            await send(port, "b@example.org")
            await wait_delivered(fresh_dsn, 2)
            path.write_text(relay_config(port, first.port, fresh_dsn, 'bogus_key = "x"'))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            await send(port, "c@example.org")
            await wait_delivered(fresh_dsn, 3)
        finally:
            logs = await stop(proc)
    assert [r.recipients for r in first.received] == [["a@example.org"]]
    assert [r.recipients for r in second.received] == [["b@example.org"], ["c@example.org"]]
    events = [line["event"] for line in logs]
    assert "config.reloaded" in events
    refused = next(line for line in logs if line["event"] == "config.reload_refused")
    assert any("delivery.bogus_key" in e for e in refused["errors"])


@pytest.mark.slow
async def test_serve_runs_on_uvloop_with_starttls_both_ways(fresh_dsn, tmp_path):
    """`serve` runs on uvloop; STARTTLS from a client and to the upstream still work there."""
    ca = trustme.CA()
    cert = ca.issue_cert("relay.test", "upstream.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "both.pem")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    async with ScriptedUpstream(tls=server_tls) as up:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(
            f'[smtp]\ntls_cert = "{tmp_path / "both.pem"}"\ntls_key = "{tmp_path / "both.pem"}"\n'
            + relay_config(port, up.port, fresh_dsn).replace("[smtp]\n", "", 1)
        )
        proc = start(path)
        try:
            await wait_port(port, proc)
            client_tls = ssl.create_default_context()
            ca.configure_trust(client_tls)
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=port, start_tls=False, tls_context=client_tls
            )
            await client.connect()
            await client.starttls(server_hostname="relay.test")
            await client.sendmail("s@example.com", ["tls@example.org"], b"Subject: t\r\n\r\nx\r\n")
            await client.quit()
            await wait_delivered(fresh_dsn, 1)
        finally:
            logs = await stop(proc)
    loops = {line["event_loop"] for line in logs if line["event"] == "relay.process_ready"}
    assert loops == {"uvloop"}
    assert up.tls_sessions == 1
    assert [r.recipients for r in up.received] == [["tls@example.org"]]


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing(fresh_dsn, tmp_path):
    """SIGTERM while deliveries are in flight: exit 0, leases handed back, and after a restart
    every accepted message reaches the upstream; none twice beyond those cut mid-transaction."""
    messages = 30
    async with ScriptedUpstream() as up:
        up.data_delay = 0.3
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(
            relay_config(port, up.port, fresh_dsn, 'shutdown_grace = "0.5s"\nconcurrency = 4')
        )
        proc = start(path)
        await wait_port(port, proc)
        for n in range(messages):
            await send(port, f"r{n}@example.org", n)
        async with asyncio.timeout(60):  # a hang is a failure, not a stuck CI
            while len(up.received) < 2:
                await asyncio.sleep(0.05)
        up.data_delay = 3.0  # transactions now in flight outlast the 0.5 s grace
        await asyncio.sleep(0.5)
        logs = await stop(proc)
        up.data_delay = 0.0
        assert any(line["event"] == "delivery.released" for line in logs)
        restarted = start(path)
        await wait_port(port, restarted)
        await wait_delivered(fresh_dsn, messages)
        await stop(restarted)
    seen = [int(r.body.split(b"X-Seq: ")[1].split(b"\r\n")[0]) for r in up.received]
    assert set(seen) == set(range(messages))
    assert len(seen) - len(set(seen)) <= 4  # at most the transactions cut at shutdown


@pytest.mark.slow
async def test_systemd_notify_ready_watchdog_stopping(fresh_dsn, tmp_path):
    """Under systemd: READY=1 once listening, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    port = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(relay_config(port, 9, fresh_dsn))
    proc = start(path, {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    received: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        await wait_port(port, proc)
        for _ in range(20):
            datagram = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            received.append(datagram.decode())
            if sum("WATCHDOG=1" in r for r in received) >= 2:
                break
    finally:
        await stop(proc)
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    sock.close()
    assert received[0].startswith("READY=1")
    assert sum("WATCHDOG=1" in r for r in received) >= 2
    assert any("STOPPING=1" in r for r in received)


def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` accepts the shipped unit (ExecStart pointed at this install)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    binary = shutil.which("bounce-relay") or str(Path(sys.executable).parent / "bounce-relay")
    unit = (REPO / "systemd" / "bounce-relay.service").read_text()
    unit = unit.replace("/opt/bounce-relay/.venv/bin/bounce-relay", binary)
    target = tmp_path / "bounce-relay.service"
    target.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", str(target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "bounce-relay.service:" not in result.stderr, result.stderr
    assert "Type=notify" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


def _table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first report table in ``text`` (not its total line), by column name:
    each cell cut at the columns' positions under the rule line of dashes."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans, at = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    names = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[rule + 1 :]:
        if line.startswith("---") or not line.strip():
            break
        rows.append({n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)})
    return rows


@pytest.mark.slow
def test_demo_runs_to_completion_with_a_correct_report():
    """`bounce-relay demo`: embedded database, simulated upstream, both report groupings."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    by_domain = out.split("grouped by from-domain:")[1].split("grouped by ip:")[0]
    by_ip = out.split("grouped by ip:")[1]
    rows = [line for line in by_domain.splitlines() if line.startswith(("news.", "shop."))]
    categories: dict[str, set[str]] = {line.split()[0]: set() for line in rows}
    for line in rows:
        categories[line.split()[0]].update(
            c
            for c in ("user_unknown", "mailbox_full", "greylisted", "spam_block_ip")
            if f" {c} " in line
        )
    assert categories["news.example.com"] == {"user_unknown", "mailbox_full", "greylisted"}
    assert {"user_unknown", "mailbox_full", "spam_block_ip"} <= categories["shop.example.com"]
    # the IP block hits only the source IP the simulated upstream blocks
    block_lines = [line for line in by_ip.splitlines() if " spam_block_ip " in line]
    assert block_lines
    assert all(line.startswith("127.0.0.3") for line in block_lines)
    assert "refused at RCPT as suppressed" in out
    grey = [row for row in _table_rows(by_domain) if row["category"] == "greylisted"]
    # amount and messages: 2 messages, each greylisted once, then delivered
    assert [(row["amount"], row["messages"]) for row in grey] == [("2", "2")]
    # every news.example.com row shows the group's attempts; some of them were delivered
    news = [row for row in _table_rows(by_domain) if row["from_domain"] == "news.example.com"]
    assert len({row["attempts"] for row in news}) == 1 and int(news[0]["delivered"]) > 0
    assert "gave up waiting" not in out
