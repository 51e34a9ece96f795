"""The relay's log: JSON lines with their context, whole across processes, nothing lost
at exit, and a stalled stderr that costs routine lines rather than stopping the relay.

Each case that configures logging does it in a Python process of its own (configuring
is process-wide, and exit is part of what is tested)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import aiosmtplib
import pytest

from relay.metrics import Metrics
from relay.ops.log_writer import PIPE_BUF, LineWriter
from tests.e2e.relay_process import relay_config, stop, wait_delivered, wait_port
from tests.support.cli import free_port
from tests.support.scripted import ScriptedUpstream

REPO = Path(__file__).resolve().parents[3]
PRELUDE = """\
import asyncio, datetime, os, sys
import structlog
from relay.ops.logging import configure_logging, dropped_log_lines, flush_logs
"""
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def python(code: str) -> list[str]:
    """``python -c PRELUDE + code``, from the checkout."""
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(code)]


def run(code: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(python(code), cwd=REPO, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result


def test_a_line_is_json_with_what_the_session_and_the_message_bound():
    """Off a terminal each line is one JSON object: the event, its fields, the context the
    session and the message bound, level and an ISO timestamp; datetimes as ISO text and
    an exception as its traceback."""
    result = run(
        """
        configure_logging("info")
        log = structlog.get_logger("relay.delivery")
        async def main():
            structlog.contextvars.bind_contextvars(session_id="S1", peer="192.0.2.7")
            with structlog.contextvars.bound_contextvars(message_id="Q1", recipient="a@b.example"):
                log.info("delivery.delivered", code=250, at=datetime.datetime(
                    2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))
            log.debug("not.written")
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("delivery.unexpected_error")
        asyncio.run(main())
        """
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["delivery.delivered", "delivery.unexpected_error"]
    delivered, failed = lines
    assert TIMESTAMP.fullmatch(delivered.pop("timestamp"))
    assert delivered == {
        "event": "delivery.delivered",
        "level": "info",
        "code": 250,
        "at": "2026-01-02T03:04:05+00:00",
        "session_id": "S1",
        "peer": "192.0.2.7",
        "message_id": "Q1",
        "recipient": "a@b.example",
    }
    assert failed["level"] == "error"
    assert "message_id" not in failed  # the message's context ended with its block
    assert failed["session_id"] == "S1"
    assert "ZeroDivisionError" in failed["exception"]


def test_what_orjson_refuses_is_still_one_json_line():
    """Text with a lone surrogate (undecodable input), an integer past 64 bits, an object
    of our own and a value that contains itself: each still makes one line of valid
    JSON."""
    result = run(
        """
        configure_logging("info")
        log = structlog.get_logger()
        class Rule:
            def __repr__(self): return "Rule(default)"
        log.info("odd.values", address=b"caf\\xe9@example.org".decode("utf-8", "surrogateescape"))
        log.info("odd.values", count=2**70)
        log.info("odd.values", rule=Rule(), seen={"x"})
        loop = {}
        loop["self"] = loop
        log.info("odd.values", loop=loop)
        """
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["odd.values"] * 4
    assert lines[0]["address"] == "caf\udce9@example.org"
    assert lines[1]["count"] == 2**70
    assert lines[2]["rule"] == "Rule(default)"
    assert lines[2]["seen"] == "{'x'}"
    assert lines[3]["loop"] == "{'self': {...}}"


def test_lines_of_two_processes_on_one_pipe_are_whole_and_all_there():
    """Two processes log 2,000 lines each, up to 2.5 KB long, into one pipe made as small
    as Linux allows (so every write larger than PIPE_BUF would be cut up): every line read
    back is whole JSON, each process's lines are all there, in order, though both exit
    right after their last line."""
    code = """
        configure_logging("info")
        log = structlog.get_logger()
        me = sys.argv[1]
        for n in range(2000):  # 2.5 MB at most: within the writer's bound, nothing dropped
            log.info("test.line", who=me, n=n, pad="x" * (n * 37 % 2500))
    """
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    procs = [
        subprocess.Popen([*python(code), who], cwd=REPO, stderr=write_end) for who in ("a", "b")
    ]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert data.endswith(b"\n")
    lines = [json.loads(line) for line in data.splitlines()]
    assert {line["event"] for line in lines} == {"test.line"}
    for who in ("a", "b"):
        assert [line["n"] for line in lines if line["who"] == who] == list(range(2000))


def _routine(n: int) -> bytes:
    return json.dumps({"event": "test.routine", "n": n, "pad": "r" * 150}).encode() + b"\n"


def _warning(n: int) -> bytes:
    return json.dumps({"event": "test.warning", "n": n}).encode() + b"\n"


def _drops(count: int) -> bytes:
    return json.dumps({"event": "log.lines_dropped", "dropped": count}).encode() + b"\n"


def test_a_stalled_reader_costs_routine_lines_never_a_warning_and_never_blocks():
    """Nobody reads the pipe: write() still returns at once. Routine lines past the bound
    are dropped and counted, warnings are all kept; once the reader is back every line
    not dropped arrives, and the drops are told in the log."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    writer = LineWriter(write_end, capacity=64 * 1024, describe_drops=_drops)

    def flood() -> None:  # about 3.5 MB: far more than the pipe and the bound hold
        for n in range(20_000):
            writer.write(_routine(n))
            if n % 1000 == 0:
                writer.write(_warning(n), keep=True)

    flooding = threading.Thread(target=flood)
    flooding.start()
    flooding.join(timeout=60)
    assert not flooding.is_alive(), "write() blocked on a stalled reader"
    assert writer.dropped > 0

    received = bytearray()
    reading = threading.Thread(target=lambda: received.extend(_read_all(read_end)))
    reading.start()
    assert writer.flush(timeout=60)
    writer.close()
    os.close(write_end)
    reading.join(timeout=60)

    lines = [json.loads(line) for line in received.splitlines()]
    routine = [line["n"] for line in lines if line["event"] == "test.routine"]
    assert [line["n"] for line in lines if line["event"] == "test.warning"] == list(
        range(0, 20_000, 1000)
    )
    assert routine == sorted(routine)
    assert len(routine) + writer.dropped == 20_000
    assert sum(line["dropped"] for line in lines if line["event"] == "log.lines_dropped") == (
        writer.dropped
    )


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


