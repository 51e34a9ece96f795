"""Shaping in the worker: each transaction asks its key (destination group x source IP) for
a connection and a start before it goes; a round with the other relays, every
``[shaping] sync_every``, moves the shared limits and this relay's shares of them.
``policies.shaping`` decides everything; this module counts, waits and asks.

Where the state lives:

- the *limits* (and why they are what they are) in PostgreSQL, so every relay honours them
  and a restart keeps what was learned;
- each relay's *use* (connections held and open, transactions a minute started, accepted,
  asking) in PostgreSQL too, rewritten each round: it is how the others compute their
  shares;
- this relay's *shares*, counters and pending throttling replies here, in memory.

Admission (``admit``): a transaction goes when the key's token clock allows a start (one
every ``60 / rate`` seconds of this relay's share, with a second's burst) and this relay
holds fewer transactions in flight for its key than its connection share. For a
connection it waits here, as it would for the upstream's per-host limit (handed back
after 30 seconds). For a start it is handed back untried, due after the next free start,
the k-th turned away k starts later (a minute ahead at most): a backlog comes back at
this relay's pace, spread over time rather than all at once. Nothing is reserved for it:
what comes back may be claimed by another relay, which admits it on its own clock.

A key this relay has not yet settled with the others has no share: its first transaction
waits for a round (``sync_every`` at most) rather than open a connection the others may
already hold. A round that does not come in time (the database is slow or away) leaves it
one connection until one does: the least any relay is given.

The upstream asks ``connection_cap`` when a connection comes free: one over this relay's
share is closed rather than kept idle, which is how a smaller share takes effect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from policies.shaping import Key, Limit, RelayUse, Settled, ShapingRules, Signal, settle
from relay.clock import Clock, utc_now
from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import Store
from relay.store.shaping import ShapingWrite

__all__ = ["Shaper"]

log = structlog.get_logger("relay.shaping")

_MINUTE = timedelta(minutes=1)
# A rate measured over less than this is not a rate yet.
_SHORTEST_MEASURE = timedelta(seconds=5)
# A key with nothing in flight and no start for this long is forgotten (its use row goes).
_IDLE = timedelta(minutes=2)
# Use rows of relays quiet this long are deleted; changes are kept this long.
_QUIET = timedelta(minutes=5)
_KEEP_CHANGES = timedelta(days=30)
_PRUNE_EVERY = timedelta(minutes=1)
# Throttling replies kept per key for the next round.
_MAX_SIGNALS = 10
# A start may come this much earlier than its token clock says: a second's burst.
_BURST = timedelta(seconds=1)
# A turned-away transaction waits at least this, however fast its key's transactions are.
_SHORTEST_WAIT = timedelta(milliseconds=250)
# The longest a transaction waits here for one of its key's connections.
_CONNECTION_WAIT = timedelta(seconds=30)
# Turned-away transactions are spread this far ahead at most.
_FURTHEST_SLOT = timedelta(seconds=60)


class _PerMinute:
    """Events over the last minute, counted per second (60 buckets): the measure an
    upstream counting a sliding minute uses, to within a second. While the key is younger
    than a minute, what it did so far scaled to a minute (after five seconds at least)."""

    def __init__(self, since: datetime) -> None:
        self.since = since
        self._counts = [0] * 60
        self._seconds = [-1] * 60

    def add(self, now: datetime, n: int = 1) -> None:
        second = int(now.timestamp())
        slot = second % 60
        if self._seconds[slot] != second:
            self._seconds[slot], self._counts[slot] = second, 0
        self._counts[slot] += n

    def rate(self, now: datetime) -> float:
        second = int(now.timestamp())
        total = sum(
            count
            for count, at in zip(self._counts, self._seconds, strict=True)
            if second - 60 < at <= second
        )
        age = now - self.since
        if age < _MINUTE:
            return total / (max(age, _SHORTEST_MEASURE) / _MINUTE)
        return float(total)


@dataclass
class _KeyState:
    sent: _PerMinute
    accepted: _PerMinute
    wanted: _PerMinute
    last_active: datetime
    in_flight: int = 0
    settled: bool = False  # has had a round since it appeared
    connections: int = 0  # this relay's share
    rate: float | None = None  # ... in transactions a minute; None: no limit
    limit: Limit | None = None
    next_start: datetime | None = None  # the token clock
    start_horizon: datetime | None = None  # the last slot given to a turned-away one
    # Transactions waiting for one of this relay's connections, first come first served.
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    signals: list[tuple[Signal, str]] = field(default_factory=list)
    # This relay's open connections when a connection was last refused (0: none since the
    # last round): what the upstream allowed, not what is open by the round.
    open_at_refusal: int = 0


class Shaper:
    """This relay's side of the shared limits (see the module docstring).

    ``open_connections(key)`` is the upstream's count of this relay's open connections
    (busy or idle) for a key."""

    def __init__(
        self,
        store: Store,
        owner: str,
        rules: Callable[[], ShapingRules],
        *,
        clock: Clock = utc_now,
        open_connections: Callable[[Key], int] = lambda key: 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.owner = owner
        self.rules = rules
        self.clock = clock
        self.open_connections = open_connections
        self._keys: dict[Key, _KeyState] = {}
        self._round_done = asyncio.Event()
        self._wake = asyncio.Event()
        self._pruned_at: datetime | None = None

    # -- the worker's questions -----------------------------------------------------------------

    async def admit(self, key: Key, now: datetime) -> datetime | None:
        """None when a transaction for ``key`` may start now, else when to
        try it again. Admitted, it holds one of this relay's connections for ``key`` until
        ``finished`` (or ``unused``, when it does not go after all); it may wait here a
        while for one, as it would for the upstream's per-host limit."""
        rules = self.rules()
        if not rules.enabled:
            return None
        state = self._state(key, now)
        state.wanted.add(now)
        if not state.settled:
            await self._await_round(state, rules)
            if not state.settled:
                # No round in time (the database is slow or away): one connection and no
                # rate until one comes, rather than hold the mail back. One connection is
                # the least any relay is given, and the next round corrects it.
                state.settled, state.connections = True, 1
                log.warning(
                    "shaping.unsettled",
                    group=key.group,
                    source_ip=key.source_ip,
                    action="sending on one connection until a shaping round gets through",
                )
        if state.rate is not None:
            start = self._start_slot(state, now)
            if start is not None:
                self.metrics.shaping_waits.labels("start").inc()
                return start
        if state.in_flight < state.connections and not state.waiters:
            state.in_flight += 1
        else:
            self.metrics.shaping_waits.labels("connection").inc()
            if not await _connection(state):
                self.metrics.shaping_waits.labels("no_connection").inc()
                return self.clock() + _CONNECTION_WAIT
        state.last_active = self.clock()
        return None

    def started(self, key: Key, now: datetime) -> None:
        """An admitted transaction for ``key`` starts: it counts in the key's rate."""
        state = self._state(key, now)
        state.sent.add(now)
        state.last_active = now

    def unused(self, key: Key) -> None:
        """An admitted transaction for ``key`` did not go (another relay took it over)."""
        state = self._keys.get(key)
        if state is not None:
            _release(state)

    def finished(
        self,
        key: Key,
        now: datetime,
        *,
        accepted: bool,
        signal: Signal | None = None,
        reply: str = "",
    ) -> None:
        """A transaction for ``key`` ended; ``accepted`` when the upstream
        took it; ``signal`` when its reply asked for less (``policies.shaping.signal_of``)."""
        state = self._keys.get(key)
        if state is None:
            return
        _release(state)
        state.last_active = now
        if accepted:
            state.accepted.add(now)
        if signal is not None:
            # Kept until a round takes them; a database that refuses rounds for long must
            # not grow them without end (the latest say the most).
            state.signals = [*state.signals[-(_MAX_SIGNALS - 1) :], (signal, reply)]
            if signal is Signal.CONNECTIONS:
                opened = self.open_connections(key)
                state.open_at_refusal = max(state.open_at_refusal, opened)
            # Slow down here at once; the round makes it the cluster's.
            if signal is Signal.RATE and state.rate is not None:
                state.rate *= self.rules().backoff
            elif signal is Signal.CONNECTIONS:
                state.connections = max(0, min(state.connections, state.in_flight))
            self._wake.set()

    def connection_cap(self, key: Key) -> int | None:
        """How many connections this relay may keep open for ``key`` (None: no limit)."""
        if not self.rules().enabled:
            return None
        state = self._keys.get(key)
        return state.connections if state is not None and state.settled else None

    def shares(self, key: Key) -> tuple[int, float | None, Limit | None] | None:
        """This relay's connection and rate shares of ``key`` and its limit (tests, logs)."""
        state = self._keys.get(key)
        if state is None or not state.settled:
            return None
        return state.connections, state.rate, state.limit

    # -- rounds ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """A round every ``sync_every`` (sooner when a key is new or a reply asked for less)."""
        while True:
            rules = self.rules()
            # asyncio.timeout, not wait_for: see DeliveryWorker.run.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rules.sync_every.total_seconds()):
                    await self._wake.wait()
            self._wake.clear()
            if not rules.enabled:
                continue
            try:
                await self.sync()
            except Exception as exc:  # a bug: log it and keep the rounds going
                log.exception("shaping.round_error", error_type=type(exc).__name__)
                self._round_done.set()

    async def sync(self) -> None:
        """One round with the other relays (``policies.shaping.settle`` per key)."""
        now = self.clock()
        rules = self.rules()
        for key, state in list(self._keys.items()):
            idle = now - state.last_active > _IDLE
            if idle and state.in_flight == 0 and not state.signals:
                del self._keys[key]
        keys = list(self._keys)
        signals = {key: list(self._keys[key].signals) for key in keys}
        settled: dict[Key, Settled] = {}

        def decide(
            limits: dict[Key, Limit], others: dict[Key, dict[str, RelayUse]]
        ) -> ShapingWrite:
            use: dict[Key, RelayUse] = {}
            for key in keys:
                state = self._keys[key]
                mine = self._use(key, state, now)
                result = settle(
                    limits.get(key),
                    signals[key],
                    self.owner,
                    mine,
                    others.get(key, {}),
                    now,
                    rules,
                    key.group,
                )
                settled[key] = result
                held = max(result.connections, mine.open_connections, state.in_flight)
                use[key] = RelayUse(
                    held, mine.open_connections, mine.sent, mine.accepted, mine.wanted
                )
            return ShapingWrite(
                limits={k: s.limit for k, s in settled.items() if s.changed},
                changes=[(k, c) for k, s in settled.items() for c in s.changes],
                use=use,
            )

        try:
            await self.store.shaping_round(
                self.owner, now, now - 3 * max(rules.sync_every, timedelta(seconds=1)), keys, decide
            )
        except StoreError as exc:
            self.metrics.shaping_rounds_failed.inc()
            log.warning(
                "shaping.round_failed",
                error=str(exc),
                action="the shares stay as they are; trying again at the next round",
            )
            self._round_done.set()
            return
        for key, result in settled.items():
            kept = self._keys.get(key)
            if kept is None:
                continue
            state = kept
            taken = signals[key]
            state.signals = [s for s in state.signals if s not in taken] if taken else state.signals
            state.open_at_refusal = 0
            state.settled = True
            state.connections = result.connections
            _hand_on(state)  # a larger share lets waiting transactions go
            state.rate = result.rate
            state.limit = result.limit
            for change in result.changes:
                self.metrics.shaping_changes.labels(change.what, change.cause).inc()
                log.info(
                    "shaping.limit_changed",
                    group=key.group,
                    source_ip=key.source_ip,
                    what=change.what,
                    old=change.old,
                    new=change.new,
                    cause=change.cause,
                    reply=change.reply,
                )
        self._round_done.set()
        await self._prune(now)

    async def leave(self) -> None:
        """This relay stops: its use rows go, so the others need not wait for them to age
        out before they take its connections."""
        try:
            await self.store.forget_shaping_use(self.owner)
        except StoreError as exc:
            log.warning("shaping.leave_failed", error=str(exc), action="its rows age out")

    async def _await_round(self, state: _KeyState, rules: ShapingRules) -> None:
        """Wait for a round that settles ``state``'s key (one that began before the key
        appeared does not), two rounds and five seconds at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * rules.sync_every.total_seconds() + 5
        while not state.settled and (left := deadline - loop.time()) > 0:
            self._round_done.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._round_done.wait()

    async def _prune(self, now: datetime) -> None:
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            await self.store.prune_shaping(now - _QUIET, now - _KEEP_CHANGES)
        except StoreError as exc:
            log.warning("shaping.prune_failed", error=str(exc), action="tried again in a minute")

    # -- helpers --------------------------------------------------------------------------------

    def _state(self, key: Key, now: datetime) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(
                sent=_PerMinute(now),
                accepted=_PerMinute(now),
                wanted=_PerMinute(now),
                last_active=now,
            )
        return state

    def _use(self, key: Key, state: _KeyState, now: datetime) -> RelayUse:
        return RelayUse(
            held=state.connections,
            open_connections=max(self.open_connections(key), state.open_at_refusal),
            sent=state.sent.rate(now),
            accepted=state.accepted.rate(now),
            wanted=state.wanted.rate(now),
        )

    def _start_slot(self, state: _KeyState, now: datetime) -> datetime | None:
        """None when the key's token clock allows a start now (and takes it), else when to
        come back: the next free start, or the k-th after it for the k-th turned away, so
        that what comes back comes at this relay's pace (a minute ahead at most)."""
        assert state.rate is not None
        if state.rate <= 0:
            return now + self.rules().sync_every  # no share at all until a round gives one
        gap = _MINUTE / state.rate
        next_start = max(state.next_start or now, now - _BURST)
        if next_start <= now:
            state.next_start = next_start + gap
            return None
        spread = state.start_horizon
        spread = next_start if spread is None or spread < next_start else spread + gap
        if spread - now > _FURTHEST_SLOT:
            spread = next_start  # a backlog longer than a minute starts over
        state.start_horizon = spread
        return max(spread, now + _SHORTEST_WAIT)


