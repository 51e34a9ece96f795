"""Text from outside made safe to show: on an operator's terminal and in an SMTP reply.

Replies of remote servers, header values, addresses, reasons typed into the admin API:
whatever the relay stores was written by someone else, and a terminal obeys what it is
sent. ESC starts sequences that set the window title, clear the screen, move the cursor,
write the clipboard (OSC 52) or make links (OSC 8); CR overwrites a line; the bidi
controls reorder it so that what is read is not what is there. Every command prints
stored text through ``printable``; JSON goes through ``terminal_json``; a text an SMTP
reply carries goes through ``ascii_line``.

What ``printable`` escapes, by Unicode general category (``unicodedata``):

- ``Cc``: the C0 controls U+0000-U+001F (tab, LF and CR included: inside a field they
  would forge a column or a row), DEL U+007F and the C1 controls U+0080-U+009F (U+009B
  is a one-byte CSI, U+0085 a line break);
- ``Cf``, the format characters, which are invisible or move other text: the bidi
  embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E,
  U+200F and U+061C, the zero-width characters U+200B-U+200D and U+2060-U+2064, the
  BOM U+FEFF, the soft hyphen U+00AD, the tag characters U+E0001-U+E007F and the rest
  of the category;
- ``Zl`` and ``Zp``, U+2028 and U+2029: line breaks to some terminals and to
  ``str.splitlines``;
- ``Cs``, a lone surrogate (a byte that was not UTF-8, kept by ``surrogateescape``): it
  cannot be written to a UTF-8 terminal at all.

Every other character is shown as it is: letters of every script, spaces (``Zs``),
private-use and unassigned code points.

The escapes are Python's: ``\\t``, ``\\n``, ``\\r``, ``\\xHH`` below U+0100,
``\\uHHHH`` in the BMP, ``\\UHHHHHHHH`` above, lower-case hex. A backslash is shown as
``\\\\``, so the escaped text reads back to exactly one original: a reply that says
``\\x1b`` in so many characters is shown ``\\\\x1b``, never as if it held an ESC.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from typing import Any

__all__ = [
    "HIDDEN_CATEGORIES",
    "ascii_line",
    "is_hidden",
    "printable",
    "printable_lines",
    "terminal_json",
]

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
ELLIPSIS = "…"
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}
# Every character but printable ASCII other than the backslash: the ones to look at.
_SUSPECT = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
# In JSON text the C0 controls are already escaped and a raw LF is the indentation's.
_JSON_SUSPECT = re.compile(r"[^\x00-\x7e]")
_LINE_END = re.compile(r"(\r\n|\n)")
_NOT_ASCII_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def is_hidden(ch: str) -> bool:
    """Whether one character is a control, format or separator character ``printable``
    escapes (the module docstring lists them)."""
    return unicodedata.category(ch) in HIDDEN_CATEGORIES


@lru_cache(maxsize=4096)
def _shown(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    if not is_hidden(ch):
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape(text: str) -> str:
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    return _SUSPECT.sub(lambda m: _shown(m.group()), text)


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every control, format and separator character escaped, as one line.

    With ``limit``, a longer result is cut to at most ``limit`` characters ending in "…",
    never inside an escape; only the first ``limit + 1`` characters of ``text`` are read.
    """
    if limit is None:
        return _escape(text)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    head = text[: limit + 1]  # each character shows as one or more: enough to fill limit
    shown = _escape(head)
    if len(shown) <= limit:
        return shown
    pieces: list[str] = []
    used = 0
    for ch in head:
        piece = _shown(ch)
        if used + len(piece) > limit - len(ELLIPSIS):
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + ELLIPSIS


def printable_lines(text: str) -> str:
    """Like ``printable``, but LF and CRLF stay line ends: for a text whose lines are its
    own structure (a multi-line error message, CSV rows on a terminal). A lone CR is
    escaped: it would overwrite the line it is in."""
    parts = _LINE_END.split(text)
    # split() with a group alternates text, line end, text, ...: escape the texts only.
    return "".join(part if i % 2 else _escape(part) for i, part in enumerate(parts))


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    if not is_hidden(ch):
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def terminal_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, **kwargs)`` with DEL, the C1 controls, the format and separator
    characters and lone surrogates written as ``\\uXXXX`` escapes as well.

    ``json.dumps`` escapes the C0 controls always, but with ``ensure_ascii=False`` it
    writes DEL, C1 controls and bidi overrides raw, and those reach a terminal. The
    escapes are JSON's own, so the document parses to the same value; the other
    non-ASCII characters stay readable."""
    return _JSON_SUSPECT.sub(_json_escape, json.dumps(value, **kwargs))


def ascii_line(text: str, limit: int) -> str:
    """``text`` as one line of printable ASCII of at most ``limit`` characters, for an SMTP
    reply: runs of whitespace (CR, LF and tab among them) become one space, every other
    character outside ``" "``..``"~"`` becomes ``?``, and a longer text is cut to end in
    "..."."""
    if limit < 4:
        raise ValueError(f"limit must be at least 4, got {limit}")
    line = _NOT_ASCII_PRINTABLE.sub("?", " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."
