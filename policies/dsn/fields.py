"""A report's fields read as values: ``name: value`` pairs, addresses, hosts, the SMTP
reply code and RFC 3463 status of a diagnostic, the action.
"""

from __future__ import annotations

import re

from policies.dsn.patterns import _MAX_DIAGNOSTIC, _MAX_LINE
from policies.smtp_reply import parse_reply

_ENHANCED = re.compile(r"(?<![\w.#])#?([245]\.\d{1,3}\.\d{1,3})(?![\w]|\.\d)")
_STATUS_FIELD = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
# A reply code where a reply starts: the line start, after "said:"/"]:" and
# the like, after a transcript's "<<<", or any code directly followed by an
# enhanced code of its class.
_CODE_AT = re.compile(
    r"(?:^|(?<=[:;>\]\)'\"(])|(?<=said)|(?<=was)|(?<=reply)|(?<=response)|(?<=error)"
    r"|(?<=returned)|(?<=<<<))[ \t]*['\"(]?([245]\d\d)(?=[ -]|:\s|$)",
    re.I | re.M,
)
_CODE_WITH_ENHANCED = re.compile(r"(?<![\w.])([245]\d\d)[ -]#?([245])\.\d{1,3}\.\d{1,3}\b")


def _field_pairs(block: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each field of a header block, continuation lines joined with a
    blank (collected and joined once: a field folded over many lines is not copied per
    line)."""
    fields: list[tuple[str, list[str]]] = []
    for line in block.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1].append(line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name.strip():
            fields.append((name.strip().lower(), [value.strip()]))
    return [(name, " ".join(pieces)) for name, pieces in fields]


def _host(value: str) -> str | None:
    """``mx.example.net. (192.0.2.40, the server for ...)`` -> ``mx.example.net``."""
    words = value.split()
    return (words[0].strip("[]").rstrip(".") or None) if words else None


def _address_field(value: str | None) -> str | None:
    if not value:
        return None
    rest = _strip_type(value)
    match = re.search(r"<([^<>]*)>", rest)
    address = (match.group(1) if match else rest).strip().strip("<>\"' ")
    address = address.split()[0] if address.split() else ""
    return address or None


def _strip_type(value: str) -> str:
    """``smtp; 550 ...`` -> ``550 ...``, ``rfc822;a@b`` -> ``a@b``."""
    match = re.match(r"\s*[\w.-]{1,20}\s*;\s*", value)
    return value[match.end() :] if match else value.strip()


def _fold(text: str) -> str:
    return " ".join(text.split())[:_MAX_DIAGNOSTIC]


def _status_of(field_value: str, diagnostic: str) -> str | None:
    match = _STATUS_FIELD.search(field_value)
    status = f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}" if match else None
    if diagnostic and (status is None or status.endswith(".0.0")):
        better = _enhanced_of(diagnostic)
        if better and (status is None or better[0] == status[0]) and not better.endswith(".0.0"):
            return better
        if status is None:
            return better
    return status


def _enhanced_of(text: str) -> str | None:
    found = _find_code(text)
    if found is not None:
        parsed = parse_reply(_reply_line(text, found[1]))
        if parsed.enhanced:
            return parsed.enhanced
    for match in _ENHANCED.finditer(text):
        value = match.group(1)
        subject = int(value.split(".")[1])
        if subject <= 7 and (found is None or value[0] == str(found[0])[0]):
            return value
    return None


def _reply_line(text: str, start: int) -> str:
    """The line of ``text`` from ``start``, at most _MAX_LINE characters: all of the text
    ``parse_reply`` reads its enhanced code from (its first line), and all it should get:
    it splits lines on patterns that are slow on a long run of blanks."""
    end = start + _MAX_LINE
    for stop in ("\n", "\r"):
        found = text.find(stop, start, end)
        if found >= 0:
            end = found
    return text[start:end]


def _find_code(text: str) -> tuple[int, int] | None:
    """The first SMTP reply code where a reply starts, and its offset."""
    best: tuple[int, int] | None = None
    for match in _CODE_AT.finditer(text):
        best = (int(match.group(1)), match.start(1))
        break
    strong = _CODE_WITH_ENHANCED.search(text)
    if (
        strong
        and strong.group(1)[0] == strong.group(2)
        and (best is None or strong.start() < best[1])
    ):
        best = (int(strong.group(1)), strong.start(1))
    return best


def _code_of(text: str) -> int | None:
    found = _find_code(text)
    return found[0] if found else None


def _action_of(value: str, status: str | None, code: int | None) -> str:
    word = value.strip().lower().split(" ")[0] if value.strip() else ""
    for prefix, action in (
        ("fail", "failed"),
        ("delay", "delayed"),
        ("deliver", "delivered"),
        ("relay", "relayed"),
        ("expand", "expanded"),
    ):
        if word.startswith(prefix):
            return action
    klass = status[0] if status else (str(code)[0] if code else "5")
    return {"4": "delayed", "2": "delivered"}.get(klass, "failed")
