"""Group commit: concurrent SMTP sessions share one database commit.

Each DATA hands its message to ``GroupCommitter.commit`` and waits. One
collector task takes whatever has queued up while the previous commits were
running and writes it as one statement (one fsync), with a few commits in
flight at once. Fifty sessions sending together therefore cost a handful of
round trips, not fifty, and every session still hears 250 only after its own
rows are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from relay.clock import Clock, utc_now
from relay.errors import StoreError, StoreUnavailable
from relay.store import AcceptedMessage, IncomingMessage, Store

__all__ = ["GroupCommitter"]

log = structlog.get_logger(__name__)

_Pending = tuple[IncomingMessage, "asyncio.Future[AcceptedMessage]"]


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 256,
        max_inflight: int = 4,
        on_commit: Callable[[Sequence[AcceptedMessage]], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_inflight)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_commit = on_commit
        self._clock = clock

    async def commit(self, message: IncomingMessage) -> AcceptedMessage:
        """Return once ``message`` is durable; raise StoreError when it is not."""
        future: asyncio.Future[AcceptedMessage] = asyncio.get_running_loop().create_future()
        # Retrieve the outcome even when the session is gone, so no error goes unobserved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.put_nowait((message, future))
        # shield: a client that hangs up mid-commit must not cancel its batch-mates.
        return await asyncio.shield(future)

    async def run(self) -> None:
        """Collect and commit batches until cancelled."""
        try:
            while True:
                first = await self._queue.get()
                await self._slots.acquire()
                batch = [first]
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                task = asyncio.create_task(self._commit(batch), name="intake.commit")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            try:
                accepted = await self._store.accept_messages(self._clock(), [m for m, _ in batch])
            except StoreUnavailable as exc:
                _fail(batch, exc)
                return
            except StoreError as exc:
                if len(batch) == 1:
                    _fail(batch, exc)
                    return
                # One message the database refuses must not cost the others: retry one by one.
                log.warning("intake.batch_refused", size=len(batch), error=str(exc))
                for item in batch:
                    await self._commit_one(item)
                return
            by_id = {a.queue_id: a for a in accepted}
            for message, future in batch:
                if not future.done():
                    future.set_result(by_id[message.queue_id])
            if self._on_commit is not None:
                self._on_commit(accepted)
        except Exception as exc:
            # A bug or an unexpected driver error must never leave a session waiting:
            # it hears 451 and the client keeps the message.
            log.exception("intake.commit_failed", size=len(batch))
            _fail(batch, StoreError(f"commit failed unexpectedly ({type(exc).__name__})"))
        finally:
            _fail(batch, StoreError("commit abandoned"))  # no-op for settled futures
            self._slots.release()

    async def _commit_one(self, item: _Pending) -> None:
        message, future = item
        try:
            (accepted,) = await self._store.accept_messages(self._clock(), [message])
        except StoreError as exc:
            _fail([item], exc)
            return
        except Exception:
            log.exception("intake.commit_failed", size=1)
            _fail([item], StoreError("commit failed unexpectedly"))
            return
        if not future.done():
            future.set_result(accepted)
        if self._on_commit is not None:
            self._on_commit([accepted])


def _fail(batch: list[_Pending], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
