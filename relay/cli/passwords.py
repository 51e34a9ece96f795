"""``hash-password``: a scrypt hash for ``[[smtp.users]]``, ``[admin]`` and API tokens."""

from __future__ import annotations

import argparse
import getpass
import sys

from relay.cli.arguments import Parser, add_command
from relay.cli.common import CommandFailed, Interrupted

__all__ = ["ask_twice", "register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    command = add_command(
        subparsers,
        "hash-password",
        "print a scrypt hash of a password for [[smtp.users]], [admin] or an API token",
    )
    command.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of asking "
        '(echo -n "$PASSWORD" | bounce-relay hash-password --stdin)',
    )
    command.set_defaults(run=_hash_password)


def _hash_password(args: argparse.Namespace) -> int:
    from relay.passwords import hash_password

    password = sys.stdin.readline().rstrip("\n") if args.stdin else _ask()
    if not password:
        how = "pipe a non-empty one" if args.stdin else "type one"
        raise CommandFailed("empty password refused", how)
    print(hash_password(password))
    return 0


def _ask() -> str:
    return ask_twice(
        'pipe it: echo -n "$PASSWORD" | bounce-relay hash-password --stdin', "nothing was hashed"
    )


def ask_twice(pipe_instead: str, unchanged: str) -> str:
    """A password typed twice at the terminal, not echoed. ``pipe_instead`` says how to pipe
    one instead (at end of input), ``unchanged`` what was left undone (at Ctrl-C)."""
    try:
        password = getpass.getpass("Password: ")
        if password and getpass.getpass("Again: ") != password:
            raise CommandFailed(
                "the two passwords differ", "run it again and type the same password twice"
            )
    except EOFError:
        _end_prompt_line()
        raise CommandFailed(
            "no password given (end of input)", f"type one and press Enter, or {pipe_instead}"
        ) from None
    except KeyboardInterrupt:
        _end_prompt_line()
        raise Interrupted("interrupted at the password prompt", unchanged) from None
    return password


def _end_prompt_line() -> None:
    """Ctrl-D or Ctrl-C leaves the cursor after the prompt: the message starts a line."""
    if sys.stderr.isatty():
        print(file=sys.stderr)
