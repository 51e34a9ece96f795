"""bench/limiting_sink.py held to its limits (driven with aiosmtplib, its window on an
injected clock), and bench/shaping_bench.py at a smoke size so it cannot rot: it completes
and prints its table, verdict and JSON line. Its numbers are not asserted: performance is
measured in bench/, not in timed tests."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiosmtplib
import pytest

REPO = Path(__file__).resolve().parents[2]
MESSAGE = b"From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n"


def _bench_module(name: str) -> ModuleType:
    """bench/``name``.py (bench/ is scripts, not a package), as module ``bench_<name>``."""
    qualified = f"bench_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, REPO / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up by name.
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


limiting_sink = _bench_module("limiting_sink")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sink_of():
    started = []

    async def start(**kwargs):
        sink = limiting_sink.LimitingSink("127.0.0.1", 0, **kwargs)
        await sink.start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        await sink.close()


def _client(port: int, source: str = "127.0.0.1") -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        timeout=10,
        source_address=(source, 0),
    )


async def test_a_connection_over_the_limit_is_greeted_421_per_source_ip(sink_of):
    sink = await sink_of(connections=2, per_minute=100)
    first, second = _client(sink.port), _client(sink.port)
    await first.connect()
    await second.connect()

    third = _client(sink.port)
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
        await third.connect()
    assert refused.value.code == 421
    assert refused.value.message == (
        "4.7.0 Too many concurrent connections from 127.0.0.1; try again later"
    )
    # Another source IP has slots of its own.
    elsewhere = _client(sink.port, source="127.0.0.20")
    await elsewhere.connect()
    await elsewhere.sendmail("a@example.com", ["b@example.org"], MESSAGE)
    await elsewhere.quit()
    # A slot given back (QUIT) is free for the next connection at once.
    await first.quit()
    again = _client(sink.port)
    await again.connect()
    await again.quit()
    await second.quit()

    totals = sink.totals("127.0.0.1")
    assert (totals.opened, totals.refused_connections, totals.max_open) == (3, 1, 2)
    assert sink.totals("127.0.0.20").accepted == 1


async def test_a_message_over_the_per_minute_limit_gets_451_until_the_window_slides(sink_of):
    clock = FakeClock()
    sink = await sink_of(connections=5, per_minute=2, clock=clock, bucket_seconds=60)
    client = _client(sink.port)
    await client.connect()
    await client.sendmail("a@example.com", ["b1@example.org"], MESSAGE)
    clock.now += 30
    await client.sendmail("a@example.com", ["b2@example.org"], MESSAGE)

    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await client.sendmail("a@example.com", ["b3@example.org"], MESSAGE)
    assert refused.value.code == 451
    assert refused.value.message == (
        "4.7.1 Rate limit exceeded: 127.0.0.1 sends more than 2 messages a minute; try again later"
    )
    # The first message leaves the window 60 s after it was accepted; the refused one never
    # counted, so one more fits, and the next is refused again.
    clock.now += 30
    await client.sendmail("a@example.com", ["b4@example.org"], MESSAGE)
    with pytest.raises(aiosmtplib.SMTPDataError):
        await client.sendmail("a@example.com", ["b5@example.org"], MESSAGE)
    await client.quit()

    # Counted in buckets of 60 s of the clock: 960-1019 (key 16) took the first message,
    # 1020-1079 (key 17) the rest.
    buckets = sink.buckets["127.0.0.1"]
    assert {key: (b.accepted, b.refused_messages) for key, b in buckets.items()} == {
        16: (1, 0),
        17: (2, 2),
    }
    totals = sink.totals("127.0.0.1")
    assert (totals.accepted, totals.refused_messages) == (3, 2)


async def test_a_client_gone_mid_data_or_sending_a_long_line_ends_its_session_only(sink_of):
    sink = await sink_of(connections=1, per_minute=10)

    reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
    assert (await reader.readline()).startswith(b"220 ")
    for command in (b"EHLO c\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@x.org>\r\n"):
        writer.write(command)
        reply = await reader.readuntil(b"\r\n")
        while reply[3:4] == b"-":
            reply = await reader.readuntil(b"\r\n")
    writer.write(b"DATA\r\n")
    assert (await reader.readline()).startswith(b"354 ")
    writer.write(b"Subject: half a message\r\nand then the client is gone")
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    # Its slot (the only one) comes back; a line over 2,000 bytes gets 500 and the close.
    reader, writer = await _connect_when_free(sink.port)
    writer.write(b"NOOP " + b"x" * 3000 + b"\r\n")
    assert (await reader.readline()).startswith(b"500 5.5.2 ")
    assert await reader.read() == b""
    writer.close()

    client = _client(sink.port)
    await _until(lambda: sink.open["127.0.0.1"] == 0)
    await client.connect()
    await client.sendmail("a@example.com", ["b@example.org"], MESSAGE)
    await client.quit()
    assert sink.totals("127.0.0.1").accepted == 1


async def _until(condition, tries: int = 500) -> None:
    """Poll ``condition`` until the sink's side of a close has run (an event, not a time)."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sink did not get to it")


async def _connect_when_free(port: int):
    """A raw connection once the single slot is free again (the sink sees the previous close
    after the client does)."""
    for _ in range(500):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await reader.readline()
        if greeting.startswith(b"220 "):
            return reader, writer
        assert greeting.startswith(b"421 4.7.0 ")
        writer.close()
        await asyncio.sleep(0.01)
    raise AssertionError("the slot never came back")


@pytest.mark.slow
def test_shaping_bench_smoke(pg_server):
    result = subprocess.run(
        [
            sys.executable,
            "bench/shaping_bench.py",
            "--dsn",
            pg_server.admin_dsn,
            "--minutes",
            "0.5",
            "--messages",
            "200",
            "--per-minute",
            "120",
            "--connections",
            "4",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("shaping_bench relays=3 ") for line in lines), result.stdout
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["minute", "source_ip"])
    assert lines[header + 1].split()[1] == "127.0.0.10", result.stdout
    assert any(line.startswith("verdict rate_settled_from_minute=") for line in lines)
    summary = json.loads(lines[-1])
    assert summary["bench"] == "shaping_bench"
    assert summary["per_minute"] == 120
    assert len(summary["rows"]) == 1
    row = summary["rows"][0]
    assert set(row["per_ip"]) == {"127.0.0.10"}
    # The sink took mail from the relays' shared source IP, and never more than it allows.
    counters = row["per_ip"]["127.0.0.10"]
    assert counters["accepted"] > 0
    assert counters["accepted"] <= 120
    assert counters["max_open"] <= 4
