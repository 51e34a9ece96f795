"""The ``text`` format: whether a message without a report is a bounce at all, and its
recipients as its words name them (RFC 3464 fields quoted as text, an SES notification,
else the heuristics of the human-readable report).
"""

from __future__ import annotations

import re

from policies.dsn.answered import _Transcript
from policies.dsn.fields import _field_pairs
from policies.dsn.mime import _Part
from policies.dsn.patterns import _ADDR_RE, _DAEMON, _DAEMON_FROM, _DSN_FIELD, MAX_RECIPIENTS
from policies.dsn.prose import _Block, _block_info, _recipient_lines, _text_blocks
from policies.dsn.returned import _bounce_subject
from policies.dsn.rfc3464 import _enrich, _from_groups, _groups
from policies.dsn.ses import _aws_notification
from policies.dsn.values import BounceRecipient

_BODY_PHRASE = re.compile(
    r"could ?n[o']t be delivered|undeliverable|permanent(?:ly)? (?:error|fatal|failure|failed)|"
    r"user unknown|unknown user|(?:was|were|has not been|wasn't|was not) (?:not )?delivered|"
    r"unable to deliver|following (?:address|recipient)|failed permanently|qmail-send|"
    r"mail delivery (?:software|system|subsystem)|delivery (?:to the following|has failed|"
    r"failed|status notification|failure)|not be delivered|did not reach|delivery problem|"
    r"does not exist|no such user|mailbox (?:unavailable|full|is full|not found)|"
    r"rejected|returned to (?:the )?sender|has been delayed|not yet been delivered|"
    r"will (?:continue|keep) (?:to )?(?:try|retry)|message (?:expired|timed out)|"
    r"giving up|host unknown|SMTP error|remote (?:host|server) (?:said|returned|replied)|"
    r"delivery attempts? (?:failed|will continue)|transcript of session|delayed|temporary failure|"
    r"\bunknown\b|quota|exceed|no mailbox|not found|error (?:delivering|"
    r"sending)|did not like|delivery error|could not deliver|not delivered",
    re.I,
)
_DELAY_PHRASE = re.compile(
    r"has been delayed|not yet been delivered|will (?:continue|keep) (?:to )?(?:try|retry)|"
    r"will be retried|still (?:be )?trying|delivery (?:is )?delayed|warning: message|"
    r"message (?:has been )?delayed|temporary failure|this is a warning|delayed mail|"
    r"delivery delay|no action is required on your part",
    re.I,
)
_HARD_PHRASE = re.compile(
    r"permanent|given up|giving up|failed permanently|could not be delivered|"
    r"undeliverable|has expired|was not delivered|returned mail|failure notice",
    re.I,
)


def _looks_like_bounce(root: _Part, text: str) -> bool:
    subject = root.decoded("subject")
    sender = root.decoded("from")
    path = root.get("return-path")
    auto = (root.get("auto-submitted") or "").lower()
    replied = bool(re.match(r"\s*(?:re|fwd?|aw|wg|tr)\s*:", subject, re.I))
    by_subject = _bounce_subject(subject)
    by_sender = bool(_DAEMON_FROM.search(sender)) or bool(_DAEMON.match(sender.strip(" <>")))
    null_path = path is not None and path.strip(" <>") == ""
    failed_header = root.get("x-failed-recipients") is not None
    if root.ctype == "multipart/report" or failed_header:
        return True
    if _aws_notification(text) is not None:
        return True
    if by_sender and by_subject and not replied:
        return True
    phrase = bool(_BODY_PHRASE.search(text[:20000]))
    if not phrase:
        return False
    if by_sender or (by_subject and not replied):
        return True
    # A forwarded or anonymous bounce: needs two independent signals.
    return (by_subject or null_path or auto.startswith("auto-")) and bool(
        _QUOTED_DSN_FIELD.search(text) or _DAEMON_FROM.search(text[:5000])
    )


# RFC 3464 fields quoted in text. A line's leading blanks, never a line end: ``^\s*``
# would run from each of many blank lines over all those after it.
_QUOTED_DSN_FIELD = re.compile(
    r"^[^\S\n]*+>*+[^\S\n]*+(?:Final-Recipient|Diagnostic-Code)\s*:", re.I | re.M
)
_DSN_RECIPIENT_FIELD = re.compile(r"^[^\S\n]*+(?:final|original)-recipient\s*:", re.I | re.M)


def _from_text(root: _Part, section: str, returned: str) -> tuple[BounceRecipient, ...]:
    aws = _aws_notification(section)
    if aws is not None:
        return aws
    # RFC 3464 fields as plain text (a DSN in a text part, a forwarded bounce).
    if _DSN_RECIPIENT_FIELD.search(section):
        fields_text = "\n".join(
            line
            for line in section.split("\n")
            if _DSN_FIELD.match(line.strip()) or not line.strip() or line[:1] in (" ", "\t")
        )
        found = _from_groups(_groups(fields_text))
        if found:
            return _enrich(found, section)
    excluded = _own_addresses(root)
    # The original's sender is who the bounce goes to, never a bounced recipient.
    for name, value in _field_pairs(returned):
        if name in ("from", "return-path", "sender"):
            excluded.update(a.lower() for a in _ADDR_RE.findall(value))
    listed = [a for a in _ADDR_RE.findall(root.get("x-failed-recipients") or "")]
    order = _recipient_lines(section, excluded)
    addresses = list(dict.fromkeys([*(a.lower() for a in listed), *(a for a, _ in order)]))
    addresses = addresses[:MAX_RECIPIENTS]
    delayed = _is_delay(root, section)
    transcript = _Transcript(section)
    if not addresses:
        # Clearly a bounce, but it names no one ("Delivery report unavailable"):
        # one recipient-less result keeps the failure (and any code) visible.
        info = _block_info(section.split("\n"), whole_report=True)
        if info.code is None and info.status is None:
            info = _Block("", None, None, info.remote_mta, info.answered)
        return (_recipient(None, info, delayed, transcript),)
    blocks = _text_blocks(section, addresses, order)
    return tuple(_recipient(a, blocks[a], delayed, transcript) for a in addresses)


def _recipient(
    address: str | None, info: _Block, delayed: bool, transcript: _Transcript
) -> BounceRecipient:
    klass = info.status[0] if info.status else (str(info.code)[0] if info.code else "")
    action = "delayed" if delayed and klass != "5" else "failed"
    if klass == "2":
        action = "delivered"
    return BounceRecipient(
        address,
        action,
        info.status,
        info.code,
        info.diagnostic,
        info.remote_mta,
        answered_command=info.answered or transcript.answered(address, action),
    )


def _is_delay(root: _Part, section: str) -> bool:
    subject = root.decoded("subject")
    if re.search(r"delay|warning|still trying|not yet", subject, re.I):
        return True
    return bool(_DELAY_PHRASE.search(section)) and not _HARD_PHRASE.search(section)


def _own_addresses(root: _Part) -> set[str]:
    """The reporting system's and the bounce's addressee's addresses."""
    own: set[str] = set()
    for name in ("from", "to", "return-path", "sender", "reply-to", "delivered-to"):
        for address in _ADDR_RE.findall(root.get(name) or ""):
            own.add(address.lower())
    return own
