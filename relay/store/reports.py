"""Reports: the bounce rollup and the bounces report read from it, queue and bounce
statistics for the admin pages, and recorded bounces read back for ``classify --replay``.
Queries: ``reports.sql``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from policies.templates import wording_of
from relay.store.base import QUERIES, REPORT_TIMEOUT_SECONDS, StoreBase
from relay.store.records import RecordedBounce, ReportRow

__all__ = ["ReportStore", "roll_up_bounces"]


async def roll_up_bounces(
    conn: Any, occurred_at: datetime, event_ids: Sequence[int], timeout: float | None = None
) -> None:
    """Fold bounce events just written into bounce_rollup, inside the caller's transaction.

    The statement joins CTEs, which carry no statistics: the planner guesses a row or two
    and picks nested loops, quadratic for a batch of thousands. Hash joins keep it linear,
    so nested loops are off for the rest of this transaction (this is its last statement).
    """
    await conn.execute(QUERIES["intern_recipient_domains"], occurred_at, event_ids, timeout=timeout)
    await conn.execute("SET LOCAL enable_nestloop = off", timeout=timeout)
    await conn.execute(QUERIES["roll_up_bounces"], occurred_at, event_ids, timeout=timeout)


def _whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC days inside [start, end), or an empty range at ``end``."""
    first = start.astimezone(UTC)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    day_from = midnight if midnight == first else midnight + timedelta(days=1)
    day_to = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day_from, day_to) if day_from < day_to else (end, end)


class ReportStore(StoreBase):
    async def iter_bounce_report(
        self,
        start: datetime,
        end: datetime,
        types: Sequence[str],
        campaigns: Sequence[str] | None,
        group_by: str,
        top: int | None,
    ) -> AsyncIterator[ReportRow]:
        """Stream report rows through a server-side cursor (constant memory)."""
        async with self._transaction("bounces report", readonly=True) as tx:
            # JIT compiles for ~0.4 s before a report that itself takes less.
            await tx.conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            cursor = tx.cursor(
                "bounce_report",
                start,
                end,
                list(types),
                list(campaigns) if campaigns else None,
                group_by,
                top,
                *_whole_days(start, end),
                prefetch=2000,
                # A million-row report sorts for longer than the store's usual 10 s.
                timeout=REPORT_TIMEOUT_SECONDS,
            )
            async for r in cursor:
                yield ReportRow(
                    r["grp"],
                    # The template groups rewordings; the row shows words a reply had.
                    wording_of(r["sample"]) if r["sample"] else r["template"],
                    r["code"],
                    r["amount"],
                    r["messages"],
                    r["recipient_domains"],
                    r["category"],
                    r["first_seen"],
                    r["last_seen"],
                    r["sample"],
                )

    async def queue_stats(self) -> dict[str, tuple[int, datetime | None]]:
        """Open deliveries per state with the oldest message's receive time."""
        rows = await self._rows("queue_stats", what="queue stats")
        return {r["state"]: (r["n"], r["oldest"]) for r in rows}

    async def campaigns_in_period(self, start: datetime, end: datetime) -> list[str]:
        rows = await self._rows("campaigns_in_period", start, end, what="campaigns")
        return [r["campaign"] for r in rows]

    async def bounces_per_day(
        self, start: datetime, end: datetime, campaigns: Sequence[str] | None
    ) -> list[tuple[datetime, str, int]]:
        rows = await self._rows(
            "bounces_per_day",
            start,
            end,
            list(campaigns) if campaigns else None,
            what="bounces per day",
        )
        return [(r["day"], r["type"], r["amount"]) for r in rows]

    async def deferral_reasons(self, limit: int = 10) -> list[tuple[str, int]]:
        rows = await self._rows("deferral_reasons", limit, what="deferral reasons")
        return [(r["reply"], r["n"]) for r in rows]

    # --- replay (`classify --replay`) ----------------------------------------------------

    async def iter_recorded_bounces(
        self, since: datetime, until: datetime
    ) -> AsyncIterator[RecordedBounce]:
        """The bounce events of [since, until) in id order with their recorded verdicts,
        streamed through a server-side cursor (constant memory over any period)."""
        async with self._transaction("read recorded bounces", readonly=True) as tx:
            cursor = tx.cursor(
                "recorded_bounces",
                since,
                until,
                prefetch=2000,
                # The server sorts the whole period before the first row.
                timeout=REPORT_TIMEOUT_SECONDS,
            )
            async for r in cursor:
                yield RecordedBounce(**dict(r))
