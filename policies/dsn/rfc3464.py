"""The ``rfc3464`` format: the per-recipient field groups of a
``message/delivery-status`` part, a group without the remote's words completed from the
human-readable part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from policies.dsn.answered import _answered_in, _Transcript
from policies.dsn.fields import (
    _action_of,
    _address_field,
    _code_of,
    _field_pairs,
    _fold,
    _host,
    _status_of,
    _strip_type,
)
from policies.dsn.mime import _Part
from policies.dsn.patterns import MAX_RECIPIENTS
from policies.dsn.prose import _cut_section, _text_blocks
from policies.dsn.values import BounceRecipient


def _groups(text: str) -> list[list[tuple[str, str]]]:
    """Field groups separated by blank lines; a group that names a second
    recipient without a blank line in between is split there."""
    groups: list[list[tuple[str, str]]] = []
    for block in re.split(r"\n[ \t]*\n", text):
        current: list[tuple[str, str]] = []
        for name, value in _field_pairs(block):
            if name in ("final-recipient", "original-recipient") and any(
                n == name for n, _ in current
            ):
                groups.append(current)
                current = []
            current.append((name, value))
        if current:
            groups.append(current)
    return groups


def _from_dsn_parts(parts: list[_Part], text: str) -> tuple[BounceRecipient, ...]:
    groups: list[list[tuple[str, str]]] = []
    for part in parts:
        groups.extend(_groups(part.text().lstrip("\n")))
    found = _from_groups(groups)
    return _enrich(found, text)


def _from_groups(groups: Iterable[list[tuple[str, str]]]) -> list[BounceRecipient]:
    out: list[BounceRecipient] = []
    for group in groups:
        if len(out) >= MAX_RECIPIENTS:
            break
        fields: dict[str, str] = {}
        for name, value in group:
            fields.setdefault(name, value)
        if not any(k in fields for k in ("final-recipient", "original-recipient", "action")):
            continue  # the per-message group (Reporting-MTA is not the remote MTA)
        if "status" not in fields and "action" not in fields and "diagnostic-code" not in fields:
            continue
        recipient = _address_field(fields.get("final-recipient")) or _address_field(
            fields.get("original-recipient")
        )
        diagnostic = _fold(_strip_type(fields.get("diagnostic-code", "")))
        status = _status_of(fields.get("status", ""), diagnostic)
        code = _code_of(diagnostic)
        action = _action_of(fields.get("action", ""), status, code)
        remote = _host(_strip_type(fields.get("remote-mta", "")))
        out.append(BounceRecipient(recipient, action, status, code, diagnostic, remote))
    return out


def _enrich(found: list[BounceRecipient], text: str) -> tuple[BounceRecipient, ...]:
    """DSN groups that lack a diagnostic borrow the human-readable part's
    words for the same address (Sendmail, Exchange put the reply only there).
    And each group learns the command its reply answered, which RFC 3464 has no
    field for: from its diagnostic, else from the human-readable part (Postfix
    says it there, Sendmail and Courier in their session transcript)."""
    section, _ = _cut_section(text)
    blocks = _text_blocks(section, [r.recipient for r in found if r.recipient])
    transcript = _Transcript(section)
    out = []
    for r in found:
        info = blocks.get((r.recipient or "").lower())
        answered = (
            _answered_in(r.diagnostic)
            or (info.answered if info else None)
            or transcript.answered(r.recipient, r.action)
        )
        if r.diagnostic or info is None or not info.diagnostic:
            out.append(replace(r, answered_command=answered))
            continue
        status = r.status
        if status is None or (
            status.endswith(".0.0") and info.status and info.status[0] == status[0]
        ):
            status = info.status or status
        out.append(
            BounceRecipient(
                r.recipient,
                r.action
                if r.action != "failed" or status is None or status[0] != "4"
                else "delayed",
                status,
                info.code,
                info.diagnostic,
                r.remote_mta or info.remote_mta,
                answered_command=answered,
            )
        )
    return tuple(out)
