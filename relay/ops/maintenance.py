"""Housekeeping the relay does itself when the database does not.

The delivery queue rewrites its rows all day; PostgreSQL's autovacuum keeps
that cheap. A server with ``autovacuum = off`` (some test and CI setups do
it for speed) would let dead rows pile up until every claim walks them, so
the relay then vacuums its two queue tables itself, every ``interval``.
"""

from __future__ import annotations

import asyncio

import structlog

from relay.errors import StoreError
from relay.store import Store

__all__ = ["vacuum_while_autovacuum_is_off"]

log = structlog.get_logger("relay.maintenance")


async def vacuum_while_autovacuum_is_off(store: Store, interval: float = 30.0) -> None:
    """Return at once when autovacuum runs; else vacuum the queue until cancelled."""
    try:
        if await store.autovacuum_enabled():
            return
    except StoreError as exc:
        log.warning("maintenance.check_failed", error=str(exc))
        return
    log.warning(
        "maintenance.autovacuum_off",
        action=f"vacuuming deliveries and messages every {interval:g} s; "
        "turn autovacuum on in postgresql.conf",
    )
    while True:
        try:
            await store.vacuum_queue()
        except StoreError as exc:
            log.warning("maintenance.vacuum_failed", error=str(exc), action="retrying later")
        await asyncio.sleep(interval)
