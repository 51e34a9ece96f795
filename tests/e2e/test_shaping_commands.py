"""`bounce-relay shaping show` as an operator meets it: the command run as a process against a
real database whose limits were written as relays write them (a round of the store, the
policy's own decrease), with a reply text a hostile upstream chose.

The rounds are dated on the machine's clock (``show`` reads the relays' use of the last
seconds by it); nothing checked depends on what that clock says."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from policies.shaping import Key, Limit, RelayUse, ShapingRules, Signal, settle
from relay.clock import utc_now
from relay.config import load_config
from relay.ops.app import open_store
from relay.store import Store
from relay.store.shaping import ShapingWrite
from tests.support.cli import run

GMAIL = Key("gmail", "192.0.2.10")
HOST = Key("mx.example.net", "192.0.2.11")
# An upstream's words, with a terminal escape and a line break it should never get to print.
HOSTILE_421 = "421 4.7.0 Too many connections \x1b[31mfrom you\x1b[0m\r\nnext line"


async def _round(
    store: Store, owner: str, keys: dict[Key, tuple[list[tuple[Signal, str]], RelayUse]]
) -> None:
    """One relay's round as relay.delivery.shaping runs it: every key it uses at once (a
    round's use rows are all of that relay's)."""
    now = utc_now()

    def decide(limits: dict[Key, Limit], others: dict[Key, dict[str, RelayUse]]) -> ShapingWrite:
        settled = {
            key: settle(
                limits.get(key),
                signals,
                owner,
                use,
                others.get(key, {}),
                now,
                ShapingRules(),
                key.group,
            )
            for key, (signals, use) in keys.items()
        }
        return ShapingWrite(
            limits={key: s.limit for key, s in settled.items() if s.changed},
            changes=[(key, change) for key, s in settled.items() for change in s.changes],
            use={key: use for key, (_, use) in keys.items()},
        )

    await store.shaping_round(owner, now, now - timedelta(seconds=3), list(keys), decide)


@pytest.fixture
async def config(db_dsn, write_config) -> Path:
    """Gmail from 192.0.2.10 refused a connection with 7 open (two relays using it);
    mx.example.net from 192.0.2.11 in use, nothing learned."""
    path: Path = write_config(f'[store]\ndsn = "{db_dsn}"\n', replace_base=True)
    async with AsyncExitStack() as stack:
        store = await open_store(load_config(path), stack)
        await _round(store, "relay-b", {GMAIL: ([], RelayUse(held=4, open_connections=3))})
        await _round(
            store,
            "relay-a",
            {
                GMAIL: (
                    [(Signal.CONNECTIONS, HOSTILE_421)],
                    RelayUse(held=4, open_connections=4, sent=120, accepted=118, wanted=130),
                ),
                HOST: ([], RelayUse(held=1, open_connections=1, sent=6)),
            },
        )
    return path


async def test_show_prints_each_limit_the_cluster_use_and_the_reply_that_set_it(config):
    done = await run(config, "shaping", "show")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    gmail, _, host = out.partition("mx.example.net from 192.0.2.11")
    assert gmail.startswith("gmail from 192.0.2.10\n")
    # 4 + 3 were open when the 421 came: the upstream allows 7.
    assert "connections   7 (learned: refused at 7 open; ceiling 20)" in gmail
    assert "rate          no limit (none configured, none learned)" in gmail
    assert "2 relay(s): 7 open" in gmail, gmail
    assert "connections 20 -> 7  refused: 421 4.7.0 Too many connections" in gmail
    assert "(relay-a)" in gmail
    # The upstream's escape and line break are shown as text, never acted on.
    assert "\x1b" not in out
    assert "Too many connections \\x1b[31mfrom you\\x1b[0m\\r\\nnext line  (relay-a)\n" in out
    assert "connections   20 (configured)" in host
    assert "changes       none: the configured ceilings hold" in host


async def test_show_narrows_to_a_group_and_says_when_nothing_matches(config):
    done = await run(config, "shaping", "show", "--group", "GMAIL", "--changes", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gmail from 192.0.2.10")
    assert "mx.example.net" not in done.stdout
    none = await run(config, "shaping", "show", "--source-ip", "198.51.100.1")
    assert none.returncode == 0, none.stderr
    assert "no destination has a learned limit or traffic" in none.stdout
    assert "20 connections, no rate limit" in none.stdout
