"""What the bounce-intelligence commands print: incidents, suppression why, the allowlist.

Like ``commands.py``: parsed values in, text out; ``cli.py`` parses and dispatches. And
like there, every stored value is printed through ``fmt`` (``policies.text.printable``) and
every JSON document through ``terminal_json``: entries, replies, templates, reasons and
actors were written by remote servers or other administrators.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, TextIO

from policies.addresses import AddressError, ascii_domain, normalise_address, validate_address
from policies.text import terminal_json
from relay.cli.inspect import fmt as _fmt
from relay.clock import utc_now
from relay.store import Store

__all__ = [
    "allowlist_add",
    "allowlist_list",
    "allowlist_remove",
    "incident_release",
    "incident_show",
    "incidents_list",
    "suppression_why",
]


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


# -- incidents ---------------------------------------------------------------------------------


async def incidents_list(store: Store, state: str | None, limit: int, out: TextIO) -> int:
    rows = await store.list_incidents(state, limit)
    print(
        "id\tstate\topened_at\tlast_seen_at\tsource_ip\tby\tdestination\trecipients\treplies"
        "\tlifted\tcategory\ttemplate",
        file=out,
    )
    for r in rows:
        print(
            "\t".join(
                _fmt(r[k])
                for k in (
                    "id",
                    "state",
                    "opened_at",
                    "last_seen_at",
                    "source_ip",
                    "scope",
                    "destination",
                    "recipients",
                    "replies",
                    "lifted",
                    "category",
                    "template",
                )
            ),
            file=out,
        )
    return 0


async def incident_show(store: Store, incident_id: int, out: TextIO) -> int:
    row = await store.incident(incident_id)
    if row is None:
        print(f"bounce-relay: no incident {incident_id}", file=sys.stderr)
        return 1
    for key, value in row.items():
        print(f"{key:20} {_fmt(value)}", file=out)
    return 0


async def incident_release(
    store: Store, incident_id: int, actor: str, reason: str, out: TextIO
) -> int:
    released = await store.release_incident(incident_id, utc_now(), actor, reason)
    if released is None:
        print(
            f"bounce-relay: no incident {incident_id} to release (unknown, or released already;"
            " `bounce-relay incidents list` shows them)",
            file=sys.stderr,
        )
        return 1
    lifted, due_now = released
    print(
        f"incident {incident_id} released (audited as {_fmt(actor)}): {lifted} suppressions lifted,"
        f" profiles active again; {due_now} deferred deliveries due now",
        file=out,
    )
    return 0


# -- suppression why ---------------------------------------------------------------------------


async def suppression_why(store: Store, address: str, out: TextIO, *, as_json: bool) -> int:
    """Every entry that applies to the address and every bounce behind it."""
    try:
        validate_address(address)
    except AddressError as exc:
        print(f"bounce-relay: {exc}", file=sys.stderr)
        return 2
    evidence = await store.suppression_evidence(normalise_address(address))
    if as_json:
        document = {
            "address": evidence.address,
            "entries": evidence.entries,
            "bounces": evidence.bounces,
            "audit": evidence.audit,
        }
        print(terminal_json(document, default=_json_default, indent=2), file=out)
        return 0
    print(f"address  {_fmt(evidence.address)}", file=out)
    if not evidence.entries:
        print("entries  none: mail to this address goes out", file=out)
    for e in evidence.entries:
        kind = _fmt(e["kind"]) if e["scope"] is None else f"{_fmt(e['kind'])} ({_fmt(e['scope'])})"
        until = f" until {_fmt(e['until'])}" if e["until"] else ""
        print(
            f"entry    {kind}: {_fmt(e['source'])} since {_fmt(e['created_at'])}{until}: "
            f"{_fmt(e['reason'])}",
            file=out,
        )
    print(f"bounces  {len(evidence.bounces)} recorded (newest first)", file=out)
    for b in evidence.bounces:
        incident = (
            f" incident={b['incident_id']} ({_fmt(b['incident_state'])})"
            if b["incident_id"]
            else ""
        )
        print(
            f"  {_fmt(b['occurred_at'])} {_fmt(b['type'])} via {_fmt(b['source'])}"
            f" code={_fmt(b['code'])} {_fmt(b['enhanced'])} category={_fmt(b['category'])}"
            f" rule={_fmt(b['rule'])} suppress={_fmt(b['suppress'])}"
            f" ip={_fmt(b['source_ip'])} destination={_fmt(b['destination'])}"
            f" campaign={_fmt(b['campaign'])} queue_id={_fmt(b['queue_id'])}{incident}",
            file=out,
        )
        print(f"      reply:    {_fmt(b['reply_text'], 300)}", file=out)
        print(f"      template: {_fmt(b['template'], 300)}", file=out)
    for a in evidence.audit:
        detail = f" {terminal_json(a['detail'], default=_json_default)}" if a["detail"] else ""
        print(
            f"audit    {_fmt(a['occurred_at'])} {_fmt(a['actor'])} {_fmt(a['action'])}: "
            f"{_fmt(a['reason'])}{detail}",
            file=out,
        )
    return 0


# -- allowlist and scoped entries --------------------------------------------------------------


def address_or_domain(text: str) -> str | None:
    """An address key, or a bare domain (every address in it); None (and a message) if bad."""
    text = text.strip()
    try:
        if "@" in text:
            validate_address(text)
            return normalise_address(text)
        validate_address(f"postmaster@{text}")
        return ascii_domain(text)
    except AddressError as exc:
        print(f"bounce-relay: {text!r} is neither an address nor a domain: {exc}", file=sys.stderr)
        return None


async def allowlist_list(store: Store, out: TextIO) -> int:
    for row in await store.allowlist():
        print(
            f"{_fmt(row['entry'])}\t{_fmt(row['created_at'])}\t{_fmt(row['actor'])}\t"
            f"{_fmt(row['reason'])}",
            file=out,
        )
    return 0


async def allowlist_add(store: Store, text: str, reason: str, actor: str, out: TextIO) -> int:
    entry = address_or_domain(text)
    if entry is None:
        return 2
    added = await store.allow(entry, reason, actor)
    print(
        f"{_fmt(entry)}: {'allowlisted' if added else 'already allowlisted (unchanged)'}; automatic"
        " suppressions no longer hold for it (an administrator's entries still do)",
        file=out,
    )
    return 0


async def allowlist_remove(store: Store, text: str, reason: str, actor: str, out: TextIO) -> int:
    entry = address_or_domain(text)
    if entry is None:
        return 2
    if not await store.disallow(entry, reason, actor):
        print(f"bounce-relay: {_fmt(entry)} is not on the allowlist", file=sys.stderr)
        return 1
    print(f"{_fmt(entry)}: removed from the allowlist (audited as {_fmt(actor)})", file=out)
    return 0


async def scoped_add(
    store: Store, key: str, domain: str, reason: str, actor: str, out: TextIO
) -> int:
    added = await store.add_scoped_suppression(key, domain, reason, actor)
    print(
        f"{_fmt(key)}: {'suppressed' if added else 'already suppressed (unchanged)'} for mail"
        f" from {_fmt(domain)}",
        file=out,
    )
    return 0


async def scoped_remove(
    store: Store, key: str, domain: str, reason: str, actor: str, out: TextIO
) -> int:
    if not await store.remove_scoped_suppression(key, domain, actor, reason):
        print(
            f"bounce-relay: {_fmt(key)} is not suppressed for mail from {_fmt(domain)}",
            file=sys.stderr,
        )
        return 1
    print(
        f"{_fmt(key)}: mail from {_fmt(domain)} may go to it again (audited as {_fmt(actor)})",
        file=out,
    )
    return 0
