"""Webhooks: the outbox's events posted to ``[[webhooks]]`` receivers as signed JSON.

Triggers write every subscribed event into ``webhook_outbox`` in the transaction that made it
happen (migration 0007), so an event exists exactly when its cause was committed. The
``WebhookSender`` claims due rows (leases, FOR UPDATE SKIP LOCKED: relays sharing a database
send side by side), POSTs each one and records the result: a 2xx is delivered; any other
status, a timeout or a connection error is retried with exponential backoff and jitter until
the webhook's ``max_age``, then given up. Delivery is at-least-once: receivers dedupe on
``id``. A failing row never holds up the others.

The signature header is Stripe-style, ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
with the webhook's secret: a receiver checks who sent it and, by ``t``, rejects replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType

import aiohttp
import structlog

from policies.retry import doubling
from relay.clock import Clock, utc_now
from relay.config import WebhookConfig
from relay.errors import StoreError
from relay.store import Store
from relay.store.outbox import Outbox, OutboxEvent

__all__ = [
    "EVENT_HEADER",
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "WebhookSender",
    "backoff",
    "sign",
    "sync_subscriptions",
    "verify_signature",
]

log = structlog.get_logger("relay.webhooks")

EVENT_HEADER = "X-Bounce-Relay-Event"
ID_HEADER = "X-Bounce-Relay-Id"
SIGNATURE_HEADER = "X-Bounce-Relay-Signature"

FIRST_RETRY = timedelta(seconds=10)
MAX_RETRY = timedelta(hours=1)
JITTER = 0.2  # a retry comes up to this share early, so rows failed together spread out
# A lease outlives the longest post by this much: a sender that died is replaced after it.
_LEASE_MARGIN = timedelta(seconds=30)
_PURGE_EVERY = timedelta(hours=1)
_PURGE_BATCH = 10_000  # rows per DELETE: short transactions, a short pause for the claims


def backoff(attempts: int, rand: float) -> timedelta:
    """The wait after ``attempts`` failed attempts: 10 s doubling up to 1 h, shortened by up
    to ``JITTER`` with ``rand`` in [0, 1), so a receiver coming back is not hit by every
    waiting row in the same second."""
    return doubling(FIRST_RETRY, attempts, MAX_RETRY) * (1 - JITTER * rand)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` of
    ``now`` (either side: a replayed old request fails, so does a forged future one)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        [timestamp] = (int(t) for t in fields.get("t", []))
    except ValueError:  # no t, several, or not a number
        return False
    if abs(now.timestamp() - timestamp) > tolerance.total_seconds():
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    # Several v1 values may come (a receiver rotating secrets); one must match.
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


async def sync_subscriptions(store: Store, webhooks: Sequence[WebhookConfig]) -> None:
    """Make the database's subscriptions those of ``webhooks``; call it at every start, also
    with none (the triggers then write nothing). Relays sharing a database should share the
    config: the last one to start wins. Events still waiting for a webhook that is gone from
    the config are given up."""
    changed, abandoned = await Outbox(store).sync_subscriptions(
        {w.name: w.events for w in webhooks}
    )
    if changed:
        log.info(
            "webhook.subscriptions_synced",
            webhooks={w.name: sorted(w.events) for w in webhooks},
            changed=changed,
        )
    if abandoned:
        log.warning(
            "webhook.removed_given_up",
            events=abandoned,
            why="their webhook is no longer in the config",
        )


def _body(row: OutboxEvent) -> bytes:
    document = {
        "id": row.id,
        "event": row.event,
        "occurred_at": row.occurred_at.astimezone(UTC).isoformat(),
        "webhook": row.webhook,
        "data": row.payload,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WebhookSender:
    """Posts the outbox's due events. ``async with`` it (the HTTP session), then ``run()``
    as a task and ``stop()`` it; tests call ``run_once(now)`` with an injected clock."""

    def __init__(
        self,
        store: Store,
        webhooks: Sequence[WebhookConfig],
        *,
        clock: Clock = utc_now,
        interval: float = 1.0,
        concurrency: int = 16,
        keep: timedelta = timedelta(days=7),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = Outbox(store)
        self._webhooks = {w.name: w for w in webhooks}
        self._clock = clock
        self._interval = interval
        self._concurrency = concurrency
        self._keep = keep  # finished rows are kept this long for an operator to look at
        self._rand = rand
        self._lease = max((w.timeout for w in webhooks), default=timedelta()) + _LEASE_MARGIN
        self._session: aiohttp.ClientSession | None = None
        self._active: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._backlog = False

    async def __aenter__(self) -> WebhookSender:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            cookie_jar=aiohttp.DummyCookieJar(),  # every post stands alone
            headers={"User-Agent": "bounce-relay-webhooks"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Post due events until cancelled: every ``interval`` seconds, and sooner while a
        backlog lasts. Finished rows older than ``keep`` are purged every hour."""
        purge_at = self._clock()
        while True:
            now = self._clock()
            if now >= purge_at:
                purge_at = now + _PURGE_EVERY
                await self._purge(now - self._keep)
            await self._start_due(now)
            # asyncio.timeout, not wait_for: see DeliveryWorker.run.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()

    async def stop(self, run_task: asyncio.Task[None], grace: float = 5.0) -> None:
        """Claim nothing more, give posts in flight ``grace`` seconds, cancel the rest (their
        leases run out and another pass posts them again: at-least-once)."""
        run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run_task
        if self._active:
            await asyncio.wait(list(self._active), timeout=grace)
        for task in list(self._active):
            task.cancel()
        await asyncio.gather(*self._active, return_exceptions=True)

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim what is due at ``now``, post it, record every result; how many were claimed.
        ``now`` is also the time of the signature and of the results."""
        now = now or self._clock()
        rows = await self.outbox.claim(list(self._webhooks), now, self._lease, self._concurrency)
        await asyncio.gather(*(self._send(row, now) for row in rows))
        return len(rows)

    async def _start_due(self, now: datetime) -> None:
        free = self._concurrency - len(self._active)
        if free <= 0:
            return
        try:
            rows = await self.outbox.claim(list(self._webhooks), now, self._lease, free)
        except StoreError as exc:
            log.warning("webhook.claim_failed", error=str(exc), action="retrying at the next poll")
            return
        self._backlog = len(rows) == free
        for row in rows:
            task = asyncio.create_task(self._send(row), name="webhook.post")
            self._active.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        # While a backlog lasts, claim again once half the slots are free: one claim per
        # finished post would cost a query per event.
        if self._backlog and len(self._active) <= self._concurrency // 2:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook.task_failed", error=repr(task.exception()))

    async def _send(self, row: OutboxEvent, at: datetime | None = None) -> None:
        hook = self._webhooks[row.webhook]
        attempt = row.attempts + 1
        bound = log.bind(webhook=row.webhook, webhook_event=row.event, id=row.id, attempt=attempt)
        error = await self._post(hook, row, at or self._clock())
        done = at or self._clock()
        try:
            if error is None:
                await self.outbox.mark_delivered(row.id, done)
                bound.info("webhook.delivered")
                return
            deadline = row.created_at + hook.max_age
            retry_at = (
                None if done >= deadline else min(deadline, done + backoff(attempt, self._rand()))
            )
            if not await self.outbox.mark_failed(row, done, error, retry_at):
                bound.warning("webhook.lease_lost", error=error, action="another sender has it")
            elif retry_at is None:
                bound.error(
                    "webhook.given_up",
                    error=error,
                    age=str(done - row.created_at),
                    attempts=attempt,
                )
            else:
                bound.warning("webhook.failed", error=error, next_attempt_at=retry_at.isoformat())
        except StoreError as exc:
            bound.warning(
                "webhook.record_failed",
                error=str(exc),
                action="the lease runs out and the event is posted again",
            )

    async def _post(self, hook: WebhookConfig, row: OutboxEvent, sent: datetime) -> str | None:
        """POST one event; None when the receiver took it, else what went wrong."""
        if self._session is None:
            raise RuntimeError("enter `async with WebhookSender(...)` before sending")
        body = _body(row)
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: row.event,
            ID_HEADER: str(row.id),
            SIGNATURE_HEADER: sign(hook.secret, body, int(sent.timestamp())),
        }
        seconds = hook.timeout.total_seconds()
        timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 5.0))
        try:
            async with self._session.post(
                hook.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                text = (await response.content.read(200)).decode("utf-8", "replace").strip()
                return f"HTTP {response.status}: {text}" if text else f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: this row is retried, the others go on
            log.exception("webhook.unexpected_error", webhook=hook.name, id=row.id)
            return f"unexpected {type(exc).__name__}: {exc}"

    async def _purge(self, before: datetime) -> None:
        try:
            while purged := await self.outbox.purge(before, _PURGE_BATCH):
                log.info("webhook.purged", rows=purged, before=before.isoformat())
                if purged < _PURGE_BATCH:
                    break
        except StoreError as exc:
            log.warning("webhook.purge_failed", error=str(exc), action="retrying in an hour")
