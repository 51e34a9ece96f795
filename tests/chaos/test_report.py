"""The RELIABILITY.md generator: its list of covered cases names real tests, and it renders."""

from __future__ import annotations

import re

from tests.chaos.report import COVERED, ROOT, render


def test_every_covered_case_names_an_existing_test():
    """A renamed or deleted test must not linger in RELIABILITY.md's second table."""
    missing = []
    for covered in COVERED:
        for test in covered.tests:
            path, _, name = test.partition("::")
            source = (ROOT / path).read_text(encoding="utf-8")
            if not re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M):
                missing.append(test)
    assert not missing


def test_render_puts_each_case_in_both_tables_with_its_verdict():
    """A case shows its expectation, observation and pytest's verdict, then its numbers."""
    results = [
        {
            "case": "SIGKILL at x",
            "expected": "no loss",
            "observed": "lost 0 | fine",
            "test": "tests/chaos/test_a.py::test_b[x]",
            "accepted": 5,
            "delivered": 5,
            "lost": 0,
            "duplicated": 1,
            "iterations": 3,
        }
    ]
    meta = {
        "command": "python -m tests.chaos.report",
        "date": "today",
        "commit": "abc",
        "machine": "here",
        "tests": 1,
        "seconds": 1.0,
        "status": 0,
        "versions": [("Python", "3.11")],
    }
    text = render(results, {"tests/chaos/test_a.py::test_b[x]": "pass"}, meta)
    assert "| SIGKILL at x | no loss | lost 0 \\| fine | pass |" in text
    assert "| SIGKILL at x | 5 | 5 | 0 | 1 | iterations 3 |" in text
    assert "$ python -m tests.chaos.report" in text
