"""Fixtures shared by every test tier: PostgreSQL databases and configs."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from relay.config import Config, load_config
from tests.support.pg import TestServer


def _dump_asyncio_tasks(signum: int, frame: object) -> None:
    """`kill -USR1 <pytest pid>` prints every task of the running event loop with its stack:
    a hung async test then says what it is waiting for."""
    loop = asyncio._get_running_loop()
    if loop is None:
        print("no running event loop", file=sys.stderr)
        return
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


signal.signal(signal.SIGUSR1, _dump_asyncio_tasks)

BASE_CONFIG = """
[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
allowed_clients = ["127.0.0.0/8", "::1/128"]
max_message_size = "1MB"
max_recipients = 50

[store]
pool_max_size = 8

[admin]
listen = "127.0.0.1:0"
"""


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    server = TestServer(tmp_path_factory.mktemp("pgserver"))
    yield server
    server.close()


@pytest.fixture
async def db_dsn(pg_server: TestServer) -> AsyncIterator[str]:
    """A freshly migrated database of its own for one test."""
    dsn = await pg_server.create_database()
    yield dsn
    await pg_server.drop_database(dsn)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config.toml (BASE_CONFIG unless ``replace_base``) plus extra TOML."""

    def write(extra: str = "", *, replace_base: bool = False, name: str = "config.toml") -> Path:
        path = tmp_path / name
        body = textwrap.dedent(extra) if replace_base else BASE_CONFIG + textwrap.dedent(extra)
        path.write_text(body, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_config(write_config: Callable[..., Path]) -> Callable[..., Config]:
    def make(extra: str = "", **kwargs: object) -> Config:
        return load_config(write_config(extra, **kwargs))

    return make
