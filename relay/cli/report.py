"""``report``: the bounces report (``relay.reports.export``) as a table, CSV, Excel or JSON."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, TextIO

from relay.cli.arguments import Parser, add_command, config_option, positive_int
from relay.cli.common import UsageError, load_config_of, with_store
from relay.cli.output import TerminalCsv, open_output

if TYPE_CHECKING:
    from relay.reports.export import Format, Sink
    from relay.store import Store

__all__ = ["register"]

_FORMATS = ("table", "csv", "xlsx", "json")


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    report = add_command(subparsers, "report", "the bounces report (a table, CSV, Excel or JSON)")
    config_option(report)
    report.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="the start, an ISO date or date-time on a whole hour (default: 30 days before --to)",
    )
    report.add_argument(
        "--to",
        dest="end",
        metavar="DATE",
        help="the end, exclusive, same form (default: the end of the current hour)",
    )
    report.add_argument(
        "--tz", metavar="ZONE", default="UTC", help="time zone of --from/--to without an offset"
    )
    report.add_argument(
        "--campaign",
        metavar="NAME",
        action="append",
        help="only this campaign; repeat it for several (default: every campaign)",
    )
    report.add_argument(
        "--type",
        dest="kind",
        default="soft",
        choices=["soft", "hard", "all"],
        help="which bounces",
    )
    report.add_argument(
        "--group-by",
        default="from-domain",
        choices=["from-domain", "ip", "provider"],
        help="rows per sending From domain, per source IP, or per the recipients' mailbox "
        "provider (google, microsoft, yahoo, ...: by the MX host that answered)",
    )
    report.add_argument(
        "--by",
        choices=["hour", "day"],
        help="a time series instead: attempts, deliveries, bounces and the bounce rate per "
        "UTC hour or day and group (default: the report's rows of replies)",
    )
    report.add_argument(
        "--top",
        metavar="N",
        type=positive_int,
        help="only the N largest rows; with --by, the N groups with the most bounces "
        "(default: all)",
    )
    report.add_argument(
        "--format",
        choices=_FORMATS,
        help="xlsx needs -o FILE or a pipe (default: table on a terminal, else csv)",
    )
    report.add_argument("--raw", action="store_true", help="add a sample raw reply to each row")
    report.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from relay.reports import export as report

    try:
        flt = report.parse_filter(
            start=args.start,
            end=args.end,
            tz=args.tz,
            campaigns=args.campaign,
            kind=args.kind,
            group_by=args.group_by,
            top=args.top,
            raw=args.raw,
            by=args.by,
        )
    except report.ReportError as exc:
        raise UsageError(str(exc), "see `bounce-relay report --help`") from None
    fmt: Format = args.format or ("table" if sys.stdout.isatty() and not args.output else "csv")
    if fmt == "xlsx" and not args.output and sys.stdout.isatty():
        raise UsageError(
            "--format xlsx is not for a terminal", "write it to a file with -o FILE, or pipe it"
        )
    config = load_config_of(args)
    with contextlib.ExitStack() as files:
        out: Sink
        if args.output:
            out = files.enter_context(open_output(args.output, "wb"))
        elif fmt == "xlsx":
            out = sys.stdout.buffer
        else:
            # CSV on a terminal is escaped (the table escapes its cells); to a pipe it is data.
            text: TextIO = TerminalCsv.wrap(sys.stdout) if fmt == "csv" else sys.stdout
            out = report.TextSink(text)

        async def work(store: Store) -> int:
            await report.export(store, flt, fmt, out, progress=sys.stderr)
            if fmt == "json" and not args.output:
                print()  # the document has no line end of its own; a shell prompt would follow it
            return 0

        return with_store(args, work, config=config)
