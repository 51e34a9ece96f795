"""Amazon SES notifications (JSON, possibly in an SNS envelope), read among the ``text``
bounces.
"""

from __future__ import annotations

import json
import re

from policies.dsn.answered import _answered_in
from policies.dsn.fields import (
    _action_of,
    _address_field,
    _code_of,
    _enhanced_of,
    _fold,
    _status_of,
    _strip_type,
)
from policies.dsn.patterns import MAX_RECIPIENTS
from policies.dsn.values import BounceRecipient


def _aws_notification(text: str) -> tuple[BounceRecipient, ...] | None:
    """Amazon SES notifications (JSON, possibly wrapped in an SNS envelope)."""
    start = text.find("{")
    if start < 0 or not re.search(r'\\?"(?:bounce|complaint|delivery)\\?"\s*:', text):
        return None
    try:
        data = json.loads(text[start : text.rfind("}") + 1], strict=False)
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"], strict=False)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    out: list[BounceRecipient] = []
    bounce = data.get("bounce")
    complaint = data.get("complaint")
    delivery = data.get("delivery")
    if isinstance(bounce, dict):
        delayed = str(bounce.get("bounceType", "")).lower() == "transient"
        for item in _listed(bounce.get("bouncedRecipients")):
            if not isinstance(item, dict):
                continue
            diagnostic = _fold(_strip_type(str(item.get("diagnosticCode") or "")))
            status = _status_of(str(item.get("status") or ""), diagnostic)
            code = _code_of(diagnostic)
            action = str(item.get("action") or ("delayed" if delayed else "failed"))
            out.append(
                BounceRecipient(
                    _address_field(str(item.get("emailAddress") or "")),
                    _action_of(action, status, code),
                    status,
                    code,
                    diagnostic,
                    _strip_type(str(bounce.get("remoteMtaIp") or "")) or None,
                    answered_command=_answered_in(diagnostic),
                )
            )
    elif isinstance(complaint, dict):
        kind = complaint.get("complaintFeedbackType")
        for item in _listed(complaint.get("complainedRecipients")):
            if isinstance(item, dict):
                out.append(
                    BounceRecipient(
                        _address_field(str(item.get("emailAddress") or "")),
                        "complaint",
                        None,
                        None,
                        "",
                        None,
                        str(kind).lower() if kind else None,
                    )
                )
    elif isinstance(delivery, dict):
        diagnostic = _fold(str(delivery.get("smtpResponse") or ""))
        code = _code_of(diagnostic)
        status = _enhanced_of(diagnostic)
        host = delivery.get("remoteMtaIp") or delivery.get("reportingMTA")
        for address in _listed(delivery.get("recipients")):
            out.append(
                BounceRecipient(
                    _address_field(str(address)),
                    "delivered",
                    status,
                    code,
                    diagnostic,
                    str(host) if host else None,
                )
            )
    return tuple(out) or None


def _listed(value: object) -> list[object]:
    """A JSON list of recipients, its first MAX_RECIPIENTS (anything else: none)."""
    return value[:MAX_RECIPIENTS] if isinstance(value, list) else []
