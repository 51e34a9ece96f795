"""``classify``: the relay's whole verdict for a reply (one, or JSON lines with --jsonl),
and ``classify --replay``: what a rules change would change in the recorded bounces."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from policies.text import printable, terminal_json
from relay.cli.arguments import Parser, add_command, config_option, recipient_domain
from relay.cli.common import CommandFailed, UsageError, load_config_of, load_rules_file, with_store
from relay.cli.output import iso
from relay.clock import utc_now
from relay.config import Config, Rules

if TYPE_CHECKING:
    from policies.hints import ProviderHint
    from policies.outcome import Decision
    from policies.smtp_reply import Reply
    from relay.store import Store

__all__ = ["classify_lines", "classify_one", "register"]

# How many next attempts `classify` shows (the schedule's last step repeats until max_age).
_PREVIEW_STEPS = 10
_DEFAULT_SINCE = "7d"


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    command = add_command(
        subparsers,
        "classify",
        "the relay's verdict on an SMTP reply under the configured rules; with --replay, "
        "what a rules change would change in the recorded bounces",
    )
    config_option(command)
    command.add_argument(
        "reply",
        nargs="?",
        metavar="REPLY",
        help='the reply, quoted: "452 4.2.2 Mailbox full" (or --jsonl, or --replay)',
    )
    command.add_argument(
        "--domain",
        type=recipient_domain,
        help="the recipient's domain (rules and provider hints may match on it)",
    )
    command.add_argument("--json", action="store_true", help="print one JSON document")
    command.add_argument(
        "--jsonl",
        action="store_true",
        help='read {"reply": ..., "domain": ...} lines from stdin, print one JSON line each; '
        "with --replay: print one JSON line per changed bounce, then the summary",
    )
    command.add_argument(
        "--rules",
        metavar="RULES.toml",
        help="classify with the rules of this file (with --replay: the database still comes "
        "from --config)",
    )
    command.add_argument(
        "--replay",
        action="store_true",
        help="run the bounces recorded from --since to --until through the rules of --config "
        "(or --rules) and print what would change",
    )
    command.add_argument(
        "--since",
        metavar="WHEN",
        help="with --replay: the start, a duration back from now (7d, 12h) or an ISO date or "
        f"time, UTC without an offset (default: {_DEFAULT_SINCE})",
    )
    command.add_argument(
        "--until",
        metavar="WHEN",
        help="with --replay: the end, exclusive, in the same forms (default: now)",
    )
    command.set_defaults(run=_classify)


def _classify(args: argparse.Namespace) -> int:
    if args.replay:
        return _replay(args)
    for option in ("since", "until"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option} goes with --replay", "add --replay or drop it")
    config = load_config_of(args)
    rules = _rules(args, config)
    if args.jsonl:
        return classify_lines(sys.stdin, rules)
    if not args.reply:
        raise UsageError(
            "classify needs a REPLY argument or --jsonl",
            'quote the reply: bounce-relay classify "550 5.1.1 User unknown"',
        )
    classify_one(args.reply, args.domain or "", rules, as_json=args.json)
    return 0


def _rules(args: argparse.Namespace, config: Config) -> Rules:
    """--rules FILE: the rules to try come from there; the database still from --config."""
    return load_rules_file(args.rules).rules if args.rules else config.rules


def _replay(args: argparse.Namespace) -> int:
    from relay.reports import replay

    if args.reply or args.domain or args.json:
        raise UsageError(
            "classify --replay reads recorded bounces: no REPLY, --domain or --json",
            "drop them (--jsonl prints JSON lines)",
        )
    now = utc_now()
    try:
        since = replay.parse_when(args.since or _DEFAULT_SINCE, now, "--since")
        until = replay.parse_when(args.until, now, "--until") if args.until else now
    except replay.ReplayError as exc:
        raise UsageError(str(exc), "see `bounce-relay classify --help`") from None
    if since >= until:
        raise UsageError(
            f"--since {since.isoformat(timespec='seconds')} is not before "
            f"--until {until.isoformat(timespec='seconds')}",
            "give a --since earlier than --until",
        )
    config = load_config_of(args)
    rules = _rules(args, config)

    async def work(store: Store) -> int:
        await replay.run_replay(
            store, rules, since, until, sys.stdout, as_jsonl=args.jsonl, progress=sys.stderr
        )
        return 0

    return with_store(args, work, config=config)


# -- one reply -----------------------------------------------------------------------------------


def _classification(
    reply_text: str, domain: str, rules: Rules, now: datetime, with_schedule: bool
) -> dict[str, Any]:
    """The relay's whole verdict (``policies.verdict``) for this reply at a first attempt
    now: the function the delivery worker calls, with the facts of a fresh address (no
    open incident, no probation, not allowlisted)."""
    # Here, not at the top: the verdict's modules would slow every command's start.
    from policies.classify import Kind
    from policies.smtp_reply import parse_reply
    from policies.verdict import Attempt, verdict

    reply = parse_reply(reply_text)
    decision = verdict(reply, Attempt(domain, now), rules)
    found = decision.verdict
    result: dict[str, Any] = {
        "reply": reply_text,
        "domain": domain,
        "decided_at": iso(now),
        "code": reply.code or None,
        "enhanced": reply.enhanced,
        "kind": found.kind.value,
        "category": found.category.value,
        "event": decision.event.value,
        "state": decision.state.value,
        "suppress": decision.suppress,
        "not_suppressed": decision.not_suppressed,
        "cancels_queued": decision.cancel_queued,
        "rule": decision.rule,
        "template": decision.template,
        "hint": _hint(decision.hint),
        "slow_down_until": iso(decision.slow_down_until),
        "next_attempt_at": iso(decision.next_attempt_at),
        "other_source_ip": decision.other_source_ip,
        "gives_up": decision.give_up_reason,
    }
    if found.kind is Kind.SOFT and with_schedule:
        result["next_attempts"], result["gives_up"] = _schedule(reply, domain, rules, decision, now)
    return result


def _schedule(
    reply: Reply, domain: str, rules: Rules, first: Decision, now: datetime
) -> tuple[list[str], str | None]:
    """The next attempts if the same reply came back every time (at most ten), and why it
    would give up: each step is the worker's own verdict at that attempt."""
    from policies.verdict import Attempt, verdict

    times: list[str] = []
    decision, attempt = first, 1
    while decision.next_attempt_at is not None and len(times) < _PREVIEW_STEPS:
        at = decision.next_attempt_at
        times.append(at.isoformat(timespec="seconds"))
        attempt += 1
        decision = verdict(reply, Attempt(domain, at, attempt, first_failure_at=now), rules)
    return times, decision.give_up_reason


