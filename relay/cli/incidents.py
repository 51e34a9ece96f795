"""``incidents list|show|release``: runs of one provider reply that say nothing of the
recipients (an IP block, an outage), and ending one."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

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

__all__ = ["incident_release", "incident_show", "incidents_list", "register"]

_LISTED = "`bounce-relay incidents list` shows them"


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    incidents = add_command(
        subparsers,
        "incidents",
        "provider incidents: runs of one reply that say nothing of recipients",
    )
    actions = incidents.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add_command(actions, "list", "incidents, newest first")
    config_option(listing)
    listing.add_argument(
        "--state",
        choices=["open", "closed", "released"],
        help="only incidents in this state (default: every state)",
    )
    listing.add_argument("--limit", metavar="N", type=positive_int, default=50, help="at most N")
    listing.set_defaults(run=_list)
    show = add_command(actions, "show", "one incident: key, counts, sample reply")
    config_option(show)
    show.add_argument("id", metavar="ID", type=row_id, help="an incident id (incidents list)")
    show.set_defaults(run=_show)
    release = add_command(
        actions,
        "release",
        "end an incident: lift every suppression its replies made, retry its deferred mail now",
    )
    config_option(release)
    release.add_argument("id", metavar="ID", type=row_id, help="an incident id (incidents list)")
    release.add_argument(
        "--reason", metavar="TEXT", required=True, help="why, as the audit log records it"
    )
    actor_option(release)
    release.set_defaults(run=_release)


@store_command
async def _list(args: argparse.Namespace, store: Store) -> int:
    await incidents_list(store, args.state, args.limit, sys.stdout)
    return 0


@store_command
async def _show(args: argparse.Namespace, store: Store) -> int:
    await incident_show(store, args.id, sys.stdout)
    return 0


@store_command
async def _release(args: argparse.Namespace, store: Store) -> int:
    await incident_release(store, args.id, args.actor, args.reason, sys.stdout)
    return 0


async def incidents_list(store: Store, state: str | None, limit: int, out: TextIO) -> None:
    rows = await store.list_incidents(state, limit)
    print(
        "id\tstate\topened_at\tlast_seen_at\tsource_ip\tby\tdestination\trecipients\treplies"
        "\tlifted\tcategory\ttemplate",
        file=out,
    )
    for r in rows:
        print_row(
            (
                r.id,
                r.state,
                r.opened_at,
                r.last_seen_at,
                r.source_ip,
                r.scope,
                r.destination,
                r.recipients,
                r.replies,
                r.lifted,
                r.category,
                r.template,
            ),
            out,
        )


async def incident_show(store: Store, incident_id: int, out: TextIO) -> None:
    row = await store.incident(incident_id)
    if row is None:
        raise CommandFailed(f"no incident {incident_id}", _LISTED)
    print_fields(row, 20, out)


async def incident_release(
    store: Store, incident_id: int, actor: str, reason: str, out: TextIO
) -> None:
    from relay.clock import utc_now

    released = await store.release_incident(incident_id, utc_now(), actor, reason)
    if released is None:
        raise CommandFailed(
            f"no incident {incident_id} to release (unknown, or released already)", _LISTED
        )
    lifted, due_now = released
    print(
        f"incident {incident_id} released (audited as {fmt(actor)}): {lifted} suppressions lifted,"
        f" profiles active again; {due_now} deferred deliveries due now",
        file=out,
    )
