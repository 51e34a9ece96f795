"""``queue list|show|retry|purge``: the delivery queue."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from policies.states import DeliveryState
from relay.cli.arguments import (
    Parser,
    actor_option,
    add_command,
    config_option,
    positive_int,
    row_id,
)
from relay.cli.common import CommandFailed, store_command
from relay.cli.output import fmt, print_fields, print_row

if TYPE_CHECKING:
    from relay.store import Store

__all__ = ["queue_list", "queue_show", "register"]

_NOT_QUEUED = "`bounce-relay queue list --state queued` shows the queued ones"
_RETRY_REASON = "retried by hand"


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    queue = add_command(subparsers, "queue", "the delivery queue")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add_command(actions, "list", "deliveries, soonest due first")
    config_option(listing)
    listing.add_argument(
        "--state",
        choices=[s.value for s in DeliveryState],
        help="only deliveries in this state (default: every state)",
    )
    listing.add_argument("--limit", metavar="N", type=positive_int, default=100, help="at most N")
    listing.set_defaults(run=_list)
    for name, help_text, run in (
        ("show", "one delivery and every event of it", _show),
        ("retry", "make a queued delivery due now (audited)", _retry),
        ("purge", "cancel a queued delivery (audited)", _purge),
    ):
        action = add_command(actions, name, help_text)
        config_option(action)
        action.add_argument("id", metavar="ID", type=row_id, help="a delivery id (queue list)")
        action.set_defaults(run=run)
        if name == "purge":
            action.add_argument(
                "--reason", metavar="TEXT", required=True, help="why, as the audit log records it"
            )
            actor_option(action)
        if name == "retry":
            action.add_argument(
                "--reason",
                metavar="TEXT",
                default=_RETRY_REASON,
                help="why, as the audit log records it",
            )
            actor_option(action)


@store_command
async def _list(args: argparse.Namespace, store: Store) -> int:
    await queue_list(store, args.state, args.limit, sys.stdout)
    return 0


@store_command
async def _show(args: argparse.Namespace, store: Store) -> int:
    if not await queue_show(store, args.id, sys.stdout):
        raise CommandFailed(f"no delivery {args.id}", "`bounce-relay queue list` shows them")
    return 0


@store_command
async def _retry(args: argparse.Namespace, store: Store) -> int:
    from relay.clock import utc_now

    # The admin page's statement: audited, as a retry there is.
    retried = await store.retry_deliveries([args.id], utc_now(), args.actor, args.reason)
    if not retried.done:
        raise CommandFailed(f"no queued delivery {args.id}", _NOT_QUEUED)
    print(f"delivery {args.id} is due now (audited as {fmt(args.actor)})")
    return 0


@store_command
async def _purge(args: argparse.Namespace, store: Store) -> int:
    if not await store.purge_delivery(args.id, args.actor, args.reason):
        raise CommandFailed(f"no queued delivery {args.id}", _NOT_QUEUED)
    print(f"delivery {args.id} cancelled (audited as {fmt(args.actor)})")
    return 0


async def queue_list(store: Store, state: str | None, limit: int, out: TextIO) -> None:
    rows = await store.list_deliveries(state, limit)
    print("id\tqueue_id\trecipient\tstate\tattempts\tnext_attempt_at\tlast_reply", file=out)
    for r in rows:
        print_row(
            (
                r.id,
                r.queue_id,
                r.recipient,
                r.state,
                r.attempts,
                r.next_attempt_at,
                r.last_reply,
            ),
            out,
        )


async def queue_show(store: Store, delivery_id: int, out: TextIO) -> bool:
    row = await store.delivery_by_id(delivery_id)
    if row is None:
        return False
    print_fields(row, 17, out)
    print("events:", file=out)
    for e in await store.events_of_delivery(delivery_id):
        print(
            f"  {fmt(e.occurred_at)} {fmt(e.type):12} attempt={fmt(e.attempt)} "
            f"code={fmt(e.code)} category={fmt(e.category)} rule={fmt(e.rule)} "
            f"ip={fmt(e.source_ip)} {fmt(e.reply_text, 160)}",
            file=out,
        )
    return True