async def _connection(state: _KeyState) -> bool:
    """Wait, first come first served, for one of this relay's connections for the key:
    True with it taken (``_hand_on`` counted it), False after ``_CONNECTION_WAIT`` (the
    transaction is handed back). One waiter is woken per connection that comes free: with
    a hundred transactions waiting, waking them all for each would cost more than the
    sending."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.waiters.append(waiter)
    _hand_on(state)  # room already (those ahead of it gave up waiting): at once
    if waiter.done():
        return True
    try:
        async with asyncio.timeout(_CONNECTION_WAIT.total_seconds()):
            await waiter
    except TimeoutError:
        return waiter.done() and not waiter.cancelled()  # handed on just as time ran out
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            _release(state)  # handed on, but this transaction will not go
        raise
    return True


def _release(state: _KeyState) -> None:
    """A transaction's connection comes free: to the first waiting, else back."""
    state.in_flight = max(0, state.in_flight - 1)
    _hand_on(state)


def _hand_on(state: _KeyState) -> None:
    """Give the connections this relay's share has free to the transactions waiting."""
    while state.waiters and state.in_flight < state.connections:
        waiter = state.waiters.popleft()
        if not waiter.done():  # a waiter whose time ran out is gone
            state.in_flight += 1
            waiter.set_result(None)
