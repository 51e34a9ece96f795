"""The ``bounce-relay`` command.

    bounce-relay serve                 run the relay (applies migrations first)
    bounce-relay check-config          validate config.toml, naming every bad key
    bounce-relay migrate               apply the database schema
    bounce-relay hash-password         print a hash for [[smtp.users]] / [admin]
    bounce-relay suppression list|add  look at / extend the global suppression list
    bounce-relay suppression why ADDR  every entry and bounce behind an address
    bounce-relay incidents list|show|release   provider incidents
    bounce-relay allowlist list|add|remove     never suppressed automatically
    bounce-relay classify REPLY        how a reply is classified and resent (or --jsonl)
    bounce-relay classify --replay     what a rules change would change in recorded bounces
    bounce-relay queue list|show|retry|purge   the delivery queue
    bounce-relay profile show ADDRESS  an address's status, bounces and deliveries
    bounce-relay dsn parse FILE.eml... what the relay reads from bounce messages (JSON lines)

Config comes from --config, else $BOUNCE_RELAY_CONFIG, else ./config.toml.
Exit codes: 0 ok, 1 the command failed (message on stderr), 2 bad usage or config.
Stored text is printed escaped: control, bidi and other format characters show as
\\x1b, \\u202e, ... and a backslash as \\\\ (policies/text.py says which and why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

from policies.addresses import AddressError, ascii_domain, validate_address
from policies.states import DeliveryState
from policies.text import printable, printable_lines
from relay.config import Config, Rules, config_path, load_config
from relay.errors import ConfigErrors, RelayError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="bounce-relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_help = "config file (default: $BOUNCE_RELAY_CONFIG, else ./config.toml)"
    parser.add_argument("--config", help=config_help)
    # --config is accepted before or after the command; SUPPRESS keeps a
    # subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[common], formatter_class=fmt, **kwargs)

    command("serve", "run the relay")
    command("check-config", "validate the config file")
    command("migrate", "apply the database schema")
    command("demo", "see it work: relay, simulated upstream, sample campaign, report")
    hp = command("hash-password", "hash a password (read from stdin or a prompt)")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin")
    _add_suppression_arguments(command("suppression", "the global suppression list"), common)
    _add_policy_arguments(command, common)
    cl = command("classify", "classify an SMTP reply with the configured rules")
    cl.add_argument("reply", nargs="?", help='e.g. "452 4.2.2 Mailbox full"')
    cl.add_argument("--domain", default="", help="recipient domain (rules may match on it)")
    cl.add_argument("--json", action="store_true", help="print JSON")
    cl.add_argument(
        "--jsonl",
        action="store_true",
        help='read {"reply": ..., "domain": ...} lines from stdin; with --replay: print '
        "one JSON object per changed bounce",
    )
    _add_replay_arguments(cl)
    qu = command("queue", "the delivery queue")
    qu_sub = qu.add_subparsers(dest="action", required=True, metavar="ACTION")
    ql = qu_sub.add_parser(
        "list", help="deliveries, soonest due first", parents=[common], formatter_class=fmt
    )
    ql.add_argument("--state", choices=[s.value for s in DeliveryState])
    ql.add_argument("--limit", type=int, default=100)
    for name, help_text in (
        ("show", "one delivery and its events"),
        ("retry", "make a queued delivery due now"),
        ("purge", "cancel a queued delivery (audited)"),
    ):
        action = qu_sub.add_parser(name, help=help_text, parents=[common], formatter_class=fmt)
        action.add_argument("id", type=int, help="delivery id (from queue list)")
        if name == "purge":
            action.add_argument("--reason", required=True)
            action.add_argument("--actor", default=getpass.getuser())
    _add_report_arguments(command("report", "the bounces report (table, CSV or Excel)"))
    pr = command("profile", "address profiles")
    pr_sub = pr.add_subparsers(dest="action", required=True, metavar="ACTION")
    ps = pr_sub.add_parser(
        "show", help="status, bounces, deliveries", parents=[common], formatter_class=fmt
    )
    ps.add_argument("address")
    dsn = command("dsn", "bounce messages (DSN, non-standard bounces, feedback reports)")
    dsn_sub = dsn.add_subparsers(dest="action", required=True, metavar="ACTION")
    dp = dsn_sub.add_parser(
        "parse",
        help="print one JSON line per recipient result found in each file",
        parents=[common],
        formatter_class=fmt,
    )
    dp.add_argument("files", nargs="+", metavar="FILE.eml")
    return parser


def _add_replay_arguments(cl: argparse.ArgumentParser) -> None:
    cl.add_argument(
        "--replay",
        action="store_true",
        help="run the bounces recorded in --since..--until through the rules of --config "
        "(or --rules) and print what would change",
    )
    cl.add_argument(
        "--since",
        default="7d",
        help="with --replay: a duration back from now (7d, 12h) or an "
        "ISO date/time (UTC without an offset)",
    )
    cl.add_argument("--until", help="with --replay: end, exclusive, same forms (None: now)")
    cl.add_argument(
        "--rules",
        metavar="RULES.toml",
        help="classify with the rules of this file (with --replay: the database still comes "
        "from --config)",
    )


def _add_report_arguments(rp: argparse.ArgumentParser) -> None:
    rp.add_argument(
        "--from", dest="start", help="start, ISO date or datetime (default: --to - 30d)"
    )
    rp.add_argument("--to", dest="end", help="end, exclusive (default: end of this hour)")
    rp.add_argument("--tz", default="UTC", help="time zone of --from/--to without an offset")
    rp.add_argument("--campaign", action="append", help="only this campaign (repeatable)")
    rp.add_argument("--type", dest="kind", default="soft", choices=["soft", "hard", "all"])
    rp.add_argument("--group-by", default="from-domain", choices=["from-domain", "ip"])
    rp.add_argument("--top", type=int, help="keep the N largest rows")
    rp.add_argument(
        "--format", choices=["table", "csv", "xlsx"], help="default: table on a terminal, else csv"
    )
    rp.add_argument("--raw", action="store_true", help="add a sample raw reply per row")
    rp.add_argument("-o", "--output", help="write to this file")


def _add_suppression_arguments(
    sup: argparse.ArgumentParser, common: argparse.ArgumentParser
) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    sub = sup.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[common], formatter_class=fmt)

    def actor(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--actor", default=getpass.getuser(), help="who does it (the audit log says so)"
        )

    listing = action("list", "newest first, a page at a time")
    listing.add_argument("--search", help="substring of the address")
    listing.add_argument("--reason", help="source (hard_bounce, manual, import) or reason text")
    listing.add_argument("--since", help="only entries since this ISO date or datetime (UTC)")
    listing.add_argument("--limit", type=int, default=100, help="rows per page")
    listing.add_argument("--page", type=int, default=1)
    scope_help = "only for mail from this sending (MAIL FROM) domain; default: global"
    add = action("add", "suppress an address by hand (audited)")
    add.add_argument("address")
    add.add_argument("--reason", required=True)
    add.add_argument("--scope", metavar="DOMAIN", help=scope_help)
    actor(add)
    remove = action("remove", "let an address receive mail again (audited)")
    remove.add_argument("address")
    remove.add_argument("--reason", required=True)
    remove.add_argument("--scope", metavar="DOMAIN", help=scope_help)
    actor(remove)
    why = action("why", "every entry that applies to an address and every bounce behind it")
    why.add_argument("address")
    why.add_argument("--json", action="store_true", help="print JSON")
    load = action("import", "add the addresses of a CSV file: address[,reason] per line")
    load.add_argument("file")
    load.add_argument("--reason", default="imported", help="for lines without one")
    actor(load)
    dump = action("export", "the whole list as CSV: address,reason,source,created_at")
    dump.add_argument("-o", "--output", help="file (default: stdout)")
    audit = action("audit", "administrators' acts, newest first")
    audit.add_argument("--limit", type=int, default=50)


def _add_policy_arguments(
    command: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    who = "who does it (the audit log says so)"
    inc = command(
        "incidents", "provider incidents: runs of one reply that say nothing of recipients"
    )
    inc_sub = inc.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = inc_sub.add_parser("list", help="newest first", parents=[common], formatter_class=fmt)
    listing.add_argument("--state", choices=["open", "closed", "released"])
    listing.add_argument("--limit", type=int, default=50)
    show = inc_sub.add_parser("show", help="one incident", parents=[common], formatter_class=fmt)
    show.add_argument("id", type=int)
    release = inc_sub.add_parser(
        "release",
        help="end it: lift every suppression its replies made, retry its deferred mail now",
        parents=[common],
        formatter_class=fmt,
    )
    release.add_argument("id", type=int)
    release.add_argument("--reason", required=True)
    release.add_argument("--actor", default=getpass.getuser(), help=who)
    allow = command("allowlist", "addresses and domains never suppressed automatically")
    allow_sub = allow.add_subparsers(dest="action", required=True, metavar="ACTION")
    allow_sub.add_parser("list", help="every entry", parents=[common], formatter_class=fmt)
    for name, help_text in (
        ("add", "allowlist an address or a domain (audited)"),
        ("remove", "take an entry off the allowlist (audited)"),
    ):
        entry = allow_sub.add_parser(name, help=help_text, parents=[common], formatter_class=fmt)
        entry.add_argument("entry", metavar="ADDRESS_OR_DOMAIN")
        entry.add_argument("--reason", required=True)
        entry.add_argument("--actor", default=getpass.getuser(), help=who)


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(
        f"{printable(str(config.path))}: ok ({len(config.rules.routes)} route(s), "
        f"{len(config.rules.pools)} pool(s), {len(config.rules.retry.rules)} retry rule(s), "
        f"{len(config.rules.classify_rules)} classify rule(s))"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from relay.ops.app import serve
    from relay.ops.logging import configure_logging
    from relay.ops.supervisor import process_role, supervise

    # A reload asked for while starting would otherwise kill the process (SIGHUP's default);
    # the new config is read at start anyway. serve() installs the real handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = _load(args)
    configure_logging(config.log_level)
    role = process_role()
    if role is None and config.smtp.processes > 1:
        if config.smtp.listen[1] != 0:
            return asyncio.run(supervise(config))
        print(
            "bounce-relay: smtp.listen port 0 cannot be shared by several processes; "
            "running one (set a port to use [smtp] processes)",
            file=sys.stderr,
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config, role))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency on Linux): the same asyncio API with
    less Python around every socket operation; $BOUNCE_RELAY_LOOP=asyncio opts out."""
    if os.environ.get("BOUNCE_RELAY_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _with_store(
    config: Config, work: Callable[[Any], Awaitable[int]], *, migrate: bool = True
) -> int:
    from relay.ops.app import open_store

    async with AsyncExitStack() as stack:
        store = await open_store(config, stack, migrate=migrate)
        return await work(store)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")

    async def work(store: Any) -> int:
        applied = await store.migrate()
        for name in applied:
            print(f"applied {name}")
        print("schema is up to date")
        return 0

    return asyncio.run(_with_store(config, work, migrate=False))


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from relay.passwords import hash_password

    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass()
    if not password:
        print("bounce-relay: empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


async def _scoped(store: Any, args: argparse.Namespace) -> int:
    from relay.cli import inspect as commands
    from relay.cli import policy as policy_commands

    domain = policy_commands.address_or_domain(args.scope)
    if domain is None or "@" in domain:
        print(f"bounce-relay: --scope wants a sending domain, got {args.scope!r}", file=sys.stderr)
        return 2
    key = commands.valid_key(args.address)
    if key is None:
        return 1
    change = policy_commands.scoped_add if args.action == "add" else policy_commands.scoped_remove
    return await change(store, key, domain, args.reason, args.actor, sys.stdout)


def _cmd_incidents(args: argparse.Namespace) -> int:
    from relay.cli import policy as policy_commands
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")

    async def work(store: Any) -> int:
        if args.action == "list":
            return await policy_commands.incidents_list(store, args.state, args.limit, sys.stdout)
        if args.action == "show":
            return await policy_commands.incident_show(store, args.id, sys.stdout)
        return await policy_commands.incident_release(
            store, args.id, args.actor, args.reason, sys.stdout
        )

    return asyncio.run(_with_store(config, work))


def _cmd_allowlist(args: argparse.Namespace) -> int:
    from relay.cli import policy as policy_commands
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")

    async def work(store: Any) -> int:
        if args.action == "list":
            return await policy_commands.allowlist_list(store, sys.stdout)
        change = (
            policy_commands.allowlist_add
            if args.action == "add"
            else policy_commands.allowlist_remove
        )
        return await change(store, args.entry, args.reason, args.actor, sys.stdout)

    return asyncio.run(_with_store(config, work))


def _cmd_suppression(args: argparse.Namespace) -> int:
    from relay.cli import inspect as commands
    from relay.cli import policy as policy_commands
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")
    if args.action == "import":
        try:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as exc:
            print(
                f"bounce-relay: cannot read {printable(args.file)}: {printable(str(exc))}",
                file=sys.stderr,
            )
            return 2

    async def work(store: Any) -> int:
        if args.action == "list":
            return await commands.suppression_list(store, args, sys.stdout)
        if args.action == "why":
            return await policy_commands.suppression_why(
                store, args.address, sys.stdout, as_json=args.json
            )
        if args.action in ("add", "remove") and args.scope:
            return await _scoped(store, args)
        if args.action == "add":
            return await commands.suppression_add(store, args.address, args.reason, args.actor)
        if args.action == "remove":
            return await commands.suppression_remove(store, args.address, args.reason, args.actor)
        if args.action == "import":
            return await commands.suppression_import(
                store, lines, args.file, args.reason, args.actor
            )
        if args.action == "audit":
            return await commands.audit_show(store, args.limit, sys.stdout)
        return await commands.suppression_export(store, args.output)

    return asyncio.run(_with_store(config, work))


def _cmd_classify(args: argparse.Namespace) -> int:
    from relay.cli.inspect import classify_lines, classify_one

    if args.replay:
        return _classify_replay(args)
    if args.until:
        print("bounce-relay: --until goes with --replay", file=sys.stderr)
        return 2
    rules = _rules(args, _load(args))
    if args.jsonl:
        return classify_lines(sys.stdin, rules)
    if not args.reply:
        print("bounce-relay: classify needs a REPLY argument or --jsonl", file=sys.stderr)
        return 2
    try:
        domain = ascii_domain(args.domain) if args.domain else ""
    except AddressError as exc:
        print(f"bounce-relay: --domain {printable(args.domain)}: {exc.why}", file=sys.stderr)
        return 2
    classify_one(args.reply, domain, rules, as_json=args.json)
    return 0


def _rules(args: argparse.Namespace, config: Config) -> Rules:
    """--rules FILE: the rules to try come from there; the database still from --config."""
    return load_config(Path(args.rules)).rules if args.rules else config.rules


def _classify_replay(args: argparse.Namespace) -> int:
    from relay.clock import utc_now
    from relay.ops.logging import configure_logging
    from relay.reports import replay

    if args.reply or args.domain or args.json:
        print(
            "bounce-relay: classify --replay reads recorded bounces: no REPLY, --domain or --json",
            file=sys.stderr,
        )
        return 2
    now = utc_now()
    try:
        since = replay.parse_when(args.since, now, "--since")
        until = replay.parse_when(args.until, now, "--until") if args.until else now
    except replay.ReplayError as exc:
        print(f"bounce-relay classify: {exc}", file=sys.stderr)
        return 2
    if since >= until:
        print(
            f"bounce-relay classify: --since {since.isoformat(timespec='seconds')} is not before "
            f"--until {until.isoformat(timespec='seconds')}",
            file=sys.stderr,
        )
        return 2
    config = _load(args)
    rules = _rules(args, config)
    configure_logging("warning")

    async def work(store: Any) -> int:
        await replay.run_replay(
            store, rules, since, until, sys.stdout, as_jsonl=args.jsonl, progress=sys.stderr
        )
        return 0

    return asyncio.run(_with_store(config, work))


def _cmd_dsn(args: argparse.Namespace) -> int:
    from relay.cli.inspect import dsn_parse

    return dsn_parse(args.files, _load(args).rules, out=sys.stdout, err=sys.stderr)


def _cmd_queue(args: argparse.Namespace) -> int:
    from relay.cli import inspect as commands
    from relay.clock import utc_now
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")

    async def work(store: Any) -> int:
        if args.action == "list":
            await commands.queue_list(store, args.state, args.limit, sys.stdout)
            return 0
        if args.action == "show":
            found = await commands.queue_show(store, args.id, sys.stdout)
        elif args.action == "retry":
            found = await store.retry_delivery_now(args.id, utc_now())
            if found:
                print(f"delivery {args.id} is due now")
        else:
            found = await store.purge_delivery(args.id, args.actor, args.reason)
            if found:
                print(f"delivery {args.id} cancelled (audited as {printable(args.actor)})")
        if not found:
            print(f"bounce-relay: no queued delivery {args.id}", file=sys.stderr)
        return 0 if found else 1

    return asyncio.run(_with_store(config, work))


def _cmd_profile(args: argparse.Namespace) -> int:
    from relay.cli.inspect import profile_show
    from relay.ops.logging import configure_logging

    config = _load(args)
    configure_logging("warning")

    try:
        validate_address(args.address)
    except AddressError as exc:
        print(f"bounce-relay: {printable(args.address)}: {exc.why}", file=sys.stderr)
        return 2

    async def work(store: Any) -> int:
        if await profile_show(store, args.address, sys.stdout):
            return 0
        print(f"bounce-relay: nothing known about {printable(args.address)}", file=sys.stderr)
        return 1

    return asyncio.run(_with_store(config, work))


def _cmd_report(args: argparse.Namespace) -> int:
    from relay.cli.inspect import TerminalCsv
    from relay.ops.logging import configure_logging
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
        )
    except report.ReportError as exc:
        print(f"bounce-relay report: {exc}", file=sys.stderr)
        return 2
    fmt: report.Format = args.format or (
        "table" if sys.stdout.isatty() and not args.output else "csv"
    )
    if fmt == "xlsx" and not args.output and sys.stdout.isatty():
        print("bounce-relay report: --format xlsx needs -o FILE (or a pipe)", file=sys.stderr)
        return 2
    config = _load(args)
    configure_logging("warning")
    with contextlib.ExitStack() as files:
        out: report.Sink
        if args.output:
            out = files.enter_context(open(args.output, "wb"))
        elif fmt == "xlsx":
            out = sys.stdout.buffer
        else:
            # CSV on a terminal is escaped (the table escapes its cells); to a pipe it is data.
            text: TextIO = TerminalCsv.wrap(sys.stdout) if fmt == "csv" else sys.stdout
            out = report.TextSink(text)

        async def work(store: Any) -> int:
            await report.export(store, flt, fmt, out, progress=sys.stderr)
            return 0

        return asyncio.run(_with_store(config, work))


def _cmd_demo(args: argparse.Namespace) -> int:
    from relay.cli.demo import run_demo
    from relay.ops.logging import configure_logging

    configure_logging("warning")
    rows = asyncio.run(run_demo())
    return 0 if rows else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
    "report": _cmd_report,
    "classify": _cmd_classify,
    "dsn": _cmd_dsn,
    "queue": _cmd_queue,
    "profile": _cmd_profile,
    "serve": _cmd_serve,
    "check-config": _cmd_check_config,
    "migrate": _cmd_migrate,
    "hash-password": _cmd_hash_password,
    "suppression": _cmd_suppression,
    "incidents": _cmd_incidents,
    "allowlist": _cmd_allowlist,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigErrors as exc:
        print(f"bounce-relay: {printable_lines(str(exc))}", file=sys.stderr)
        return 2
    except RelayError as exc:
        # A store error may quote what the database said about a stored value.
        print(f"bounce-relay: {printable_lines(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bounce-relay ... | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
