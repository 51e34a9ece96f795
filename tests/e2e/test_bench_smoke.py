"""The benchmarks in their smoke sizes, so they cannot rot (numbers are not asserted:
performance is measured in bench/, not in timed tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import needs

REPO = Path(__file__).resolve().parents[2]
PEER_BENCH = next(
    (
        d
        for d in (
            Path(os.environ.get("PEER_BENCH_DIR", "/nonexistent")),
            REPO.parent / "shared" / "bench",
            Path("/work/shared/bench"),
        )
        if (d / "peer-bench.sh").exists()
    ),
    None,
)


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


@pytest.fixture
def server_dsn(pg_server):
    return pg_server.admin_dsn


@pytest.mark.slow
def test_intake_bench_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/intake_bench.py",
        "--dsn",
        server_dsn,
        "--messages",
        "100",
        "--clients",
        "1,5",
    )
    lines = [_fields(x) for x in out.splitlines() if x.startswith("intake_bench")]
    assert len(lines) == 2
    assert all(float(f["ratio"]) > 0 for f in lines)


@pytest.mark.slow
def test_suppression_scale_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/suppression_scale.py",
        "--dsn",
        server_dsn,
        "--suppressed",
        "10000",
        "--messages",
        "100",
        "--clients",
        "5",
        "--rounds",
        "1",
    )
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("suppression_scale")]
    assert line["suppressed"] == "10000"
    assert float(line["rcpt_p99_ms_full"]) > 0


@pytest.mark.slow
def test_backlog_smoke(server_dsn):
    out = _run(sys.executable, "bench/backlog.py", "--dsn", server_dsn, "--messages", "300")
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("backlog")]
    assert line["messages"] == "300"
    assert float(line["drain_msgs_per_sec"]) > 0


@pytest.mark.slow
def test_report_bench_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/report_bench.py",
        "--dsn",
        server_dsn,
        "--events",
        "3000",
        "--days",
        "2",
        "--export-rows",
        "300",
    )
    lines = [_fields(x) for x in out.splitlines() if x.startswith(("report ", "series "))]
    # three groupings x (all campaigns, one), series by day and by hour x two groupings
    assert len(lines) == 6 + 4
    assert all(float(f["ratio"]) > 0 and int(f["rollup_rows_read"]) > 0 for f in lines)
    [seeded] = [_fields(x) for x in out.splitlines() if x.startswith("seeded")]
    assert int(seeded["attempts"]) == 10 * int(seeded["events"])


@pytest.mark.slow
def test_attempt_rollup_bench_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/attempt_rollup_bench.py",
        "--dsn",
        server_dsn,
        "--batches",
        "10",
        "--rounds",
        "2",
    )
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("attempt_rollup")]
    assert float(line["with_us_per_outcome"]) > 0
    assert float(line["ratio"]) > 0


@pytest.mark.slow
def test_replay_bench_smoke(server_dsn):
    out = _run(sys.executable, "bench/replay_bench.py", "--dsn", server_dsn, "--bounces", "300")
    assert "replay rules=one-rule-added" in out, "the replay bench prints its timings"


@pytest.mark.slow
def test_webhook_trigger_bench_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/webhook_trigger.py",
        "--dsn",
        server_dsn,
        "--rounds",
        "3",
        env={"PYTHONPATH": str(REPO)},
    )
    assert out.strip(), "the trigger bench prints its timings"


@pytest.mark.slow
@pytest.mark.skipif(PEER_BENCH is None, reason="shared/bench/peer-bench.sh not on this machine")
@needs(
    os.geteuid() == 0 or Path("/usr/sbin/smtp-source").exists(),
    "peer-bench needs Postfix's smtp-source (installed as root)",
)
def test_relay_throughput_smoke(server_dsn):
    out = _run(
        "bash",
        "bench/relay_throughput.sh",
        "--smoke",
        env={
            "PEER_BENCH_DIR": str(PEER_BENCH),
            "BOUNCE_RELAY_TEST_DSN": server_dsn,
            "PYTHON": sys.executable,
        },
    )
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("relay_throughput")]
    assert float(line["relay_msgs_per_sec"]) > 0
    assert float(line["relay_vs_direct"]) > 0


@pytest.mark.slow
@needs(
    Path("/usr/sbin/smtp-source").exists(),
    "needs Postfix's smtp-source and smtp-sink (.ci/run installs them)",
)
def test_cpu_per_message_smoke(server_dsn):
    out = _run(
        "bash",
        "bench/cpu_per_message.sh",
        "--smoke",
        env={
            "PEER_BENCH_DIR": str(PEER_BENCH),
            "BOUNCE_RELAY_TEST_DSN": server_dsn,
            "PYTHON": sys.executable,
        },
    )
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("cpu_per_message_summary")]
    assert float(line["msgs_per_sec"]) > 0
    assert float(line["relay_cpu_ms"]) > 0


@pytest.mark.slow
@pytest.mark.skipif(PEER_BENCH is None, reason="shared/bench/baseline_relay.py not on this machine")
def test_session_latency_smoke(server_dsn):
    out = _run(
        sys.executable,
        "bench/session_latency.py",
        "--dsn",
        server_dsn,
        "--messages",
        "20",
        "--rounds",
        "1",
        env={"PEER_BENCH_DIR": str(PEER_BENCH)},
    )
    [line] = [_fields(x) for x in out.splitlines() if x.startswith("session_latency")]
    assert float(line["relay_ms"]) > 0
    assert float(line["relay_vs_proxy"]) > 0


@pytest.mark.slow
def test_dsn_parse_bench_smoke():
    out = _run(sys.executable, "bench/dsn_parse_bench.py", "--smoke")
    lines = [_fields(x) for x in out.splitlines() if x.startswith("dsn_parse_bench ")]
    assert {line["shape"] for line in lines} >= {"html_unclosed_script", "folded_from"}
    assert all(float(line["ratio"]) > 0 for line in lines)
    [summary] = [_fields(x) for x in out.splitlines() if x.startswith("dsn_parse_bench_summary")]
    assert int(summary["shapes"]) == len(lines)


def test_verdict_accuracy_scores_every_corpus():
    """bench/verdict_accuracy.py: one summary line per corpus, the counts its own; the
    repository's reply corpus, which the classifier was built on, keeps its perfect score."""
    out = _run(sys.executable, "bench/verdict_accuracy.py", "--matrix")
    summaries = {
        line["corpus"]: line
        for line in (_fields(x) for x in out.splitlines() if x.startswith("verdict_accuracy "))
    }
    assert set(summaries) == {"smtp-replies", "public-replies", "dsn"}
    assert int(summaries["smtp-replies"]["replies"]) == 307
    assert int(summaries["public-replies"]["replies"]) >= 800
    assert summaries["smtp-replies"]["false_suppressions"] == "0"
    assert int(summaries["dsn"]["recipients"]) > 250
    assert "| labelled \\ decided |" in out


