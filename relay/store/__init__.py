"""The only place with SQL: a ``Store`` over asyncpg pools.

``Store`` is composed of one part per aggregate, each a module here with its queries in the
``.sql`` file of the same name:

    database.py     migrations, durability, ping, vacuum, pools
    queue.py        accept, claim, outcomes, leases, bodies, the deliveries' admin view
    dsn.py          bounce messages: results applied, unusable ones kept
    suppression.py  suppressions, scoped entries, allowlist, evidence, audit, one address
    incidents.py    provider incidents
    guardrails.py   campaign sends watched, paused, released; canaries
    shaping.py      limits per destination x source IP shared by the relays, their use
    reports.py      bounce rollup, the bounces report, stats, recorded bounces for replay
    accounts.py     admin accounts and the admin page's sessions
    lifecycle.py    events' time partitions, retention deletes, the lifecycle's lock
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
import structlog

from relay.store import records
from relay.store.accounts import AccountStore
from relay.store.base import QUERIES, REPORT_TIMEOUT_SECONDS, ReadOnlyServer, translated
from relay.store.database import DatabaseStore
from relay.store.dsn import DsnStore
from relay.store.guardrails import GuardrailStore
from relay.store.incidents import IncidentStore
from relay.store.lifecycle import LifecycleStore
from relay.store.queue import QueueStore
from relay.store.records import *  # noqa: F403  (the Store's values are part of its interface)
from relay.store.reports import ReportStore, roll_up_bounces
from relay.store.shaping import ShapingStore
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

log = structlog.get_logger("relay.store")


class Store(
    DatabaseStore,
    DsnStore,
    QueueStore,
    SuppressionStore,
    IncidentStore,
    GuardrailStore,
    ShapingStore,
    ReportStore,
    AccountStore,
    LifecycleStore,
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
    connection that intake or delivery waits for.

    A serving relay also lends no connection to a server that has stopped taking writes
    (``_writer_only``): after a failover it reconnects, and a multi-host ``dsn`` with
    ``target_session_attrs=read-write`` takes it to the new primary.

    Behind a pooler in transaction mode (PgBouncer), which may run each transaction on
    another server connection, neither pool keeps prepared statements or sends settings at
    startup (``_behind_pooler``): see docs/operations.md."""
    async with translated(f"connect to {_redact(dsn)}"):
        pooler = await _behind_pooler(dsn, timeout)
        queue = None
        if queue_pool:
            queue = await _pool(
                dsn,
                min_size,
                max_size,
                timeout,
                generic_plans=not pooler,
                writer_only=True,
                pooler=pooler,
            )
        try:
            pool = await _pool(
                dsn,
                1 if queue_pool else min_size,
                OTHER_POOL_MAX_SIZE if queue_pool else max_size,
                timeout,
                generic_plans=False,
                writer_only=queue_pool,
                pooler=pooler,
            )
        except BaseException:
            if queue is not None:
                await queue.close()
            raise
    return Store(pool, timeout=timeout, queue=queue, pooler=pooler)


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection returned without asyncpg's reset query.

    The default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlock, ...) is one more
    round trip on every release, about a fifth of the relay's database traffic. Nothing here
    leaves session state behind: settings are ``SET LOCAL``, advisory locks are gone before
    the connection goes back, nobody LISTENs. An open transaction is still rolled back on
    release.
    """

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _writer_only(conn: Any) -> None:
    """Pool ``setup`` (run at every acquire): refuse a connection whose server takes no
    writes, so that the pool closes it and opens the next one afresh. A failover can leave
    pooled connections on the old primary alive and read-only (fenced with
    ``default_transaction_read_only``), and without this every write on them would fail
    until the relay restarted. No round trip: PostgreSQL 14 and later report both settings
    to the client as they change."""
    settings = conn.get_settings()
    for name in ("in_hot_standby", "default_transaction_read_only"):
        if getattr(settings, name, "off") == "on":
            raise ReadOnlyServer(f"the server reports {name} = on")


async def _behind_pooler(dsn: str, timeout: float) -> bool:
    """Whether a pooler stands between us and PostgreSQL. A pooler answers the startup with a
    cancel key of its own (cancel requests come to it), so the backend process it names is
    not the one that runs our statements; a server, or a TCP proxy, names its own. One
    connection and one query, at start. Behind a pooler in transaction mode, a prepared
    statement made in one transaction is missing from the server connection of the next
    ("prepared statement ... does not exist"), and PgBouncer refuses startup settings it
    does not know (``plan_cache_mode``); in session mode both would work, and turning them
    off there costs planning time only."""
    conn = await asyncpg.connect(dsn, timeout=timeout, statement_cache_size=0)
    try:
        pooled = await conn.fetchval("SELECT pg_backend_pid()") != conn.get_server_pid()
    finally:
        await conn.close(timeout=timeout)
    if pooled:
        log.info(
            "store.pooler_detected",
            why="the cancel key names another backend than the one answering",
            action="no prepared statements kept, no settings sent at startup, custom plans",
        )
    return bool(pooled)


async def _pool(
    dsn: str,
    min_size: int,
    max_size: int,
    timeout: float,
    *,
    generic_plans: bool,
    writer_only: bool,
    pooler: bool,
) -> Any:
    # Behind a pooler, no statement cache: every statement is parsed, bound and run in one
    # round of messages, unnamed, on whichever server connection the pooler lends (asyncpg's
    # own advice for PgBouncer).
    uncached = {"statement_cache_size": 0} if pooler else {}
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        setup=_writer_only if writer_only else None,
        timeout=timeout,
        command_timeout=timeout,
        connection_class=_PooledConnection,
        server_settings={"plan_cache_mode": "force_generic_plan"} if generic_plans else None,
        **uncached,
    )


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn)
