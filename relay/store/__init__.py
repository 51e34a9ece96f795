"""The only place with SQL: a ``Store`` over an asyncpg pool.

Queries come from ``queries.sql`` (named blocks, loaded once at import);
each Store method runs one of them and returns frozen dataclasses, never
asyncpg records. asyncpg and network errors are translated here, once, into
``StoreUnavailable`` so callers see one shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg

from relay.errors import StoreError, StoreUnavailable, UnsafeDatabase
from relay.store.migrate import apply_migrations

__all__ = [
    "AcceptedMessage",
    "DeliveryRow",
    "IncomingMessage",
    "MessageRow",
    "Recipient",
    "Store",
    "SuppressionRow",
    "create_store",
]


def _load_queries() -> dict[str, str]:
    text = (resources.files("relay.store") / "queries.sql").read_text(encoding="utf-8")
    blocks = re.split(r"^-- ([a-z_]+) --\n", text, flags=re.MULTILINE)
    return {name: sql.strip() for name, sql in zip(blocks[1::2], blocks[2::2], strict=True)}


QUERIES = _load_queries()

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
)


# SQLSTATE classes that mean "try again later", not "this data is wrong":
# 08 connection, 40 rollback (serialization/deadlock), 53 resources, 57 operator intervention.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "57"})


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: database unreachable ({type(exc).__name__})") from exc
    except asyncpg.PostgresError as exc:
        if exc.sqlstate and exc.sqlstate[:2] in _UNAVAILABLE_CLASSES:
            raise StoreUnavailable(f"{what}: database unavailable ({exc.sqlstate})") from exc
        raise StoreError(f"{what}: database refused ({exc.sqlstate})") from exc


@dataclass(frozen=True)
class Recipient:
    address: str  # as the client wrote it
    key: str  # normalise_address()
    domain: str


@dataclass(frozen=True)
class IncomingMessage:
    """One message the intake wants committed."""

    queue_id: str
    envelope_sender: str
    recipients: tuple[Recipient, ...]
    body: bytes
    from_domain: str | None
    message_id: str | None
    campaign: str | None
    client_address: str
    session_id: str
    smtputf8: bool


@dataclass(frozen=True)
class AcceptedMessage:
    id: int
    queue_id: str
    received_at: datetime


@dataclass(frozen=True)
class MessageRow:
    id: int
    queue_id: str
    received_at: datetime
    envelope_sender: str
    from_domain: str | None
    message_id: str | None
    campaign: str | None
    size: int
    body: bytes | None
    client_address: str | None
    session_id: str | None
    smtputf8: bool


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    message_id: int
    recipient: str
    recipient_key: str
    recipient_domain: str
    state: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_source_ip: str | None
    last_code: int | None
    last_reply: str | None
    updated_at: datetime


@dataclass(frozen=True)
class SuppressionRow:
    address: str
    reason: str
    source: str
    created_at: datetime
    event_id: int | None


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a header with one must not cost the message.
    return None if text is None else text.replace("\x00", "\ufffd")


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Store:
    """Named queries over one asyncpg pool."""

    def __init__(self, pool: Any, *, timeout: float = 10.0) -> None:
        self.pool = pool
        self.timeout = timeout

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self) -> list[str]:
        async with _translated("migrate"), self.pool.acquire(timeout=self.timeout) as conn:
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(conn)]

    async def check_durability(self) -> None:
        """Refuse a server that would acknowledge commits it has not made durable."""
        async with _translated("check durability"):
            row = await self.pool.fetchrow(QUERIES["durability_settings"], timeout=self.timeout)
        if row["fsync"] != "on" or row["synchronous_commit"] == "off":
            raise UnsafeDatabase(
                f"PostgreSQL has fsync={row['fsync']} synchronous_commit="
                f"{row['synchronous_commit']}: a 250 would not mean the message is safe. "
                "Turn both on in postgresql.conf and reload the server."
            )

    async def accept_messages(self, batch: Sequence[IncomingMessage]) -> list[AcceptedMessage]:
        """Commit messages + deliveries + accepted events in one statement (one commit)."""
        cols: list[list[Any]] = [[] for _ in range(14)]
        for m in batch:
            row = (
                m.queue_id,
                _clean(m.envelope_sender),
                _clean(m.from_domain),
                _clean(m.message_id),
                _clean(m.campaign),
                len(m.body),
                m.body,
                m.client_address,
                m.session_id,
                m.smtputf8,
            )
            for i, value in enumerate(row):
                cols[i].append(value)
            for r in m.recipients:
                cols[10].append(m.queue_id)
                cols[11].append(_clean(r.address))
                cols[12].append(_clean(r.key))
                cols[13].append(_clean(r.domain))
        async with _translated("accept messages"):
            rows = await self.pool.fetch(QUERIES["accept_messages"], *cols, timeout=self.timeout)
        return [AcceptedMessage(r["id"], r["queue_id"], r["received_at"]) for r in rows]

    async def suppression_reason(self, address_key: str) -> str | None:
        """Why ``address_key`` is suppressed, or None when it is not."""
        async with _translated("suppression check"):
            reason = await self.pool.fetchval(
                QUERIES["suppression_reason"], address_key, timeout=self.timeout
            )
        return None if reason is None else str(reason)

    async def record_rejected_suppressed(
        self, sender: str, recipient: str, domain: str, reply: str, detail: dict[str, Any]
    ) -> None:
        async with _translated("record rejection"):
            await self.pool.execute(
                QUERIES["record_rejected_suppressed"],
                _clean(sender),
                _clean(recipient),
                domain,
                reply,
                detail,
                timeout=self.timeout,
            )

    async def add_suppression(
        self,
        address_key: str,
        reason: str,
        source: str,
        event_id: int | None = None,
        event_at: datetime | None = None,
        profile_status: str = "hard_bounced",
    ) -> bool:
        async with _translated("add suppression"):
            return bool(
                await self.pool.fetchval(
                    QUERIES["add_suppression"],
                    address_key,
                    reason,
                    source,
                    event_id,
                    event_at,
                    profile_status,
                    timeout=self.timeout,
                )
            )

    async def list_suppressions(
        self, search: str | None = None, limit: int = 100
    ) -> list[SuppressionRow]:
        async with _translated("list suppressions"):
            rows = await self.pool.fetch(
                QUERIES["list_suppressions"], search, limit, timeout=self.timeout
            )
        return [SuppressionRow(**dict(r)) for r in rows]

    async def message_by_queue_id(self, queue_id: str) -> MessageRow | None:
        async with _translated("read message"):
            row = await self.pool.fetchrow(
                QUERIES["message_by_queue_id"], queue_id, timeout=self.timeout
            )
        return MessageRow(**dict(row)) if row else None

    async def deliveries_of_message(self, message_id: int) -> list[DeliveryRow]:
        async with _translated("read deliveries"):
            rows = await self.pool.fetch(
                QUERIES["deliveries_of_message"], message_id, timeout=self.timeout
            )
        return [DeliveryRow(**dict(r)) for r in rows]

    async def count_rows(self) -> dict[str, int]:
        async with _translated("count rows"):
            row = await self.pool.fetchrow(QUERIES["count_rows"], timeout=self.timeout)
        return dict(row)


async def create_store(
    dsn: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 10.0
) -> Store:
    """Connect a pool to ``dsn``; raise StoreUnavailable when it is not reachable."""
    async with _translated(f"connect to {_redact(dsn)}"):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=timeout,
            command_timeout=timeout,
        )
    return Store(pool, timeout=timeout)


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn)