@pytest.mark.slow
def test_multi_host_bench_smoke(server_dsn):
    """bench/multi_host_bench.py runs one relay and then two on two addresses, and prints a
    line for each and their ratio."""
    out = _run(
        sys.executable,
        "bench/multi_host_bench.py",
        "--dsn",
        server_dsn,
        "--messages",
        "40",
        "--clients",
        "2",
        "--rounds",
        "1",
    )
    lines = [_fields(x) for x in out.splitlines() if x.startswith("multi_host_bench")]
    assert len(lines) == 3 and float(lines[-1]["delivered"]) > 0


@pytest.mark.slow
def test_retention_bench_smoke(server_dsn):
    """bench/retention_bench.py drives a few simulated days through the data lifecycle."""
    out = _run(
        sys.executable,
        "bench/retention_bench.py",
        "--dsn",
        server_dsn,
        "--days",
        "3",
        "--events",
        "2000",
        "--events-days",
        "1",
        "--messages-days",
        "1",
    )
    rows = [line.split("\t") for line in out.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    # From the second day on, a day's partition is dropped and a day's messages deleted.
    assert all(int(r[-2]) >= 1 and int(r[-1]) > 0 for r in rows[1:]), rows


@pytest.mark.slow
def test_logging_cost_smoke(server_dsn):
    """bench/logging_cost.sh runs two relays, one at info and one at warning, and compares
    them; bench/logging_cost.py times one log call against stock structlog."""
    out = _run(
        "bash",
        "bench/logging_cost.sh",
        "--smoke",
        env={
            "PEER_BENCH_DIR": str(PEER_BENCH),
            "BOUNCE_RELAY_TEST_DSN": server_dsn,
            "PYTHON": sys.executable,
        },
    )
    [summary] = [_fields(x) for x in out.splitlines() if x.startswith("logging_cost_summary")]
    assert float(summary["info_vs_warning"]) > 0
    assert float(summary["info_lines_per_msg"]) >= 1  # the info relay did log its messages
    calls = _run(sys.executable, "bench/logging_cost.py", "--calls", "2000", "--rounds", "1")
    [line] = [_fields(x) for x in calls.splitlines() if x.startswith("logging_cost_call")]
    assert float(line["relay_us"]) > 0 and line["dropped"] == "0"
