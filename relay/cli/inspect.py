"""What the operator-facing inspection commands print: classify, queue, profile.

Each function takes parsed values (and a Store where the database is needed)
and writes to ``out``; ``cli.py`` only parses arguments and dispatches.

Everything stored was written by someone else (a remote server's reply, a message's
headers, another administrator's reason): every value goes out through ``fmt`` or
``policies.text.printable``, every JSON document through ``terminal_json``, so no control,
bidi or other format character reaches the operator's terminal raw and no field can add a
column or a row to tab-separated output.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from policies.addresses import (
    AddressError,
    ascii_domain,
    domain_of,
    normalise_address,
    validate_address,
)
from policies.classify import Kind
from policies.hints import ProviderHint
from policies.outcome import Decision
from policies.retry import format_duration
from policies.smtp_reply import Reply, parse_reply
from policies.suppression_file import read_suppression_csv
from policies.text import printable, terminal_json
from policies.verdict import Attempt, NotJudged, Reported, verdict
from relay.clock import utc_now
from relay.config import Rules
from relay.reports.export import neutralise
from relay.store import Store

__all__ = [
    "TerminalCsv",
    "classify_lines",
    "classify_one",
    "fmt",
    "profile_show",
    "queue_list",
    "queue_show",
]


# How many next attempts `classify` shows (the schedule's last step repeats until max_age).
_PREVIEW_STEPS = 10


def _classification(
    reply_text: str, domain: str, rules: Rules, now: datetime, with_schedule: bool
) -> dict[str, Any]:
    """The relay's whole verdict (``policies.verdict``) for this reply at a first attempt
    now: the function the delivery worker calls, with the facts of a fresh address (no
    open incident, no probation, not allowlisted)."""
    reply = parse_reply(reply_text)
    decision = verdict(reply, Attempt(domain, now), rules)
    found = decision.verdict
    result: dict[str, Any] = {
        "reply": reply_text,
        "domain": domain,
        "decided_at": _iso(now),
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
        "slow_down_until": _iso(decision.slow_down_until),
        "next_attempt_at": _iso(decision.next_attempt_at),
        "other_source_ip": decision.other_source_ip,
        "gives_up": decision.give_up_reason,
    }
    if found.kind is Kind.SOFT and with_schedule:
        result["next_attempts"], result["gives_up"] = _schedule(reply, domain, rules, decision, now)
    return result


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat(timespec="seconds")


def _schedule(
    reply: Reply, domain: str, rules: Rules, first: Decision, now: datetime
) -> tuple[list[str], str | None]:
    """The next attempts if the same reply came back every time (at most ten), and why it
    would give up: each step is the worker's own verdict at that attempt."""
    times: list[str] = []
    decision, attempt = first, 1
    while decision.next_attempt_at is not None and len(times) < _PREVIEW_STEPS:
        at = decision.next_attempt_at
        times.append(at.isoformat(timespec="seconds"))
        attempt += 1
        decision = verdict(reply, Attempt(domain, at, attempt, first_failure_at=now), rules)
    return times, decision.give_up_reason


def _hint(hint: ProviderHint | None) -> dict[str, Any] | None:
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
    status = 0
    now = utc_now()
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
    return status


def fmt(value: Any, limit: int | None = None) -> str:
    """A value as one field of command output: times to the second, None as empty, text
    through ``printable`` (escaped, one line, cut at ``limit`` characters)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else printable(str(value), limit)


class TerminalCsv:
    """A text stream for CSV written to a terminal: each ``write`` is one row (the csv
    module writes a row per call), its CRLF kept and everything else escaped, a line break
    inside a quoted cell included. Written to a file or a pipe, CSV is data and keeps its
    bytes; only a terminal needs this."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        row, end = (text[:-2], "\r\n") if text.endswith("\r\n") else (text, "")
        self.out.write(printable(row) + end)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    @classmethod
    def wrap(cls, out: TextIO) -> TextIO:
        """``out`` itself unless it is a terminal."""
        return cast(TextIO, cls(out)) if out.isatty() else out


async def queue_list(store: Store, state: str | None, limit: int, out: TextIO) -> None:
    rows = await store.list_deliveries(state, limit)
    print("id\tqueue_id\trecipient\tstate\tattempts\tnext_attempt_at\tlast_reply", file=out)
    for r in rows:
        print(
            "\t".join(
                fmt(r[k])
                for k in (
                    "id",
                    "queue_id",
                    "recipient",
                    "state",
                    "attempts",
                    "next_attempt_at",
                    "last_reply",
                )
            ),
            file=out,
        )


async def queue_show(store: Store, delivery_id: int, out: TextIO) -> bool:
    row = await store.delivery_by_id(delivery_id)
    if row is None:
        return False
    for key, value in row.items():
        print(f"{key:17} {fmt(value)}", file=out)
    print("events:", file=out)
    for e in await store.events_of_delivery(delivery_id):
        print(
            f"  {fmt(e['occurred_at'])} {fmt(e['type']):12} attempt={fmt(e['attempt'])} "
            f"code={fmt(e['code'])} category={fmt(e['category'])} rule={fmt(e['rule'])} "
            f"ip={fmt(e['source_ip'])} {fmt(e['reply_text'], 160)}",
            file=out,
        )
    return True


