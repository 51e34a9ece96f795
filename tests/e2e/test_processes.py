"""`[smtp] processes`: several relay processes behind one port, supervised by `serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import aiosmtplib
import asyncpg
import pytest

from tests.e2e.relay_process import relay_config, start, stop, wait_delivered, wait_port
from tests.support.cli import free_port
from tests.support.scripted import ScriptedUpstream


@pytest.fixture
async def fresh_dsn(pg_server):
    dsn = await pg_server.create_database()
    yield dsn
    await pg_server.drop_database(dsn)


def _config(port: int, upstream_port: int, dsn: str, processes: int = 3) -> str:
    return relay_config(port, upstream_port, dsn).replace(
        "[smtp]\n", f"[smtp]\nprocesses = {processes}\n", 1
    )


async def _burst(port: int, messages: int, sessions: int) -> None:
    async def session(s: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for n in range(s, messages, sessions):
            body = f"Subject: {n}\r\nX-Seq: {n}\r\n\r\nbody\r\n".encode()
            await client.sendmail("s@example.com", [f"r{n}@example.org"], body)
        await client.quit()

    await asyncio.gather(*(session(s) for s in range(sessions)))


async def _start_ready(path, tmp_path):
    """Start `serve` and wait for the supervisor's READY=1 (every process listens)."""
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    proc = start(path, env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        async with asyncio.timeout(60):
            while b"READY=1" not in await asyncio.get_running_loop().sock_recv(sock, 4096):
                pass
    finally:
        sock.close()  # later notifications go nowhere; the relay must not mind
    return proc


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
async def test_processes_share_the_port_and_deliver_each_message_once(fresh_dsn, tmp_path):
    """Three processes: all take connections, every message is delivered exactly once."""
    async with ScriptedUpstream() as up:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(_config(port, up.port, fresh_dsn))
        proc = start(path)
        try:
            await wait_port(port, proc)
            await _burst(port, messages=60, sessions=12)
            await wait_delivered(fresh_dsn, 60)
            db = await asyncpg.connect(fresh_dsn)
            sessions = await db.fetchval(
                "SELECT count(DISTINCT client_address || session_id) FROM messages"
            )
            await db.close()
        finally:
            logs = await stop(proc)
    seen = sorted(int(r.body.split(b"X-Seq: ")[1].split(b"\r\n")[0]) for r in up.received)
    assert seen == list(range(60))
    assert sessions == 12
    ready = [line for line in logs if line["event"] == "relay.process_ready"]
    assert sorted(line["process"] for line in ready) == [0, 1, 2]
    assert next(line for line in logs if line["event"] == "relay.ready")["processes"] == 3


@pytest.mark.slow
async def test_a_process_that_dies_is_started_again(fresh_dsn, tmp_path):
    async with ScriptedUpstream() as up:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(_config(port, up.port, fresh_dsn, processes=2))
        proc = await _start_ready(path, tmp_path)
        try:
            victim = _children(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(30):
                while len(_children(proc.pid)) < 2 or victim in _children(proc.pid):
                    await asyncio.sleep(0.1)
            await _burst(port, messages=10, sessions=5)
            await wait_delivered(fresh_dsn, 10)
        finally:
            logs = await stop(proc)
    exited = next(line for line in logs if line["event"] == "relay.process_exited")
    assert exited["exit_code"] == -signal.SIGKILL
    assert any(line["event"] == "relay.process_restarted" for line in logs)
    assert len(up.received) == 10


@pytest.mark.slow
async def test_sigkill_of_the_supervisor_takes_every_process_with_it(fresh_dsn, tmp_path):
    port = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(_config(port, 9, fresh_dsn, processes=2))
    proc = await _start_ready(path, tmp_path)
    children = _children(proc.pid)
    assert len(children) == 2
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.communicate, None, 10)
    async with asyncio.timeout(10):
        while any(os.path.exists(f"/proc/{c}") and _alive(c) for c in children):
            await asyncio.sleep(0.05)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
async def test_a_process_that_cannot_start_stops_serve_with_its_error(tmp_path):
    port = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(_config(port, 9, "postgresql://nobody@127.0.0.1:1/none", processes=2))
    proc = start(path)
    _, err = await asyncio.to_thread(proc.communicate, None, 60)
    assert proc.returncode == 1
    assert b"relay.process_failed_to_start" in err
    assert b"database" in err.lower()


@pytest.mark.slow
async def test_a_reload_during_start_kills_no_process(fresh_dsn, tmp_path):
    """SIGHUP while the processes are still starting (systemd may reload at any time): it
    reaches each process once it can handle it, and none dies of it."""
    async with ScriptedUpstream() as up:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(_config(port, up.port, fresh_dsn, processes=2))
        proc = start(path)
        try:
            # Once the supervisor has children it handles SIGHUP; they are still importing.
            async with asyncio.timeout(30):
                while not _children(proc.pid):
                    await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGHUP)
            await wait_port(port, proc)
            await asyncio.sleep(1.0)
            await _burst(port, messages=4, sessions=2)
            await wait_delivered(fresh_dsn, 4)
        finally:
            logs = await stop(proc)
    events = [line["event"] for line in logs]
    assert "relay.process_failed_to_start" not in events
    assert "relay.process_exited" not in events
    assert events.count("relay.process_ready") == 2
