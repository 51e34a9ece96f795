"""What one per-message log line costs the event loop, in microseconds, in one process.

    python bench/logging_cost.py [--calls N] [--rounds R]

Logs the worker's ``delivery.delivered`` line (its 18 fields, with the delivery's context
bound as the worker binds it) N times into a file, with:

- ``stock``: structlog's stock chain, as configured before issue 23 (merge_contextvars,
  add_log_level, TimeStamper(iso, utc), format_exc_info, JSONRenderer on the standard
  library's json, WriteLoggerFactory: one write(2) per line on the caller);
- ``relay``: ``relay.ops.logging.configure_logging("info", json=True)`` as ``serve`` runs
  it (the CPU time includes the writer thread's; the run waits until all is written);
- ``filtered``: the same call at ``warning``, where it is dropped before any processor:
  what the call itself costs (building its keyword arguments).

The three alternate in each round; medians over the rounds of the process's CPU time per
call (so the writer thread's work counts and a busy neighbour's does not). The end-to-end measure is
bench/logging_cost.sh (info against warning, a relay each, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from relay.ops import logging as relay_logging


def configure(kind: str, out: Path) -> None:
    if kind == "stock":
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(20),
            logger_factory=structlog.WriteLoggerFactory(file=out.open("a")),
            cache_logger_on_first_use=True,
        )
        return
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    level = "warning" if kind == "filtered" else "info"
    relay_logging.configure_logging(level, json=True, fd=fd, background=True)


def delivered(log: structlog.typing.FilteringBoundLogger, i: int) -> None:
    log.info(
        "delivery.delivered",
        delivery_id=123456 + i,
        recipient="someone@example.com",
        attempt=1,
        code=250,
        enhanced="2.0.0",
        reply="2.0.0 Ok: queued as 4XYZ",
        category="delivered",
        rule=None,
        suppress=False,
        next_attempt_at=None,
        source_ip="127.0.0.1",
        destination="example.com",
        synthetic=False,
        give_up=None,
        hint=None,
        incident_id=None,
        probation=False,
    )


async def time_calls(calls: int) -> float:
    """CPU microseconds per call (all threads: the writer's work counts, its waiting does
    not), in a task with the session and the delivery bound."""
    # A logger made after configure(), cached on first use, as the relay's module loggers.
    log = structlog.get_logger("relay.delivery")
    structlog.contextvars.bind_contextvars(session_id="s-4f2a9c", peer="192.0.2.7")
    with structlog.contextvars.bound_contextvars(message_id="Q4XYZ12345", campaign="bench"):
        for i in range(200):  # warm up
            delivered(log, i)
        relay_logging.flush_logs()
        start = time.process_time()
        for i in range(calls):
            delivered(log, i)
        relay_logging.flush_logs()
        return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    kinds = ("stock", "relay", "filtered")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else reversed(kinds):
                out = Path(tmp) / f"{kind}.log"
                configure(kind, out)
                results[kind].append(asyncio.run(time_calls(args.calls)))
                out.unlink()
    relay_logging.configure_logging("warning", json=True, background=False)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"logging_cost_call calls={args.calls} rounds={args.rounds} "
        f"stock_us={med['stock']:.2f} relay_us={med['relay']:.2f} "
        f"filtered_us={med['filtered']:.2f} "
        f"relay_range_us={min(results['relay']):.2f}-{max(results['relay']):.2f} "
        f"stock_range_us={min(results['stock']):.2f}-{max(results['stock']):.2f} "
        f"relay_vs_stock={med['relay'] / med['stock']:.2f} "
        f"dropped={relay_logging.dropped_log_lines()}"
    )


if __name__ == "__main__":
    main()
