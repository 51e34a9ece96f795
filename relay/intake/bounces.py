"""Bounce messages mailed back to the DSN domain: read them, never relay them.

A delivery sent with a VERP return path (``policies.verp``) that bounces
later comes back here as a DSN, a non-standard bounce or a feedback report.
Each recipient result takes the path a synchronous reply takes (classify,
bounce record, suppression, profile) through ``policies.verdict``
and one store transaction. Only a verified return path names a delivery, and
only that delivery's recipient can be affected, so a forged bounce suppresses
nobody. Whatever cannot be used is kept as one ``dsn_unmatched`` event per
message that says why; the sender still gets 250 (a bounce must not bounce).

Anyone may mail the DSN domain, so what one bounce message may cost is bounded:

- it is parsed off the event loop, in a worker process (``ParsePool``), within
  ``PARSE_BUDGET_SECONDS``: a parse over budget is killed with its process and
  the message kept as unmatched ("parse budget exceeded"); the loop only waits.
  Processes, not threads: ``parse_bounce`` is pure Python and takes up to about
  a second on 2 MB of hostile input (``bench/dsn_parse_bench.py``); in a thread
  it would hold the GIL, and so the event loop, all that time;
- its returned headers are searched for a return path once, in the worker, not
  once per RCPT, and it is one unmatched record whatever its recipients;
- a client address has at most ``[dsn] max_unmatched_per_client`` unmatched
  messages kept per hour; past that its bounce messages are refused with
  ``450 4.7.1`` and nothing is stored;
- unmatched records are deleted after ``[dsn] unmatched_retention``, from here,
  at most every ``EXPIRY_INTERVAL``;
- a delivery counts each reported action once (the store's ``dsn_results`` key):
  the same DSN sent five times is one bounce.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from policies.addresses import domain_of, normalise_address
from policies.dsn import (
    BounceRecipient,
    MalformedBounce,
    NotAMessage,
    ParsedBounce,
    parse_bounce,
)
from policies.verdict import NotJudged, Protection, Reported, refuses_suppressed, verdict
from policies.verp import ReturnPaths
from relay.clock import Clock, utc_now
from relay.config import DsnConfig, Rules
from relay.errors import StoreError
from relay.intake import responses as replies
from relay.metrics import Metrics
from relay.store import DeliveryDetail, DsnRecord, Store

__all__ = [
    "PARSE_BUDGET_SECONDS",
    "TOO_MANY_UNMATCHED",
    "BounceReader",
    "ParsePool",
    "ParserUnavailable",
    "Reading",
    "Unmatched",
    "shared_parse_pool",
]

log = structlog.get_logger("relay.bounces")

# Wall time one bounce message may take to parse. A linear parse of the largest message
# (policies.dsn.MAX_BYTES, 2 MB) takes well under a second on one core.
PARSE_BUDGET_SECONDS = 2.0
PARSE_WORKERS = 2
# A worker process imports the relay's modules before it reads anything.
_STARTUP_SECONDS = 60.0
_READY = "ready"
UNMATCHED_WINDOW = timedelta(hours=1)  # [dsn] max_unmatched_per_client is per hour
EXPIRY_INTERVAL = timedelta(minutes=10)
EXPIRY_BATCH = 10_000
_LISTED_RCPTS = 50  # an unmatched record names this many of its message's recipients
_UNSIGNED = "no valid return path token (missing, forged or mangled)"
TOO_MANY_UNMATCHED = (
    "450 4.7.1 Too many unusable bounce messages from {peer} in the last hour; try again later"
)


@dataclass(frozen=True)
class Unmatched:
    """Why a bounce message (or one of its recipients) was dropped."""

    reason: str


@dataclass(frozen=True)
class Reading:
    """What a worker read from one bounce message: the parse (its ``returned_headers``
    emptied: the worker has searched them, and they may be megabytes), and the delivery a
    verified return path in those headers names."""

    parsed: ParsedBounce | Unmatched
    returned_delivery: int | None
    over_budget: bool = False


class ParserUnavailable(RuntimeError):
    """No parse worker could be started: the bounce is answered 451, the sender retries."""


# --------------------------------------------------------------------------- parse workers


class ParsePool:
    """Bounce messages parsed in worker processes, off the event loop.

    Each of ``size`` threads owns one spawned worker process and hands it one message at a
    time; the thread waits (without the GIL) for the answer, at most the parse budget. A
    worker over budget is killed, and its thread starts a new one for the next message. A
    pool serves any number of event loops and readers (``shared_parse_pool``).
    """

    def __init__(self, size: int = PARSE_WORKERS) -> None:
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="dsn-parse")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._closed = False

    async def read(self, raw: bytes, return_paths: ReturnPaths, budget: float) -> Reading:
        """Parse ``raw`` in a worker. Raises ParserUnavailable when no worker starts."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads, self._read_blocking, raw, return_paths, budget
        )

    def close(self) -> None:
        """Stop every worker process; a read waiting on one ends at once."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, set()
        for worker in workers:
            worker.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _read_blocking(self, raw: bytes, return_paths: ReturnPaths, budget: float) -> Reading:
        worker = self._worker()
        try:
            worker.conn.send((raw, return_paths))
            if worker.conn.poll(budget):
                reading: Reading = worker.conn.recv()
                return reading
        except (OSError, EOFError) as exc:
            self._retire(worker)
            if self._closed:
                raise ParserUnavailable(
                    "the parse pool was closed (the relay is stopping)"
                ) from exc
            # The worker died on this message (out of memory, killed): it is unreadable.
            return Reading(Unmatched("the parser process died reading it"), None)
        self._retire(worker)
        return Reading(
            Unmatched(f"parse budget exceeded ({budget:g} s); kept for inspection"),
            None,
            over_budget=True,
        )

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is not None and worker.process.is_alive():
            return worker
        if worker is not None:
            self._retire(worker)
        worker = _Worker.start()
        with self._lock:
            if self._closed:
                worker.stop()
                raise ParserUnavailable("the parse pool is closed (the relay is stopping)")
            self._workers.add(worker)
        self._local.worker = worker
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._workers.discard(worker)
        self._local.worker = None


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection

    @classmethod
    def start(cls) -> _Worker:
        """A new worker process, once it has said it is ready. Spawned, not forked: a fork
        of the relay would copy its event loop, threads and database connections."""
        context = multiprocessing.get_context("spawn")
        conn, child_end = context.Pipe()
        process = context.Process(
            target=_serve_parses, args=(child_end,), name="bounce-relay dsn-parse", daemon=True
        )
        process.start()
        child_end.close()
        worker = cls(process, conn)
        try:
            if conn.poll(_STARTUP_SECONDS) and conn.recv() == _READY:
                return worker
        except (OSError, EOFError):
            pass
        worker.stop()
        raise ParserUnavailable(
            f"a bounce parse worker did not start within {_STARTUP_SECONDS:g} s "
            f"(exit code {process.exitcode}); see the relay's stderr"
        )

    def stop(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


def _serve_parses(conn: Connection) -> None:
    """A worker process: read one message at a time until the relay closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the relay's to handle
    conn.send(_READY)
    while True:
        try:
            raw, return_paths = conn.recv()
            conn.send(_read_message(raw, return_paths))
        except (OSError, EOFError):
            return  # the relay closed its end (stopped, or gave up on this parse)


