"""Group commit: concurrent SMTP sessions share one database commit.

Each DATA hands its message to ``GroupCommitter.commit`` and waits; the
messages that queue up together are written as one statement (one fsync)
by ``relay.batching.GroupBatcher``. Every session still hears 250 only
after its own rows are durable.

When this process's delivery worker has room for a batch, the batch's deliveries are
committed already leased to it and handed over with their bodies: no claim and no body
read follow, and the first attempt starts at once. Leased or queued, what is durable is the
same; a relay that dies before sending leaves leases that run out, and another claims them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

from relay import faults
from relay.batching import GroupBatcher
from relay.clock import Clock, utc_now
from relay.store import AcceptedMessage, ClaimedDelivery, IncomingMessage, Store

__all__ = ["DirectDelivery", "GroupCommitter"]


class DirectDelivery(Protocol):
    """A delivery worker that takes committed deliveries straight from the committer."""

    owner: str

    @property
    def lease(self) -> timedelta: ...

    def can_take(self, deliveries: int) -> bool: ...

    def take(self, claimed: list[ClaimedDelivery], bodies: dict[int, bytes | None]) -> None: ...


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 256,
        max_inflight: int = 2,
        on_commit: Callable[[Sequence[AcceptedMessage]], None] | None = None,
        direct: DirectDelivery | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._on_commit = on_commit
        self._direct = direct
        self._clock = clock
        # tests/chaos only: die inside the store transaction, rows written, not committed.
        self._before_commit = _crash_before_commit if faults.armed("commit.before_commit") else None
        self._batcher: GroupBatcher[IncomingMessage, AcceptedMessage] = GroupBatcher(
            self._accept, name="intake.commit", max_batch=max_batch, max_inflight=max_inflight
        )

    async def commit(self, message: IncomingMessage) -> AcceptedMessage:
        """Return once ``message`` is durable; raise StoreError when it is not."""
        return await self._batcher.submit(message)

    async def close(self) -> None:
        await self._batcher.close()

    async def _accept(self, batch: list[IncomingMessage]) -> list[AcceptedMessage]:
        direct = self._direct
        if direct is not None and direct.can_take(sum(len(m.recipients) for m in batch)):
            accepted, leased = await self._store.accept_and_lease(
                self._clock(), batch, direct.owner, direct.lease, before_commit=self._before_commit
            )
        else:
            direct, leased = None, []
            accepted = await self._store.accept_messages(
                self._clock(), batch, before_commit=self._before_commit
            )
        # tests/chaos: durable, and no session has heard its 250 yet.
        faults.crash_point("commit.after_commit")
        if direct is not None:
            bodies = {m.queue_id: m.body for m in batch}
            direct.take(leased, {a.id: bodies[a.queue_id] for a in accepted})
        elif self._on_commit is not None:
            self._on_commit(accepted)
        by_id = {a.queue_id: a for a in accepted}
        return [by_id[m.queue_id] for m in batch]


def _crash_before_commit() -> None:
    faults.crash_point("commit.before_commit")
