"""Tests that need a tool from outside Python (Chromium, Postfix's smtp-source).

On a developer's machine without the tool such a test is skipped with the reason. In CI
(`.ci/run` sets BOUNCE_RELAY_CI=1 after installing every tool) it is never skipped: a
missing tool is then a failure, so a broken install cannot turn the suite silently green.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["IN_CI", "needs"]

IN_CI = os.environ.get("BOUNCE_RELAY_CI") == "1"


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip where ``available`` is false, except in CI, where the test runs and fails."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)
