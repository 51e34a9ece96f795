"""The queue tables are vacuumed even on a server whose autovacuum is off."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.ops.maintenance import vacuum_while_autovacuum_is_off
from relay.store import create_store


async def _vacuums(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT sum(vacuum_count) FROM pg_stat_user_tables "
            "WHERE relname IN ('deliveries', 'messages')"
        )
    )


async def test_vacuum_queue_vacuums_both_tables_once_at_a_time(db_dsn):
    store = await create_store(db_dsn)
    conn = await asyncpg.connect(db_dsn)
    try:
        before = await _vacuums(conn)
        assert await store.vacuum_queue()
        async with asyncio.timeout(10):  # statistics arrive shortly after the vacuum
            while await _vacuums(conn) < before + 2:
                await asyncio.sleep(0.1)
        # Another relay process holding the maintenance lock: this one skips its turn.
        await conn.execute("SELECT pg_advisory_lock($1)", 0x6272_7661_6375)
        assert not await store.vacuum_queue()
    finally:
        await conn.close()
        await store.close()


async def test_the_relay_vacuums_only_when_the_server_does_not(db_dsn):
    store = await create_store(db_dsn)
    conn = await asyncpg.connect(db_dsn)
    try:
        autovacuum = await store.autovacuum_enabled()
        before = await _vacuums(conn)
        task = asyncio.create_task(vacuum_while_autovacuum_is_off(store, interval=0.1))
        await asyncio.sleep(1.0)
        if autovacuum:
            assert task.done()  # nothing to do: the server vacuums
        else:
            assert not task.done()
            async with asyncio.timeout(10):
                while await _vacuums(conn) < before + 2:
                    await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await conn.close()
        await store.close()
