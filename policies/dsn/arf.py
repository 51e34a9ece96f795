"""The ``arf`` format: feedback reports (RFC 5965) and complaints sent as a plain
message.
"""

from __future__ import annotations

from policies.dsn.fields import _address_field, _field_pairs
from policies.dsn.mime import _MESSAGE_TYPES, _header_value, _Part
from policies.dsn.patterns import _ADDR_RE, MAX_RECIPIENTS
from policies.dsn.values import BounceRecipient


def _from_arf(report: _Part, returned: _Part | None) -> tuple[BounceRecipient, ...]:
    fields = _field_pairs(report.text())
    feedback = next((v.strip().lower() for n, v in fields if n == "feedback-type"), None)
    rcpts = [a for n, v in fields if n == "original-rcpt-to" if (a := _address_field(v))]
    rcpts = rcpts[:MAX_RECIPIENTS]
    if not rcpts and returned is not None:
        headers = (
            returned.children[0].headers
            if returned.ctype in _MESSAGE_TYPES and returned.children
            else _field_pairs(returned.text())
        )
        to = next((v for n, v in headers if n == "to"), "")
        rcpts = _ADDR_RE.findall(_header_value(to))[:1]
    if not rcpts:
        return (BounceRecipient(None, "complaint", None, None, "", None, feedback),)
    unique = list(dict.fromkeys(rcpts))
    return tuple(BounceRecipient(a, "complaint", None, None, "", None, feedback) for a in unique)


def _bare_complaint(root: _Part) -> BounceRecipient | None:
    """A complaint sent as a plain message: an ARF ``Feedback-Type`` in the
    header itself, or a mail client's one-click unsubscribe notice (Apple
    Mail's ``X-Apple-Unsubscribe: true``). The complainer is the sender."""
    feedback = root.get("feedback-type") or root.get("x-feedback-type")
    if feedback is None and (root.get("x-apple-unsubscribe") or "").strip().lower() == "true":
        feedback = "opt-out"
    if not feedback:
        return None
    rcpts = _ADDR_RE.findall(_header_value(root.get("original-rcpt-to") or root.get("from") or ""))
    return BounceRecipient(
        rcpts[0] if rcpts else None, "complaint", None, None, "", None, feedback.strip().lower()
    )