def _hint(hint: ProviderHint | None) -> dict[str, Any] | None:
    from policies.retry import format_duration

    if hint is None:
        return None
    return {
        "name": hint.name,
        "provider": hint.provider,
        "retry_after": format_duration(hint.retry_after),
        "other_ip": hint.other_ip,
        "slow_down": hint.slow_down,
        "why": hint.why,
    }


def classify_one(
    reply_text: str, domain: str, rules: Rules, *, as_json: bool, out: TextIO = sys.stdout
) -> None:
    result = _classification(reply_text, domain, rules, utc_now(), with_schedule=True)
    if as_json:
        print(terminal_json(result, indent=2), file=out)
        return
    for key in ("kind", "category", "suppress", "rule", "template"):
        print(f"{key:9} {printable(str(result[key]))}", file=out)
    if result["not_suppressed"] and result["kind"] != "delivered":
        print(f"why not   {printable(result['not_suppressed'])}", file=out)
    if result["suppress"] and not result["cancels_queued"]:
        print("dry run   queued mail to the address is not cancelled ([policy] dry_run)", file=out)
    print(f"then      {result['event']}, delivery {result['state']}", file=out)
    hint = result["hint"]
    if hint is not None:
        asks = [f"retry after {hint['retry_after']}"]
        asks += ["slow down"] * hint["slow_down"] + ["another source IP"] * hint["other_ip"]
        print(f"hint      {hint['name']} ({hint['provider']}): {', '.join(asks)}", file=out)
        print(f"          {printable(hint['why'])}", file=out)
    if result["slow_down_until"]:
        print(f"throttle  {printable(domain)} paused until {result['slow_down_until']}", file=out)
    if result["other_source_ip"]:
        print("source    the next attempt leaves from another IP of the pool", file=out)
    for i, at in enumerate(result.get("next_attempts", []), start=2):
        print(f"attempt {i} at {at}", file=out)
    if result.get("gives_up"):
        print(f"gives up  {printable(result['gives_up'])}", file=out)


def classify_lines(lines: Iterable[str], rules: Rules, *, out: TextIO = sys.stdout) -> int:
    """--jsonl: one {"reply", "domain"} object per input line -> one result per line.

    A bad line gets {"line": n, "error": ...} and the rest go on; exit 1 if any was bad.
    """
    from policies.addresses import ascii_domain

    status = 0
    now = utc_now()
    number = 0
    try:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                reply_text = item["reply"]
                if not isinstance(reply_text, str):
                    raise TypeError("reply must be a string")
                domain = str(item.get("domain") or "")
                domain = ascii_domain(domain) if domain else ""
            except (ValueError, KeyError, TypeError) as exc:
                print(terminal_json({"line": number, "error": f"bad input: {exc}"}), file=out)
                status = 1
                continue
            result = _classification(reply_text, domain, rules, now, with_schedule=False)
            print(terminal_json(result), file=out)
    except UnicodeDecodeError:
        raise CommandFailed(
            f"stdin is not UTF-8 after line {number}", "give JSON lines in UTF-8"
        ) from None
    return status
