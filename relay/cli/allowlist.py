"""``allowlist list|add|remove``: addresses and whole domains never suppressed
automatically (an administrator's own entries still hold)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, actor_option, add_command, address_or_domain, config_option
from relay.cli.common import CommandFailed, store_command
from relay.cli.output import fmt

if TYPE_CHECKING:
    from relay.store import Store

__all__ = ["allowlist_add", "allowlist_list", "allowlist_remove", "register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    allowlist = add_command(
        subparsers, "allowlist", "addresses and domains never suppressed automatically"
    )
    actions = allowlist.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add_command(actions, "list", "every entry: entry, since, actor, reason")
    config_option(listing)
    listing.set_defaults(run=_list)
    for name, help_text, run in (
        ("add", "allowlist an address or a whole domain (audited)", _add),
        ("remove", "take an entry off the allowlist (audited)", _remove),
    ):
        entry = add_command(actions, name, help_text)
        config_option(entry)
        entry.add_argument(
            "entry",
            metavar="ADDRESS_OR_DOMAIN",
            type=address_or_domain,
            help="an address (ann@example.org) or a domain, every address in it (example.org)",
        )
        entry.add_argument(
            "--reason", metavar="TEXT", required=True, help="why, as the audit log records it"
        )
        actor_option(entry)
        entry.set_defaults(run=run)


@store_command
async def _list(args: argparse.Namespace, store: Store) -> int:
    await allowlist_list(store, sys.stdout)
    return 0


@store_command
async def _add(args: argparse.Namespace, store: Store) -> int:
    await allowlist_add(store, args.entry, args.reason, args.actor, sys.stdout)
    return 0


@store_command
async def _remove(args: argparse.Namespace, store: Store) -> int:
    await allowlist_remove(store, args.entry, args.reason, args.actor, sys.stdout)
    return 0


async def allowlist_list(store: Store, out: TextIO) -> None:
    for row in await store.allowlist():
        print(
            f"{fmt(row.entry)}\t{fmt(row.created_at)}\t{fmt(row.actor)}\t{fmt(row.reason)}",
            file=out,
        )


async def allowlist_add(store: Store, entry: str, reason: str, actor: str, out: TextIO) -> None:
    """``entry``: an address key or an ASCII domain (``arguments.address_or_domain``)."""
    added = await store.allow(entry, reason, actor)
    print(
        f"{fmt(entry)}: {'allowlisted' if added else 'already allowlisted (unchanged)'}; automatic"
        " suppressions no longer hold for it (an administrator's entries still do)",
        file=out,
    )


async def allowlist_remove(store: Store, entry: str, reason: str, actor: str, out: TextIO) -> None:
    if not await store.disallow(entry, reason, actor):
        raise CommandFailed(
            f"{entry} is not on the allowlist", "`bounce-relay allowlist list` shows the entries"
        )
    print(f"{fmt(entry)}: removed from the allowlist (audited as {fmt(actor)})", file=out)
