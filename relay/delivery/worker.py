"""Delivery workers: claim due deliveries, send them, apply the verdicts.    ~ Postfix qmgr

One loop claims work (leases in PostgreSQL, so any number of relays share
the queue), groups the claimed recipients of one message that share a route
into one SMTP transaction, and runs up to ``[delivery] concurrency`` of them
at once. The worker gathers the facts about each attempt (the delivery, the transaction,
open incidents, probation, the address's protection) and asks ``policies.verdict``, which
decides everything; the result is applied atomically by the store, fenced by the lease
token. New messages
wake the loop straight after their commit; deferred ones are picked up when
due by a short timer.

Some addresses are protected (``policies.verdict.Protection``) whatever the reply and
the operator's classify rules say: an allowlisted address, a recipient at an address literal
(``user@[192.0.2.1]``: an IP is no mailbox's lasting home, and mail to it
bypasses the MX a domain publishes), and a recipient whose transaction ended in
a protocol error (``relay.delivery.upstream``: its reply may quote a stale line).

Each worker's relay beats a heartbeat (``relay.delivery.heartbeat``), so the others take
its leases over within seconds of its death.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from policies.addresses import is_address_literal
from policies.incidents import OpenIncident
from policies.outcome import Decision, ProbationStep
from policies.probation import OnProbation
from policies.providers import provider_of, provider_of_mx
from policies.retry import doubling
from policies.shaping import Key, Signal, signal_of
from policies.smtp_reply import Reply, synthetic_reply
from policies.states import DeliveryState, EventType
from policies.verdict import Attempt, Protection, refuses_suppressed, verdict
from policies.verp import ReturnPaths
from relay import faults
from relay.batching import GroupBatcher
from relay.clock import Clock, utc_now
from relay.config import DeliveryConfig, Rules
from relay.delivery.destinations import Destination, DestinationLookup
from relay.delivery.guardrails import GuardrailGate
from relay.delivery.heartbeat import Heartbeat
from relay.delivery.routing import SourceIPs, pool_for, route_for
from relay.delivery.shaping import Shaper
from relay.delivery.throttle import DestinationThrottle
from relay.delivery.upstream import (
    Transaction,
    TransactionResult,
    Upstream,
    shaping_key,
)
from relay.errors import StoreError, StoreUnavailable
from relay.metrics import Metrics
from relay.store import ClaimedDelivery, OutcomeRecord, Store

__all__ = ["DeliveryWorker"]

log = structlog.get_logger("relay.delivery")


PROBATION_RECHECK = timedelta(minutes=5)
# Sends in a row with nothing recorded before a delivery is given up (see _given_up). Only
# sends count (note_sends), never claims: a relay that died before sending has not tried it.
MAX_UNRECORDED_SENDS = 5
# How long an outcome the database could not take is written again (at most half the lease).
OUTCOME_RETRY_SECONDS = 60.0
# The wait between those writes: doubling from the first to the most.
OUTCOME_FIRST_RETRY, OUTCOME_MAX_RETRY = timedelta(seconds=0.25), timedelta(seconds=5)


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        config: DeliveryConfig,
        rules: Callable[[], Rules],
        *,
        clock: Clock = utc_now,
        return_paths: ReturnPaths | None = None,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.upstream = upstream
        self.destinations = DestinationLookup(config)
        self.config = config
        self.rules = rules
        self.clock = clock
        # With [dsn] set every delivery carries its own signed return path (VERP), so each
        # goes in a transaction of its own.
        self.return_paths = return_paths
        self.owner = owner or f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self.heartbeat = Heartbeat(store, self.owner)
        self._wake = asyncio.Event()
        # Whether the last claim filled its batch: only then may more work be due at once.
        self._backlog = False
        self._slots = asyncio.Semaphore(config.concurrency)
        self._active: set[asyncio.Task[None]] = set()
        # Deliveries the committer leased to us as it committed them (relay.intake.commit), until
        # their transactions start; taken only while run() claims.
        self._running = False
        self._taking = 0
        self._handovers: set[asyncio.Task[None]] = set()
        self._sources = SourceIPs()
        self._random = random.Random()
        # Outcomes of transactions finishing within outcome_window of each other are applied
        # in one store transaction: with deliveries finishing one at a time, each commit
        # of their own competed with the intake's (BENCHMARKS.md).
        self._outcomes: GroupBatcher[list[OutcomeRecord], int] = GroupBatcher(
            self._apply_outcomes,
            name="delivery.outcomes",
            max_batch=256,
            window=config.outcome_window.total_seconds(),
        )
        # Open provider incidents, kept current by relay.incidents.IncidentWatch.
        self.incidents: list[OpenIncident] = []
        # Destinations that asked for less traffic (provider hints), per recipient domain.
        self.throttle = DestinationThrottle(config.connections_per_destination)
        # Campaign sends held by a guardrail (relay.delivery.guardrails); None: none checked.
        self.guardrails: GuardrailGate | None = None
        # Limits per destination group x source IP shared with the other relays
        # (relay.delivery.shaping); None: not shaped (tests of other things, commands).
        self.shaper: Shaper | None = None

    def wake(self, *_: object) -> None:
        """Look for due work now (called after each intake commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and deliver until cancelled; ``stop`` deals with transactions in flight."""
        self._running = True
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
                # that lands as the wait ends, and this loop then never stops (a shutdown
                # waited on it for good in CI).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.poll_interval.total_seconds()):
                        await self._wake.wait()
                self._wake.clear()
                await self._claim_while_due()
        finally:
            self._running = False

    # -- deliveries leased as they are committed (relay.commit.DirectDelivery) ----------------

    @property
    def lease(self) -> timedelta:
        return self.config.lease

    def can_take(self, deliveries: int) -> bool:
        """Whether ``deliveries`` more can start now: only then are they leased to us."""
        return self._running and self._free() >= deliveries

    def take(self, claimed: list[ClaimedDelivery], bodies: dict[int, bytes | None]) -> None:
        """Start the deliveries the committer leased to us, with their bodies from memory."""
        if not claimed:
            return
        self.metrics.leased.labels("commit").inc(len(claimed))
        self._taking += len(claimed)
        # A context of its own: the committer's holds whichever session started its batch.
        task = asyncio.create_task(
            self._dispatch(claimed, bodies), name="delivery.handover", context=contextvars.Context()
        )
        self._handovers.add(task)

        def taken(task: asyncio.Task[None]) -> None:
            self._handovers.discard(task)
            self._taking -= len(claimed)

        task.add_done_callback(taken)

    def _free(self) -> int:
        return self.config.concurrency - len(self._active) - self._taking

    async def stop(self, run_task: asyncio.Task[None], grace: float) -> None:
        """Shutdown: claim nothing more, give transactions in flight ``grace`` seconds to
        finish, then cancel the rest; a cancelled transaction returns its leases."""
        run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run_task
        for handover in list(self._handovers):  # what has not started gives its leases back
            handover.cancel()
        if self._handovers:
            await asyncio.gather(*self._handovers, return_exceptions=True)
        if self._active:
            log.info("delivery.draining", transactions=len(self._active), grace_seconds=grace)
            await asyncio.wait(list(self._active), timeout=grace)
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)
        await self._outcomes.close()

    async def drain(self) -> None:
        """Wait until every transaction started so far has finished (tests, shutdown)."""
        while self._active:
            await asyncio.gather(*list(self._active), return_exceptions=True)

    async def run_once(self) -> int:
        """Claim what is due now, deliver it and wait for the results; how many were claimed."""
        claimed = await self._claim_while_due()
        await self.drain()
        return claimed

    async def _claim_while_due(self) -> int:
        total = 0
        while (free := self._free()) > 0:
            # Claim no more than can start now: work that waits for a slot would hold
            # leases other relays could use (and shutdown would have to hand back).
            wanted = min(self.config.batch, free)
            try:
                claimed = await self.store.claim_due_deliveries(
                    self.owner, self.clock(), self.config.lease, wanted
                )
            except StoreError as exc:
                log.warning(
                    "delivery.claim_failed", error=str(exc), action="retrying at the next poll"
                )
                return total
            self._backlog = len(claimed) == wanted
            if not claimed:
                return total
            self.metrics.leased.labels("claim").inc(len(claimed))
            total += len(claimed)
            await self._dispatch(claimed)
        return total

    async def _dispatch(
        self, claimed: list[ClaimedDelivery], bodies: dict[int, bytes | None] | None = None
    ) -> None:
        """Start a transaction per group of ``claimed``; ``bodies`` None: read them first."""
        rules = self.rules()
        groups = _group(claimed, rules, per_delivery=self.return_paths is not None)
        started = 0
        try:
            if bodies is None:
                try:
                    bodies = await self.store.message_bodies(
                        sorted({d.message_id for d in claimed})
                    )
                except StoreError as exc:
                    # The leases run out and another pass (or relay) picks them up again.
                    log.warning("delivery.bodies_unavailable", error=str(exc))
                    return
            for group in groups:
                await self._slots.acquire()
                task = asyncio.create_task(
                    self._deliver(group, bodies.get(group[0].message_id), rules),
                    name="delivery.transaction",
                )
                self._active.add(task)
                task.add_done_callback(self._finished)
                started += 1
        except asyncio.CancelledError:
            # Shutdown before these started: hand them back now rather than after the lease.
            await asyncio.shield(self._release([d for g in groups[started:] for d in g]))
            raise

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        self._slots.release()
        # A free slot may take work that is already due (a backlog after intake went quiet);
        # without this the loop would wait out poll_interval before claiming it. When the
        # last claim came back short the queue is drained: a claim now would find nothing
        # and still walk the due index (new mail wakes the loop on its own).
        if self._backlog:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery.task_failed", error=repr(task.exception()))

    async def _deliver(
        self, group: list[ClaimedDelivery], body: bytes | None, rules: Rules
    ) -> None:
        first = group[0]
        # Bound for every line of this transaction; tokens put back what was there (as
        # bound_contextvars does, without its context copy and generator: a hot path).
        bound = structlog.contextvars.bind_contextvars(
            message_id=first.queue_id, campaign=first.campaign
        )
        try:
            # dry_run: a suppressed recipient is logged and counted, and still sent to.
            cancel = [d for d in group if d.suppressed and refuses_suppressed(rules)]
            rest = [d for d in group if d not in cancel]
            for d in rest:
                if d.suppressed:
                    self.metrics.dry_run.labels("delivery").inc()
                    log.info("delivery.would_cancel", recipient=d.recipient_key, dry_run=True)
            outcomes = [self._cancelled(d) for d in cancel]
            # A delivery whose sends keep ending with nothing recorded (a crash loop, an
            # outcome the database refuses) is given up rather than sent for ever.
            poisoned = [d for d in rest if d.unrecorded_sends >= MAX_UNRECORDED_SENDS]
            outcomes += [self._given_up(d) for d in poisoned]
            rest = [d for d in rest if d not in poisoned]
            held = [d for d in rest if _held_by_probation(d)]
            if held:
                await self._defer(
                    held,
                    [_probation_end(d, self.clock()) for d in held],
                    for_probation=True,
                    why="probation",
                )
            live = [d for d in rest if not _held_by_probation(d)]
            if live and self.guardrails is not None:
                # A paused send, or a canary's deliveries beyond its slice: back untried.
                live, guarded = await self.guardrails.admit(live, self.clock())
                if guarded:
                    recheck = self.clock() + self.guardrails.rules().recheck
                    await self._defer(guarded, [recheck] * len(guarded), why="guardrail")
            plan = await self._admitted(live, body, rules) if live else None
            if plan is not None:
                going = await self._note_sends(live)
                if going:
                    outcomes += await self._attempt(going, group, plan, rules)
                elif plan.key is not None and self.shaper is not None:
                    self.shaper.unused(plan.key)
            if not outcomes:
                return
            fenced = await self._record(outcomes)
            if fenced:
                log.warning(
                    "delivery.fenced",
                    deliveries=fenced,
                    why="another relay took over after our lease ran out",
                )
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def _admitted(
        self, live: list[ClaimedDelivery], body: bytes | None, rules: Rules
    ) -> _Plan | None:
        """The plan of ``live``'s transaction when it may go now; None when it waits,
        handed back untried: a destination that asked for less (provider hints), or a
        shaping key whose share is in use."""
        until = self.throttle.admit(live[0].recipient_domain, self.clock())
        if until is not None:
            await self._defer(live, [until] * len(live), why="throttle")
            return None
        plan = await self._plan(live, body, rules)
        if plan.key is not None and self.shaper is not None:
            until = await self.shaper.admit(plan.key, self.clock())
            if until is not None:
                await self._defer(live, [until] * len(live), why="shaping")
                return None
        return plan

    async def _note_sends(self, live: list[ClaimedDelivery]) -> list[ClaimedDelivery]:
        """Those of ``live`` that go. One whose last claim ended with nothing recorded is
        counted as sent before it goes (the count ``_given_up`` reads); one another relay
        took over meanwhile is left to it. A first claim is not counted, so that a relay
        dying before its sends never adds to it: one write, and only after a crash."""
        suspect = [(d.id, d.lease_token) for d in live if d.unrecorded_claims]
        if not suspect:
            return live
        try:
            ours = await self.store.note_sends(suspect)
        except StoreError as exc:
            log.warning(
                "delivery.send_not_noted",
                error=str(exc),
                action="sending anyway; this send does not count toward giving it up",
            )
            return live
        going = [d for d in live if not d.unrecorded_claims or d.id in ours]
        if len(going) < len(live):
            log.warning(
                "delivery.fenced",
                deliveries=len(live) - len(going),
                why="another relay took over before the send",
            )
        return going

    async def _record(self, outcomes: list[OutcomeRecord]) -> int:
        """Apply ``outcomes``; how many were fenced. A database that is away for a moment (a
        restart, a failover, cut connections) is waited for while the leases hold: an
        outcome given up on means the lease runs out and the upstream, which may have said
        250 already, gets the message again."""
        deadline = time.monotonic() + min(
            self.config.lease.total_seconds() / 2, OUTCOME_RETRY_SECONDS
        )
        failures = 0
        while True:
            delay = doubling(OUTCOME_FIRST_RETRY, failures + 1, OUTCOME_MAX_RETRY).total_seconds()
            try:
                return await self._outcomes.submit(outcomes)
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    error: StoreError = exc
                    break
                log.warning(
                    "delivery.outcome_retry",
                    error=str(exc),
                    seconds=delay,
                    action="the database is away; writing the outcome again",
                )
                await asyncio.sleep(delay)
                failures += 1
            except StoreError as exc:
                error = exc
                break
        log.error(
            "delivery.outcome_not_recorded",
            error=str(error),
            action="the lease runs out and the delivery is tried again",
        )
        return 0

    async def _attempt(
        self,
        live: list[ClaimedDelivery],
        group: list[ClaimedDelivery],
        plan: _Plan,
        rules: Rules,
    ) -> list[OutcomeRecord]:
        """Send one transaction and decide each recipient's outcome."""
        destination = live[0].recipient_domain
        self.throttle.started(destination, self.clock())
        shaped = plan.key if self.shaper is not None else None
        if shaped is not None and self.shaper is not None:
            self.shaper.started(shaped, self.clock())
        try:
            result = await self._send(live, plan)
        except asyncio.CancelledError:
            # Shutdown cut this transaction: hand the work back at once rather than
            # after the lease (the upstream may have it already: at-least-once).
            self.throttle.finished(destination, self.clock(), ok=False)
            if shaped is not None and self.shaper is not None:
                self.shaper.finished(shaped, self.clock(), accepted=False)
            await asyncio.shield(self._release(group))
            raise
        except Exception as exc:  # a bug or an encoding error: this delivery only
            log.exception("delivery.unexpected_error", error_type=type(exc).__name__)
            result = _everyone(
                live,
                synthetic_reply(451, "4.3.0", f"relay error while sending: {type(exc).__name__}"),
            )
        now = self.clock()
        delivered = any(200 <= r.code < 300 for r in result.replies.values())
        if delivered:  # tests/chaos: the upstream has it; our record does not say so yet
            faults.crash_point("delivery.after_upstream_250")
        self.throttle.finished(destination, now, ok=delivered)
        outcomes = []
        signals: list[tuple[Signal, str]] = []
        for d in live:
            reply = result.replies.get(d.recipient) or _no_reply()
            outcomes.append(self._outcome(d, reply, result, rules, now, signals))
        if shaped is not None and self.shaper is not None:
            signal, text = signals[0] if signals else (None, "")
            self.shaper.finished(
                shaped,
                now,
                accepted=delivered,
                signal=signal,
                reply=text,
            )
        return outcomes

    async def _apply_outcomes(self, batches: list[list[OutcomeRecord]]) -> list[int]:
        """Apply the outcomes of several transactions at once; how many of each were fenced."""
        flat = [o for outcomes in batches for o in outcomes]
        applied = await self.store.apply_outcomes(
            self.clock(), flat, cancel_queued=refuses_suppressed(self.rules())
        )
        return [
            sum(1 for o in outcomes if o.delivery_id not in applied.applied_ids)
            for outcomes in batches
        ]

    async def _plan(self, live: list[ClaimedDelivery], body: bytes | None, rules: Rules) -> _Plan:
        """Where the transaction goes and from which source IP, or the reply that ends it
        before it goes (no route, no body, DNS)."""
        first = live[0]
        route = route_for(rules.routes, first.recipient_domain)
        if route is None:
            return _Plan.ended(
                synthetic_reply(
                    550, "5.4.4", f"no route in config.toml matches {first.recipient_domain}"
                )
            )
        if body is None:
            return _Plan.ended(
                synthetic_reply(451, "4.3.0", "message body already released; cannot send")
            )
        destinations = await self.destinations.find(route, first.recipient_domain)
        if isinstance(destinations, Reply):
            return _Plan.ended(destinations)
        if not destinations:
            return _Plan.ended(synthetic_reply(451, "4.4.3", "no destination to send to"))
        pool = pool_for(rules, route, first.from_domain, first.campaign)
        avoid = {d.avoid_source_ip for d in live if d.avoid_source_ip}
        source_ip = self._sources.pick(pool, avoid)
        return _Plan(
            destinations=destinations,
            source_ip=source_ip,
            body=body,
            key=shaping_key(destinations[0], source_ip),
        )

    async def _send(self, live: list[ClaimedDelivery], plan: _Plan) -> TransactionResult:
        for d in live:  # tests/chaos: a bug that hits one recipient's sends
            faults.raise_point("delivery.send", d.recipient_key)
        if plan.ended_with is not None:
            return _everyone(live, plan.ended_with)
        assert plan.body is not None
        first = live[0]
        transaction = Transaction(
            sender=self._return_path(first),
            recipients=tuple(d.recipient for d in live),
            body=plan.body,
            smtputf8=first.smtputf8,
        )
        return await self.upstream.send(plan.destinations, plan.source_ip, transaction)

    def _return_path(self, d: ClaimedDelivery) -> str:
        """The envelope sender upstream sees; a null sender stays null (never VERP a bounce)."""
        if self.return_paths is None or d.envelope_sender in ("", "<>"):
            return d.envelope_sender
        return self.return_paths.address(d.id)

    def _outcome(
        self,
        d: ClaimedDelivery,
        reply: Reply,
        result: TransactionResult,
        rules: Rules,
        now: datetime,
        signals: list[tuple[Signal, str]] | None = None,
    ) -> OutcomeRecord:
        """``signals`` collects what the reply says to shaping (policies.shaping)."""
        probation = d.probation
        facts = Attempt(
            recipient_domain=d.recipient_domain,
            now=now,
            attempt=d.attempts + 1,
            first_failure_at=d.first_failure_at,
            source_ip=result.source_ip,
            destination=result.destination,
            open_incidents=tuple(self.incidents),
            probation=OnProbation(probation.since, probation.until, probation.source_ip)
            if probation is not None
            else None,
            protection=_protection(d, result),
            after_data=d.recipient in result.after_data,
            jitter=self._random.random(),
            last_code=d.last_code,
            last_reply=d.last_reply,
        )
        decision = verdict(reply, facts, rules)
        # The MX host's provider, when it is a known one, is what a guardrail learns of the
        # domain; the report's provider falls back to the domain's own (provider_of).
        by_mx = provider_of_mx(result.destination)
        provider = by_mx or provider_of(None, d.recipient_domain)
        if self.guardrails is not None and by_mx is not None:
            self.guardrails.learn(d.recipient_domain, by_mx)
        if decision.slow_down_until is not None and decision.hint is not None:
            self.throttle.slow_down(d.recipient_domain, decision.hint, now)
        if signals is not None and not 200 <= reply.code < 300:
            signal = signal_of(
                reply.code,
                decision.verdict.category,
                at_greeting=result.at_greeting,
                synthetic=reply.synthetic,
                slow_down_hint=decision.hint is not None and decision.hint.slow_down,
            )
            if signal is not None:
                signals.append((signal, _first_line(reply.text)))
        _log_decision(d, reply, decision, result)
        self._count(d, decision, now)
        step = decision.probation
        return OutcomeRecord(
            delivery_id=d.id,
            lease_token=d.lease_token,
            state=decision.state.value,
            event=decision.event.value,
            next_attempt_at=decision.next_attempt_at,
            non_delivery=decision.non_delivery,
            suppress=decision.suppress,
            suppress_reason=f"{decision.verdict.category.value}: {_first_line(reply.text)}",
            code=reply.code or None,
            enhanced=reply.enhanced,
            reply_text=reply.text,
            template=decision.template,
            category=decision.verdict.category.value,
            rule=decision.rule,
            synthetic=reply.synthetic,
            source_ip=result.source_ip,
            destination=result.destination,
            provider=provider,
            avoid_source_ip=result.source_ip if decision.other_source_ip else None,
            incident_id=decision.incident_id,
            probation_until=decision.next_attempt_at if step is ProbationStep.START else None,
            probation_end=step in (ProbationStep.CONFIRM, ProbationStep.CLEAR),
        )

    def _count(self, d: ClaimedDelivery, decision: Decision, now: datetime) -> None:
        m = self.metrics
        category = decision.verdict.category.value
        m.deliveries.labels(decision.event.value, category).inc()
        if decision.event is EventType.DELIVERED:
            m.delivery_latency.observe((now - d.received_at).total_seconds())
        else:
            m.bounces.labels(decision.verdict.kind.value).inc()
        if decision.non_delivery:
            m.non_delivery.inc()

    async def _defer(
        self,
        group: list[ClaimedDelivery],
        until: list[datetime],
        *,
        why: str,
        for_probation: bool = False,
    ) -> None:
        """Hand deliveries back untried, each due again at its time in ``until``."""
        try:
            deferred = await self.store.defer_leases(
                self.clock(),
                [(d.id, d.lease_token, t) for d, t in zip(group, until, strict=True)],
                for_probation=for_probation,
            )
        except StoreError as exc:
            log.warning("delivery.defer_failed", error=str(exc), action="the leases run out")
            return
        # One line per group; a guardrail's holds and shaping's waits at debug: a held
        # campaign, or a backlog for a busy destination, hands back thousands a minute,
        # which the guardrail.tripped and shaping.limit_changed lines already tell.
        say = log.debug if why in ("guardrail", "shaping") else log.info
        if len(group) == 1:
            say("delivery.deferred", why=why, recipient=group[0].recipient_key, until=until[0])
        else:
            say(
                "delivery.deferred",
                why=why,
                recipients=len(group),
                deliveries=deferred,
                until=min(until),
            )

    async def _release(self, group: list[ClaimedDelivery]) -> None:
        if not group:
            return
        try:
            released = await self.store.release_leases([(d.id, d.lease_token) for d in group])
        except StoreError as exc:
            log.warning("delivery.release_failed", error=str(exc), action="the leases run out")
            return
        log.info("delivery.released", deliveries=released)

    def _given_up(self, d: ClaimedDelivery) -> OutcomeRecord:
        reply = synthetic_reply(
            451,
            "4.3.0",
            f"given up: {d.unrecorded_sends} sends in a row ended with no outcome recorded "
            "(the relay crashed or could not write it)",
        )
        log.error(
            "delivery.given_up_unrecorded",
            delivery_id=d.id,
            recipient=d.recipient_key,
            sends=d.unrecorded_sends,
            claims=d.unrecorded_claims,
            action="look for a crash loop or a refused write in the log before this line; "
            "`bounce-relay queue show ID` has its events",
        )
        self.metrics.non_delivery.inc()
        return OutcomeRecord(
            delivery_id=d.id,
            lease_token=d.lease_token,
            state=DeliveryState.EXPIRED.value,
            event=EventType.SOFT_BOUNCE.value,
            counts_attempt=False,
            non_delivery=True,
            code=reply.code,
            enhanced=reply.enhanced,
            reply_text=reply.text,
            category="other",
            rule="unrecorded_sends",
            synthetic=True,
            provider=provider_of(None, d.recipient_domain),
        )

    def _cancelled(self, d: ClaimedDelivery) -> OutcomeRecord:
        log.info("delivery.cancelled", recipient=d.recipient_key, reason="suppressed")
        self.metrics.deliveries.labels("cancelled", "suppressed").inc()
        return OutcomeRecord(
            delivery_id=d.id,
            lease_token=d.lease_token,
            state=DeliveryState.CANCELLED.value,
            event=EventType.SUPPRESSED.value,
            counts_attempt=False,
        )


@dataclass(frozen=True)
class _Plan:
    """Where a transaction goes (``destinations`` from ``source_ip``, counted in shaping
    ``key``), or the reply that ended it before it went (``ended_with``)."""

    destinations: list[Destination] = field(default_factory=list)
    source_ip: str = ""
    body: bytes | None = None
    key: Key | None = None
    ended_with: Reply | None = None

    @classmethod
    def ended(cls, reply: Reply) -> _Plan:
        return cls(ended_with=reply)


def _group(
    claimed: Sequence[ClaimedDelivery], rules: Rules, *, per_delivery: bool
) -> list[list[ClaimedDelivery]]:
    """Recipients of one message that share a route (and, for MX or an address literal, a
    domain) go together, unless each needs its own envelope sender (VERP). A literal
    never shares a transaction with names: where it may go is decided apart."""
    if per_delivery:
        return [[d] for d in claimed]
    groups: dict[tuple[int, int, str], list[ClaimedDelivery]] = {}
    for d in claimed:
        route = route_for(rules.routes, d.recipient_domain)
        route_index = rules.routes.index(route) if route is not None else -1
        apart = route is None or route.mode == "mx" or is_address_literal(d.recipient_domain)
        per_domain = d.recipient_domain if apart else ""
        groups.setdefault((d.message_id, route_index, per_domain), []).append(d)
    return list(groups.values())


def _protection(d: ClaimedDelivery, result: TransactionResult) -> Protection | None:
    if d.allowlisted:
        return Protection.ALLOWLISTED
    if d.recipient in result.spared:
        return Protection.UPSTREAM_FAULT
    return None


def _held_by_probation(d: ClaimedDelivery) -> bool:
    """New mail to an address on probation waits; only the probe is tried."""
    return d.probation is not None and d.probation.delivery_id != d.id


def _probation_end(d: ClaimedDelivery, now: datetime) -> datetime:
    # The probation ends with its probe, which may itself be deferred past ``until``:
    # look again then, or in a few minutes.
    assert d.probation is not None
    return max(d.probation.until, now + PROBATION_RECHECK)


def _everyone(live: list[ClaimedDelivery], reply: Reply) -> TransactionResult:
    return TransactionResult({d.recipient: reply for d in live})


def _no_reply() -> Reply:
    return synthetic_reply(451, "4.3.0", "no reply recorded for this recipient")


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else ""


def _log_decision(
    d: ClaimedDelivery, reply: Reply, decision: Decision, result: TransactionResult
) -> None:
    event = {
        EventType.DELIVERED: "delivery.delivered",
        EventType.HARD_BOUNCE: "delivery.hard_bounce",
    }.get(
        decision.event, "delivery.non_delivery" if decision.non_delivery else "delivery.soft_bounce"
    )
    log.info(
        event,
        delivery_id=d.id,
        recipient=d.recipient_key,
        attempt=d.attempts + 1,
        code=reply.code,
        enhanced=reply.enhanced,
        reply=_first_line(reply.text),
        category=decision.verdict.category.value,
        rule=decision.rule,
        suppress=decision.suppress,
        next_attempt_at=decision.next_attempt_at,
        source_ip=result.source_ip,
        destination=result.destination,
        synthetic=reply.synthetic,
        give_up=decision.give_up_reason,
        hint=decision.hint.name if decision.hint else None,
        incident_id=decision.incident_id,
        probation=decision.probation,
    )
