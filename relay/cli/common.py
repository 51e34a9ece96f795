"""What every command shares: its expected failures, its config, its database.

A command fails by raising ``CommandFailed`` (exit 1) or ``UsageError`` (exit 2) with what
happened and what to do; ``relay.cli.main`` prints it as one line,
``bounce-relay: <what happened>; <what to do>``. Messages hold the raw text they quote:
``main`` escapes the whole line once (``policies.text.printable``).

``with_store`` is the one way a command reaches the database: it loads the config, sets
up logging, opens the store (migrating it, as ``serve`` would), runs the work and closes
the store again; ``store_command`` is the same as a decorator.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from relay.config import CONFIG_ENV, Config, config_path, load_config
from relay.errors import ConfigErrors

if TYPE_CHECKING:
    from relay.store import Store

__all__ = [
    "Command",
    "CommandFailed",
    "Interrupted",
    "UsageError",
    "load_config_of",
    "load_rules_file",
    "store_command",
    "with_store",
]

Command = Callable[[argparse.Namespace], int]
StoreWork = Callable[[argparse.Namespace, "Store"], Awaitable[int]]


class CommandFailed(Exception):
    """The command could not do what was asked: exit 1."""

    status = 1

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(f"{what}; {todo}" if todo else what)


class UsageError(CommandFailed):
    """The command was asked for something it cannot do as given: exit 2."""

    status = 2


class Interrupted(CommandFailed):
    """The operator pressed Ctrl-C where the command says so: exit 130 (128 + SIGINT)."""

    status = 130


def load_config_of(args: argparse.Namespace) -> Config:
    """The config file of ``--config``, else ``$BOUNCE_RELAY_CONFIG``, else ./config.toml."""
    path = config_path(getattr(args, "config", None))
    return _load(path, f"pass --config PATH or set ${CONFIG_ENV}")


def load_rules_file(path: str) -> Config:
    """``--rules FILE``: a config file read for its rules."""
    return _load(Path(path), "check the path given to --rules")


def _load(path: Path, todo: str) -> Config:
    """``load_config``; a file that is missing or unreadable is one line, not a list."""
    try:
        return load_config(path)
    except ConfigErrors as exc:
        if [e.key for e in exc.errors] != ["(file)"]:
            raise
        if not path.exists():
            where = "" if path.is_absolute() else f" (in {Path.cwd()})"
            raise UsageError(f"config file {path} not found{where}", todo) from None
        raise UsageError(f"config file {path}: {exc.errors[0].why}", todo) from None


def with_store(
    args: argparse.Namespace,
    work: Callable[[Store], Awaitable[int]],
    *,
    config: Config | None = None,
    migrate: bool = True,
) -> int:
    """Load the config (unless given), log warnings only, open the store, run ``work``
    with it, close it; the exit status ``work`` returns."""
    from relay.ops.logging import configure_logging

    config = config or load_config_of(args)
    configure_logging("warning")
    return asyncio.run(_opened(config, work, migrate))


async def _opened(config: Config, work: Callable[[Store], Awaitable[int]], migrate: bool) -> int:
    from relay.ops.app import open_store

    async with AsyncExitStack() as stack:
        store = await open_store(config, stack, migrate=migrate)
        return await work(store)


def store_command(work: StoreWork) -> Command:
    """``@store_command async def run(args, store) -> int``: a command run by ``with_store``."""

    def command(args: argparse.Namespace) -> int:
        return with_store(args, lambda store: work(args, store))

    command.__doc__ = work.__doc__
    return command
