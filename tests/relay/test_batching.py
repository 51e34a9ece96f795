"""GroupBatcher: concurrent callers share one call of ``process``; with a window, callers that
come within it share one too, and close() sends what the collector has taken."""

from __future__ import annotations

import asyncio

import pytest

from relay.batching import GroupBatcher
from relay.errors import StoreError

# Liveness bound only: each of these finishes in milliseconds unless something waits wrongly.
PROMPTLY = 5.0


class Recorder:
    """A ``process`` that records each batch; ``gate`` unset holds batches in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [item * 10 for item in items]


async def test_a_lone_caller_without_a_window_is_sent_at_once():
    process = Recorder()
    batcher = GroupBatcher(process, name="t")
    assert await asyncio.wait_for(batcher.submit(1), PROMPTLY) == 10
    assert process.batches == [[1]]
    await batcher.close()


async def test_callers_within_the_window_share_one_batch():
    process = Recorder()
    batcher = GroupBatcher(process, name="t", window=0.2)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)  # well inside the window: the first is not sent yet
    assert process.batches == []
    second = asyncio.ensure_future(batcher.submit(2))
    assert list(await asyncio.wait_for(asyncio.gather(first, second), PROMPTLY)) == [10, 20]
    assert process.batches == [[1, 2]]
    await batcher.close()


async def test_a_full_batch_goes_before_its_window_ends():
    process = Recorder()
    batcher = GroupBatcher(process, name="t", max_batch=3, window=3600)
    results = asyncio.gather(*(batcher.submit(n) for n in (1, 2, 3)))
    assert await asyncio.wait_for(results, PROMPTLY) == [10, 20, 30]
    assert process.batches == [[1, 2, 3]]
    await batcher.close()


async def test_close_sends_the_batch_gathering_in_its_window():
    """A window that would outlast the process: close() sends it rather than dropping it."""
    process = Recorder()
    batcher = GroupBatcher(process, name="t", window=3600)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(batcher.close(), PROMPTLY)
    assert list(await asyncio.wait_for(asyncio.gather(first, second), PROMPTLY)) == [10, 20]
    assert process.batches == [[1, 2]]


async def test_close_fails_only_what_no_batch_has_taken():
    """Without a window: one batch in flight, the next taken and waiting for the slot, one
    more queued. close() lets the first finish, sends the taken one, fails the queued one."""
    process = Recorder()
    process.gate.clear()
    batcher = GroupBatcher(process, name="t")
    in_flight = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    taken = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)  # the collector holds it, waiting for the slot
    queued = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    process.gate.set()
    await asyncio.wait_for(closing, PROMPTLY)
    assert list(await asyncio.wait_for(asyncio.gather(in_flight, taken), PROMPTLY)) == [10, 20]
    with pytest.raises(StoreError, match="shutting down"):
        await asyncio.wait_for(queued, PROMPTLY)
    assert process.batches == [[1], [2]]
