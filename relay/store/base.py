"""What every part of the Store shares: the named queries and the one way to run them.

Queries are the named blocks of the ``*.sql`` files beside this module, loaded once at
import. A Store method runs one statement with ``_rows``, ``_row``, ``_value`` or
``_status``, or several on one connection inside ``_transaction``. Either way the store's
timeout applies and asyncpg and network errors are translated, once, into
``StoreUnavailable`` (try later) or ``StoreError`` (refused), so callers see one shape and
never an asyncpg record.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg

from relay.errors import StoreError, StoreUnavailable

__all__ = [
    "QUERIES",
    "REPORT_TIMEOUT_SECONDS",
    "ReadOnlyServer",
    "Statements",
    "StoreBase",
    "clean",
    "columns",
    "translated",
]


def _load_queries() -> dict[str, str]:
    """Every named block of every ``*.sql`` file beside this module (one file per aggregate)."""
    queries: dict[str, str] = {}
    for file in sorted(resources.files("relay.store").iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".sql"):
            continue
        blocks = re.split(r"^-- ([a-z_]+) --\n", file.read_text(encoding="utf-8"), flags=re.M)
        for name, sql in zip(blocks[1::2], blocks[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice ({file.name})")
            queries[name] = sql.strip()
    return queries


QUERIES = _load_queries()

# Reports, exports and imports read or write every row of a period: longer than the
# store's usual timeout.
REPORT_TIMEOUT_SECONDS = 600.0

# Errors that mean "the database is not there right now": the caller answers 451
# or retries later; nothing was committed.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # asyncpg's own state errors after a connection was cut under it.
    asyncpg.InternalClientError,
)


# SQLSTATE classes that mean "try again later", not "this data is wrong":
# 08 connection, 40 rollback (serialization/deadlock), 53 resources, 55 object not in
# prerequisite state (e.g. database not accepting connections), 57 operator intervention.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57"})
# And single states of other classes: 25006 read_only_sql_transaction, a write on a server
# that no longer takes them (a primary fenced or demoted in a failover, a standby behind a
# writer endpoint that has not moved yet). The writer is elsewhere or soon will be; the
# pool drops such a connection (``ReadOnlyServer``) and the next one looks for it.
_UNAVAILABLE_STATES = frozenset({"25006"})


# Names for the cursors declared behind a pooler (Statements.cursor).
_CURSOR_NUMBERS = itertools.count(1)


class ReadOnlyServer(Exception):
    """A pooled connection's server reports it takes no writes (``in_hot_standby`` or
    ``default_transaction_read_only``, both reported by PostgreSQL 14 and later)."""


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Database errors inside the block as ``StoreUnavailable`` or ``StoreError``, each
    one line that starts with ``what`` (the store's words for what it was doing)."""
    try:
        yield
    except TimeoutError as exc:
        raise StoreUnavailable(f"{what}: the database did not answer in time") from exc
    except ReadOnlyServer as exc:
        raise StoreUnavailable(
            f"{what}: the database is read-only (a standby, or a primary failing over); "
            "connecting again to find the writer"
        ) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: database unreachable ({type(exc).__name__})") from exc
    except asyncpg.PostgresError as exc:
        if exc.sqlstate and (
            exc.sqlstate[:2] in _UNAVAILABLE_CLASSES or exc.sqlstate in _UNAVAILABLE_STATES
        ):
            raise StoreUnavailable(f"{what}: database unavailable ({exc.sqlstate})") from exc
        raise StoreError(f"{what}: database refused ({exc.sqlstate})") from exc


def clean(text: str | None) -> str | None:
    """Text from outside made storable. PostgreSQL text cannot hold NUL, and a header with
    one must not cost the message; nor can it hold a lone surrogate (a byte that was not
    UTF-8, kept by surrogateescape): "?"."""
    if text is None:
        return None
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


# Columns that hold what a remote server or a bounce message said: cleaned before a write.
_REMOTE_TEXT = frozenset({"reply_text", "template", "enhanced", "destination"})


