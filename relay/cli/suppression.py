"""``suppression list|add|remove|why|import|export|audit``: the suppression list, an
address's evidence, and the administrators' acts on it."""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import asdict
from datetime import datetime
from typing import IO, TYPE_CHECKING, TextIO

from policies.addresses import AddressError, normalise_address, validate_address
from policies.text import terminal_json
from relay.cli.arguments import (
    Parser,
    actor_option,
    add_command,
    address,
    config_option,
    iso_datetime,
    positive_int,
    sending_domain,
)
from relay.cli.common import CommandFailed, UsageError, store_command, with_store
from relay.cli.output import TerminalCsv, fmt, json_default, open_output, read_lines

if TYPE_CHECKING:
    from relay.store import Store

__all__ = [
    "audit_show",
    "register",
    "suppression_add",
    "suppression_export",
    "suppression_import",
    "suppression_list",
    "suppression_remove",
    "suppression_why",
]

_WHY = "`bounce-relay suppression why {}` shows what applies to it"


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    suppression = add_command(subparsers, "suppression", "the suppression list")
    actions = suppression.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = add_command(actions, "list", "the list, newest first, a page at a time")
    config_option(listing)
    listing.add_argument("--search", metavar="TEXT", help="only addresses holding this text")
    listing.add_argument(
        "--reason",
        metavar="TEXT",
        help="only this source (hard_bounce, manual, import) or reason text",
    )
    listing.add_argument(
        "--since", metavar="DATE", type=iso_datetime, help="only entries since this ISO date (UTC)"
    )
    listing.add_argument("--limit", metavar="N", type=positive_int, default=100, help="rows a page")
    listing.add_argument("--page", metavar="P", type=positive_int, default=1, help="which page")
    listing.set_defaults(run=_list)

    for name, help_text, run in (
        ("add", "suppress an address by hand (audited)", _add),
        ("remove", "let an address receive mail again (audited)", _remove),
    ):
        change = add_command(actions, name, help_text)
        config_option(change)
        change.add_argument("address", metavar="ADDRESS", type=address, help="the address")
        change.add_argument(
            "--reason", metavar="TEXT", required=True, help="why, as the audit log records it"
        )
        change.add_argument(
            "--scope",
            metavar="DOMAIN",
            type=sending_domain,
            help="only for mail from this sending (MAIL FROM) domain (default: for all mail)",
        )
        actor_option(change)
        change.set_defaults(run=run)

    why = add_command(
        actions, "why", "every entry that applies to an address and every bounce behind it"
    )
    config_option(why)
    why.add_argument("address", metavar="ADDRESS", type=address, help="the address")
    why.add_argument("--json", action="store_true", help="print one JSON document")
    why.set_defaults(run=_why)

    load = add_command(
        actions, "import", "add the addresses of a CSV file, address[,reason] a line (audited)"
    )
    config_option(load)
    load.add_argument("file", metavar="FILE.csv", help="UTF-8 CSV; a header line is allowed")
    load.add_argument(
        "--reason", metavar="TEXT", default="imported", help="for lines without a reason"
    )
    actor_option(load)
    load.set_defaults(run=_import)

    dump = add_command(actions, "export", "the whole list as CSV: address,reason,source,created_at")
    config_option(dump)
    dump.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    dump.set_defaults(run=_export)

    audit = add_command(actions, "audit", "administrators' acts, newest first")
    config_option(audit)
    audit.add_argument("--limit", metavar="N", type=positive_int, default=50, help="at most N")
    audit.set_defaults(run=_audit)


@store_command
async def _list(args: argparse.Namespace, store: Store) -> int:
    await suppression_list(
        store, args.search, args.reason, args.since, args.limit, args.page, sys.stdout
    )
    return 0


@store_command
async def _add(args: argparse.Namespace, store: Store) -> int:
    if args.scope:
        await scoped_add(store, args.address, args.scope, args.reason, args.actor, sys.stdout)
        return 0
    return await suppression_add(store, args.address, args.reason, args.actor)


