"""``admin user add|remove|list|passwd``: the named accounts of the admin page.

A password is typed twice at the terminal, or read from the first line of stdin with
``--password-stdin``; never taken from the command line, where ``ps`` and the shell's
history would show it. It is hashed here (scrypt), in this process: the relay never sees
it. Removing an account or giving it a new password ends its sessions at once; each change
is audited. The first account retires the shared ``[admin] password_hash``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, actor_option, add_command, config_option
from relay.cli.common import CommandFailed, UsageError, load_config_of, with_store
from relay.cli.output import fmt, print_row
from relay.cli.passwords import ask_twice
from relay.clock import utc_now

if TYPE_CHECKING:
    from relay.config import Config
    from relay.store import Store

__all__ = [
    "MIN_PASSWORD",
    "account_add",
    "account_name",
    "account_passwd",
    "account_remove",
    "accounts_list",
    "register",
]

MIN_PASSWORD = 8  # characters
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")  # as migration 0013's CHECK
_ACTIONS = ("add", "remove", "list", "passwd")
_LISTED = "`bounce-relay admin user list` shows them"


def account_name(text: str) -> str:
    """A user name as accounts keep it: lower case, 1-64 of a-z 0-9 . _ @ -."""
    name = text.strip().lower()
    if not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a user name: 1 to 64 of a-z, 0-9, '.', '_', '@' and '-', "
            "starting with a letter or digit"
        )
    return name


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    admin = add_command(subparsers, "admin", "the admin page's accounts")
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    user = add_command(
        actions,
        "user",
        "named accounts of the admin page, role admin (may change things) or viewer "
        "(reads only): add, remove, list, passwd",
    )
    config_option(user)
    user.add_argument(
        "verb",
        metavar="ACTION",
        choices=_ACTIONS,
        help="add NAME --role ROLE: a new account (asks its password twice); "
        "remove NAME: delete it, ending its sessions; "
        "list: every account with its role, times and live sessions; "
        "passwd NAME: a new password, ending its sessions",
    )
    user.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        type=account_name,
        help="the user name it logs in with (add, remove, passwd)",
    )
    user.add_argument(
        "--role",
        choices=["admin", "viewer"],
        help="with add: admin may do everything, viewer may read every page and change nothing",
    )
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="with add and passwd: read the password from the first line of stdin instead "
        'of asking (echo -n "$PASSWORD" | bounce-relay admin user passwd NAME --password-stdin)',
    )
    actor_option(user)
    user.set_defaults(run=_user)


def _user(args: argparse.Namespace) -> int:
    """Usage is checked before the config is read or the database reached."""
    verb, name = args.verb, args.name
    if verb == "list":
        if name or args.role or args.password_stdin:
            raise UsageError(
                "admin user list takes no NAME, --role or --password-stdin",
                "`bounce-relay admin user list` lists every account",
            )
        return with_store(args, lambda store: accounts_list(store, sys.stdout))
    if name is None:
        raise UsageError(f"admin user {verb} needs a NAME", f"e.g. `admin user {verb} alice`")
    if verb == "add" and args.role is None:
        raise UsageError(
            "admin user add needs --role admin or --role viewer",
            "viewer may read every page, admin may also change things",
        )
    if verb != "add" and args.role:
        raise UsageError(
            "--role goes with add", "to change a role, remove the account and add it again"
        )
    if verb == "remove" and args.password_stdin:
        raise UsageError("--password-stdin goes with add and passwd", "drop it")
    config = load_config_of(args)
    if verb == "remove":
        return with_store(
            args,
            lambda store: account_remove(store, name, args.actor, config, sys.stdout),
            config=config,
        )
    # Before the password is asked: a name taken (add) or unknown (passwd) is heard first.
    with_store(args, lambda store: _check_exists(store, name, verb == "passwd"), config=config)
    hashed = _hashed(_new_password(args.password_stdin))
    if verb == "add":
        return with_store(
            args,
            lambda store: account_add(
                store, name, args.role, hashed, args.actor, config, sys.stdout
            ),
            config=config,
        )
    return with_store(
        args,
        lambda store: account_passwd(store, name, hashed, args.actor, sys.stdout),
        config=config,
    )


async def _check_exists(store: Store, name: str, must_exist: bool) -> int:
    exists = name in {a.name for a in await store.admin_accounts(utc_now())}
    if must_exist and not exists:
        raise CommandFailed(f"no account {name}", _LISTED)
    if exists and not must_exist:
        raise CommandFailed(
            f"account {name} exists already",
            "`bounce-relay admin user passwd` gives it a new password",
        )
    return 0


# -- the password ----------------------------------------------------------------------------


def _new_password(from_stdin: bool) -> str:
    password = (
        sys.stdin.readline().rstrip("\r\n")
        if from_stdin
        else ask_twice("pipe it with --password-stdin", "nothing was changed")
    )
    if not password:
        how = "pipe a non-empty one" if from_stdin else "type one"
        raise CommandFailed("empty password refused", f"{how}; nothing was changed")
    if len(password) < MIN_PASSWORD:
        raise CommandFailed(
            f"a password of {len(password)} characters is too short",
            f"use at least {MIN_PASSWORD}; nothing was changed",
        )
    return password


def _hashed(password: str) -> str:
    """scrypt, here and not in the relay; outside any event loop (the command has none
    running while it hashes)."""
    from relay.passwords import hash_password

    return hash_password(password)


# -- the actions -----------------------------------------------------------------------------


def _sessions(n: int) -> str:
    return f"{n} session{'' if n == 1 else 's'}"


async def account_add(
    store: Store,
    name: str,
    role: str,
    password_hash: str,
    actor: str,
    config: Config,
    out: TextIO,
) -> int:
    added = await store.add_admin_account(name, role, password_hash, utc_now(), actor)
    if added is None:
        raise CommandFailed(
            f"account {name} exists already",
            "`bounce-relay admin user passwd` gives it a new password",
        )
    print(f"{fmt(name)}: added, role {fmt(role)} (audited as {fmt(actor)})", file=out)
    if added.accounts_left == 1 and config.admin.password_hash:
        ended = added.sessions_ended
        print(
            "the shared [admin] password_hash no longer logs in"
            + (f" and its {_sessions(ended)} ended" if ended else "")
            + "; remove it from the config file",
            file=sys.stderr,
        )
    return 0


async def account_remove(store: Store, name: str, actor: str, config: Config, out: TextIO) -> int:
    removed = await store.remove_admin_account(name, utc_now(), actor)
    if removed is None:
        raise CommandFailed(f"no account {name}", _LISTED)
    print(
        f"{fmt(name)}: removed (was {fmt(removed.role)}); {_sessions(removed.sessions_ended)}"
        f" ended (audited as {fmt(actor)})",
        file=out,
    )
    if removed.accounts_left == 0:
        print(
            "no accounts left: the shared [admin] password_hash logs in again as admin"
            if config.admin.password_hash
            else "no accounts left: nobody can log in to the admin page until"
            " `bounce-relay admin user add`",
            file=sys.stderr,
        )
    return 0


async def account_passwd(
    store: Store, name: str, password_hash: str, actor: str, out: TextIO
) -> int:
    changed = await store.set_admin_password(name, password_hash, utc_now(), actor)
    if changed is None:
        raise CommandFailed(f"no account {name}", _LISTED)
    print(
        f"{fmt(name)}: new password; {_sessions(changed.sessions_ended)} ended"
        f" (audited as {fmt(actor)})",
        file=out,
    )
    return 0


async def accounts_list(store: Store, out: TextIO) -> int:
    accounts = await store.admin_accounts(utc_now())
    print("name\trole\tcreated_at\tpassword_changed_at\tlast_login_at\tsessions", file=out)
    for a in accounts:
        print_row(
            (a.name, a.role, a.created_at, a.password_changed_at, a.last_login_at, a.sessions),
            out,
        )
    if not accounts:
        print(
            "no accounts yet; `bounce-relay admin user add NAME --role admin` creates one",
            file=sys.stderr,
        )
    return 0
