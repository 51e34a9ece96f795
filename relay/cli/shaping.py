"""``shaping show``: each destination group x source IP's shared limits, what the relays do
with them now, and the replies that set them (docs/shaping.md)."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, add_command, config_option, positive_int
from relay.cli.common import load_config_of, with_store
from relay.cli.output import fmt

if TYPE_CHECKING:
    from policies.shaping import Limit, ShapingRules
    from relay.store import Store
    from relay.store.shaping import ShapingRow

__all__ = ["register", "shaping_show"]

# Use rows written this recently are the relays' present (they write every second).
_FRESH = timedelta(seconds=10)


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    shaping = add_command(
        subparsers,
        "shaping",
        "limits per destination group x source IP shared by the relays, and why",
    )
    actions = shaping.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = add_command(
        actions,
        "show",
        "each limit, what the relays use of it now, and the replies that set it",
    )
    config_option(show)
    show.add_argument("--group", help="only this destination group (a provider or a host)")
    show.add_argument("--source-ip", metavar="IP", help="only this source IP")
    show.add_argument(
        "--changes",
        metavar="N",
        type=positive_int,
        default=5,
        help="the last N changes of each limit (default 5)",
    )
    show.set_defaults(run=_show)


def _show(args: argparse.Namespace) -> int:
    config = load_config_of(args)

    async def work(store: Store) -> int:
        await shaping_show(
            store,
            config.rules.shaping,
            sys.stdout,
            group=args.group,
            source_ip=args.source_ip,
            changes=args.changes,
        )
        return 0

    return with_store(args, work, config=config)


async def shaping_show(
    store: Store,
    rules: ShapingRules,
    out: TextIO,
    *,
    group: str | None = None,
    source_ip: str | None = None,
    changes: int = 5,
) -> None:
    from relay.clock import utc_now

    rows = await store.shaping_overview(utc_now() - _FRESH)
    rows = [
        r
        for r in rows
        if (group is None or r.key.group == group.strip().lower())
        and (source_ip is None or r.key.source_ip == source_ip.strip())
    ]
    if not rules.enabled:
        print("[shaping] enabled = false: the relays do not share or learn these limits", file=out)
    if not rows:
        print(
            "no destination has a learned limit or traffic in the last "
            f"{int(_FRESH.total_seconds())} seconds; every one has [shaping]'s ceilings "
            f"({_ceilings(rules, '')})",
            file=out,
        )
        return
    for row in rows:
        await _show_key(store, rules, row, changes, out)


async def _show_key(
    store: Store, rules: ShapingRules, row: ShapingRow, changes: int, out: TextIO
) -> None:
    from policies.shaping import Limit

    limit = row.limit or Limit.ceiling_of(rules, row.key.group)
    print(f"{fmt(row.key.group)} from {fmt(row.key.source_ip)}", file=out)
    print(f"  connections   {_connections(limit, rules, row.key.group)}", file=out)
    print(f"  rate          {_rate(limit, rules, row.key.group)}", file=out)
    print(
        f"  now           {row.relays} relay(s): {row.open_connections} open, {row.held} held; "
        f"{row.sent:.0f} sent, {row.accepted:.0f} accepted, {row.wanted:.0f} asked a minute",
        file=out,
    )
    history = await store.shaping_changes(row.key, changes)
    if not history:
        print("  changes       none: the configured ceilings hold", file=out)
    for stored in history:
        change = stored.change
        reply = f": {fmt(change.reply, 200)}" if change.reply else ""
        print(
            f"  {fmt(stored.at)}  {change.what} {_value(change.old)} -> {_value(change.new)}  "
            f"{change.cause}{reply}  ({fmt(stored.relay)})",
            file=out,
        )
    print(file=out)


def _connections(limit: Limit, rules: ShapingRules, group: str) -> str:
    ceiling, _ = rules.ceiling(group)
    if limit.refused_connections is None:
        return f"{limit.connections} (configured)"
    return (
        f"{limit.connections} (learned: refused at {limit.refused_connections} open; "
        f"ceiling {ceiling})"
    )


def _rate(limit: Limit, rules: ShapingRules, group: str) -> str:
    _, ceiling = rules.ceiling(group)
    shown = "none" if ceiling is None else f"{ceiling:g}"
    if limit.refused_rate is None or limit.rate is None:
        if limit.rate is None:
            return "no limit (none configured, none learned)"
        return f"{limit.rate:.0f} a minute (configured)"
    return (
        f"{limit.rate:.0f} a minute (learned: the upstream took {limit.refused_rate:.0f} a "
        f"minute when it refused; ceiling {shown})"
    )


def _ceilings(rules: ShapingRules, group: str) -> str:
    connections, rate = rules.ceiling(group)
    per_minute = "no rate limit" if rate is None else f"{rate:g} messages a minute"
    return f"{connections} connections, {per_minute}"


def _value(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f}"
