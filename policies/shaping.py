"""Shaping shared by the cluster: how many connections and messages a minute each
destination may take from each source IP, learned from its replies. Pure: the relays'
use comes from the store, the replies from the worker; the worker (relay.delivery.shaping),
the CLI and the admin page all ask these functions.

A *key* is a destination group and a source IP. The group is the mailbox provider whose MX
host it is (``gmail``, ``microsoft``: ``group_of``), else the host itself: providers count
connections and messages per sending IP across all their MX hosts, and an unknown host is
its own provider. Per source IP because that is what providers count (Gmail, Yahoo and
Microsoft all publish per-IP limits), and because each IP of a pool is its own budget.

Every relay process on one database shares each key's *limit*: at most ``connections``
open connections and ``rate`` messages a minute, summed over the processes. Each process
takes a *share* of the limit (``connection_share``, ``rate_share``): in proportion to what
it wants, so a process with nothing to send holds nothing back from the others. Connection
shares are strict (what one process may open is the limit less what the others hold),
since a provider counts open connections the instant a new one arrives; rate shares are
not (a provider counts messages over a window, and a second's overlap is noise in it).

How a limit moves (``after_signal``, ``grow``), "additive increase, multiplicative decrease
or better":

- **Too many connections** (a 421 or a rate-limit reply at the greeting, before any
  command): the limit becomes what the cluster had open when it was refused (the refused
  one not counted), and never more than it was less one. The upstream has just told us
  its limit.
- **Too many messages** (a rate-limit reply after the greeting, ``Category.RATE_LIMITED``,
  or a provider hint asking for less traffic): the limit becomes ``backoff`` (0.95) of
  what the upstream accepted over the last minute. A minute of accepted messages is the
  upstream's own measure of what it allows; cutting by half (TCP's rule) would leave a
  sawtooth averaging three quarters of it. A limit already below that is left alone: the
  refusals answer what was sent before it came down (an upstream counting a sliding
  minute goes on refusing for up to a minute after a burst), and cutting again on each
  would compound to a fraction of the real limit. A first limit, set while nothing
  limited the key, starts from the same measure, and needs something accepted to start
  from.
- After a change the key is left alone for ``calm`` (replies to messages already sent are
  not news), then **grows** every ``grow_every`` while the cluster uses at least
  ``busy_share`` of it: fast (x ``fast_growth``) while below ``near`` of the level it was
  refused at (a deep cut, or a provider that relaxed), slowly (+``slow_growth``, at least
  one message a minute) near it and beyond, probing. Connections grow by one.
- A learned limit that has grown to ``lift_at`` times the level it was refused at no
  longer holds anything back, and is lifted (back to the configured ceiling).

Limits never exceed the configured ceiling (``ShapingRules``) and never drop below one
connection and ``min_rate`` messages a minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from policies.categories import Category
from policies.providers import provider_of_mx

__all__ = [
    "Change",
    "ClusterUse",
    "Key",
    "Limit",
    "RelayUse",
    "Settled",
    "ShapingRules",
    "Signal",
    "after_signal",
    "connection_share",
    "group_of",
    "grow",
    "rate_share",
    "settle",
    "signal_of",
]


class Key(NamedTuple):
    """What a limit is of: a destination group (``group_of``) and a source IP."""

    group: str
    source_ip: str

    def label(self) -> str:
        return f"{self.group} from {self.source_ip}"


class Signal(StrEnum):
    """What a throttling reply says about the key it came from."""

    CONNECTIONS = "connections"  # refused at the greeting: too many connections
    RATE = "rate"  # refused after it: too many messages


@dataclass(frozen=True)
class ShapingRules:
    """``[shaping]`` in config.toml."""

    enabled: bool = True
    # Ceilings per key, summed over the cluster; None: no rate limit until one is learned.
    connections: int = 20
    rate: float | None = None  # messages a minute
    # Per group ceilings, by provider name or MX host (exact, lower case).
    groups: Mapping[str, tuple[int | None, float | None]] = field(default_factory=dict)
    min_rate: float = 6.0  # messages a minute: one every ten seconds
    sync_every: timedelta = timedelta(seconds=1)
    calm: timedelta = timedelta(seconds=10)
    grow_every: timedelta = timedelta(seconds=30)
    backoff: float = 0.95
    fast_growth: float = 1.25
    slow_growth: float = 0.02
    near: float = 0.9
    busy_share: float = 0.8
    lift_at: float = 2.0

    def ceiling(self, group: str) -> tuple[int, float | None]:
        """The configured connections and rate of ``group`` (a rule's, else the defaults)."""
        connections, rate = self.groups.get(group, (None, None))
        return (
            connections if connections is not None else self.connections,
            rate if rate is not None else self.rate,
        )


@dataclass(frozen=True)
class Limit:
    """One key's shared limit and how it came to be (persisted by the store)."""

    connections: int
    rate: float | None  # messages a minute; None: none
    # The level the upstream last refused at; None: never refused (the ceiling holds).
    refused_connections: int | None = None
    refused_rate: float | None = None
    changed_at: datetime | None = None  # the last decrease
    grown_at: datetime | None = None  # the last increase

    @classmethod
    def ceiling_of(cls, rules: ShapingRules, group: str) -> Limit:
        connections, rate = rules.ceiling(group)
        return cls(connections, rate)

    @property
    def learned(self) -> bool:
        return self.refused_connections is not None or self.refused_rate is not None


@dataclass(frozen=True)
class ClusterUse:
    """What all relays together do with one key, over the last minute (from the store)."""

    open_connections: int = 0
    sent_per_minute: float = 0.0  # transactions started
    accepted_per_minute: float = 0.0  # messages the upstream took (2xx)
    wanted_per_minute: float = 0.0  # transactions that asked to start, admitted or not


@dataclass(frozen=True)
class RelayUse:
    """What one relay process does with one key: the connections it may open (``held``)
    and has open, and its transactions a minute (started, taken by the upstream, asking
    to start whether admitted or not)."""

    held: int = 0
    open_connections: int = 0
    sent: float = 0.0
    accepted: float = 0.0
    wanted: float = 0.0


def cluster_use(uses: Iterable[RelayUse]) -> ClusterUse:
    total = ClusterUse()
    for use in uses:
        total = ClusterUse(
            total.open_connections + use.open_connections,
            total.sent_per_minute + use.sent,
            total.accepted_per_minute + use.accepted,
            total.wanted_per_minute + use.wanted,
        )
    return total


@dataclass(frozen=True)
class Change:
    """One change of a limit, for ``bounce-relay shaping show``."""

    what: str  # "connections" or "rate"
    old: float | None
    new: float | None
    cause: str  # "refused", "grew" or "lifted"
    reply: str = ""


@dataclass(frozen=True)
class Settled:
    """A relay's round for one key: the key's limit (``changed`` when this round moved it)
    and this relay's share of it."""

    limit: Limit
    changes: tuple[Change, ...]
    connections: int  # this relay may hold this many open
    rate: float | None  # and start this many transactions a minute (None: no limit)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def settle(
    stored: Limit | None,
    signals: Sequence[tuple[Signal, str]],
    me: str,
    mine: RelayUse,
    others: Mapping[str, RelayUse],
    now: datetime,
    rules: ShapingRules,
    group: str,
) -> Settled:
    """One relay's round for one key: the stored limit within today's ceiling, moved by
    the throttling replies this relay saw since its last round (``signals``: the signal
    and the reply's text) or grown, and this relay's shares of it."""
    limit = _within_ceiling(stored, rules, group)
    use = cluster_use([mine, *others.values()])
    changes: list[Change] = []
    for signal, reply in signals:
        lowered = after_signal(limit, signal, use, now, rules)
        if lowered is not None:
            changes += _changes(limit, lowered, "refused", reply)
            limit = lowered
    if not changes:
        grown = grow(limit, use, now, rules, group)
        if grown is not None:
            lifted = grown.refused_rate is None and limit.refused_rate is not None
            lifted |= grown.refused_connections is None and limit.refused_connections is not None
            changes += _changes(limit, grown, "lifted" if lifted else "grew", "")
            limit = grown
    wanted = {relay: use.wanted for relay, use in others.items()}
    wanted[me] = max(mine.wanted, 1.0)  # asking now, even if the minute's count lags
    held = {relay: use.held for relay, use in others.items()}
    return Settled(
        limit=limit,
        changes=tuple(changes),
        connections=connection_share(limit.connections, me, wanted, held),
        rate=rate_share(limit.rate, me, wanted),
    )


