"""bench/delivery_bench.py at a smoke size, so it cannot rot: its line is printed and every
delivery ended (delivered, or deferred by the sinks' 4xx). Its rates are not asserted:
performance is measured in bench/, not in timed tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_delivery_bench_smoke(pg_server):
    result = subprocess.run(
        [
            sys.executable,
            "bench/delivery_bench.py",
            "--dsn",
            pg_server.admin_dsn,
            "--messages",
            "500",
            "--domains",
            "50",
            "--hosts",
            "10",
            "--clients",
            "10",
            "--tls",
            "on",
            "--poll",
            "0.2",
            "--seed",
            "1",
            "--unknown",
            "0.01",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [x for x in result.stdout.splitlines() if x.startswith("delivery_bench ")]
    assert len(lines) == 1, result.stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    messages = int(fields["messages"])
    assert messages == 500
    delivered, deferred = int(fields["delivered"]), int(fields["deferred_4xx"])
    bounced = int(fields["bounced_5xx"])
    # Every delivery ended: taken by a sink, deferred by its 4xx or refused as unknown
    # (1% of the addresses); nothing else.
    assert delivered + deferred + bounced == messages
    assert int(fields["other_final"]) == 0
    assert int(fields["sink_messages"]) == delivered
    assert int(fields["sink_rcpt_4xx"]) == deferred
    assert bounced == int(fields["sink_rcpt_5xx"]) > 0
    # The campaign's canary passed (1% unknown is a clean list) and nothing paused it.
    assert (int(fields["guardrails_open"]), int(fields["guardrails_paused"])) == (1, 0)
    assert int(fields["tls_handshakes"]) > 0
    assert int(fields["connections"]) > 0
