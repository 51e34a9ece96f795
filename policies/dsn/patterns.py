"""The limits and the patterns that the readers of several formats share: addresses,
mailer daemons' names, RFC 3464 field names.
"""

from __future__ import annotations

import re

# A diagnostic is a reply, not a transcript: longer text is cut.
_MAX_DIAGNOSTIC = 1000
# Beyond these a "bounce" is a list dump, not a report: the rest is ignored,
# which keeps the text heuristics linear in practice.
MAX_RECIPIENTS = 500
_MAX_REPORT_LINES = 5000
# A line longer than this names no recipient (a report line is short); also the
# most of a line handed to the reply parser.
_MAX_LINE = 1000
# An address whose own block has no code borrows from at most this many lines
# that name it: bounded work per recipient, whatever the report repeats.
_MAX_MENTIONS = 10
_MAX_TEXT_LOOKUPS = 10


_ATOM = r"\w!#$%&'*+/=?^`{|}~.-"
# An address not glued to a longer word on its left ("mailboxfull@x" is not "full@x").
_ADDR = rf"(?<![@{_ATOM}])[{_ATOM}]+@(?:[\w-]+(?:\.[\w-]+)+|\[[\d.:a-fA-F]+\])"
_ADDR_RE = re.compile(_ADDR)


_DAEMON = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|maildaemon|mail-daemon|mail\.?delivery|noreply|no-reply|"
    r"double-bounce)(?:[+.-][^@]*)?@",
    re.I,
)


_DAEMON_FROM = re.compile(
    r"mailer[-_ ]?daemon|postmaster|mail delivery|delivery subsystem|"
    r"mail administrator|mail system|maildaemon|mail-daemon",
    re.I,
)


_DSN_FIELD = re.compile(
    r"^(final-recipient|original-recipient|action|status|diagnostic-code|remote-mta|"
    r"reporting-mta|x-actual-recipient|last-attempt-date|will-retry-until|"
    r"received-from-mta|arrival-date|x-postfix-[\w-]+|x-[\w-]+-(?:id|queue-id))\s*:",
    re.I,
)
