"""One intake connection's SMTP conversation: aiosmtpd's protocol, with our replies for the
conditions it answers itself.

What to answer MAIL, RCPT and DATA is the handler's business (``relay.intake``); this
class only calls it.
"""

from __future__ import annotations

import re
from typing import AnyStr

from aiosmtpd.smtp import SMTP

from relay import replies

__all__ = ["RelaySMTP"]

# "<dot-atom@hostname>": what nearly every MAIL/RCPT carries. aiosmtpd parses each path with
# the email package's header grammar, a tenth of the relay's CPU per message; a path this
# plain reads the same either way (tests/relay/test_intake.py checks), anything else still
# goes through aiosmtpd's parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*")


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies for the conditions it answers itself."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.match(arg)
        limit = self.local_part_limit
        if plain is not None and not (limit and len(plain.group(1).rpartition("@")[0]) > limit):
            return plain.group(1), arg[plain.end() :]
        try:
            address, rest = super()._getaddr(arg)  # aiosmtpd is untyped: name the types
        except Exception:
            # The email package's grammar crashes on input like '"' or '1@[' (IndexError,
            # AttributeError): that is a syntax error for the client (501/553), not a 451
            # that invites it to send the same again.
            return None, None
        return address, rest

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, bytes):
            await super().push(status)
            return
        if self.event_handler.shutting_down and status.startswith("220 "):
            # The listener is closing: a connection that slipped in is told to come back.
            await super().push(replies.SHUTTING_DOWN)
            if self.transport is not None:
                self.transport.close()
            return
        await super().push(replies.rewrite_builtin(status))

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is not None:
            self.event_handler.session_closed(self.session)
        super().connection_lost(error)
