"""Fixtures of the relay tier: a scripted upstream, a settable clock, a relay, a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from relay.config import load_config
from relay.ops.app import Relay
from tests.support.delivery import delivery_config
from tests.support.scripted import FakeClock, ScriptedUpstream


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def start_relay(db_dsn, write_config, clock):
    @asynccontextmanager
    async def start(port: int, extra: str = "", **kw: str) -> AsyncIterator[Relay]:
        config = load_config(write_config(delivery_config(port, extra, **kw), replace_base=True))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            yield relay

    return start


@pytest.fixture
async def db(db_dsn) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()
