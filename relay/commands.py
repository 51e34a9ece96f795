"""What the operator-facing inspection commands print: classify, queue, profile.

Each function takes parsed values (and a Store where the database is needed)
and writes to ``out``; ``cli.py`` only parses arguments and dispatches.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TextIO

from policies.addresses import normalise_address
from policies.classify import Kind, classify
from policies.replies import parse_reply
from policies.retry import preview_schedule, select_rule
from policies.templates import template_of
from relay.clock import utc_now
from relay.config import Rules
from relay.store import Store

__all__ = ["classify_lines", "classify_one", "profile_show", "queue_list", "queue_show"]


def _template(text: str) -> str:
    return template_of(text)


def _classification(
    reply_text: str, domain: str, rules: Rules, now: datetime, with_schedule: bool
) -> dict[str, Any]:
    reply = parse_reply(reply_text)
    verdict = classify(reply, domain, rules=rules.classify_rules, suppress_on=rules.suppress_on)
    result: dict[str, Any] = {
        "reply": reply_text,
        "domain": domain,
        "code": reply.code or None,
        "enhanced": reply.enhanced,
        "kind": verdict.kind.value,
        "category": verdict.category.value,
        "suppress": verdict.suppress,
        "rule": verdict.rule,
        "template": _template(reply_text),
    }
    if verdict.kind is Kind.SOFT:
        retry_rule = select_rule(rules.retry, reply, verdict, domain)
        result["rule"] = retry_rule.name
        if with_schedule:
            result["next_attempts"] = [
                t.isoformat(timespec="seconds")
                for t in preview_schedule(retry_rule, now, max_steps=10)
            ]
    return result


def classify_one(
    reply_text: str, domain: str, rules: Rules, *, as_json: bool, out: TextIO = sys.stdout
) -> None:
    result = _classification(reply_text, domain, rules, utc_now(), with_schedule=True)
    if as_json:
        print(json.dumps(result, indent=2), file=out)
        return
    for key in ("kind", "category", "suppress", "rule", "template"):
        print(f"{key:9} {result[key]}", file=out)
    for i, at in enumerate(result.get("next_attempts", []), start=2):
        print(f"attempt {i} at {at}", file=out)


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
        except (ValueError, KeyError, TypeError) as exc:
            print(json.dumps({"line": number, "error": f"bad input: {exc}"}), file=out)
            status = 1
            continue
        result = _classification(reply_text, domain, rules, now, with_schedule=False)
        print(json.dumps(result), file=out)
    return status


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value).replace("\n", " ")


async def queue_list(store: Store, state: str | None, limit: int, out: TextIO) -> None:
    rows = await store.list_deliveries(state, limit)
    print("id\tqueue_id\trecipient\tstate\tattempts\tnext_attempt_at\tlast_reply", file=out)
    for r in rows:
        print(
            "\t".join(
                _fmt(r[k])
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
        print(f"{key:17} {_fmt(value)}", file=out)
    print("events:", file=out)
    for e in await store.events_of_delivery(delivery_id):
        print(
            f"  {_fmt(e['occurred_at'])} {e['type']:12} attempt={_fmt(e['attempt'])} "
            f"code={_fmt(e['code'])} category={_fmt(e['category'])} rule={_fmt(e['rule'])} "
            f"ip={_fmt(e['source_ip'])} {_fmt(e['reply_text'])[:160]}",
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
    print(f"address   {key}", file=out)
    print(f"status    {status}", file=out)
    if profile:
        print(f"changed   {_fmt(profile['status_changed_at'])}", file=out)
        if profile["suppression_reason"]:
            print(
                f"suppressed {_fmt(profile['suppressed_at'])} ({profile['suppression_source']})"
                f": {profile['suppression_reason']}",
                file=out,
            )
    print(
        "deliveries " + (", ".join(f"{s}={n}" for s, n in deliveries.items()) or "none"), file=out
    )
    print("bounces:", file=out)
    for b in bounces:
        print(
            f"  {_fmt(b['occurred_at'])} {b['type']:12} {_fmt(b['code'])} "
            f"{_fmt(b['category'])} ip={_fmt(b['source_ip'])} "
            f"campaign={_fmt(b['campaign'])} {_fmt(b['reply_text'])[:160]}",
            file=out,
        )
    return True
