"""Every reply the relay sends its SMTP clients, in one place.

Texts are generic on purpose: a reply never carries an exception name, a
host name or SQL (RELIABILITY: a failure inside a session is 451 4.3.0).
A stored text a reply does carry (the suppression reason) goes in through a
function here that makes it one bounded line of printable ASCII: CR LF in it
would end the reply early and start another the client takes for ours.
"""

from __future__ import annotations

from policies.text import ascii_line

__all__ = [
    "ADDRESS_LITERAL_REFUSED",
    "AUTH_BUSY",
    "AUTH_CLIENT_BLOCKED",
    "AUTH_TOO_MANY_FAILURES",
    "BAD_ADDRESS",
    "BAD_LINE_ENDING",
    "CLIENT_NOT_ALLOWED",
    "DATA_TIMEOUT",
    "DATA_TOO_SLOW",
    "IDLE_TIMEOUT",
    "LIKELY_TYPO",
    "NON_ASCII_ADDRESS",
    "NO_MAIL_HOSTS",
    "NO_SUCH_DOMAIN",
    "NULL_MX",
    "OK",
    "PROXY_REFUSED",
    "QUEUED",
    "SUPPRESSED",
    "TEMPORARY_FAILURE",
    "TOO_BIG",
    "TOO_MANY_COMMANDS",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_HOPS",
    "TOO_MANY_INVALID_COMMANDS",
    "TOO_MANY_RECIPIENTS",
    "likely_typo",
    "no_mail_domain",
    "rewrite_builtin",
    "suppressed",
]

OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
QUEUED = "250 2.0.0 OK queued as {queue_id}"
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax: {why}"
BAD_SENDER = "501 5.1.7 Bad sender address syntax: {why}"
SUPPRESSED = "550 5.7.1 <{address}> is on the suppression list ({reason}); message not sent"
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF. SUPPRESSED's own
# text is 60 of them; an address of 254 (the longest a path holds) leaves 196 for the reason.
MAX_REPLY_LINE = 510
SUPPRESSED_ADDRESS_MAX = 254
SUPPRESSED_REASON_MAX = 196
CLIENT_NOT_ALLOWED = "550 5.7.1 Relaying denied: client {peer} is not allowed to relay"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TEMPORARY_FAILURE = "451 4.3.0 Temporary local problem, please try again later"
BOUNCE_READ = "250 2.0.0 OK bounce read"
BOUNCES_SEPARATELY = "452 4.5.3 Send mail to the bounce domain in a transaction of its own"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
# RFC 6531 §3.7.4.1: a non-ASCII address in a transaction without SMTPUTF8.
NON_ASCII_ADDRESS = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"

# Abusive clients (relay/intake/limits.py): each of these ends the session.
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_COMMANDS = "421 4.7.0 Too many {command} commands, closing connection"
TOO_MANY_INVALID_COMMANDS = "421 4.7.0 Too many invalid commands, closing connection"
IDLE_TIMEOUT = "421 4.4.2 Timeout waiting for the next command, closing connection"
DATA_TIMEOUT = "421 4.4.2 DATA took too long, closing connection; message not accepted"
DATA_TOO_SLOW = "421 4.4.2 DATA too slow, closing connection; message not accepted"
PROXY_REFUSED = "421 4.7.0 PROXY header not accepted from this client, closing connection"

# Refused at the end of DATA; nothing is stored.
# RFC 3463 X.4.6: routing loop detected (RFC 5321 §6.3).
TOO_MANY_HOPS = "554 5.4.6 Too many hops (mail loop?)"
# RFC 3463 X.1.2: bad destination system address.
ADDRESS_LITERAL_REFUSED = "550 5.1.2 Address literals are not accepted here"
# AUTH (RFC 4954 §6). The 421s end the session; the 454 is counted as no failure.
AUTH_TOO_MANY_FAILURES = "421 4.7.0 Too many failed authentication attempts"
AUTH_CLIENT_BLOCKED = (
    "421 4.7.0 Too many failed authentication attempts from your address, try again later"
)
AUTH_BUSY = "454 4.7.0 Temporary authentication failure, try again later"
# As Postfix's smtpd_forbid_bare_newline = reject: SMTP smuggling needs a line end that one
# server takes for CRLF and the next does not.
BAD_LINE_ENDING = "550 5.5.2 Message data has {what}: end every line with CRLF, send no NUL"

