"""The security fixes the relay relies on are pinned, and what is installed honours the pins:
aiosmtpd 1.4.6 (SMTP smuggling, STARTTLS command injection), aiosmtplib 5.1.2 (STARTTLS
response injection)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
MINIMUM = {"aiosmtpd": (1, 4, 6), "aiosmtplib": (5, 1, 2)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("package", sorted(MINIMUM))
def test_pin_and_installed_version_carry_the_fix(package):
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [pin] = [d for d in dependencies if re.match(rf"{package}\s*>=", d)]
    assert _version(pin.split(">=", 1)[1]) >= MINIMUM[package]
    assert _version(importlib.metadata.version(package)) >= MINIMUM[package]
