"""Schema migrations: numbered ``.sql`` files in ``migrations/``, applied in order.

Each file runs in its own transaction and is recorded in ``schema_migrations``.
A transaction-level advisory lock, taken in each migration's own transaction,
serialises relays that start at once against one database: the second waits, then
finds the migration applied and skips it. A session lock would not do behind a pooler
in transaction mode (PgBouncer): its unlock may run on another server connection, and
the lock would stay held for good on one the pooler lends to everyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog

__all__ = ["Migration", "apply_migrations", "available_migrations"]

log = structlog.get_logger(__name__)

# Any constant works as long as every relay uses the same one.
_LOCK_KEY = 0x626F756E6365  # "bounce"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped in the package, in version order."""
    folder = resources.files("relay.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def apply_migrations(conn: Any) -> list[Migration]:
    """Apply what is missing on ``conn`` (an asyncpg connection); return what was applied."""
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for migration in available_migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            # Asked again under the lock: another relay may have applied it meanwhile.
            if await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            ):
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        log.info("store.migration_applied", version=migration.version, name=migration.name)
        applied_now.append(migration)
    return applied_now
