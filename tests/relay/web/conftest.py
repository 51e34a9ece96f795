"""The admin page's HTTP tests share a relay with the shared password and delivery off, on
a fixed clock (``tests.support.admin.NOW``): what the tests seed is dated from it, so no
test depends on today's date, and the relay's data lifecycle (which runs at start) finds
nothing old enough to remove."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.ops.app import Relay
from relay.passwords import hash_password
from tests.support.admin import NOW, PASSWORD


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
async def relay(db_dsn, make_config, password_hash) -> AsyncIterator[Relay]:
    config = make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\npassword_hash = "{password_hash}"\n'
        "[delivery]\nenabled = false\n",
        replace_base=True,
    )
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW) as r:
        yield r