def test_each_write_holds_whole_lines_and_at_most_pipe_buf_bytes():
    """What the writer hands the kernel in one write: whole lines, no more than PIPE_BUF
    bytes unless one line is longer, which then goes alone. (A packet socket keeps each
    write apart, so the test sees the writes themselves.)"""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer = LineWriter(ours.fileno())
    long_line = b"L" * (PIPE_BUF + 500) + b"\n"
    sent = [b"%05d" % n * 47 + b"\n" for n in range(300)]  # 236-byte lines
    writes: list[bytes] = []

    def read() -> None:
        while packet := theirs.recv(1 << 20):
            writes.append(packet)

    reading = threading.Thread(target=read)
    reading.start()
    for line in sent[:150]:
        writer.write(line)
    writer.write(long_line)
    for line in sent[150:]:
        writer.write(line)
    writer.close()
    ours.close()
    reading.join(timeout=60)
    theirs.close()
    assert b"".join(writes) == b"".join(sent[:150]) + long_line + b"".join(sent[150:])
    assert all(w.endswith(b"\n") for w in writes)
    assert all(len(w) <= PIPE_BUF or w == long_line for w in writes)
    assert any(len(w) > len(sent[0]) for w in writes), "lines are written several at a time"


def test_a_full_buffer_is_counted_as_a_metric():
    """In a process whose stderr stalled, /metrics counts the dropped lines."""
    result = run(
        """
        from relay.metrics import Metrics
        read_end, write_end = os.pipe()
        configure_logging("info", json=True, fd=write_end)
        log = structlog.get_logger()
        for n in range(20000):  # 8 MB: twice the writer's bound
            log.info("test.routine", n=n, pad="p" * 380)
        text = Metrics().render().decode()
        print(next(l for l in text.splitlines() if l.startswith("bounce_relay_log_lines_dropped")))
        os.close(read_end)  # the writer's next write fails: nothing to wait for at exit
        """
    )
    name, value = result.stdout.decode().split()
    assert name == "bounce_relay_log_lines_dropped_total"
    assert float(value) > 0


def test_the_metric_starts_at_zero():
    """A relay that dropped nothing shows the counter at 0 (it is there to alert on)."""
    text = Metrics().render().decode()
    assert "bounce_relay_log_lines_dropped_total 0.0" in text.splitlines()


def test_a_terminal_gets_the_console_renderer():
    """On a terminal the lines are for a person: the event and key=value, not JSON."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        python(
            """
            configure_logging("info")
            structlog.get_logger().info("relay.ready", processes=2)
            """
        ),
        cwd=REPO,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode())
    assert "relay.ready" in text
    assert "processes=2" in text
    assert not text.lstrip().startswith("{")


@pytest.fixture
async def fresh_dsn(pg_server):
    dsn = await pg_server.create_database()
    yield dsn
    await pg_server.drop_database(dsn)


@pytest.mark.slow
async def test_a_relay_whose_stderr_nobody_reads_goes_on_and_loses_no_line(fresh_dsn, tmp_path):
    """stderr is a pipe nobody reads while 300 messages go through (far more lines than the
    pipe holds; each process writing at once would stop at the full pipe): every message
    is accepted and delivered all the same. Then the relay stops and its stderr is read:
    every message's lines are there, and the last line of each process."""
    async with ScriptedUpstream() as upstream:
        port = free_port()
        path = tmp_path / "relay.toml"
        path.write_text(relay_config(port, upstream.port, fresh_dsn, "[log]\nlevel = 'info'"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(path)],
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            await wait_port(port, proc)
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
            await client.connect(timeout=30)
            for n in range(300):
                body = f"Subject: {n}\r\n\r\nbody\r\n"
                await client.sendmail("s@example.com", [f"r{n}@example.org"], body, timeout=30)
            await client.quit()
            await wait_delivered(fresh_dsn, 300, timeout=120)
        finally:
            logs = await stop(proc)
    events = [line["event"] for line in logs]
    assert events.count("intake.accepted") == 300
    assert events.count("delivery.delivered") == 300
    assert "log.lines_dropped" not in events
    # The last line of every process: each one that told it was ready said it stopped.
    ready = events.count("relay.ready") + events.count("relay.process_ready")
    assert events.count("relay.stopped") == ready >= 1
