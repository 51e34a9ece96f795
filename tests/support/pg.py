"""Test databases: a migrated template per run, a fresh copy per test, and a way to take
one away for a while (``database_unreachable``).

The server is the one named by BOUNCE_RELAY_TEST_DSN; without it, the relay's own
embedded PostgreSQL (relay.store.embedded) is started under the pytest temp directory,
so the test command works on a machine with no server at all.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from relay.store.embedded import EmbeddedPostgres
from relay.store.migrate import apply_migrations

TEST_DSN_ENV = "BOUNCE_RELAY_TEST_DSN"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


class TestServer:
    """One PostgreSQL server for the whole run."""

    def __init__(self, tmp: Path) -> None:
        self._embedded: EmbeddedPostgres | None = None
        dsn = os.environ.get(TEST_DSN_ENV)
        if not dsn:
            self._embedded = EmbeddedPostgres(tmp)
            dsn = self._embedded.start()
        self.admin_dsn = dsn
        self.run_id = secrets.token_hex(4)
        self.template = f"br_tmpl_{self.run_id}"
        self._count = 0
        asyncio.run(self._create_template())

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _create_template(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.template}"')
        conn = await asyncpg.connect(with_database(self.admin_dsn, self.template))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    async def create_database(self, *, migrated: bool = True) -> str:
        self._count += 1
        name = f"br_t_{self.run_id}_{self._count}"
        template = f' TEMPLATE "{self.template}"' if migrated else ""
        await self._admin(f'CREATE DATABASE "{name}"{template}')
        return with_database(self.admin_dsn, name)

    async def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)'))
        if self._embedded is not None:
            self._embedded.stop()


@asynccontextmanager
async def database_unreachable(dsn: str) -> AsyncIterator[None]:
    """Refuse new connections to the test database and cut the existing ones."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(dsn.replace(f"/{name}", "/postgres", 1))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
