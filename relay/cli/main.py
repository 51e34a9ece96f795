"""The ``bounce-relay`` command: the parser built from the command modules, and dispatch.

Each module of ``relay.cli`` holds one noun (``queue``, ``suppression``, ...): its
``register(subparsers)`` adds its commands and actions, each with ``run`` set to the
function that carries it out. ``main`` parses, runs, and turns every expected failure into
one line on stderr and an exit status: 0 ok, 1 the command failed, 2 bad usage or config,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator

from policies.text import printable, printable_lines
from relay.cli import (
    admin,
    allowlist,
    classify,
    demo,
    dsn,
    embedded,
    guardrails,
    incidents,
    passwords,
    profile,
    queue,
    report,
    retention,
    serve,
    shaping,
    suppression,
)
from relay.cli.arguments import PROG, Parser
from relay.cli.common import CommandFailed
from relay.config import CONFIG_ENV, config_path
from relay.errors import (
    ConfigErrors,
    RelayError,
    StoreError,
    StoreUnavailable,
    UnsafeDatabase,
)

__all__ = ["build_parser", "main"]

# The order of the command summary in --help.
_MODULES = (
    serve,
    embedded,
    passwords,
    demo,
    queue,
    suppression,
    allowlist,
    incidents,
    guardrails,
    shaping,
    profile,
    classify,
    dsn,
    report,
    retention,
    admin,
)

_ABOUT = """\
An SMTP relay that reads every upstream reply: it retries soft bounces on a schedule,
suppresses addresses that hard-bounce, refuses suppressed recipients at RCPT, and reports
the bounces by sending domain or source IP."""

_NOTES = f"""\
`bounce-relay COMMAND --help` (or `COMMAND ACTION --help`) shows a command's options.
The config file comes from --config PATH, else ${CONFIG_ENV}, else ./config.toml.
Exit codes: 0 ok, 1 the command failed, 2 bad usage or config (the message on stderr).
Stored text is printed escaped: control, bidi and other format characters show as
\\x1b, \\u202e, ... and a backslash as \\\\ (docs/commands.md says which and why)."""


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        usage=f"{PROG} COMMAND [ACTION] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_NOTES,
    )
    # Accepted before the command too (`bounce-relay --config X serve`), as it always was;
    # not shown: the commands that read a config file offer it themselves.
    parser.add_argument("--config", help=argparse.SUPPRESS)
    # prog: the commands' own usage lines start "bounce-relay queue ...", not with ours.
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog=PROG
    )
    for module in _MODULES:
        module.register(commands)
    parser.description = f"{_ABOUT}\n\ncommands:\n{_summary(parser)}"
    return parser


def _leaves(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(command path, its positionals, its help) for every command and action registered
    under ``parser``, in registration order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for choice in action._choices_actions:
            name = f"{path} {choice.dest}".strip()
            sub = action.choices[choice.dest]
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                yield from _leaves(sub, name)
            else:
                yield name, _positionals(sub), choice.help or ""


def _positionals(parser: argparse.ArgumentParser) -> str:
    shown = []
    for action in parser._positionals._group_actions:
        metavar = str(action.metavar or action.dest)
        if action.nargs == "?":
            shown.append(f"[{metavar}]")
        elif action.nargs in ("+", "*"):
            shown.append(f"{metavar}...")
        else:
            shown.append(metavar)
    return " ".join(shown)


def _summary(parser: argparse.ArgumentParser) -> str:
    """One line per command and action, from the registered parsers (so it cannot drift);
    a long help wraps under itself, to the width argparse uses."""
    rows = [(f"{name} {args}".strip(), help_text) for name, args, help_text in _leaves(parser)]
    indent = 2 + max(len(usage) for usage, _ in rows) + 2
    width = max(shutil.get_terminal_size().columns - 2, indent + 30)
    return "\n".join(
        textwrap.fill(
            help_text,
            width,
            initial_indent=f"  {usage:<{indent - 2}}",
            subsequent_indent=" " * indent,
        )
        for usage, help_text in rows
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args, extra = build_parser().parse_known_args(argv)
        command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
        reads_config = getattr(args, "reads_config", False)
        config_given = args.config is not None or any(
            word == "--config" or word.startswith("--config=") for word in extra
        )
        if config_given and not reads_config:
            return _error(f"{command} reads no config file", "drop --config", status=2)
        if extra:
            return _error(
                f"{command}: unrecognized arguments: {' '.join(extra)}",
                f"see `{PROG} {command} --help`",
                status=2,
            )
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bounce-relay ... | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; an expected failure is one line on stderr (a config
    file's errors one line each)."""
    try:
        status: int = args.run(args)
        return status
    except CommandFailed as exc:
        return _error(str(exc), status=exc.status)
    except ConfigErrors as exc:
        print(f"{PROG}: {printable_lines(str(exc))}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        where = config_path(getattr(args, "config", None))
        return _error(
            str(exc), f"check [store] dsn in {where} and that PostgreSQL is running there"
        )
    except UnsafeDatabase as exc:
        return _error(str(exc))  # it says what to change
    except StoreError as exc:
        # Refused while connecting (no such database, a wrong user or password): the store
        # names what it was doing first.
        if str(exc).startswith("connect to "):
            where = config_path(getattr(args, "config", None))
            todo = f"check the database, user and password of [store] dsn in {where}"
        else:
            todo = "the PostgreSQL server's log says why"
        return _error(str(exc), todo)
    except RelayError as exc:
        return _error(str(exc))


def _error(what: str, todo: str = "", *, status: int = 1) -> int:
    """``bounce-relay: <what happened>; <what to do>`` on stderr, escaped to one line."""
    print(f"{PROG}: {printable(f'{what}; {todo}' if todo else what)}", file=sys.stderr)
    return status