def columns(records: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    """One list per column for an unnest() statement. Remote text is cleaned: it must never
    cost the write (a refused outcome lets the lease run out and the message go out again)."""
    return [
        [clean(getattr(r, c)) if c in _REMOTE_TEXT else getattr(r, c) for r in records]
        for c in names
    ]


class Statements:
    """Named queries on one asyncpg connection (or a pool, which lends one per statement),
    each with ``timeout`` unless told otherwise. Errors are left to the ``translated`` block
    around the caller. Statements that are not named queries (settings, advisory locks) go
    to ``conn`` itself. ``pooler``: a pooler in transaction mode stands between us and the
    server (``relay.store.create_store``)."""

    def __init__(self, conn: Any, timeout: float, *, pooler: bool = False) -> None:
        self.conn = conn
        self.timeout = timeout
        self.pooler = pooler

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def rows(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        return list(await self.conn.fetch(QUERIES[query], *args, timeout=self._timeout(timeout)))

    async def row(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        return await self.conn.fetchrow(QUERIES[query], *args, timeout=self._timeout(timeout))

    async def value(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """The first column of the first row (None without a row)."""
        return await self.conn.fetchval(QUERIES[query], *args, timeout=self._timeout(timeout))

    async def status(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """The command status, e.g. ``DELETE 3``."""
        return str(await self.conn.execute(QUERIES[query], *args, timeout=self._timeout(timeout)))

    def cursor(self, query: str, *args: Any, prefetch: int, timeout: float) -> Any:
        """A server-side cursor (``async for``); ``conn`` must be a connection in a transaction.

        Behind a pooler, a cursor of SQL's own (DECLARE, then FETCH) instead of asyncpg's,
        which needs a named prepared statement: that statement outlives the transaction on
        the pooler's server connection (asyncpg closes it later, from whichever server
        connection it is lent then), and the next client there that prepares the same name
        fails ("prepared statement ... already exists"): asyncpg numbers its statements
        from 1 in every process."""
        if self.pooler:
            return self._declared_cursor(QUERIES[query], args, prefetch, timeout)
        return self.conn.cursor(QUERIES[query], *args, prefetch=prefetch, timeout=timeout)

    async def _declared_cursor(
        self, sql: str, args: Sequence[Any], prefetch: int, timeout: float
    ) -> AsyncIterator[asyncpg.Record]:
        name = f"relay_cursor_{next(_CURSOR_NUMBERS)}"  # unique in its transaction
        declare = f"DECLARE {name} NO SCROLL CURSOR FOR {sql.rstrip().rstrip(';')}"
        await self.conn.execute(declare, *args, timeout=timeout)
        # The transaction's end closes the cursor, also when the reader stops early.
        while rows := await self.conn.fetch(f"FETCH {int(prefetch)} FROM {name}", timeout=timeout):
            for row in rows:
                yield row


class StoreBase:
    """The pools every part of the Store runs on: ``queue`` for the statements every message
    runs (intake, claims, outcomes), ``pool`` for everything else (reports, admin, the CLI,
    maintenance, webhooks). One pool may serve both (tests, commands).

    Each helper runs one named query on ``pool`` (or ``on``: ``self.queue`` for the queue's
    statements) and translates its errors into one line starting with ``what``."""

    def __init__(
        self, pool: Any, *, timeout: float = 10.0, queue: Any | None = None, pooler: bool = False
    ) -> None:
        self.pool = pool
        self.queue = queue if queue is not None else pool
        self.timeout = timeout
        self.pooler = pooler  # a pooler in transaction mode in between (create_store)

    def _pool(self, on: Any | None) -> Any:
        return self.pool if on is None else on

    def _statements(self, on: Any | None) -> Statements:
        return Statements(self._pool(on), self.timeout, pooler=self.pooler)

    async def _rows(
        self, query: str, *args: Any, what: str, on: Any = None, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        async with translated(what):
            return await self._statements(on).rows(query, *args, timeout=timeout)

    async def _row(
        self, query: str, *args: Any, what: str, on: Any = None, timeout: float | None = None
    ) -> asyncpg.Record | None:
        async with translated(what):
            return await self._statements(on).row(query, *args, timeout=timeout)

    async def _value(
        self, query: str, *args: Any, what: str, on: Any = None, timeout: float | None = None
    ) -> Any:
        async with translated(what):
            return await self._statements(on).value(query, *args, timeout=timeout)

    async def _status(
        self, query: str, *args: Any, what: str, on: Any = None, timeout: float | None = None
    ) -> str:
        async with translated(what):
            return await self._statements(on).status(query, *args, timeout=timeout)

    @asynccontextmanager
    async def _connection(self, what: str, *, on: Any = None) -> AsyncIterator[Statements]:
        """One connection of ``pool`` (or ``on``) for several statements, no transaction."""
        async with translated(what), self._pool(on).acquire(timeout=self.timeout) as conn:
            yield Statements(conn, self.timeout, pooler=self.pooler)

    @asynccontextmanager
    async def _advisory_lock(self, key: int, what: str) -> AsyncIterator[bool]:
        """Hold advisory lock ``key`` for the block: True, or False at once when another
        session holds it. The lock is a transaction's (``pg_try_advisory_xact_lock``), left
        open on a connection of its own until the block ends, not a session's: behind a
        pooler in transaction mode (PgBouncer) each statement of a session may run on
        another server connection, so a session lock taken by one statement and released by
        another stays held for good, on a connection the pooler lends to every client. The
        open transaction keeps its server connection. Work that cannot run in a transaction
        (VACUUM) runs on another connection meanwhile."""
        async with self._transaction(what) as tx:
            got = bool(await tx.conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", key))
            # The extended protocol's unnamed portal keeps its snapshot until the next
            # statement, and an idle transaction holding one holds vacuum back for as long as
            # the block runs; a statement by the simple protocol closes that portal.
            await tx.conn.execute("SELECT 1")
            yield got

    @asynccontextmanager
    async def _transaction(
        self, what: str, *, on: Any = None, readonly: bool = False
    ) -> AsyncIterator[Statements]:
        """Several statements in one transaction on one connection of ``pool`` (or ``on``):
        committed when the block ends, rolled back when it raises."""
        async with (
            translated(what),
            self._pool(on).acquire(timeout=self.timeout) as conn,
            conn.transaction(readonly=readonly),
        ):
            yield Statements(conn, self.timeout, pooler=self.pooler)
