"""What ``parse_bounce`` returns: a ``ParsedBounce`` with a ``BounceRecipient`` per
recipient.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.dsn.fields import _find_code, _reply_line
from policies.smtp_reply import Reply, parse_reply


@dataclass(frozen=True)
class BounceRecipient:
    """One bounced (or delayed, delivered, complained-about) recipient."""

    recipient: str | None
    action: str
    status: str | None
    code: int | None
    diagnostic: str
    remote_mta: str | None
    feedback_type: str | None = None
    # The SMTP command the remote's reply answered, as the bounce tells it: "CONNECT",
    # "HELO" (EHLO too), "MAIL", "RCPT", "DATA" (the DATA command or the end of the data);
    # None when the bounce does not say. A recipient refused after DATA was accepted at RCPT.
    answered_command: str | None = None

    @property
    def shown_text(self) -> str:
        """The words a report shows for this recipient: the remote's own (the status when
        it gave none); for a complaint, the feedback type."""
        if self.action == "complaint":
            return f"feedback report: {self.feedback_type or 'unspecified'}"
        return self.diagnostic or self.status or self.action

    def reply(self) -> Reply:
        """A ``Reply`` for ``classify``: ``code`` as found, the enhanced code
        of the diagnostic parsed from its reply code on (the code may follow
        "host X said:"), else ``status``; ``text`` is the diagnostic. Without
        a code, a ``code=0`` reply carrying the status and the words."""
        try:
            return self._reply()
        except Exception:  # a classification input must never raise
            return Reply(code=0, enhanced=self.status, text=self.diagnostic)

    def _reply(self) -> Reply:
        if self.code is None or not 100 <= self.code <= 599:
            return Reply(code=0, enhanced=self.status, text=self.diagnostic or self.status or "")
        enhanced = None
        found = _find_code(self.diagnostic)
        if found is not None and found[0] == self.code:
            parsed = parse_reply(_reply_line(self.diagnostic, found[1]))
            enhanced = parsed.enhanced if parsed.code == self.code else None
        return Reply(code=self.code, enhanced=enhanced or self.status, text=self.diagnostic)


@dataclass(frozen=True)
class ParsedBounce:
    """What one bounce message says, recipient by recipient."""

    format: str
    recipients: tuple[BounceRecipient, ...]
    returned_headers: str
    loop: bool
