"""Guardrails at work: which deliveries may go (``GuardrailGate``, asked by the delivery
worker before it sends), and the pass that judges every active send (``GuardrailWatch``).
``policies.guardrails`` judges; the state lives in PostgreSQL (``guardrails``, migration
0021) so that every relay honours it.

A send is a campaign from one From domain to one mailbox provider. A new one starts as a
canary: its first slice of deliveries goes, the rest are handed back untried until the
slice's rates are known. A send whose rates reach a pause threshold is paused: its
deliveries are handed back untried (never bounced, never suppressed) until an administrator
releases it (``bounce-relay guardrails release``, the admin page).

Each relay process runs one watch. Every ``check_every`` one process (an advisory lock)
judges the sends with recent attempts; every process then reloads the held sends its gate
checks. The provider of a delivery is its recipient domain's (``policies.providers``) until
an attempt has shown the domain's MX host (a company domain at Google Workspace is
Google's): the gate learns that from the worker's outcomes, as the report's rollup counts it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import structlog

from policies.guardrails import (
    GuardrailRules,
    Judgement,
    Level,
    SendCounts,
    canary_slice,
    judge,
    since_baseline,
)
from policies.providers import provider_of
from relay.clock import Clock, utc_now
from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import Store
from relay.store.guardrails import GuardrailRow, Send, SendToJudge
from relay.store.records import ClaimedDelivery

__all__ = ["GuardrailGate", "GuardrailWatch", "release_send", "standing"]

log = structlog.get_logger("relay.guardrails")

# Recipient domains whose provider an MX host has shown, and sends known to be open, kept
# per process; bounded so that a send to millions of domains cannot grow them for ever.
_LEARNED_DOMAINS = 100_000
_KNOWN_OPEN = 10_000
# A spent canary whose attempts stop growing this long is judged on the replies it has.
_CANARY_STALL = timedelta(minutes=1)


class _Bounded(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class GuardrailGate:
    """Says which of a worker's claimed deliveries may go now."""

    def __init__(
        self, store: Store, rules: Callable[[], GuardrailRules], *, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.rules = rules
        self.metrics = metrics or Metrics()
        self.holds: dict[Send, str] = {}  # paused and canary sends (GuardrailWatch reloads)
        self._providers = _Bounded(_LEARNED_DOMAINS)
        self._open = _Bounded(_KNOWN_OPEN)
        # A send's first claim in this process, while it asks the store: the deliveries of
        # the same send claimed meanwhile wait for that answer instead of asking again.
        self._starting: dict[Send, asyncio.Future[str]] = {}

    def learn(self, recipient_domain: str, provider: str) -> None:
        """An attempt's MX host said which provider ``recipient_domain`` is at."""
        if provider and provider != self._providers.get(recipient_domain):
            self._providers.put(recipient_domain, provider)

    def provider(self, recipient_domain: str) -> str:
        learned: str | None = self._providers.get(recipient_domain)
        return learned or provider_of(None, recipient_domain)

    def send_of(self, d: ClaimedDelivery) -> Send | None:
        """The send ``d`` belongs to; None for mail with no campaign (never held)."""
        if not d.campaign:
            return None
        return Send(d.campaign, d.from_domain or "", self.provider(d.recipient_domain))

    async def admit(
        self, deliveries: Sequence[ClaimedDelivery], now: datetime
    ) -> tuple[list[ClaimedDelivery], list[ClaimedDelivery]]:
        """(those that go, those held back). A store fault lets them go: a guardrail is a
        brake on a bad send, and the database being away must not stop every good one."""
        rules = self.rules()
        if not rules.enabled:
            return list(deliveries), []
        by_send: dict[Send | None, list[ClaimedDelivery]] = {}
        for d in deliveries:
            by_send.setdefault(self.send_of(d), []).append(d)
        going: list[ClaimedDelivery] = []
        held: list[ClaimedDelivery] = []
        for send, group in by_send.items():
            if send is None:
                going += group
                continue
            try:
                allowed = await self._allowed(send, len(group), now, rules)
            except StoreError as exc:
                log.warning(
                    "guardrail.check_failed",
                    send=send.label(),
                    error=str(exc),
                    action="sending without the guardrail until the database answers",
                )
                allowed = len(group)
            going += group[:allowed]
            if allowed < len(group):
                reason = self.holds.get(send, "paused")
                self.metrics.guardrail_held.labels(reason).inc(len(group) - allowed)
                held += group[allowed:]
        return going, held

    async def _allowed(self, send: Send, wanted: int, now: datetime, rules: GuardrailRules) -> int:
        state = self.holds.get(send)
        if state is None and send not in self._open and rules.canary.enabled:
            state = await self._first_claim(send, now, rules)
        if state == "paused":
            return 0
        if state == "canary":
            granted = await self.store.reserve_canary(send, wanted)
            if granted is not None:
                return granted
            # No canary any more: the watch opened (or paused) it since our last reload.
            row = await self.store.guardrail(send)
            if row is not None and row.state == "paused":
                self.holds[send] = "paused"
                return 0
            self.holds.pop(send, None)
            self._open.put(send, True)
        return wanted

    async def _first_claim(self, send: Send, now: datetime, rules: GuardrailRules) -> str:
        """A send this process has not seen: a canary if it is new to every relay."""
        pending = self._starting.get(send)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._starting[send] = future
        try:
            state = await self._start(send, now, rules)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(state)
            return state
        finally:
            del self._starting[send]

    async def _start(self, send: Send, now: datetime, rules: GuardrailRules) -> str:
        messages = 0
        if rules.canary.share > 0:
            messages = await self.store.campaign_messages(send.campaign, send.from_domain)
        slice_ = canary_slice(rules.canary, messages)
        state, started = await self.store.start_canary(send, now, slice_)
        if state == "open":
            self._open.put(send, True)
        else:
            self.holds[send] = state
        if started:
            log.info("guardrail.canary_started", send=send.label(), slice=slice_)
        return state


class GuardrailWatch:
    """Judges the active sends (one relay process at a time) and reloads the gate's holds."""

    def __init__(
        self,
        store: Store,
        gate: GuardrailGate,
        rules: Callable[[], GuardrailRules],
        *,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.gate = gate
        self.rules = rules
        self.clock = clock
        self.metrics = metrics or Metrics()
        # A canary's attempts when last seen to grow, and when (this process's judging only).
        self._canary_progress: dict[Send, tuple[int, datetime]] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except StoreError as exc:
                log.warning("guardrail.watch_failed", error=str(exc), action="retrying later")
            await asyncio.sleep(self.rules().check_every.total_seconds())

    async def check(self) -> None:
        """One pass: judge (unless another process is at it), then reload the holds."""
        rules = self.rules()
        if not rules.enabled:
            self.gate.holds = {}
            return
        async with self.store.guardrail_lock() as ours:
            if ours:
                await self.judge_all(self.clock(), rules)
        self.gate.holds = await self.store.guardrail_holds()
        self.metrics.guardrails_paused.set(
            sum(1 for state in self.gate.holds.values() if state == "paused")
        )

    async def judge_all(self, now: datetime, rules: GuardrailRules) -> None:
        sends = await self.store.guardrail_sends(now - rules.active)
        for s in sends:
            if s.state is None:
                # Seen in the counts with no row: no canary (off, or the claim saw another
                # provider for the domain than the MX host showed). Watched from now on.
                await self.store.open_guardrail(s.send, now)
        watched = [s for s in sends if s.state in ("canary", "open")]
        canaries = {s.send for s in watched if s.state == "canary"}
        for gone in set(self._canary_progress) - canaries:
            del self._canary_progress[gone]
        starts = {s.send: self._start(s, now, rules) for s in watched}
        counts = await self.store.guardrail_counts(list(starts.items()))
        for s in watched:
            start = starts[s.send]
            baseline = s.baseline if start == s.released_at else None
            done = since_baseline(counts.get(s.send, SendCounts()), baseline)
            verdict = judge(done, rules.thresholds)
            if s.state == "canary":
                await self._judge_canary(s, done, verdict, start, now, rules)
            else:
                await self._judge_open(s, done, verdict, start, now)

    def _stalled(self, send: Send, done: SendCounts, now: datetime) -> bool:
        """True when a spent canary's attempts have not grown for ``_CANARY_STALL``: its
        missing replies are 4xx deferrals waiting for their retry, or deliveries the rollup
        counts under another provider once their MX host showed it (a company domain at
        Google Workspace, counted here under its domain's provider). Judged on what came."""
        attempts, since = self._canary_progress.get(send, (-1, now))
        if done.attempts != attempts:
            self._canary_progress[send] = (done.attempts, now)
            return False
        return now - since >= _CANARY_STALL

    @staticmethod
    def _start(s: SendToJudge, now: datetime, rules: GuardrailRules) -> datetime:
        """Where a send's counts start: its first sighting, its release, or the window."""
        start = s.released_at or s.since or now
        return max(start, now - rules.window)

    async def _judge_canary(
        self,
        s: SendToJudge,
        done: SendCounts,
        verdict: Judgement,
        start: datetime,
        now: datetime,
        rules: GuardrailRules,
    ) -> None:
        if verdict.level is Level.PAUSE:
            await self._trip(s, done, verdict, start, now)
            return
        spent = s.canary_sent >= s.canary_slice
        answered = done.attempts >= s.canary_sent
        waited = s.since is not None and now - s.since >= rules.canary_wait
        if not (spent and (answered or waited or self._stalled(s.send, done, now))):
            return  # the slice is still going out, or its replies are still coming in
        if await self.store.judge_guardrail(
            s.send,
            now,
            judged_in="canary",
            level=verdict.level.value,
            reason=verdict.reason(),
            new_state="open",
        ):
            woken = await self.store.wake_held(s.send, now)
            if verdict.level is Level.REVIEW:
                self._review(s.send, verdict)
            log.info(
                "guardrail.canary_passed",
                send=s.send.label(),
                attempts=done.attempts,
                level=verdict.level.value,
                reason=verdict.reason(),
                judged_on_what_came=not answered,
                held_now_due=woken,
            )

    async def _judge_open(
        self, s: SendToJudge, done: SendCounts, verdict: Judgement, start: datetime, now: datetime
    ) -> None:
        if verdict.level is Level.PAUSE:
            await self._trip(s, done, verdict, start, now)
            return
        if verdict.level.value == s.level:
            return  # nothing new to record: one write per change, not per pass
        await self.store.judge_guardrail(
            s.send, now, judged_in="open", level=verdict.level.value, reason=verdict.reason()
        )
        if verdict.level is Level.REVIEW:
            self._review(s.send, verdict)

    def _review(self, send: Send, verdict: Judgement) -> None:
        self.metrics.guardrails.labels("review").inc()
        log.warning(
            "guardrail.review",
            send=send.label(),
            reason=verdict.reason(),
            action="the send goes on; it pauses if a rate reaches its pause threshold",
        )

    async def _trip(
        self, s: SendToJudge, done: SendCounts, verdict: Judgement, start: datetime, now: datetime
    ) -> None:
        samples = await self.store.guardrail_samples(s.send, start)
        evidence = {
            "counts": asdict(done),
            "since": start.isoformat(),
            "findings": [
                {
                    "rate": f.rate,
                    "count": f.count,
                    "attempts": f.attempts,
                    "value": f.value,
                    "review": f.threshold.review,
                    "pause": f.threshold.pause,
                    "level": f.level.value,
                }
                for f in verdict.findings
            ],
            "samples": [asdict(sample) for sample in samples],
        }
        assert s.state is not None
        if not await self.store.judge_guardrail(
            s.send,
            now,
            judged_in=s.state,
            level=verdict.level.value,
            reason=verdict.reason(),
            new_state="paused",
            evidence=evidence,
        ):
            return  # released or judged by another relay meanwhile
        self.gate.holds[s.send] = "paused"
        self.metrics.guardrails.labels("tripped").inc()
        log.warning(
            "guardrail.tripped",
            send=s.send.label(),
            campaign=s.send.campaign,
            from_domain=s.send.from_domain,
            provider=s.send.provider,
            reason=verdict.reason(),
            attempts=done.attempts,
            action="its deliveries wait untried; check the list, then "
            f"`bounce-relay guardrails release {s.send.campaign} --from-domain "
            f"'{s.send.from_domain}' --provider {s.send.provider}` or the admin page",
        )


async def standing(
    store: Store, row: GuardrailRow, rules: GuardrailRules, now: datetime
) -> tuple[datetime, SendCounts, Judgement]:
    """Where a send stands now, as the watch judges it: (counts start, counts, judgement).
    The CLI and the admin page show this beside what the row recorded."""
    start = max(row.released_at or row.since, now - rules.window)
    counts = await store.guardrail_counts([(row.send, start)])
    baseline = row.baseline if start == row.released_at else None
    done = since_baseline(counts.get(row.send, SendCounts()), baseline)
    return start, done, judge(done, rules.thresholds)


async def release_send(store: Store, send: Send, now: datetime, actor: str, reason: str) -> bool:
    """An administrator releases a paused send (audited): it goes on at once, its held
    deliveries due now, judged from here on by what it does after the release (the counts of
    this hour so far are its baseline). False when it was not paused."""
    baseline = (await store.guardrail_counts([(send, now)])).get(send, SendCounts())
    released = await store.release_guardrail(send, now, actor, reason, baseline)
    if released:
        log.warning("guardrail.released", send=send.label(), actor=actor, reason=reason)
    return released