def _within_ceiling(stored: Limit | None, rules: ShapingRules, group: str) -> Limit:
    """The stored limit under today's configured ceiling (config.toml may have changed);
    what was never learned is the ceiling itself."""
    connections, rate = rules.ceiling(group)
    if stored is None:
        return Limit(connections, rate)
    if stored.refused_connections is not None:
        connections = min(connections, stored.connections)
    if stored.refused_rate is not None and stored.rate is not None:
        rate = stored.rate if rate is None else min(rate, stored.rate)
    return replace(stored, connections=connections, rate=rate)


def _changes(old: Limit, new: Limit, cause: str, reply: str) -> list[Change]:
    changes = []
    if new.connections != old.connections:
        changes.append(Change("connections", old.connections, new.connections, cause, reply))
    if new.rate != old.rate:
        changes.append(Change("rate", old.rate, new.rate, cause, reply))
    return changes


def group_of(host: str) -> str:
    """The destination group of an MX or smarthost ``host``: its provider, else the host."""
    name = host.strip().lower().rstrip(".")
    return provider_of_mx(name) or name


def signal_of(
    code: int,
    category: Category,
    *,
    at_greeting: bool,
    synthetic: bool,
    slow_down_hint: bool = False,
) -> Signal | None:
    """Whether a reply tells a key to slow down, and how. Our own replies (``synthetic``: a
    lost connection, a timeout) say nothing about the upstream's limits: a network fault is
    not a throttle."""
    if synthetic:
        return None
    if at_greeting:
        # A 421 at the greeting is a server refusing one more connection ("too many
        # connections", "service not available: too busy"); either way, fewer connections.
        if code == 421 or category is Category.RATE_LIMITED:
            return Signal.CONNECTIONS
        return None
    if category is Category.RATE_LIMITED or slow_down_hint:
        return Signal.RATE
    return None