async def profile_show(store: Store, address: str, out: TextIO) -> bool:
    key = normalise_address(address)
    profile = await store.profile(key)
    deliveries = await store.delivery_counts_of_address(key)
    bounces = await store.bounces_of_address(key)
    if profile is None and not deliveries and not bounces:
        return False
    status = profile["status"] if profile else "active"
    print(f"address   {fmt(key)}", file=out)
    print(f"status    {fmt(status)}", file=out)
    if profile:
        print(f"changed   {fmt(profile['status_changed_at'])}", file=out)
        if profile["suppression_reason"]:
            print(
                f"suppressed {fmt(profile['suppressed_at'])} "
                f"({fmt(profile['suppression_source'])}): {fmt(profile['suppression_reason'])}",
                file=out,
            )
    print(
        "deliveries " + (", ".join(f"{fmt(s)}={n}" for s, n in deliveries.items()) or "none"),
        file=out,
    )
    print("bounces:", file=out)
    for b in bounces:
        print(
            f"  {fmt(b['occurred_at'])} {fmt(b['type']):12} {fmt(b['code'])} "
            f"{fmt(b['category'])} ip={fmt(b['source_ip'])} "
            f"campaign={fmt(b['campaign'])} {fmt(b['reply_text'], 160)}",
            file=out,
        )
    return True


async def suppression_list(store: Store, args: Any, out: TextIO) -> int:
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            print(f"bounce-relay: --since {args.since!r} is not an ISO date", file=sys.stderr)
            return 2
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    if args.limit <= 0 or args.page <= 0:
        print("bounce-relay: --limit and --page must be positive", file=sys.stderr)
        return 2
    rows = await store.list_suppressions(
        args.search, args.reason, since, args.limit, (args.page - 1) * args.limit
    )
    for row in rows:
        print(
            f"{fmt(row.address)}\t{fmt(row.source)}\t{fmt(row.created_at)}\t{fmt(row.reason)}",
            file=out,
        )
    if len(rows) == args.limit:
        print(f"(more: --page {args.page + 1})", file=sys.stderr)
    return 0


def valid_key(address: str) -> str | None:
    try:
        validate_address(address)
    except AddressError as exc:
        print(f"bounce-relay: {exc}", file=sys.stderr)
        return None
    return normalise_address(address)


async def suppression_add(store: Store, address: str, reason: str, actor: str) -> int:
    key = valid_key(address)
    if key is None:
        return 1
    added = await store.add_suppression(
        key, reason, "manual", profile_status="suppressed", actor=actor
    )
    print(f"{fmt(key)}: {'suppressed' if added else 'already suppressed (unchanged)'}")
    return 0


async def suppression_remove(store: Store, address: str, reason: str, actor: str) -> int:
    key = valid_key(address)
    if key is None:
        return 1
    removed = await store.remove_suppression(key, actor, reason)
    if removed is None:
        print(f"bounce-relay: {fmt(key)} is not on the suppression list", file=sys.stderr)
        return 1
    print(
        f"{fmt(key)}: removed (was {fmt(removed.source)} since {fmt(removed.created_at)}: "
        f"{fmt(removed.reason)}); its profile is active again, audited as {fmt(actor)}"
    )
    return 0


async def suppression_import(
    store: Store, lines: list[str], name: str, reason: str, actor: str
) -> int:
    parsed = read_suppression_csv(lines, reason)
    for number, why in parsed.errors:
        print(f"{fmt(name)}:{number}: {fmt(why)}", file=sys.stderr)
    added = await store.import_suppressions(parsed.entries, actor, name) if parsed.entries else 0
    print(
        f"{fmt(name)}: {added} added, {len(parsed.entries) - added} already listed, "
        f"{parsed.duplicates} duplicate lines, {len(parsed.errors)} bad lines"
    )
    return 1 if parsed.errors else 0


async def suppression_export(store: Store, output: str | None) -> int:
    target = (
        Path(output).open("w", encoding="utf-8", newline="")  # noqa: SIM115, ASYNC230
        if output
        else TerminalCsv.wrap(sys.stdout)
    )
    try:
        writer = csv.writer(target, lineterminator="\r\n")
        writer.writerow(["address", "reason", "source", "created_at"])
        async for row in store.iter_suppressions():
            writer.writerow(
                [neutralise(row.address), neutralise(row.reason), row.source, fmt(row.created_at)]
            )
    finally:
        if output:
            target.close()
    return 0


async def audit_show(store: Store, limit: int, out: TextIO) -> int:
    for row in await store.audit_log(limit):
        detail = terminal_json(row["detail"]) if row["detail"] else ""
        print(
            f"{fmt(row['occurred_at'])}\t{fmt(row['actor'])}\t{fmt(row['action'])}\t"
            f"{fmt(row['subject'])}\t{fmt(row['reason'])}\t{detail}",
            file=out,
        )
    return 0


def dsn_parse(paths: Iterable[str], rules: Rules, *, out: TextIO, err: TextIO) -> int:
    """``dsn parse``: one JSON line per recipient result found in each bounce message.

    An unrecognised message prints nothing; a file that cannot be read or is not a mail
    message is reported on ``err`` and makes the exit status 2 (the others still print).
    """
    from policies.dsn import MalformedBounce, NotAMessage, parse_bounce

    status = 0
    for path in paths:
        try:
            raw = Path(path).read_bytes()
            parsed = parse_bounce(raw)
        except OSError as exc:
            print(f"bounce-relay: {fmt(path)}: cannot read: {fmt(exc.strerror or exc)}", file=err)
            status = 2
            continue
        except NotAMessage as exc:
            print(f"bounce-relay: {fmt(path)}: not a mail message ({fmt(exc)})", file=err)
            status = 2
            continue
        except MalformedBounce as exc:
            print(f"bounce-relay: {fmt(path)}: cannot be parsed safely ({fmt(exc)})", file=err)
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
