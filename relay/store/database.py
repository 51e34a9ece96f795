"""The database as a whole: its schema (migrations), whether it is safe and alive
(durability, ping), its upkeep (autovacuum, vacuum) and the pools onto it.
Queries: ``database.sql``."""

from __future__ import annotations

from relay.errors import UnsafeDatabase
from relay.store.base import StoreBase
from relay.store.migrate import apply_migrations

__all__ = ["DatabaseStore"]

_VACUUM_LOCK = 0x6272_7661_6375  # "brvacu": one relay process vacuums at a time


class DatabaseStore(StoreBase):
    async def close(self) -> None:
        if self.queue is not self.pool:
            await self.queue.close()
        await self.pool.close()

    def pool_sizes(self) -> tuple[int, int]:
        """(open, idle) connections of the pool."""
        return int(self.queue.get_size()), int(self.queue.get_idle_size())

    async def migrate(self) -> list[str]:
        async with self._connection("migrate") as db:
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(db.conn)]

    async def check_durability(self) -> None:
        """Refuse a server that would acknowledge commits it has not made durable."""
        row = await self._row("durability_settings", what="check durability")
        assert row is not None  # settings: always one row
        if row["fsync"] != "on" or row["synchronous_commit"] == "off":
            raise UnsafeDatabase(
                f"PostgreSQL has fsync={row['fsync']} synchronous_commit="
                f"{row['synchronous_commit']}: a 250 would not mean the message is safe. "
                "Turn both on in postgresql.conf and reload the server."
            )

    async def ping(self) -> None:
        await self._value("ping", what="ping", timeout=min(self.timeout, 2.0))

    async def autovacuum_enabled(self) -> bool:
        return bool(await self._value("autovacuum_setting", what="read autovacuum setting"))

    async def vacuum_queue(self) -> bool:
        """VACUUM (ANALYZE) the queue tables unless another relay process is at it; whether
        this call did it."""
        # The lock is held by a transaction of its own (safe behind PgBouncer: see
        # _advisory_lock); VACUUM cannot run in a transaction, so it runs on another
        # connection meanwhile.
        async with self._advisory_lock(_VACUUM_LOCK, "vacuum queue") as ours:
            if not ours:
                return False
            async with self._connection("vacuum queue") as db:
                await db.conn.execute("VACUUM (ANALYZE) deliveries, messages", timeout=300)
        return True