def after_signal(
    limit: Limit, signal: Signal, use: ClusterUse, now: datetime, rules: ShapingRules
) -> Limit | None:
    """The key's limit after a throttling reply, or None to leave it as it is: within
    ``calm`` of the last decrease the reply answers what was sent before that decrease."""
    if limit.changed_at is not None and now - limit.changed_at < rules.calm:
        return None
    if signal is Signal.CONNECTIONS:
        # What was open when the upstream refused one more is what it allows (the refused
        # connection never counted); and a limit that was just probed one higher goes back.
        refused_at = max(1, use.open_connections)
        connections = max(1, min(limit.connections - 1, refused_at))
        return replace(
            limit, connections=connections, refused_connections=refused_at, changed_at=now
        )
    accepted = use.accepted_per_minute
    if limit.rate is None and accepted <= 0:
        # Refused before it accepted anything: there is no rate to learn (a provider's
        # pause for one reply is the throttle's, relay.delivery.throttle), and a first
        # limit at the floor would take hours to grow back.
        return None
    current = limit.rate if limit.rate is not None else max(use.sent_per_minute, accepted)
    rate = max(rules.min_rate, min(current, rules.backoff * accepted))
    if limit.rate is not None and rate >= limit.rate:
        # Already below what the upstream takes: these refusals answer what was sent before
        # the limit came down (an upstream counting a sliding minute refuses for up to a
        # minute after a burst). Cutting again would compound down to a fraction of it.
        return None
    return replace(limit, rate=rate, refused_rate=max(accepted, rate), changed_at=now)


