"""``store retention [--dry-run]``: one run of the data lifecycle ([retention]) now, or what
it would do.

Every relay runs it every ``[retention] check_every`` by itself; this is for an operator who
wants to see what goes next, or to free space at once after shortening a window. Output is
one tab-separated row per action: partitions of events created or dropped, rows deleted per
table with the time before which they go.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, add_command, config_option
from relay.cli.common import CommandFailed, load_config_of, with_store
from relay.cli.output import print_row
from relay.clock import utc_now

if TYPE_CHECKING:
    from relay.config import Config
    from relay.ops.maintenance import Cutoffs, RetentionPreview, RetentionRun
    from relay.store import Store

__all__ = ["print_preview", "print_run", "register"]

HEADER = ("action", "table", "partition", "rows", "bytes", "from", "to")


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    store = add_command(subparsers, "store", "the database: its data lifecycle")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    retention = add_command(
        actions,
        "retention",
        "run the data lifecycle once now: create partitions of events ahead, drop those "
        "older than [retention] events, delete finished messages and other old rows",
    )
    config_option(retention)
    retention.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what a run would do now, changing nothing",
    )
    retention.set_defaults(run=_retention)


def _retention(args: argparse.Namespace) -> int:
    config = load_config_of(args)
    return with_store(args, lambda store: _run(store, config, args.dry_run), config=config)


async def _run(store: Store, config: Config, dry_run: bool) -> int:
    from relay.ops.maintenance import preview_retention, run_retention

    now = utc_now()
    if dry_run:
        print_preview(await preview_retention(store, config, now), sys.stdout)
        return 0
    run = await run_retention(store, config, now)
    if run is None:
        raise CommandFailed(
            "another relay process is running the data lifecycle right now",
            "try again in a minute, or see what it would do with --dry-run",
        )
    print_run(run, sys.stdout)
    if run.failed:
        raise CommandFailed(
            f"these steps failed: {', '.join(run.failed)} (the rest was done)",
            "the warnings above say why; the relay retries them at its next run",
        )
    return 0


def print_preview(preview: RetentionPreview, out: TextIO) -> None:
    """What a run would do: the same rows as ``print_run``, rows counted instead of gone."""
    from relay.ops.maintenance import EVENTS, partition_name

    print_row(HEADER, out)
    for lower, upper in preview.create:
        print_row(("create", EVENTS, partition_name(lower), None, None, lower, upper), out)
    for p in preview.drop:
        print_row(("drop", EVENTS, p.name, p.rows, p.bytes, p.lower, p.upper), out)
    counted = asdict(preview.backlog)
    for table, before in _deleted_before(preview.cutoffs):
        if before is not None:
            print_row(("delete", table, None, counted[table], None, None, before), out)


def print_run(run: RetentionRun, out: TextIO) -> None:
    """What a run did, one row per action (rows of a dropped partition: PostgreSQL's
    estimate; rows of a created one: taken over from the default partition)."""
    from relay.ops.maintenance import EVENTS

    print_row(HEADER, out)
    for created in run.created:
        print_row(
            ("create", EVENTS, created.name, created.moved, None, created.lower, created.upper),
            out,
        )
    for p in run.dropped:
        print_row(("drop", EVENTS, p.name, p.rows, p.bytes, p.lower, p.upper), out)
    for table, before in _deleted_before(run.cutoffs):
        if table in run.deleted:
            print_row(("delete", table, None, run.deleted[table], None, None, before), out)


def _deleted_before(cut: Cutoffs) -> list[tuple[str, datetime | None]]:
    """What is deleted row by row, in the order shown, each with the time before which its
    rows go (None: the audit log is kept)."""
    return [
        ("messages", cut.messages),
        ("deliveries", cut.messages),
        ("webhook_outbox", cut.webhook_outbox),
        ("unmatched_bounces", cut.unmatched_bounces),
        ("admin_audit", cut.admin_audit),
        ("events_default", cut.events),
    ]
