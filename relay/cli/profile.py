"""``profile show``: what the relay knows about one address."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from policies.addresses import normalise_address
from relay.cli.arguments import Parser, add_command, address, config_option
from relay.cli.common import CommandFailed, store_command
from relay.cli.output import fmt

if TYPE_CHECKING:
    from relay.store import Store

__all__ = ["profile_show", "register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    profile = add_command(subparsers, "profile", "address profiles")
    actions = profile.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = add_command(
        actions,
        "show",
        "an address's status, when it changed, its suppression, bounces and deliveries",
    )
    config_option(show)
    show.add_argument("address", metavar="ADDRESS", type=address, help="the recipient address")
    show.set_defaults(run=_show)


@store_command
async def _show(args: argparse.Namespace, store: Store) -> int:
    if not await profile_show(store, args.address, sys.stdout):
        raise CommandFailed(
            f"nothing known about {args.address} (no delivery, bounce or status recorded)",
            "check the spelling",
        )
    return 0


async def profile_show(store: Store, address: str, out: TextIO) -> bool:
    key = normalise_address(address)
    profile = await store.profile(key)
    deliveries = await store.delivery_counts_of_address(key)
    bounces = await store.bounces_of_address(key)
    if profile is None and not deliveries and not bounces:
        return False
    status = profile.status if profile else "active"
    print(f"address   {fmt(key)}", file=out)
    print(f"status    {fmt(status)}", file=out)
    if profile:
        print(f"changed   {fmt(profile.status_changed_at)}", file=out)
        if profile.suppression_reason:
            print(
                f"suppressed {fmt(profile.suppressed_at)} "
                f"({fmt(profile.suppression_source)}): {fmt(profile.suppression_reason)}",
                file=out,
            )
    print(
        "deliveries " + (", ".join(f"{fmt(s)}={n}" for s, n in deliveries.items()) or "none"),
        file=out,
    )
    print("bounces:", file=out)
    for b in bounces:
        print(
            f"  {fmt(b.occurred_at)} {fmt(b.type):12} {fmt(b.code)} "
            f"{fmt(b.category)} ip={fmt(b.source_ip)} "
            f"campaign={fmt(b.campaign)} {fmt(b.reply_text, 160)}",
            file=out,
        )
    return True