def grow(
    limit: Limit, use: ClusterUse, now: datetime, rules: ShapingRules, group: str
) -> Limit | None:
    """The key's limit one growth step on, or None when it does not grow now: calm since the
    last change, a step due, and the cluster using most of it (an unused limit proves
    nothing about the upstream)."""
    if not limit.learned:
        return None
    last = max((t for t in (limit.changed_at, limit.grown_at) if t is not None), default=None)
    if last is not None:
        if limit.changed_at is not None and now - limit.changed_at < rules.calm:
            return None
        if now - last < rules.grow_every:
            return None
    ceiling_connections, ceiling_rate = rules.ceiling(group)
    connections, rate = limit.connections, limit.rate
    refused_connections, refused_rate = limit.refused_connections, limit.refused_rate
    grew = False
    if (
        refused_connections is not None
        and connections < ceiling_connections
        and use.open_connections >= rules.busy_share * connections
    ):
        connections += 1
        grew = True
        # Lifted at lift_at times the refusal level, and never on the first probe above it
        # (at one connection, twice the level is the probe itself).
        if connections >= max(rules.lift_at * refused_connections, refused_connections + 2):
            connections, refused_connections = ceiling_connections, None
    if (
        refused_rate is not None
        and rate is not None
        and use.sent_per_minute >= rules.busy_share * rate
    ):
        if rate < rules.near * refused_rate:
            rate = min(rate * rules.fast_growth, rules.near * refused_rate)
        else:
            rate += max(rate * rules.slow_growth, 1.0)  # at least a message a minute more
        grew = True
        lifted = rate >= rules.lift_at * refused_rate
        if lifted or (ceiling_rate is not None and rate >= ceiling_rate):
            rate, refused_rate = ceiling_rate, None
    if not grew:
        return None
    return Limit(
        connections=min(connections, ceiling_connections),
        rate=rate,
        refused_connections=refused_connections,
        refused_rate=refused_rate,
        changed_at=limit.changed_at,
        grown_at=now,
    )


def connection_share(
    limit: int, me: str, wanted: Mapping[str, float], held: Mapping[str, int]
) -> int:
    """How many connections relay ``me`` may hold open for a key: its part of ``limit`` in
    proportion to what each relay wants (``wanted``, starts a minute; the largest
    remainders get the units left over, ties by name so every relay computes the same),
    at least one each while there are enough, and never more than the others leave free
    (``held``: what each other relay holds now). Relays that want nothing get nothing."""
    others_hold = sum(n for relay, n in held.items() if relay != me)
    free = max(0, limit - others_hold)
    wanting = {relay: w for relay, w in wanted.items() if w > 0}
    if me not in wanting:
        return 0
    # fsum: the same total whatever order the relays are listed in, so every relay computes
    # the same shares (a plain sum's last bit can decide who gets the spare connection).
    total = math.fsum(wanting.values())
    # One each first while there are enough (a relay with a little to send still sends),
    # then the rest in proportion.
    base = 1 if limit >= len(wanting) else 0
    rest = limit - base * len(wanting)
    parts = {relay: rest * w / total for relay, w in wanting.items()}
    shares = {relay: base + math.floor(part) for relay, part in parts.items()}
    left = limit - sum(shares.values())
    by_remainder = sorted(
        wanting, key=lambda relay: (math.floor(parts[relay]) - parts[relay], relay)
    )
    for relay in by_remainder[: max(0, left)]:
        shares[relay] += 1
    return min(shares[me], free)


def rate_share(rate: float | None, me: str, wanted: Mapping[str, float]) -> float | None:
    """Relay ``me``'s messages a minute of a key's ``rate`` (None: unlimited): max-min fair
    over what each relay wants (starts a minute, admitted or not), so a relay wanting less
    than an equal part leaves the rest to the others. A relay that wants nothing gets
    nothing until it does (its next sync)."""
    if rate is None:
        return None
    demands = sorted(wanted.items(), key=lambda item: (item[1], item[0]))
    left, waiting = rate, len(demands)
    for relay, demand in demands:
        given = min(max(demand, 0.0), left / waiting)
        if relay == me:
            # The most demanding relay also takes what nobody else wants: a demand
            # measured over the last minute lags a backlog that just arrived.
            return left if waiting == 1 else given
        left -= given
        waiting -= 1
    return 0.0
