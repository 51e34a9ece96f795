"""Crash points for the fault suite (``tests/chaos``): SIGKILL this process at a named spot.

The durability contract ("250 only after the commit", "at-least-once delivery") is about
what survives a process that dies at the worst moment. To test it the relay must die at
*chosen* moments, not just wherever a signal from outside happens to land, so a few places
on the receive and delivery paths call ``crash_point(name)``:

=============================  ===============================================================
``intake.after_data``          DATA received, before the commit is queued
``commit.before_commit``       rows inserted inside the store transaction, before COMMIT
``commit.after_commit``        committed, before any session hears its 250
``delivery.after_upstream_250`` the upstream said 2xx, before the outcome is written
=============================  ===============================================================

``BOUNCE_RELAY_CRASH_AT`` arms them: ``name`` kills on the first pass, ``name:N`` on the Nth;
several are separated by commas. Unset (always, in production) a call costs one check of an
empty dict: no I/O, no lock, no environment read after import.

``raise_point(name, key)`` stands in for a bug instead: with ``BOUNCE_RELAY_RAISE_AT`` set to
``name=key`` it raises ``InjectedFault`` there for that key (``delivery.send`` with a
recipient key: every send to that recipient fails the way an unforeseen exception would).
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_AT_ENV", "RAISE_AT_ENV", "InjectedFault", "armed", "crash_point", "raise_point"]

CRASH_AT_ENV = "BOUNCE_RELAY_CRASH_AT"
RAISE_AT_ENV = "BOUNCE_RELAY_RAISE_AT"


class InjectedFault(RuntimeError):
    """A bug on purpose (tests/chaos)."""


def _parse(value: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in value.split(","):
        name, _, count = item.strip().partition(":")
        if name:
            armed[name] = max(1, int(count)) if count else 1
    return armed


# Passes left before each armed point fires; read once, at import.
_ARMED = _parse(os.environ.get(CRASH_AT_ENV, ""))


def armed(name: str) -> bool:
    """Whether ``name`` is armed in this process (for a hook that needs a set-up of its own)."""
    return name in _ARMED


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``name`` is armed and its countdown reaches zero."""
    if not _ARMED or name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] > 0:
        return
    # Written straight to fd 2 (no logging machinery): the test reads it to know the
    # process died here and not somewhere else.
    os.write(2, f'{{"event": "faults.crash_point", "name": "{name}"}}\n'.encode())
    os.kill(os.getpid(), signal.SIGKILL)


# (name, key) pairs whose raise_point raises; read once, at import.
_RAISE = frozenset(
    (name, key)
    for name, _, key in (
        item.strip().partition("=") for item in os.environ.get(RAISE_AT_ENV, "").split(",")
    )
    if key
)


def raise_point(name: str, key: str) -> None:
    """Raise ``InjectedFault`` here when ``name=key`` is armed."""
    if _RAISE and (name, key) in _RAISE:
        raise InjectedFault(f"fault injected at {name} for {key}")
