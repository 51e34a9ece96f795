"""Reports: the bounce rollup and the bounces report read from it (and the bounce events
behind one of its rows), queue and bounce statistics for the admin pages, and recorded
bounces read back for ``classify --replay``. Queries: ``reports.sql``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import asyncpg

from policies.templates import wording_of
from relay.store.base import QUERIES, REPORT_TIMEOUT_SECONDS, Statements, StoreBase
from relay.store.records import (
    RecordedBounce,
    ReportRow,
    ReportRowEvent,
    ReportTotals,
    SeriesRow,
)

__all__ = ["ReportStore", "ReportStream", "roll_up_bounces"]

R = TypeVar("R")


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


def _totals(r: asyncpg.Record) -> ReportTotals:
    """The total line, the first record of bounce_report and bounce_series."""
    return ReportTotals(
        r["amount"], r["messages"], r["attempts"], r["delivered"], r["first_seen"], r["last_seen"]
    )


def _whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC days inside [start, end), or an empty range at ``end``."""
    first = start.astimezone(UTC)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    day_from = midnight if midnight == first else midnight + timedelta(days=1)
    day_to = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day_from, day_to) if day_from < day_to else (end, end)


class ReportStream(Generic[R]):
    """A report's rows, streamed from a server-side cursor (constant memory), and its
    ``totals``: the statement's first record, computed from the rows it read, so they are
    set once the first row (or the end) has arrived and say the same as the rows.
    ``aclose`` ends the transaction early."""

    def __init__(self, read: Callable[[ReportStream[R]], AsyncGenerator[R, None]]) -> None:
        self.totals: ReportTotals | None = None
        self._rows = read(self)

    def __aiter__(self) -> ReportStream[R]:
        return self

    async def __anext__(self) -> R:
        return await anext(self._rows)

    async def aclose(self) -> None:
        await self._rows.aclose()


def _report_row(r: asyncpg.Record) -> ReportRow:
    return ReportRow(
        group=r["grp"],
        # The template groups rewordings; the row shows words a reply had.
        bounce_text=wording_of(r["sample"]) if r["sample"] else r["template"],
        code=r["code"],
        amount=r["amount"],
        messages=r["messages"],
        recipient_domains=r["recipient_domains"],
        category=r["category"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        sample=r["sample"],
        attempts=r["attempts"],
        delivered=r["delivered"],
        template_key=r["template_key"],
    )


def _series_row(r: asyncpg.Record) -> SeriesRow:
    return SeriesRow(r["bucket"], r["grp"], r["amount"], r["attempts"], r["delivered"])


class ReportStore(StoreBase):
    def _report_stream(
        self, query: str, args: Sequence[Any], row: Callable[[asyncpg.Record], R]
    ) -> ReportStream[R]:
        """``query``'s records as a ReportStream: its total line (``is_total``) becomes the
        stream's ``totals``, every other record a row."""

        async def read(stream: ReportStream[R]) -> AsyncGenerator[R, None]:
            async with self._report_transaction() as tx:
                cursor = tx.cursor(
                    query,
                    *args,
                    prefetch=2000,
                    # A million-row report sorts for longer than the store's usual 10 s.
                    timeout=REPORT_TIMEOUT_SECONDS,
                )
                async for r in cursor:
                    if r["is_total"]:
                        stream.totals = _totals(r)
                        continue
                    yield row(r)

        return ReportStream(read)

    def iter_bounce_report(
        self,
        start: datetime,
        end: datetime,
        types: Sequence[str],
        campaigns: Sequence[str] | None,
        group_by: str,
        top: int | None,
    ) -> ReportStream[ReportRow]:
        """The bounces report's rows (see bounce_report) and its totals."""
        period = (start, end, list(types), list(campaigns) if campaigns else None)
        args = (*period, group_by, top, *_whole_days(start, end))
        return self._report_stream("bounce_report", args, _report_row)

    def iter_bounce_series(
        self,
        start: datetime,
        end: datetime,
        types: Sequence[str],
        campaigns: Sequence[str] | None,
        group_by: str,
        top: int | None,
        by: str,
    ) -> ReportStream[SeriesRow]:
        """The report as a time series per UTC ``by`` ("hour" | "day") and group (see
        bounce_series), and the report's totals."""
        period = (start, end, list(types), list(campaigns) if campaigns else None)
        args = (*period, group_by, top, *_whole_days(start, end), by)
        return self._report_stream("bounce_series", args, _series_row)

    async def report_row_events(
        self,
        start: datetime,
        end: datetime,
        types: Sequence[str],
        campaigns: Sequence[str] | None,
        group_by: str,
        group: str,
        template_key: str,
        before: tuple[datetime, int] | None,
        limit: int,
    ) -> list[ReportRowEvent]:
        """The bounce events behind one report row (``group`` under ``group_by``, the row's
        ``template_key``) in the report's period, types and campaigns: newest first, at most
        ``limit``, older than ``before`` (occurred_at, id: the last one of the previous
        page), or from the newest."""
        # Without a page before it, "older than (end, 0)" is no bound at all (the period
        # ends before ``end``), and the keyset stays an index condition either way.
        older_than = before or (end, 0)
        rows = await self._rows(
            "report_row_events",
            start,
            end,
            list(types),
            list(campaigns) if campaigns else None,
            group_by,
            group,
            template_key,
            *older_than,
            limit,
            what="events behind a report row",
        )
        return [ReportRowEvent(**dict(r)) for r in rows]

    @asynccontextmanager
    async def _report_transaction(self) -> AsyncIterator[Statements]:
        """A read-only transaction for a report's cursor."""
        async with self._transaction("bounces report", readonly=True) as tx:
            # JIT compiles for ~0.4 s before a report that itself takes less.
            await tx.conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            yield tx

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
