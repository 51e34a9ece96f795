"""What one SMTP client may cost the relay: connections, junk commands, the pace of DATA.

Postfix's smtpd has the same knobs (``smtpd_client_connection_count_limit``,
``smtpd_junk_command_limit``, ``smtpd_hard_error_limit``, ``smtpd_timeout``). Here:

- ``ConnectionCount``: sessions open in this process; past ``[smtp] max_connections`` a new
  connection hears 421 4.7.0 and is closed before its greeting.
- ``CommandBudget``: NOOPs, RSETs and invalid commands of one session, counted from its last
  accepted message: a long-lived MTA connection sends thousands of messages with an RSET
  now and then, an abuser sends none. Past a limit: 421 4.7.0 and close.
- ``DataWatch``: the DATA phase as a whole (``data_timeout``) and its average pace once a
  grace period is over (``min_data_rate``). A client that drips its message is cut with
  421 4.4.2 and nothing is stored.
- Failed SMTP AUTH: ``max_auth_failures`` a session (the session's own count), and
  ``auth_failures_per_client`` per client address inside ``auth_failure_window``, counted
  for every session of this process by ``auth_failures`` (``relay.passwords.AttemptLimit``:
  in memory, at most ``MAX_AUTH_CLIENTS`` addresses, the least recently seen forgotten
  first, so a flood of addresses cannot grow it). An IPv6 client is counted by its /64
  (``client_key``): one host commonly has a whole /64 to pick source addresses from.

These only count and keep time; ``relay.intake.RelaySMTP`` asks them and hangs up.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.clock import Clock, utc_now
from relay.config import SmtpConfig
from relay.passwords import AttemptLimit

__all__ = [
    "INVALID",
    "MAX_AUTH_CLIENTS",
    "CommandBudget",
    "ConnectionCount",
    "DataWatch",
    "Limits",
    "client_key",
    "is_invalid",
]

INVALID = "invalid"  # the CommandBudget kind of a command answered as a protocol error

# Syntax errors, unknown commands, bad sequence, unknown parameters (RFC 5321 §4.2.2-4.2.3).
_PROTOCOL_ERRORS = ("500", "501", "502", "503", "504", "555")

# Client addresses whose failed AUTH attempts are remembered: at most auth_failures_per_client
# timestamps each, so some hundred bytes an address, a few MB in all.
MAX_AUTH_CLIENTS = 10_000


def is_invalid(reply: str) -> bool:
    """Whether ``reply`` says the command was invalid (counted against max_invalid_commands).

    A refused address (5.1.x: malformed recipient in a long list) is not an invalid
    command: bulk senders have bad addresses in their lists and must not be cut for them."""
    return reply[:3] in _PROTOCOL_ERRORS and not reply[4:8].startswith("5.1.")


class ConnectionCount:
    """Sessions open in this relay process, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def admit(self) -> bool:
        """Count a new connection in; False (and not counted) when the relay is full."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class CommandBudget:
    """How many NOOP, RSET and invalid commands one session has left."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = limits
        self._used: Counter[str] = Counter()

    def spend(self, kind: str) -> bool:
        """Count one command of ``kind``; False once the session is past its limit."""
        self._used[kind] += 1
        return self._used[kind] <= self._limits[kind]

    def limit(self, kind: str) -> int:
        return self._limits[kind]

    def refill(self) -> None:
        """A message was accepted: the client is doing real work, start counting again."""
        self._used.clear()


class DataWatch:
    """Keeps time over one DATA phase, from the 354 to the final dot.

    ``cut(reason, details)`` is called at most once: "data_timeout" when the phase lasts
    longer than ``timeout``, "data_too_slow" when, after ``grace``, fewer than ``min_rate``
    bytes a second have come on average. Timers, not polling: the pace is checked again
    exactly when the average would fall under the rate if no further byte came."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cut: Callable[[str, dict[str, float]], None],
        *,
        timeout: float,
        min_rate: float,
        grace: float,
    ) -> None:
        self._loop = loop
        self._cut = cut
        self._timeout = timeout
        self._min_rate = min_rate
        self._grace = grace
        self._started = 0.0
        self.received = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._pace: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._started = self._loop.time()
        self.received = 0
        self._deadline = self._loop.call_at(self._started + self._timeout, self._expire)
        self._pace = self._loop.call_at(self._started + self._grace, self._check_pace)

    def count(self, size: int) -> None:
        self.received += size

    def stop(self) -> None:
        for handle in (self._deadline, self._pace):
            if handle is not None:
                handle.cancel()
        self._deadline = self._pace = None

    def _details(self) -> dict[str, float]:
        seconds = self._loop.time() - self._started
        return {"seconds": round(seconds, 3), "received": self.received}

    def _expire(self) -> None:
        details = self._details()
        self.stop()
        self._cut("data_timeout", details)

    def _check_pace(self) -> None:
        elapsed = self._loop.time() - self._started
        if self.received < self._min_rate * elapsed:
            details = self._details()
            self.stop()
            self._cut("data_too_slow", details)
            return
        # With no further byte, the average reaches the floor at received / min_rate.
        self._pace = self._loop.call_at(
            self._started + self.received / self._min_rate, self._check_pace
        )


def client_key(address: str) -> str:
    """Who a client address is, for counting: an IPv4 address (also IPv4-mapped IPv6) as
    itself, an IPv6 address as its /64; anything else (a test's odd peer) as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class Limits:
    """The ``[smtp]`` limits of one listener, its connection count and its count of
    failed AUTH attempts per client."""

    connections: ConnectionCount
    commands: Mapping[str, int]
    data_timeout: float
    min_data_rate: float
    min_data_rate_grace: float
    max_auth_failures: int
    auth_failures: AttemptLimit  # keyed by client_key(client address)

    @classmethod
    def from_config(cls, smtp: SmtpConfig, clock: Clock = utc_now) -> Limits:
        return cls(
            connections=ConnectionCount(smtp.max_connections),
            commands={
                "NOOP": smtp.max_noops,
                "RSET": smtp.max_rsets,
                INVALID: smtp.max_invalid_commands,
            },
            data_timeout=smtp.data_timeout.total_seconds(),
            min_data_rate=float(smtp.min_data_rate),
            min_data_rate_grace=smtp.min_data_rate_grace.total_seconds(),
            max_auth_failures=smtp.max_auth_failures,
            auth_failures=AttemptLimit(
                smtp.auth_failures_per_client,
                smtp.auth_failure_window,
                clock,
                max_clients=MAX_AUTH_CLIENTS,
            ),
        )

    def budget(self) -> CommandBudget:
        return CommandBudget(self.commands)

    def data_watch(
        self, loop: asyncio.AbstractEventLoop, cut: Callable[[str, dict[str, float]], None]
    ) -> DataWatch:
        return DataWatch(
            loop,
            cut,
            timeout=self.data_timeout,
            min_rate=self.min_data_rate,
            grace=self.min_data_rate_grace,
        )