@store_command
async def _remove(args: argparse.Namespace, store: Store) -> int:
    if args.scope:
        await scoped_remove(store, args.address, args.scope, args.reason, args.actor, sys.stdout)
        return 0
    return await suppression_remove(store, args.address, args.reason, args.actor)


@store_command
async def _why(args: argparse.Namespace, store: Store) -> int:
    await suppression_why(store, args.address, sys.stdout, as_json=args.json)
    return 0


def _import(args: argparse.Namespace) -> int:
    lines = read_lines(args.file)  # before the database: a bad path is quick to hear about
    return with_store(
        args,
        lambda store: suppression_import(store, lines, args.file, args.reason, args.actor),
    )


def _export(args: argparse.Namespace) -> int:
    if not args.output:
        terminal = TerminalCsv.wrap(sys.stdout)
        return with_store(args, lambda store: suppression_export(store, terminal))
    with open_output(args.output, "w") as out:  # before the database, like report -o
        return with_store(args, lambda store: suppression_export(store, out))


@store_command
async def _audit(args: argparse.Namespace, store: Store) -> int:
    await audit_show(store, args.limit, sys.stdout)
    return 0


# -- the list ------------------------------------------------------------------------------------


async def suppression_list(
    store: Store,
    search: str | None,
    reason: str | None,
    since: datetime | None,
    limit: int,
    page: int,
    out: TextIO,
) -> None:
    rows = await store.list_suppressions(search, reason, since, limit, (page - 1) * limit)
    for row in rows:
        print(
            f"{fmt(row.address)}\t{fmt(row.source)}\t{fmt(row.created_at)}\t{fmt(row.reason)}",
            file=out,
        )
    if len(rows) == limit:
        print(f"(more: --page {page + 1})", file=sys.stderr)


def _key(text: str) -> str:
    """The list's key for an address (its A-label, lower-cased domain form)."""
    try:
        validate_address(text)
    except AddressError as exc:
        raise UsageError(str(exc), "give an address such as ann@example.org") from None
    return normalise_address(text)


async def suppression_add(
    store: Store, address: str, reason: str, actor: str, out: TextIO = sys.stdout
) -> int:
    key = _key(address)
    added = await store.add_suppression(
        key, reason, "manual", profile_status="suppressed", actor=actor
    )
    print(f"{fmt(key)}: {'suppressed' if added else 'already suppressed (unchanged)'}", file=out)
    return 0


async def suppression_remove(
    store: Store, address: str, reason: str, actor: str, out: TextIO = sys.stdout
) -> int:
    key = _key(address)
    removed = await store.remove_suppression(key, actor, reason)
    if removed is None:
        raise CommandFailed(f"{key} is not on the suppression list", _WHY.format(key))
    print(
        f"{fmt(key)}: removed (was {fmt(removed.source)} since {fmt(removed.created_at)}: "
        f"{fmt(removed.reason)}); its profile is active again, audited as {fmt(actor)}",
        file=out,
    )
    return 0


async def scoped_add(
    store: Store, address: str, domain: str, reason: str, actor: str, out: TextIO
) -> None:
    key = _key(address)
    added = await store.add_scoped_suppression(key, domain, reason, actor)
    print(
        f"{fmt(key)}: {'suppressed' if added else 'already suppressed (unchanged)'} for mail"
        f" from {fmt(domain)}",
        file=out,
    )


async def scoped_remove(
    store: Store, address: str, domain: str, reason: str, actor: str, out: TextIO
) -> None:
    key = _key(address)
    if not await store.remove_scoped_suppression(key, domain, actor, reason):
        raise CommandFailed(f"{key} is not suppressed for mail from {domain}", _WHY.format(key))
    print(
        f"{fmt(key)}: mail from {fmt(domain)} may go to it again (audited as {fmt(actor)})",
        file=out,
    )


