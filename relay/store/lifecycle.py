"""The data lifecycle in the store: events' time partitions (listed, created ahead, dropped)
and what is deleted row by row in small batches (finished messages with their deliveries,
old audit rows, events that fell into the default partition). Queries: ``lifecycle.sql``;
the DDL runs in the ``retention_*`` functions of migration 0019.

Only one relay process at a time should do this work: ``lifecycle_lock`` holds a
PostgreSQL advisory lock for as long as its block runs. ``relay.ops.maintenance`` decides
what to create, drop and delete; this module only does what it is told.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.store.base import REPORT_TIMEOUT_SECONDS, StoreBase

__all__ = [
    "DDL_TIMEOUT_SECONDS",
    "DefaultEvents",
    "DeletedMessages",
    "DroppedPartition",
    "LifecycleBacklog",
    "LifecycleStore",
    "TimePartition",
]

# Any constant works as long as every relay uses the same one ("brrete").
_LIFECYCLE_LOCK = 0x6272_7265_7465

# Creating a partition may move rows out of the default partition, and counting a partition
# never analyzed reads it: longer than the store's usual timeout. (Waiting for a lock is
# bounded apart, by the functions' lock_timeout.)
DDL_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class TimePartition:
    """One partition of a table partitioned by time: rows in [lower, upper). ``lower`` None
    is MINVALUE (events_before_0019: everything before 0019); the default partition has
    neither bound."""

    name: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool
    bytes: int  # heap, indexes and TOAST


@dataclass(frozen=True)
class DroppedPartition:
    name: str
    rows: int  # PostgreSQL's estimate when it has one (retention_partition_rows, 0019)
    bytes: int


@dataclass(frozen=True)
class DefaultEvents:
    """What events_default holds (nothing, while partitions are created ahead)."""

    rows: int
    oldest: datetime | None
    newest: datetime | None


@dataclass(frozen=True)
class DeletedMessages:
    messages: int
    deliveries: int
    newest: datetime | None  # the newest receive time among them: the next batch starts there


@dataclass(frozen=True)
class LifecycleBacklog:
    """What a run would delete row by row at given cutoffs (the dry run)."""

    messages: int
    deliveries: int
    webhook_outbox: int
    unmatched_bounces: int
    admin_audit: int
    events_default: int


class LifecycleStore(StoreBase):
    @asynccontextmanager
    async def lifecycle_lock(self) -> AsyncIterator[bool]:
        """Hold the data lifecycle's advisory lock for the block: True, or False at once when
        another relay process holds it. A transaction's lock on a connection of its own
        (``_advisory_lock``), so it holds behind PgBouncer in transaction mode too."""
        async with self._advisory_lock(_LIFECYCLE_LOCK, "take the data lifecycle lock") as ours:
            yield ours

    async def time_partitions(self, table: str) -> list[TimePartition]:
        """The partitions of ``table``, oldest first, the default last."""
        rows = await self._rows("time_partitions", table, what=f"list the partitions of {table}")
        return [TimePartition(**dict(r)) for r in rows]

    async def create_time_partition(
        self, table: str, lower: datetime, upper: datetime
    ) -> tuple[str, int]:
        """Create ``table``'s partition for [lower, upper); its name, and how many rows it
        took over from the default partition."""
        row = await self._row(
            "create_time_partition",
            table,
            lower,
            upper,
            what=f"create a partition of {table}",
            timeout=DDL_TIMEOUT_SECONDS,
        )
        assert row is not None  # the function returns one row or raises
        return str(row["partition"]), int(row["moved"])

    async def drop_time_partition(self, name: str, older_than: datetime) -> DroppedPartition:
        """Drop partition ``name``, whose rows must all be before ``older_than`` (the database
        refuses otherwise); its rows and bytes, read just before."""
        async with self._transaction(f"drop partition {name}") as db:
            size = await db.row("partition_size", name, timeout=DDL_TIMEOUT_SECONDS)
            assert size is not None  # one row, or the partition does not exist and it raised
            await db.value("drop_time_partition", name, older_than)
        return DroppedPartition(name, int(size["rows"]), int(size["bytes"]))

    async def partition_size(self, name: str) -> tuple[int, int]:
        """The rows (PostgreSQL's estimate when it has one) and bytes of partition ``name``."""
        row = await self._row(
            "partition_size", name, what=f"read the size of {name}", timeout=DDL_TIMEOUT_SECONDS
        )
        assert row is not None  # one row, or the partition does not exist and it raised
        return int(row["rows"]), int(row["bytes"])

    async def default_events(self, since: datetime | None = None) -> DefaultEvents:
        """What events_default holds (from ``since`` on; None: all of it)."""
        row = await self._row(
            "default_events",
            since or datetime.min.replace(tzinfo=UTC),
            what="read the default partition of events",
        )
        assert row is not None  # an aggregate: always one row
        return DefaultEvents(**dict(row))

    async def expire_default_events(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` events of the default partition from before ``before``."""
        status = await self._status(
            "expire_default_events", before, limit, what="expire events of the default partition"
        )
        return int(status.split()[-1])

    async def delete_finished_messages(
        self, before: datetime, since: datetime, limit: int
    ) -> DeletedMessages:
        """Delete up to ``limit`` messages received in [since, before) whose deliveries are
        all final, with those deliveries, their DSN results and bounce keys; oldest first."""
        row = await self._row(
            "delete_finished_messages",
            before,
            since,
            limit,
            what="delete finished messages",
        )
        assert row is not None  # counts: always one row
        return DeletedMessages(**dict(row))

    async def delete_old_audit(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` admin audit rows from before ``before``."""
        status = await self._status(
            "delete_old_audit", before, limit, what="delete old admin audit rows"
        )
        return int(status.split()[-1])

    async def lifecycle_backlog(
        self,
        messages_before: datetime,
        webhooks_before: datetime,
        unmatched_before: datetime,
        audit_before: datetime | None,
        events_before: datetime,
    ) -> LifecycleBacklog:
        """How many rows a run at these cutoffs would delete row by row (``audit_before``
        None: the audit log is kept). Counts whole tables' worth: for the dry run only."""
        row = await self._row(
            "lifecycle_backlog",
            messages_before,
            webhooks_before,
            unmatched_before,
            audit_before,
            events_before,
            what="count what the data lifecycle would delete",
            timeout=REPORT_TIMEOUT_SECONDS,
        )
        assert row is not None  # counts: always one row
        return LifecycleBacklog(**dict(row))