def _read_message(raw: bytes, return_paths: ReturnPaths) -> Reading:
    try:
        parsed = _parse(raw)
        if isinstance(parsed, Unmatched):
            return Reading(parsed, None)
        returned = return_paths.find_delivery(parsed.returned_headers)
        return Reading(replace(parsed, returned_headers=""), returned)
    except Exception as exc:  # MemoryError and the like: the message is unreadable
        return Reading(Unmatched(f"the parser failed reading it ({type(exc).__name__})"), None)


@functools.cache
def shared_parse_pool() -> ParsePool:
    """The relay process's parse pool (every reader of the process shares it; its workers
    start on first use), stopped at exit."""
    pool = ParsePool()
    atexit.register(pool.close)
    return pool


# --------------------------------------------------------------------------- reader


class BounceReader:
    def __init__(
        self,
        store: Store,
        return_paths: ReturnPaths,
        rules: Callable[[], Rules],
        *,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
        dsn: DsnConfig | None = None,
        parser: ParsePool | None = None,
    ) -> None:
        self.store = store
        self.return_paths = return_paths
        self.rules = rules
        self.clock = clock
        self.metrics = metrics or Metrics()
        # [dsn] max_unmatched_per_client and unmatched_retention (the rest is return_paths).
        self.dsn = dsn or DsnConfig()
        self.parser = parser or shared_parse_pool()
        self.parse_budget = PARSE_BUDGET_SECONDS
        self._next_expiry: datetime | None = None

    def is_bounce_address(self, address: str) -> bool:
        return self.return_paths.is_ours(address)

    async def read(self, raw: bytes, sender: str, rcpt_tos: list[str], peer: str) -> str | None:
        """Apply one bounce message sent to ``rcpt_tos`` (addresses at the DSN domain) by
        client ``peer``. None when it was read, usable or not (the caller answers 250);
        else the reply refusing it: 450 when the client is over its unmatched limit (nothing
        parsed or stored), 451 when no parser could start (the sender retries).

        Raises ``StoreError`` when nothing could be recorded: the caller answers 451 and
        the sender tries again later.
        """
        now = self.clock()
        await self._expire_unmatched(now)
        since = now - UNMATCHED_WINDOW
        limit = self.dsn.max_unmatched_per_client
        if await self.store.count_dsn_unmatched(peer, since, limit) >= limit:
            return self._too_many_unmatched(peer, len(raw))
        try:
            reading = await self.parser.read(raw, self.return_paths, self.parse_budget)
        except ParserUnavailable as exc:
            log.error("dsn.parser_unavailable", error=str(exc), action="replied 451; retried")
            return replies.TEMPORARY_FAILURE
        if reading.over_budget:
            log.warning(
                "dsn.parse_budget_exceeded",
                size=len(raw),
                budget_seconds=self.parse_budget,
                action="kept as unmatched; nothing suppressed on its word",
            )
        records, unmatched = await self._match(reading, rcpt_tos)
        if records:
            await self._apply(records)
        if unmatched:
            kept = await self._keep_unmatched(unmatched, raw, sender, peer, reading.parsed, since)
            if not kept and not records:
                return self._too_many_unmatched(peer, len(raw))
        return None

    async def _match(
        self, reading: Reading, rcpt_tos: list[str]
    ) -> tuple[list[DsnRecord], dict[str, list[str]]]:
        """The records of the deliveries the RCPTs name (each delivery once, however many
        RCPTs name it), and the RCPTs that match nothing, by reason."""
        parsed = reading.parsed
        if isinstance(parsed, Unmatched):
            return [], {parsed.reason: list(rcpt_tos)}
        by_delivery: dict[int, list[str]] = {}
        unmatched: dict[str, list[str]] = {}
        for rcpt in rcpt_tos:
            # A feedback loop or a forwarded bounce may reach another address at the DSN
            # domain; the returned headers then still carry the signed return path.
            delivery_id = self.return_paths.delivery_of(rcpt)
            if delivery_id is None:
                delivery_id = reading.returned_delivery
            if delivery_id is None:
                unmatched.setdefault(_UNSIGNED, []).append(rcpt)
            else:
                by_delivery.setdefault(delivery_id, []).append(rcpt)
        results = _ResultIndex(parsed)
        records: list[DsnRecord] = []
        for delivery_id, rcpts in by_delivery.items():
            with structlog.contextvars.bound_contextvars(bounce_rcpt=rcpts[0]):
                outcome = await self._records(parsed, results, delivery_id)
            if isinstance(outcome, Unmatched):
                unmatched.setdefault(outcome.reason, []).extend(rcpts)
            else:
                records.extend(outcome)
        return records, unmatched

    async def _records(
        self, parsed: ParsedBounce, results: _ResultIndex, delivery_id: int
    ) -> list[DsnRecord] | Unmatched:
        delivery = await self.store.delivery_by_id(delivery_id)
        if delivery is None:
            return Unmatched(f"delivery {delivery_id} no longer exists")
        key = delivery.recipient_key
        found = results.about(key)
        if not found:
            return Unmatched("the bounce reports no failure for the delivery's recipient")
        rules = self.rules()
        protection = _protection(delivery)
        records = []
        not_judged: NotJudged | None = None
        for result in found:
            reply = result.reply()
            text = result.shown_text
            facts = Reported.of(result, domain_of(key), loop=parsed.loop, protection=protection)
            decision = verdict(reply, facts, rules)
            if isinstance(decision, NotJudged):
                not_judged = not_judged or decision
                continue
            if decision is None:
                continue
            log.info(
                "dsn.result",
                delivery_id=delivery_id,
                recipient=key,
                action=result.action,
                status=result.status,
                category=decision.verdict.category.value,
                recorded_as=decision.event.value,
                suppress=decision.suppress,
                remote_mta=result.remote_mta,
            )
            records.append(
                DsnRecord(
                    delivery_id=delivery_id,
                    event=decision.event.value,
                    finish_state=decision.finish_state.value if decision.finish_state else None,
                    non_delivery=decision.non_delivery,
                    suppress=decision.suppress,
                    suppress_reason=f"{decision.verdict.category.value}: {text[:200]}",
                    code=reply.code or None,
                    enhanced=reply.enhanced,
                    reply_text=text,
                    template=decision.template,
                    category=decision.verdict.category.value,
                    rule=decision.verdict.rule,
                    destination=result.remote_mta,
                    detail=_detail(parsed, result),
                    action=result.action,
                )
            )
        if records:
            return records
        if not_judged is not None:
            return Unmatched(not_judged.reason)
        return Unmatched("the bounce reports only successful deliveries")

    async def _apply(self, records: list[DsnRecord]) -> None:
        applied = await self.store.apply_dsn_results(
            self.clock(), records, cancel_queued=refuses_suppressed(self.rules())
        )
        for record in records:
            self.metrics.bounce_messages.labels(record.event).inc()
        log.info(
            "dsn.applied",
            results=len(records),
            recorded=applied.recorded,
            repeated=applied.skipped,
            suppressed=applied.suppressed,
            cancelled=applied.cancelled,
        )

    async def _keep_unmatched(
        self,
        unmatched: dict[str, list[str]],
        raw: bytes,
        sender: str,
        peer: str,
        parsed: ParsedBounce | Unmatched,
        since: datetime,
    ) -> bool:
        """One dsn_unmatched record for the message, naming its unmatched RCPTs and why;
        False (nothing written) when the client is at its limit."""
        rcpts = [rcpt for listed in unmatched.values() for rcpt in listed]
        reason = "; ".join(unmatched)
        detail: dict[str, Any] = {
            "reason": reason,
            "peer": peer,
            "size": len(raw),
            "subject": _subject(raw),
            "rcpt_tos": rcpts[:_LISTED_RCPTS],
            "rcpt_count": len(rcpts),
        }
        if isinstance(parsed, ParsedBounce):
            detail["format"] = parsed.format
            detail["recipients"] = [r.recipient for r in parsed.recipients][:20]
        kept = await self.store.record_dsn_unmatched(
            self.clock(),
            sender,
            rcpts[0],
            reason,
            detail,
            peer=peer,
            since=since,
            limit=self.dsn.max_unmatched_per_client,
        )
        if kept:
            self.metrics.bounce_messages.labels("dsn_unmatched").inc()
            log.warning(
                "dsn.unmatched",
                reason=reason,
                sender=sender,
                size=len(raw),
                rcpts=len(rcpts),
                action="dropped; nothing suppressed on its word",
            )
        return kept

    def _too_many_unmatched(self, peer: str, size: int) -> str:
        self.metrics.rejected.labels("too_many_unmatched_bounces").inc()
        log.warning(
            "dsn.refused",
            reason="too_many_unmatched",
            size=size,
            limit_per_hour=self.dsn.max_unmatched_per_client,
            action="replied 450 4.7.1, nothing stored; the client may retry after the hour "
            "(raise [dsn] max_unmatched_per_client if this is a real mail system)",
        )
        return TOO_MANY_UNMATCHED.format(peer=peer)

    async def expire_unmatched_forever(self, interval: float = 60.0) -> None:
        """Keep the unmatched records trimmed without bounce traffic too (a relay whose
        bounces stopped would otherwise keep its old ones): a pass at start, then one each
        EXPIRY_INTERVAL of the relay's clock, looked at every ``interval`` seconds."""
        while True:
            await self._expire_unmatched(self.clock())
            await asyncio.sleep(interval)

    async def _expire_unmatched(self, now: datetime) -> None:
        """Delete unmatched records older than [dsn] unmatched_retention, a batch at most
        every EXPIRY_INTERVAL: a relay that reads bounces keeps the table trimmed."""
        if self._next_expiry is not None and now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRY_INTERVAL
        retention = self.dsn.unmatched_retention
        try:
            gone = await self.store.expire_dsn_unmatched(now - retention, EXPIRY_BATCH)
        except StoreError as exc:
            log.warning("dsn.unmatched_expiry_failed", error=str(exc), action="retried later")
            return
        if gone:
            log.info("dsn.unmatched_expired", deleted=gone, retention=str(retention))