async def suppression_import(
    store: Store, lines: list[str], name: str, reason: str, actor: str
) -> int:
    """Each bad line is reported as ``FILE:LINE: why`` (the good ones are kept); exit 1 if
    any was bad."""
    from policies.suppression_file import read_suppression_csv

    parsed = read_suppression_csv(lines, reason)
    for number, why in parsed.errors:
        print(f"{fmt(name)}:{number}: {fmt(why)}", file=sys.stderr)
    added = await store.import_suppressions(parsed.entries, actor, name) if parsed.entries else 0
    print(
        f"{fmt(name)}: {added} added, {len(parsed.entries) - added} already listed, "
        f"{parsed.duplicates} duplicate lines, {len(parsed.errors)} bad lines"
    )
    return 1 if parsed.errors else 0


async def suppression_export(store: Store, out: IO[str]) -> int:
    """The whole list as CSV, formula-neutralised (``relay.reports.export.neutralise``)."""
    from relay.reports.export import neutralise

    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["address", "reason", "source", "created_at"])
    async for row in store.iter_suppressions():
        writer.writerow(
            [neutralise(row.address), neutralise(row.reason), row.source, fmt(row.created_at)]
        )
    return 0


async def audit_show(store: Store, limit: int, out: TextIO) -> None:
    for row in await store.audit_log(limit):
        detail = terminal_json(row.detail) if row.detail else ""
        print(
            f"{fmt(row.occurred_at)}\t{fmt(row.actor)}\t{fmt(row.action)}\t"
            f"{fmt(row.subject)}\t{fmt(row.reason)}\t{detail}",
            file=out,
        )


# -- why -----------------------------------------------------------------------------------------


async def suppression_why(store: Store, address: str, out: TextIO, *, as_json: bool) -> None:
    """Every entry that applies to the address and every bounce behind it."""
    evidence = await store.suppression_evidence(_key(address))
    if as_json:
        document = {
            "address": evidence.address,
            # Each row's keys are the query's columns, in its order.
            "entries": [asdict(e) for e in evidence.entries],
            "bounces": [asdict(b) for b in evidence.bounces],
            "audit": [asdict(a) for a in evidence.audit],
        }
        print(terminal_json(document, default=json_default, indent=2), file=out)
        return
    print(f"address  {fmt(evidence.address)}", file=out)
    if not evidence.entries:
        print("entries  none: mail to this address goes out", file=out)
    for e in evidence.entries:
        kind = fmt(e.kind) if e.scope is None else f"{fmt(e.kind)} ({fmt(e.scope)})"
        until = f" until {fmt(e.until)}" if e.until else ""
        print(
            f"entry    {kind}: {fmt(e.source)} since {fmt(e.created_at)}{until}: {fmt(e.reason)}",
            file=out,
        )
    print(f"bounces  {len(evidence.bounces)} recorded (newest first)", file=out)
    for b in evidence.bounces:
        incident = f" incident={b.incident_id} ({fmt(b.incident_state)})" if b.incident_id else ""
        print(
            f"  {fmt(b.occurred_at)} {fmt(b.type)} via {fmt(b.source)}"
            f" code={fmt(b.code)} {fmt(b.enhanced)} category={fmt(b.category)}"
            f" rule={fmt(b.rule)} suppress={fmt(b.suppress)}"
            f" ip={fmt(b.source_ip)} destination={fmt(b.destination)}"
            f" campaign={fmt(b.campaign)} queue_id={fmt(b.queue_id)}{incident}",
            file=out,
        )
        print(f"      reply:    {fmt(b.reply_text, 300)}", file=out)
        print(f"      template: {fmt(b.template, 300)}", file=out)
    for a in evidence.audit:
        detail = f" {terminal_json(a.detail, default=json_default)}" if a.detail else ""
        print(
            f"audit    {fmt(a.occurred_at)} {fmt(a.actor)} {fmt(a.action)}: "
            f"{fmt(a.reason)}{detail}",
            file=out,
        )
