"""``dsn parse``: what the relay reads from bounce messages (DSN, non-standard bounces,
feedback reports), decided by the same verdict its bounce intake asks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from policies.addresses import domain_of
from policies.text import terminal_json
from relay.cli.arguments import Parser, add_command, config_option
from relay.cli.common import load_config_of
from relay.cli.output import fmt
from relay.config import Rules

__all__ = ["dsn_parse", "register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    dsn = add_command(
        subparsers, "dsn", "bounce messages (DSN, non-standard bounces, feedback reports)"
    )
    actions = dsn.add_subparsers(dest="action", required=True, metavar="ACTION")
    parse = add_command(
        actions, "parse", "print one JSON line per recipient result found in each file"
    )
    config_option(parse)
    parse.add_argument(
        "files",
        nargs="+",
        metavar="FILE.eml",
        help="bounce messages as received, headers and body (the config gives the rules)",
    )
    parse.set_defaults(run=_parse)


def _parse(args: argparse.Namespace) -> int:
    return dsn_parse(args.files, load_config_of(args).rules, out=sys.stdout, err=sys.stderr)


def dsn_parse(paths: Iterable[str], rules: Rules, *, out: TextIO, err: TextIO) -> int:
    """``dsn parse``: one JSON line per recipient result found in each bounce message.

    An unrecognised message prints nothing; a file that cannot be read or is not a mail
    message is reported on ``err`` and makes the exit status 2 (the others still print).
    """
    # Here, not at the top: the parser and the verdict would slow every command's start.
    from policies.dsn import MalformedBounce, NotAMessage, parse_bounce
    from policies.verdict import NotJudged, Reported, verdict

    status = 0
    for path in paths:
        try:
            raw = Path(path).read_bytes()
            parsed = parse_bounce(raw)
        except OSError as exc:
            print(
                f"bounce-relay: {fmt(path)}: cannot read: {fmt(exc.strerror or exc)}; "
                "check the path",
                file=err,
            )
            status = 2
            continue
        except NotAMessage as exc:
            print(
                f"bounce-relay: {fmt(path)}: not a mail message ({fmt(exc)}); give the bounce "
                "as received, headers and body",
                file=err,
            )
            status = 2
            continue
        except MalformedBounce as exc:
            print(
                f"bounce-relay: {fmt(path)}: cannot be parsed safely ({fmt(exc)}); the relay "
                "refuses such a message too",
                file=err,
            )
            status = 2
            continue
        if parsed is None:
            continue
        for result in parsed.recipients:
            domain = domain_of(result.recipient or "")
            facts = Reported.of(result, domain, loop=parsed.loop)
            decision = verdict(result.reply(), facts, rules)
            not_judged = decision.reason if isinstance(decision, NotJudged) else None
            judged = decision if not isinstance(decision, NotJudged) else None
            if not_judged is not None:
                kind = category = None
                suppress = False
            elif judged is None:
                kind, category, suppress = "delivered", "delivered", False
            elif result.action == "complaint":
                kind, category, suppress = "complaint", "complaint", True
            else:
                kind = judged.verdict.kind.value
                category = judged.verdict.category.value
                suppress = judged.suppress
            line = {
                "file": path,
                "recipient": result.recipient,
                "action": result.action,
                "status": result.status,
                "code": result.code,
                "diagnostic": result.diagnostic,
                "remote_mta": result.remote_mta,
                "answered": result.answered_command,
                "kind": kind,
                "category": category,
                "suppress": suppress,
                "not_suppressed": judged.not_suppressed if judged else None,
                "event": judged.event.value if judged else None,
                "template": judged.template if judged else None,
                "not_judged": not_judged,
                "feedback_type": result.feedback_type,
                "format": parsed.format,
                "loop": parsed.loop,
            }
            # ensure_ascii off keeps UTF-8 text readable; terminal_json escapes what would
            # still reach the terminal raw (DEL, C1, bidi and other format characters).
            print(terminal_json(line, ensure_ascii=False), file=out)
    return status