def _parse(raw: bytes) -> ParsedBounce | Unmatched:
    try:
        parsed = parse_bounce(raw)
    except NotAMessage as exc:
        return Unmatched(f"not a mail message: {exc}")
    except MalformedBounce as exc:
        return Unmatched(f"malformed bounce: {exc}")
    if parsed is None:
        return Unmatched("not recognisable as a bounce or feedback report")
    return parsed


class _ResultIndex:
    """The results of one bounce by the normalised address they name, built once per
    message (not once per RCPT)."""

    def __init__(self, parsed: ParsedBounce) -> None:
        self._all = parsed.recipients
        self._by_key: dict[str, list[BounceRecipient]] = {}
        for result in parsed.recipients:
            key = _key(result.recipient) if result.recipient else None
            if key is not None:
                self._by_key.setdefault(key, []).append(result)

    def about(self, key: str) -> list[BounceRecipient]:
        """The results about the delivery's recipient: those naming it, else the only one
        there is (a forwarder may have rewritten the address; the return path already
        names the delivery)."""
        mine = self._by_key.get(key)
        if mine:
            return mine
        return list(self._all) if len(self._all) == 1 else []


def _key(address: str) -> str | None:
    try:
        return normalise_address(address)
    except ValueError:
        return None


def _protection(delivery: DeliveryDetail) -> Protection | None:
    """The same protection the delivery worker gives the address (policies.verdict)."""
    return Protection.ALLOWLISTED if delivery.allowlisted else None


def _detail(parsed: ParsedBounce, result: BounceRecipient) -> dict[str, Any]:
    return {
        "format": parsed.format,
        "action": result.action,
        "status": result.status,
        "reported_recipient": result.recipient,
        "remote_mta": result.remote_mta,
        "feedback_type": result.feedback_type,
    }


def _subject(raw: bytes) -> str:
    head = raw[:8192].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in head.splitlines():
        if line[:8].lower() == b"subject:":
            return line[8:].strip().decode("utf-8", "replace")[:200]
    return ""
