"""``guardrails list|show|release``: campaign sends (campaign x From domain x provider) that
a guardrail watches, holds as a canary or paused, and releasing a paused one."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from policies.text import terminal_json
from relay.cli.arguments import Parser, actor_option, add_command, config_option, positive_int
from relay.cli.common import CommandFailed, UsageError, load_config_of, with_store
from relay.cli.output import fmt, iso, print_row

if TYPE_CHECKING:
    from policies.guardrails import GuardrailRules
    from relay.store import Store
    from relay.store.guardrails import Send

__all__ = ["guardrail_release", "guardrail_show", "guardrails_list", "register"]

_LISTED = "`bounce-relay guardrails list` shows them"


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    guardrails = add_command(
        subparsers,
        "guardrails",
        "campaign sends watched for bounce and complaint rates: canaries, paused sends",
    )
    actions = guardrails.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add_command(actions, "list", "watched sends, held ones first")
    config_option(listing)
    listing.add_argument(
        "--state",
        choices=["canary", "open", "paused"],
        action="append",
        help="only sends in this state (repeatable; default: every state)",
    )
    listing.add_argument("--limit", metavar="N", type=positive_int, default=100, help="at most N")
    listing.set_defaults(run=_list)
    show = add_command(actions, "show", "one send: its state, rates now, and the trip's evidence")
    config_option(show)
    _send_arguments(show)
    show.set_defaults(run=_show)
    release = add_command(
        actions,
        "release",
        "let a paused send go on: its held deliveries are due now, judged afresh from here",
    )
    config_option(release)
    _send_arguments(release)
    release.add_argument(
        "--reason", metavar="TEXT", required=True, help="why, as the audit log records it"
    )
    actor_option(release)
    release.set_defaults(run=_release)


def _send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("campaign", metavar="CAMPAIGN", help="the campaign (guardrails list)")
    parser.add_argument(
        "--provider", required=True, help="the mailbox provider (google, microsoft, ...)"
    )
    parser.add_argument(
        "--from-domain", default="", metavar="DOMAIN", help="the From domain ('' for none)"
    )


def _send(args: argparse.Namespace) -> Send:
    from relay.store.guardrails import Send

    return Send(args.campaign, args.from_domain.lower(), args.provider.lower())


def _list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        await guardrails_list(store, args.state, args.limit, sys.stdout)
        return 0

    return with_store(args, work)


def _show(args: argparse.Namespace) -> int:
    config = load_config_of(args)

    async def work(store: Store) -> int:
        await guardrail_show(store, _send(args), config.rules.guardrails, sys.stdout)
        return 0

    return with_store(args, work, config=config)


def _release(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        # As the admin page: an audit row with no reason says nothing of why.
        raise UsageError("--reason: say why the send may go on", "the audit log records it")

    async def work(store: Store) -> int:
        await guardrail_release(store, _send(args), args.actor, args.reason, sys.stdout)
        return 0

    return with_store(args, work)


async def guardrails_list(store: Store, states: list[str] | None, limit: int, out: TextIO) -> None:
    rows = await store.list_guardrails(states, limit)
    print(
        "campaign\tfrom_domain\tprovider\tstate\tlevel\tcanary\tsince\ttripped_at\treleased_at"
        "\treason",
        file=out,
    )
    for r in rows:
        canary = f"{r.canary_sent} of {r.canary_slice}" if r.canary_slice else ""
        print_row(
            (
                r.send.campaign,
                r.send.from_domain,
                r.send.provider,
                r.state,
                r.level,
                canary,
                r.since,
                r.tripped_at,
                r.released_at,
                r.reason,
            ),
            out,
        )


async def guardrail_show(store: Store, send: Send, rules: GuardrailRules, out: TextIO) -> None:
    from relay.clock import utc_now
    from relay.delivery.guardrails import standing

    row = await store.guardrail(send)
    if row is None:
        raise CommandFailed(f"no guardrail for {send.label()}", _LISTED)
    start, counts, verdict = await standing(store, row, rules, utc_now())
    fields: list[tuple[str, object]] = [
        ("campaign", row.send.campaign),
        ("from_domain", row.send.from_domain),
        ("provider", row.send.provider),
        ("state", row.state),
        ("since", iso(row.since)),
        ("canary", f"{row.canary_sent} of {row.canary_slice} sent" if row.canary_slice else ""),
        ("tripped_at", iso(row.tripped_at)),
        ("released_at", iso(row.released_at)),
        ("released_by", row.released_by),
        ("counted_from", iso(start)),
        ("attempts", counts.attempts),
        ("delivered", counts.delivered),
        ("now", verdict.level.value),
    ]
    fields += [(f"rate.{f.rate}", f.describe()) for f in verdict.findings]
    if row.state == "paused":
        fields.append(("tripped_because", row.reason))
    for name, value in fields:
        print(f"{name:<20} {fmt(value)}", file=out)
    if row.evidence:
        print("evidence (at the trip):", file=out)
        # A remote server's replies: readable (not \u-escaped), but nothing that would
        # act on the terminal.
        print(terminal_json(row.evidence, indent=2, sort_keys=True, ensure_ascii=False), file=out)


async def guardrail_release(store: Store, send: Send, actor: str, reason: str, out: TextIO) -> None:
    from relay.clock import utc_now
    from relay.delivery.guardrails import release_send

    if not await release_send(store, send, utc_now(), actor, reason):
        raise CommandFailed(f"{send.label()} is not paused (unknown, or released already)", _LISTED)
    print(
        f"{send.label()} released (audited as {fmt(actor)}): its held deliveries are due now, "
        "and it is judged from here on by what it does after this release",
        file=out,
    )
