"""The only place with SQL: a ``Store`` over asyncpg pools.

``Store`` is composed of one part per aggregate, each a module here with its queries in the
``.sql`` file of the same name:

    database.py     migrations, durability, ping, vacuum, pools
    queue.py        accept, claim, outcomes, leases, bodies, the deliveries' admin view
    dsn.py          bounce messages: results applied, unusable ones kept
    suppression.py  suppressions, scoped entries, allowlist, evidence, audit, one address
    incidents.py    provider incidents
    reports.py      bounce rollup, the bounces report, stats, recorded bounces for replay
    accounts.py     admin accounts and the admin page's sessions
    outbox.py       the webhook outbox (``Outbox``, beside the Store; webhooks.sql)

``base.py`` is what they share: the named queries and the one way to run them, which
applies the timeout and translates asyncpg and network errors into ``StoreUnavailable`` or
``StoreError``. ``records.py`` holds the frozen dataclasses the methods take and return.
"""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from relay.store import records
from relay.store.accounts import AccountStore
from relay.store.base import QUERIES, REPORT_TIMEOUT_SECONDS, translated
from relay.store.database import DatabaseStore
from relay.store.dsn import DsnStore
from relay.store.incidents import IncidentStore
from relay.store.queue import QueueStore
from relay.store.records import *  # noqa: F403  (the Store's values are part of its interface)
from relay.store.reports import ReportStore, roll_up_bounces
from relay.store.suppression import SuppressionStore

__all__ = [
    "OTHER_POOL_MAX_SIZE",
    "QUERIES",
    "REPORT_TIMEOUT_SECONDS",
    "Store",
    "create_store",
    "roll_up_bounces",
]
__all__ += records.__all__  # the Store's values are part of its interface


class Store(
    DatabaseStore,
    DsnStore,
    QueueStore,
    SuppressionStore,
    IncidentStore,
    ReportStore,
    AccountStore,
):
    """Named queries over asyncpg pools: ``queue`` for the statements every message runs
    (intake, claims, outcomes), ``pool`` for everything else (reports, admin, the CLI,
    maintenance, webhooks). One pool may serve both (tests, commands). Its methods are
    those of its parts, one per aggregate (see the module's docstring)."""


# Connections for what is not the queue path: reports, exports, admin pages, maintenance.
OTHER_POOL_MAX_SIZE = 4


async def create_store(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout: float = 10.0,
    queue_pool: bool = False,
) -> Store:
    """Connect to ``dsn``; raise StoreUnavailable when it is not reachable.

    ``queue_pool`` (a relay that serves): the queue statements get a pool of their own, of
    ``min_size``..``max_size`` connections with generic plans. Left to itself, PostgreSQL
    plans the batch statements afresh on every execution (their unnest arrays make a custom
    plan look cheaper), which cost more than running them: 0.35 ms of planning against
    0.16 ms of execution for one RCPT check. Every queue statement is a lookup by key, which a
    generic plan does as well. Reports keep custom plans, and a long export never holds a
    connection that intake or delivery waits for."""
    async with translated(f"connect to {_redact(dsn)}"):
        queue = None
        if queue_pool:
            queue = await _pool(dsn, min_size, max_size, timeout, generic_plans=True)
        try:
            pool = await _pool(
                dsn,
                1 if queue_pool else min_size,
                OTHER_POOL_MAX_SIZE if queue_pool else max_size,
                timeout,
                generic_plans=False,
            )
        except BaseException:
            if queue is not None:
                await queue.close()
            raise
    return Store(pool, timeout=timeout, queue=queue)


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection returned without asyncpg's reset query.

    The default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock, ...) is one more
    round trip on every release, about a fifth of the relay's database traffic. Nothing here
    leaves session state behind: settings are ``SET LOCAL``, the migration lock is released
    in a ``finally``, nobody LISTENs. An open transaction is still rolled back on release.
    """

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _pool(
    dsn: str, min_size: int, max_size: int, timeout: float, *, generic_plans: bool
) -> Any:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        timeout=timeout,
        command_timeout=timeout,
        connection_class=_PooledConnection,
        server_settings={"plan_cache_mode": "force_generic_plan"} if generic_plans else None,
    )


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn)
