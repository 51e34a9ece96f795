"""Group batching: concurrent callers share one database round trip.

Each caller hands one item to ``GroupBatcher.submit`` and waits for its own
result. One collector task takes whatever has queued up while the previous
batches were running and processes it in one call (one statement, one
commit). Fifty sessions or fifty deliveries finishing together therefore
cost a handful of round trips, not fifty; a lone caller waits for nobody.

By default one batch is in flight and the next gathers meanwhile (the intake
commit allows two): with four in flight, batches came out smaller and the
relay spent about a tenth more CPU per message at 50 sessions (BENCHMARKS.md).

A batcher with a ``window`` also waits that long after a batch's first item
(or until ``max_batch`` have queued) before sending it. That is for work
nobody waits on, the delivery outcomes: when deliveries finish one at a time,
one statement and one commit then serve a window's worth of them instead of
each paying its own, beside the commits that sessions do wait on.

Used for the intake commit (``relay.intake.commit``), the RCPT suppression check and
the delivery outcomes (``relay.delivery.worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog

from relay.errors import StoreError, StoreUnavailable

__all__ = ["GroupBatcher"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupBatcher(Generic[T, R]):
    """``process(items)`` returns one result per item, in order.

    A ``StoreError`` other than ``StoreUnavailable`` for a batch of several items is
    retried item by item, so one item the database refuses does not fail the others.
    Any other exception fails the batch with a ``StoreError`` (callers answer 451 or
    let the lease run out); no caller is ever left waiting.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        max_batch: int = 256,
        max_inflight: int = 1,
        window: float = 0.0,
    ) -> None:
        self._process = process
        self._name = name
        self._max_batch = max_batch
        self._window = window
        # The batch the collector has taken and not sent (in its window, or waiting for a
        # slot): close() still sends it.
        self._held: list[tuple[T, asyncio.Future[R]]] = []
        self._full = asyncio.Event()
        # Created unbound: they attach to the running loop on first use.
        self._slots = asyncio.Semaphore(max_inflight)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Return ``item``'s result once its batch is done; raise StoreError when it failed."""
        loop = asyncio.get_running_loop()
        if self._collector is None or self._collector.done():
            self._collector = loop.create_task(self._collect(), name=f"{self._name}.collector")
        # The caller's own future: each item has one, so a caller that goes away mid-batch
        # cancels only its own (the batch still runs; _settle and _fail skip what is done)
        # and never its batch-mates'. No shield around it: that was a second future and two
        # callbacks per item on the hot path, for the same outcome.
        future: asyncio.Future[R] = loop.create_future()
        # Retrieve the outcome even when the caller is gone, so no error goes unobserved.
        future.add_done_callback(_observe)
        self._queue.put_nowait((item, future))
        if self._held and self._batch_full():
            self._full.set()  # a full batch goes now, window or not
        return await future

    async def close(self) -> None:
        """Stop collecting. Batches already sent to the database finish first, and the one
        the collector has taken is still sent: with a window, that is everything queued
        since its window opened. Items no batch has taken fail with StoreError."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        held, self._held = self._held, []
        while held and self._window and not self._queue.empty():
            held.append(self._queue.get_nowait())
        for start in range(0, len(held), self._max_batch):
            await self._slots.acquire()
            await self._run(held[start : start + self._max_batch])
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(StoreError(f"{self._name}: shutting down"))

    async def _collect(self) -> None:
        while True:
            self._held = [await self._queue.get()]
            if self._window and not self._batch_full():
                # asyncio.timeout rather than wait_for: no task of its own per batch.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._window):
                        await self._full.wait()
            await self._slots.acquire()
            batch, self._held = self._held, []
            self._full.clear()
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._run(batch), name=self._name)
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _batch_full(self) -> bool:
        """Whether the batch the collector holds, with what queued behind it, is full."""
        return len(self._held) + self._queue.qsize() >= self._max_batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            try:
                results = await self._process([item for item, _ in batch])
            except StoreUnavailable as exc:
                _fail(batch, exc)
                return
            except StoreError as exc:
                if len(batch) == 1:
                    _fail(batch, exc)
                    return
                log.warning("batch.refused", batch=self._name, size=len(batch), error=str(exc))
                for one in batch:
                    await self._run_one(one)
                return
            _settle(batch, results)
        except Exception as exc:
            # A bug or an unexpected driver error must never leave a caller waiting.
            log.exception("batch.failed", batch=self._name, size=len(batch))
            _fail(batch, StoreError(f"{self._name} failed unexpectedly ({type(exc).__name__})"))
        finally:
            _fail(batch, StoreError(f"{self._name} abandoned"))  # no-op for settled futures
            self._slots.release()

    async def _run_one(self, one: tuple[T, asyncio.Future[R]]) -> None:
        try:
            _settle([one], await self._process([one[0]]))
        except StoreError as exc:
            _fail([one], exc)
        except Exception as exc:
            log.exception("batch.failed", batch=self._name, size=1)
            _fail([one], StoreError(f"{self._name} failed unexpectedly ({type(exc).__name__})"))


def _observe(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished future's exception, so that none is reported as unobserved."""
    if not future.cancelled():
        future.exception()


def _settle(batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R]) -> None:
    if len(results) != len(batch):
        raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
