"""policies.text: stored text made safe for a terminal, for JSON printed to one, and for an
SMTP reply line."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.text import ascii_line, is_hidden, printable, printable_lines, terminal_json

_ESCAPE = re.compile(r"\\(\\|t|n|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_SHORT = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(shown: str) -> str:
    """The inverse of ``printable``, written from its documented escapes."""

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        return _SHORT[body] if body in _SHORT else chr(int(body[1:], 16))

    return _ESCAPE.sub(one, shown)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;pwned\x07\x1b[2J", r"\x1b]0;pwned\x07\x1b[2J"),  # OSC title, BEL, clear
        ("a\tb\nc\rd\x00e", r"a\tb\nc\rd\x00e"),  # a field's tab or line end is escaped
        ("\x7f\x85\x9b31m", r"\x7f\x85\x9b31m"),  # DEL, NEL, the one-byte CSI
        ("\u202eexe.txt\u202c", r"\u202eexe.txt\u202c"),  # RLO ... PDF
        (
            "\u202a\u202b\u202d\u2066\u2067\u2068\u2069",
            r"\u202a\u202b\u202d\u2066\u2067\u2068\u2069",
        ),
        ("\u200e\u200f\u061c", r"\u200e\u200f\u061c"),  # bidi marks
        ("z\u200bw\u200c\u200d\u2060\ufeff\u00ad", r"z\u200bw\u200c\u200d\u2060\ufeff\xad"),
        ("tag\U000e0041\U000e007f", r"tag\U000e0041\U000e007f"),  # invisible tag characters
        ("line\u2028para\u2029", r"line\u2028para\u2029"),  # separators splitlines() obeys
        ("bad\udcff byte", r"bad\udcff byte"),  # a lone surrogate cannot even be printed
        ("C:\\x1b", r"C:\\x1b"),  # a literal backslash is doubled: never read as an escape
    ],
)
def test_printable_escapes_controls_format_characters_and_backslashes(text, shown):
    assert printable(text) == shown
    assert unescape(shown) == text


@pytest.mark.parametrize(
    "text",
    [
        "550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown",
        "Message reçu, boîte pleine",  # letters of every script stay readable
        "收件人不存在 😀",
        "non\u00a0breaking\u3000ideographic",  # spaces (Zs) show as spaces
        "private \ue000 use",
    ],
)
def test_printable_leaves_visible_text_alone(text):
    assert printable(text) == text


def test_printable_cuts_at_the_limit_without_splitting_an_escape():
    assert printable("abcdef", 6) == "abcdef"
    assert printable("abcdefg", 6) == "abcde…"
    # "ab" + "\x1b" (4 shown) would pass 6 with the ellipsis: the escape is left out whole.
    assert printable("ab\x1bcdef", 6) == "ab…"
    assert printable("ab\x1b", 6) == r"ab\x1b"
    huge = "\x1b" * 10_000_000  # only limit + 1 characters are read
    assert printable(huge, 9) == r"\x1b\x1b…"
    with pytest.raises(ValueError, match="limit"):
        printable("x", 0)


def test_printable_lines_keeps_line_ends_and_escapes_the_rest():
    text = "store error:\n  key (a\x1b[2J)\r\n  lone\rcarriage\ttab"
    assert printable_lines(text) == "store error:\n  key (a\\x1b[2J)\r\n  lone\\rcarriage\\ttab"


def test_terminal_json_escapes_what_ensure_ascii_false_leaves_raw():
    value = {"diagnostic": "550 \x1b[2J \u202eevil\u202c \x9b \x7f é \U000e0041 \u2028"}
    plain = json.dumps(value, ensure_ascii=False)
    assert "\u202e" in plain and "\x9b" in plain and "\x7f" in plain  # what went wrong
    shown = terminal_json(value, ensure_ascii=False)
    assert not any(is_hidden(ch) for ch in shown)
    assert r"\u202e" in shown and r"\u009b" in shown and r"\u007f" in shown
    assert r"\udb40\udc41" in shown  # an astral format character as a surrogate pair
    assert "é" in shown  # readable text stays readable
    assert json.loads(shown) == value


def test_terminal_json_keeps_the_indentation():
    shown = terminal_json({"a": "\u202e", "b": ["\x1b"]}, indent=2)
    assert shown.count("\n") == 5
    assert json.loads(shown) == {"a": "\u202e", "b": ["\x1b"]}


@given(st.text())
def test_printable_hides_nothing_and_reads_back(text):
    shown = printable(text)
    assert not any(is_hidden(ch) for ch in shown)
    assert unescape(shown) == text


@given(st.text(), st.integers(min_value=1, max_value=40))
def test_printable_with_a_limit_is_a_prefix_of_the_whole(text, limit):
    shown = printable(text, limit)
    assert len(shown) <= limit
    whole = printable(text)
    if shown == whole:
        return
    assert shown.endswith("…")
    kept = shown[: -len("…")]
    assert whole.startswith(kept)
    assert text.startswith(unescape(kept))  # no escape was cut in half


@given(st.text())
def test_terminal_json_hides_nothing_and_parses_back(text):
    for ensure_ascii in (True, False):
        shown = terminal_json({"t": text}, ensure_ascii=ensure_ascii)
        assert not any(is_hidden(ch) for ch in shown)
        assert json.loads(shown) == {"t": text}


@pytest.mark.parametrize(
    "reason",
    [
        "user_unknown: 550 5.1.1\r\n250 2.0.0 OK",
        "a\rb",
        "a\nb",
        "nul\x00here",
        "esc \x1b]0;pwned\x07\x1b[2J",
        "bidi \u202eevil\u202c and NEL\x85 and \u2028",
        "Müller rief an",
        "x" * 10_240,
    ],
)
def test_ascii_line_is_one_bounded_line_of_printable_ascii(reason):
    line = ascii_line(reason, 200)
    assert len(line) <= 200
    assert re.fullmatch(r"[\x20-\x7e]*", line), line


def test_ascii_line_joins_whitespace_and_marks_the_rest():
    assert ascii_line("user_unknown: 550 5.1.1\r\n250 2.0.0 OK", 200) == (
        "user_unknown: 550 5.1.1 250 2.0.0 OK"
    )
    assert ascii_line("Müller \x1b[2J", 200) == "M?ller ?[2J"
    assert ascii_line("x" * 300, 20) == "x" * 17 + "..."
