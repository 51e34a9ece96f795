"""``serve``, ``check-config`` and ``migrate``: running the relay and getting it ready."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.cli.arguments import Parser, add_command, config_option
from relay.cli.common import CommandFailed, load_config_of, with_store
from relay.config_keys import Smtp
from relay.errors import ListenError

if TYPE_CHECKING:
    from relay.store import Store

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    serve = add_command(subparsers, "serve", "run the relay (applies migrations first)")
    config_option(serve)
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_listen,
        help="where SMTP clients connect, for this run instead of [smtp] listen "
        "(127.0.0.1:2526, [::1]:2526; port 0 picks a free one)",
    )
    serve.set_defaults(run=_serve)
    check = add_command(
        subparsers, "check-config", "validate the config file, naming every bad key and its line"
    )
    config_option(check)
    check.set_defaults(run=_check_config)
    migrate = add_command(subparsers, "migrate", "apply the database schema")
    config_option(migrate)
    migrate.set_defaults(run=_migrate)


def _listen(text: str) -> tuple[str, int]:
    """--listen, read the way [smtp] listen is read from the config file."""
    try:
        return Smtp.listen.value.convert(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_config(args: argparse.Namespace) -> int:
    from policies.text import printable

    config = load_config_of(args)
    print(
        f"{printable(str(config.path))}: ok ({len(config.rules.routes)} route(s), "
        f"{len(config.rules.pools)} pool(s), {len(config.rules.retry.rules)} retry rule(s), "
        f"{len(config.rules.classify_rules)} classify rule(s))"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from relay.ops.app import serve
    from relay.ops.logging import configure_logging
    from relay.ops.supervisor import process_role, supervise

    # A reload asked for while starting would otherwise kill the process (SIGHUP's default);
    # the new config is read at start anyway. serve() installs the real handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_config_of(args)
    configure_logging(config.log_level)
    listen: tuple[str, int] | None = args.listen
    role = process_role()
    if role is None and config.smtp.processes > 1:
        if (listen or config.smtp.listen)[1] != 0:
            return asyncio.run(supervise(config, listen=listen))
        key = "--listen" if listen else "smtp.listen"
        print(
            f"bounce-relay: {key} port 0 cannot be shared by several processes; "
            "running one (set a port to use [smtp] processes)",
            file=sys.stderr,
        )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config, role, listen=listen))
    except ListenError as exc:
        if listen is None or exc.key != "smtp.listen":
            raise
        why = exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else None
        raise CommandFailed(
            f"--listen {_hostport(listen)}: cannot listen ({why or exc.__cause__})",
            "another process may hold the port: stop it or choose another address",
        ) from None
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency on Linux): the same asyncio API with
    less Python around every socket operation; $BOUNCE_RELAY_LOOP=asyncio opts out."""
    if os.environ.get("BOUNCE_RELAY_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _migrate(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        applied = await store.migrate()
        for name in applied:
            print(f"applied {name}")
        print("schema is up to date")
        return 0

    return with_store(args, work, migrate=False)