# aiosmtpd answers a few conditions itself without enhanced status codes;
# rewrite them to the replies DESIGN.md promises.
_BUILTIN = {
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
    # aiosmtpd's own limit on unknown command names (5 a session) closes the connection.
    "502 5.5.1 Too many unrecognized commands, goodbye.": TOO_MANY_INVALID_COMMANDS,
}


def suppressed(address: str, reason: str) -> str:
    """The RCPT refusal of a suppressed address. The reason was set by an administrator or
    taken from a remote server's bounce; the address may be UTF-8 (SMTPUTF8): both become
    printable ASCII on one line (``?`` for anything else), and the reply stays within
    RFC 5321's line length."""
    return SUPPRESSED.format(
        address=ascii_line(address, SUPPRESSED_ADDRESS_MAX),
        reason=ascii_line(reason, SUPPRESSED_REASON_MAX),
    )


# [recipients] typo = "refuse": RFC 3463 X.1.2, bad destination system address.
LIKELY_TYPO = "550 5.1.2 <{address}>: did you mean {suggested}? ({domain} is a likely typo)"
# [recipients] no_mail_domain = "refuse".
NO_SUCH_DOMAIN = "550 5.1.2 <{address}>: the domain {domain} does not exist"
NO_MAIL_HOSTS = "550 5.1.2 <{address}>: the domain {domain} has no mail server (no MX, A or AAAA)"
# RFC 7505 §4.1 (and RFC 7504's 556): a domain whose only MX is "0 ." has said that it accepts
# no mail, and a client must answer 556 5.1.10 "recipient address has null MX" rather than try.
# The relay is that client here, so RCPT answers as it would: the same code and words as the
# bounce delivery would record (relay.delivery.upstream).
NULL_MX = "556 5.1.10 <{address}>: the domain {domain} publishes a null MX and accepts no mail"
# An address in these replies: SUPPRESSED_ADDRESS_MAX, the longest a path holds. The texts
# are at most 90 characters, the domains 255: within MAX_REPLY_LINE with two addresses.
_DOMAIN_MAX = 100


def likely_typo(address: str, domain: str, suggested_domain: str) -> str:
    """RCPT's refusal of ``address`` at ``domain``, a likely typo of ``suggested_domain``:
    names the address it likely meant. The local part is the client's (a checked address,
    maybe UTF-8): like the suppression reply, only printable ASCII goes back, bounded."""
    local = address.rpartition("@")[0]
    return LIKELY_TYPO.format(
        address=ascii_line(address, SUPPRESSED_ADDRESS_MAX),
        suggested=ascii_line(f"{local}@{suggested_domain}", SUPPRESSED_ADDRESS_MAX),
        domain=ascii_line(domain, _DOMAIN_MAX),
    )


def no_mail_domain(template: str, address: str, domain: str) -> str:
    """RCPT's refusal of ``address`` whose ``domain`` can receive no mail (``NO_SUCH_DOMAIN``,
    ``NO_MAIL_HOSTS``, ``NULL_MX``), in printable ASCII."""
    return template.format(
        address=ascii_line(address, SUPPRESSED_ADDRESS_MAX),
        domain=ascii_line(domain, _DOMAIN_MAX),
    )


def rewrite_builtin(status: str) -> str:
    """Our form of one of aiosmtpd's built-in replies; anything else unchanged."""
    if status.startswith("500 Error: ("):
        # aiosmtpd's fallback puts the exception's class and text in the reply.
        return TEMPORARY_FAILURE
    return _BUILTIN.get(status, status)
