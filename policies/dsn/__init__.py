"""Bounce messages as values: one ``ParsedBounce`` per received bounce or report.

``parse_bounce(raw)`` reads one message as it came in over SMTP and returns a
``BounceRecipient`` per bounced address, in the order the message lists them.
Three shapes reach us and are tried in this order:

* ``rfc3464``: a ``message/delivery-status`` (or RFC 6533
  ``message/global-delivery-status``) part, wherever it sits: many MTAs put it
  in a ``multipart/mixed`` rather than a ``multipart/report``;
* ``arf``: a ``message/feedback-report`` part (RFC 5965), or a bare
  unsubscribe/complaint notice that carries an unmistakable marker header
  (``X-Apple-Unsubscribe``, ``Feedback-Type`` in the message header);
* ``text``: everything else, read by heuristics that do not know the MTA:
  the lines that name a recipient (an address on its own line, ``<addr>:``,
  ``addr... reason``, ``RCPT TO:<addr>``, "delivered to addr", Exim's
  ``X-Failed-Recipients``), then the first SMTP reply code and RFC 3463 code
  in that recipient's block of text. RFC 3464 fields quoted as plain text
  (a forwarded bounce, a DSN in a ``text/plain`` part) are read as fields.
  Reading stops at the returned original ("This is a copy of the message",
  "Below this line is a copy", "Original message follows", a header block).
  A recipient's failure without any code is its block's first paragraph, not
  the report's boilerplate after it; Exchange 2003's own status codes
  ("MSEXCH:IMS:... (000C05A6) Unknown Recipient") are read as the RFC 3463
  codes they stand for.

Status leniency (RFC 3464): the ``Status`` field is the reporting MTA's
summary and is often just ``X.0.0`` ("failed, no idea why") or missing,
while the remote's own words in ``Diagnostic-Code`` carry a precise code
("550 5.1.1 ..."). We take the diagnostic's enhanced code when ``Status`` is
missing, or when it is ``X.0.0`` and the diagnostic's code has the *same
class*: the reporting MTA's verdict on permanence (4 vs 5) always wins,
only the subject/detail are refined. A precise ``Status`` (say 5.2.2 with a
diagnostic saying 5.1.1) is left alone: it is the MTA's considered reading.

Everything here is bounded: the input is cut at ``MAX_BYTES``, MIME nesting
deeper than ``MAX_DEPTH`` or more than ``MAX_PARTS`` parts raise
``MalformedBounce``; a message without a header block raises
``NotAMessage``. Nothing else raises: undecodable bytes, unknown charsets and
broken encodings are read as well as they can be (``errors="replace"``).

The input is hostile (anyone may mail the DSN domain), so every step is linear
in its size: no pattern rescans a run of text from each of its positions (blank
runs are taken possessively, an opening that never closes is looked for once),
no text is built by repeated concatenation, every recipient gets a bounded
share of work (``MAX_RECIPIENTS``, ``_MAX_MENTIONS``), and no pure-Python codec
with quadratic decoding (punycode, IDNA) is used as a charset.
``bench/dsn_parse_bench.py`` measures it on each shape that used to be
quadratic.

"""

from __future__ import annotations

from policies.dsn.arf import _bare_complaint, _from_arf
from policies.dsn.fields import _field_pairs
from policies.dsn.mime import (
    _DSN_TYPES,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_PARTS,
    MalformedBounce,
    NotAMessage,
    _body_text,
    _Counter,
    _parse_entity,
    _Part,
    _prepare,
)
from policies.dsn.patterns import MAX_RECIPIENTS
from policies.dsn.prose import _cut_section
from policies.dsn.returned import _headers_loop, _returned_info, _returned_part
from policies.dsn.rfc3464 import _from_dsn_parts
from policies.dsn.text import _from_text, _looks_like_bounce
from policies.dsn.values import BounceRecipient, ParsedBounce

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_RECIPIENTS",
    "BounceRecipient",
    "MalformedBounce",
    "NotAMessage",
    "ParsedBounce",
    "parse_bounce",
]


def parse_bounce(raw: bytes) -> ParsedBounce | None:
    """None when the message is not recognisably a bounce or feedback report."""
    data = _prepare(raw)
    try:
        return _interpret(_parse_entity(data, 0, _Counter()))
    except (MalformedBounce, NotAMessage):
        raise
    except RecursionError as exc:
        raise MalformedBounce("message too deeply structured") from exc
    except Exception:  # the heuristics must never take the relay down
        return None


def _interpret(root: _Part) -> ParsedBounce | None:
    returned = _returned_part(root)
    returned_headers = ""
    loop = False
    if returned is not None:
        returned_headers, loop = _returned_info(returned)

    dsn_parts = [p for p in root.walk(into_messages=False) if p.ctype in _DSN_TYPES]
    text = _body_text(root)
    if dsn_parts:
        recipients = _from_dsn_parts(dsn_parts, text)
        if recipients:
            return ParsedBounce("rfc3464", recipients, returned_headers, loop)

    reports = [p for p in root.walk(into_messages=False) if p.ctype == "message/feedback-report"]
    if reports:
        return ParsedBounce("arf", _from_arf(reports[0], returned), returned_headers, loop)
    complaint = _bare_complaint(root)
    if complaint is not None:
        return ParsedBounce("arf", (complaint,), returned_headers, loop)

    if not _looks_like_bounce(root, text):
        return None
    section, inline_headers = _cut_section(text)
    if not returned_headers and inline_headers:
        returned_headers = inline_headers
        loop = _headers_loop(_field_pairs(inline_headers))
    recipients = _from_text(root, section, returned_headers)
    if not recipients:
        return None
    return ParsedBounce("text", recipients, returned_headers, loop)
