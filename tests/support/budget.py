"""Run a piece of Python in a fresh interpreter within a time budget: a parser that regresses
to quadratic time fails its test instead of hanging the run (the child is killed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["run_within"]

REPO = Path(__file__).resolve().parents[2]


def run_within(code: str, stdin: bytes, budget: float, what: str) -> bytes:
    """stdout of ``python -c code`` fed ``stdin``; fails the test when it takes longer than
    ``budget`` seconds (saying ``what`` did not finish) or exits non-zero."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=stdin,
            capture_output=True,
            timeout=budget,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish {len(stdin):,} bytes within {budget:g} s")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout
